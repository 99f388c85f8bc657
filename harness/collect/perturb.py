"""SAMIA's perturbed queries (``[attack] samia_perturbations = P`` > 0 or ``compleak collect --perturbations P``):
which examples get them, the deterministic Gaussian copies, and when stored ones are done.

Every target artifact on the target candidates and every artifact of shadow 0 on that shadow's own
members/non-members (:func:`perturbed_ids`) is also queried on ``P`` Gaussian copies of each example
(:func:`perturbed_inputs`: std ``samia_epsilon`` in preprocessed input units, a deterministic function of the
example's input, its id, ``[attack] seed``, epsilon and P).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError
from rundir import ArtifactRecord, RunDir, Splits

_NOISE_STREAM = 0x5A311A  # separates the perturbation noise from any other stream seeded by [attack] seed


@dataclass(frozen=True)
class Perturbation:
    """SAMIA's perturbed queries: ``count`` Gaussian copies of each example with std ``epsilon`` (preprocessed
    input units), noise seeded by ``seed`` (``[attack] seed``) and the example id."""

    count: int
    epsilon: float
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "epsilon": self.epsilon, "seed": self.seed, "noise": "gaussian",
                "generator": f"numpy PCG64 standard_normal float32, seeded by [seed, {_NOISE_STREAM:#x}, example id]"}


def perturbation_noise(ids: np.ndarray, shape: tuple[int, ...], p: Perturbation) -> np.ndarray:
    """Gaussian noise for example ``ids``, float32 [M, P, *shape], std ``p.epsilon``.

    Row ``i`` depends only on (``p.seed``, ``ids[i]``, ``p.epsilon``, ``p.count``), not on chunking or order, so
    a resumed or re-chunked collection sends the same queries; the first ``P'`` copies of ``P > P'`` equal those
    of ``P'``.
    """
    out = np.empty((len(ids), p.count, *shape), np.float32)
    for k, i in enumerate(np.asarray(ids, np.int64)):
        rng = np.random.default_rng([p.seed, _NOISE_STREAM, int(i)])
        out[k] = rng.standard_normal((p.count, *shape), dtype=np.float32)
    out *= np.float32(p.epsilon)
    return out


def perturbed_inputs(x: np.ndarray, ids: np.ndarray, p: Perturbation) -> np.ndarray:
    """Perturbed copies of the preprocessed inputs ``x`` (float32 [M, H, W, C]) of example ``ids`` (int64 [M]):
    float32 [M, P, H, W, C] = x[:, None] + noise (no clipping: epsilon is in the model's input units)."""
    x = np.asarray(x, np.float32)
    return x[:, None] + perturbation_noise(ids, x.shape[1:], p)


def perturbed_ids(splits: Splits, rec: ArtifactRecord) -> np.ndarray | None:
    """Example ids an artifact gets perturbed queries on, int64 [M], or None: a target artifact on the target
    candidates (members then non-members: what SAMIA scores); shadow 0 on its own members then non-members (what
    the attack model trains on). Other shadows/references get none (their count would multiply the queries)."""
    if rec.role == "target":
        return splits.query_ids("target")
    if rec.role == "shadow" and int(rec.shadow or 0) == 0:
        return splits.query_ids("shadow", 0)
    return None


def perturbed_npz(rd: RunDir, device_id: str, artifact_id: str) -> Path:
    """``outputs/<device>/<artifact>.perturbed.npz`` (its provenance: the same name with ``.json``)."""
    return rd.perturbed_npz(device_id, artifact_id)


def resolve_perturbation(run: RunDir, count: int | None) -> Perturbation | None:
    """The run's perturbation settings: ``count`` (the CLI's ``--perturbations``) overrides
    ``[attack] samia_perturbations``; epsilon and seed come from ``[attack]`` (defaults when the run has no
    experiment.toml). None when the count is 0."""
    from harness.config import AttackSection, load_experiment

    attack = load_experiment(run.experiment).attack if run.experiment.is_file() else AttackSection()
    n = attack.samia_perturbations if count is None else int(count)
    if n < 0:
        raise HarnessError(f"--perturbations must be >= 0 (got {n})")
    return Perturbation(n, float(attack.samia_epsilon), int(attack.seed)) if n > 0 else None
