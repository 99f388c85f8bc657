"""What a collect on one device has to do, read from the run alone: :class:`CollectPlan` (shared by
``collect_run`` and ``collect_pending``, the audit's read-only check that starts no worker for a finished device).

For each artifact of ``RUN/manifest.json`` (or the ``--artifacts`` subset), the ids are ``Splits.collected_ids``: a
target artifact is queried on ``target_in ∪ target_out`` and the attacker's ``population`` (when the run has one), a
reference (shadow) artifact on its own ``shadow_in_k ∪ shadow_out_k``, the target candidates (shadow models are the
attacker's reference models for RMIA / LiRA) and the population, each id once (online references overlap the
candidates). Hold-outs (``target_val``, ``shadow_val_k``) are not queried for their own sake. An artifact is done
when both its files exist, the provenance's sha256 equals the manifest's and the outputs have the manifest's shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.collect.guard import bad_outputs
from harness.collect.perturb import Perturbation, perturbed_ids, resolve_perturbation
from harness.errors import HarnessError
from rundir import ArtifactRecord, ContractError, OutputBatch, RunDir, Splits, load_json
from rundir.layout import MAX_PROVENANCE_BYTES


def _provenance_of(rec: ArtifactRecord, npz: Path, prov: Path) -> dict[str, Any] | None:
    """The provenance of stored outputs when both files exist and it names ``rec``'s sha256, else None."""
    if not (npz.is_file() and prov.is_file()):
        return None
    try:
        meta = load_json(prov, MAX_PROVENANCE_BYTES)
        return meta if meta.get("artifact", {}).get("sha256") == rec.sha256 else None
    except (ContractError, AttributeError):
        return None


def output_done(run: RunDir, device_id: str, rec: ArtifactRecord, ids: np.ndarray, n_labels: int = 0) -> bool:
    """The artifact's outputs exist, match its sha256, cover exactly ``ids`` and have the manifest's shape
    (:func:`bad_outputs`; outputs stored by an older release without that check are redone)."""
    npz = run.output_npz(device_id, rec.id)
    if _provenance_of(rec, npz, run.output_provenance(device_id, rec.id)) is None:
        return False
    try:
        batch = OutputBatch.load(npz)
    except ContractError:
        return False
    if bad_outputs(rec, batch.values, len(ids), n_labels) is not None or batch.kind != rec.output_kind:
        return False
    return len(batch.index) == len(ids) and bool(np.array_equal(np.sort(batch.index), np.sort(ids)))


def perturbed_done(run: RunDir, device_id: str, rec: ArtifactRecord, ids: np.ndarray, p: Perturbation) -> bool:
    """The artifact's perturbed outputs exist for its sha256, these settings and exactly ``ids``."""
    npz = run.perturbed_npz(device_id, rec.id)
    meta = _provenance_of(rec, npz, run.perturbed_provenance(device_id, rec.id))
    got = meta.get("perturbation") if meta is not None else None
    if not isinstance(got, dict) or (got.get("count"), got.get("epsilon"), got.get("seed")) != (
            p.count, p.epsilon, p.seed):
        return False
    try:
        with np.load(npz, allow_pickle=False) as z:
            index, values = z["index"], z[rec.output_kind]
    except (OSError, KeyError, ValueError):
        return False
    if values.ndim != 3 or values.shape[:2] != (len(ids), p.count) or not np.array_equal(index, ids):
        return False
    return bad_outputs(rec, values.reshape(-1, values.shape[-1]), len(ids) * p.count) is None


@dataclass
class CollectPlan:
    """The artifacts a collect on ``device_id`` covers and which of them still need outputs.

    Attributes:
        records: the artifacts asked for, in manifest order.
        ids_of: artifact id -> int64 [M], the example ids it is queried on (``Splits.collected_ids``).
        todo: the artifacts whose plain outputs are missing, stale or malformed.
        perturbation: SAMIA's settings (None: no perturbed queries).
        perturb_ids: artifact id -> int64 ids of its perturbed queries (target / shadow 0 only).
        perturb_todo: the artifacts whose perturbed outputs are missing or stale.
    """

    run: RunDir
    device_id: str
    splits: Splits
    records: list[ArtifactRecord]
    ids_of: dict[str, np.ndarray]
    todo: list[ArtifactRecord]
    perturbation: Perturbation | None
    perturb_ids: dict[str, np.ndarray]
    perturb_todo: list[ArtifactRecord]

    @classmethod
    def make(cls, run: RunDir, device_id: str, artifacts: Sequence[str] | None = None,
             perturbations: int | None = None) -> "CollectPlan":
        """Read the run's manifest and splits and the device's outputs (nothing is written). ``artifacts``: ids
        (user input, checked against the manifest); ``perturbations`` overrides ``[attack] samia_perturbations``."""
        manifest = run.load_manifest()
        splits = run.load_splits()
        records = list(manifest.artifacts)
        if artifacts:  # user input: checked names that the manifest holds, nothing else
            try:
                records = manifest.select(artifacts, run.manifest)
            except ContractError as exc:
                raise HarnessError(str(exc)) from None
        ids_of = {}
        for rec in records:
            if rec.role == "shadow" and (rec.shadow or 0) >= splits.n_shadows:
                raise ContractError(
                    f"{run.manifest}: {rec.id} is shadow {rec.shadow} but splits.npz has {splits.n_shadows}")
            ids_of[rec.id] = splits.collected_ids(rec.role, rec.shadow)
        todo = [r for r in records if not output_done(run, device_id, r, ids_of[r.id], splits.n_classes)]
        perturbation = resolve_perturbation(run, perturbations)
        perturb_ids: dict[str, np.ndarray] = {}
        if perturbation is not None:
            perturb_ids = {r.id: i for r in records if (i := perturbed_ids(splits, r)) is not None}
        perturb_todo = [r for r in records if r.id in perturb_ids and perturbation is not None
                        and not perturbed_done(run, device_id, r, perturb_ids[r.id], perturbation)]
        return cls(run, device_id, splits, records, ids_of, todo, perturbation, perturb_ids, perturb_todo)

    @property
    def pending(self) -> bool:
        return bool(self.todo or self.perturb_todo)

    @property
    def order(self) -> list[ArtifactRecord]:
        """The artifacts with work left, each once: its plain then its perturbed queries run back to back, so the
        runner loads it once."""
        return list({r.id: r for r in [*self.todo, *self.perturb_todo]}.values())

    def needed_ids(self) -> np.ndarray:
        """int64: every example id some query of this collect needs (with repeats)."""
        return np.concatenate([self.ids_of[r.id] for r in self.todo]
                              + [self.perturb_ids[r.id] for r in self.perturb_todo])

    def n_queries(self) -> int:
        """Queries the device answers in this collect (perturbed copies counted one by one)."""
        copies = self.perturbation.count if self.perturbation is not None else 0
        return int(sum(len(self.ids_of[r.id]) for r in self.todo)
                   + sum(len(self.perturb_ids[r.id]) for r in self.perturb_todo) * copies)


def collect_pending(run: RunDir | str, device_id: str, artifacts: Sequence[str] | None = None) -> bool:
    """True when ``collect_run`` on ``device_id`` (canonical id) would collect anything for ``artifacts``
    (default all): the same plan, read-only. The audit's fan-out starts no worker for a device that is done.
    A run it cannot read counts as pending (the collect itself then reports the problem)."""
    try:
        rd = run if isinstance(run, RunDir) else RunDir(run)
        return CollectPlan.make(rd, device_id, artifacts).pending
    except (ContractError, HarnessError, OSError, ValueError):
        return True
