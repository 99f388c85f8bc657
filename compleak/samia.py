"""SAMIA (Yuan & Zhang, USENIX Security 2022): membership from the posterior, its sensitivity to input
perturbations, and the label.

For every queried example ``x`` the collect stage also sends ``P`` perturbed copies ``x + eps * u_p`` with
``u_p ~ N(0, I)`` (in preprocessed input units) through the same runtime, and stores them as
``RUN/outputs/<device>/<artifact_id>.perturbed.npz``: ``index`` int64 [M], ``logits`` (or ``probs``) float32
[M, P, C], ``epsilon`` float scalar. The sensitivity is, per class ``c`` (the authors' code,
``predict_target_sensitivity``)::

    s_c(x) = mean_p | softmax(x + eps * u_p)_c - softmax(x)_c | / eps        float64 [M, C]

and the attack features are ``[posterior | sensitivity | one-hot label]`` (3C columns, the paper's
``nn_sens_cls`` input), classified by a small MLP trained on the reference (shadow) models only.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from compleak import signals as sig
from rundir import ContractError

PERTURBED_SUFFIX = ".perturbed.npz"


@dataclass(frozen=True)
class PerturbedBatch:
    """Outputs of one artifact on ``P`` Gaussian perturbations of each example.

    Attributes:
        index: int64 [M] example ids. values: float32 [M, P, C] raw outputs. kind: ``logits`` | ``probs``.
        epsilon: the perturbation's standard deviation in preprocessed input units. source: file name for errors.
    """

    index: np.ndarray
    values: np.ndarray
    kind: Literal["logits", "probs"]
    epsilon: float
    source: str | None = field(default=None, compare=False, repr=False)

    def validate(self, source: str = "perturbed outputs") -> "PerturbedBatch":
        if self.index.ndim != 1 or not np.issubdtype(self.index.dtype, np.integer):
            raise ContractError(f"{source}: index must be a 1-D integer array, got {self.index.dtype}")
        if self.values.ndim != 3 or len(self.values) != len(self.index) or self.values.shape[1] < 1:
            raise ContractError(
                f"{source}: {self.kind} must be [M, P, C] with M = {len(self.index)} rows, got {self.values.shape}; "
                "re-collect with perturbations"
            )
        if len(np.unique(self.index)) != len(self.index):
            raise ContractError(f"{source}: index contains duplicate example ids")
        if not np.all(np.isfinite(self.values)):
            raise ContractError(f"{source}: perturbed outputs contain NaN or Inf; re-collect this artifact")
        if not (np.isfinite(self.epsilon) and self.epsilon > 0):
            raise ContractError(f"{source}: epsilon must be a positive number, got {self.epsilon}")
        return self

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Values for ``ids`` in that order, float32 [len(ids), P, C]; error naming the file if any is missing."""
        src = self.source or "perturbed outputs"
        order = np.argsort(self.index, kind="stable")
        pos = np.searchsorted(self.index[order], ids)
        pos = np.minimum(pos, len(order) - 1)
        found = self.index[order][pos] == ids
        if not found.all():
            raise ContractError(f"{src}: {int((~found).sum())} required example ids missing; re-run collect")
        return self.values[order[pos]]

    def covers(self, ids: np.ndarray) -> bool:
        return bool(np.all(np.isin(ids, self.index)))


def perturbed_path(outputs_dir: Path, artifact_id: str) -> Path:
    """``outputs_dir / <artifact_id>.perturbed.npz``."""
    return Path(outputs_dir) / f"{artifact_id}{PERTURBED_SUFFIX}"


def load_perturbed(path: Path) -> PerturbedBatch | None:
    """Read ``<artifact>.perturbed.npz`` (no pickles); None when the file does not exist. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ContractError(f"{path}: not a readable .npz file ({exc.__class__.__name__}); re-collect it") from None
    kind = "logits" if "logits" in data else "probs" if "probs" in data else None
    if "index" not in data or kind is None or "epsilon" not in data:
        raise ContractError(f"{path}: needs arrays 'index', 'logits' (or 'probs') and 'epsilon'; re-collect it")
    try:
        eps = float(np.asarray(data["epsilon"]).reshape(()))
    except (TypeError, ValueError):
        raise ContractError(f"{path}: epsilon must be a scalar; re-collect it") from None
    values = np.asarray(data[kind], dtype=np.float32)
    return PerturbedBatch(np.asarray(data["index"]), values, kind, eps, str(path)).validate(str(path))  # type: ignore


def sensitivity(clean_p: np.ndarray, perturbed: np.ndarray, kind: str, epsilon: float,
                source: str = "perturbed outputs") -> np.ndarray:
    """Per-class sensitivity float64 [M, C]: ``mean_p |softmax(x + eps u_p) - softmax(x)| / eps``.

    ``clean_p`` posterior [M, C] of the unperturbed queries; ``perturbed`` raw outputs [M, P, C] of ``kind``."""
    m, p, c = perturbed.shape
    pert = sig.posterior(perturbed.reshape(m * p, c), kind, source).reshape(m, p, c)  # type: ignore[arg-type]
    return np.abs(pert - np.asarray(clean_p, np.float64)[:, None, :]).mean(axis=1) / float(epsilon)


def features(clean_p: np.ndarray, sens: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """SAMIA's input ``[posterior | sensitivity | one-hot]`` float64 [M, 3C]."""
    clean_p = np.asarray(clean_p, np.float64)
    return np.concatenate([clean_p, np.asarray(sens, np.float64), sig.one_hot(labels, clean_p.shape[1])], axis=1)
