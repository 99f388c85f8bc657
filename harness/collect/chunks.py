"""Collect's resumable chunk loop: an artifact's queries go to the device in chunks of ``chunk_size``; each finished
chunk is stored atomically under ``outputs/<device>/.partial/<artifact>/<key>/<start>-<stop>.npz`` (+ ``.json``),
reused on a rerun, and deleted once the artifact's final files are written."""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.progress import Progress

from harness.collect.guard import bad_outputs, refuse_bad_outputs
from harness.errors import HarnessError
from rundir import ArtifactRecord, RunDir, atomic_save_npz, atomic_write_json, load_json, sha256_file
from rundir.layout import MAX_PROVENANCE_BYTES

DEFAULT_CHUNK = 32768


def spans(n: int, size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` cutting ``n`` queries into chunks of ``size``."""
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def load_chunk(path: Path, ids: np.ndarray, rec: ArtifactRecord | None = None, n_labels: int = 0, copies: int = 1
                ) -> tuple[np.ndarray, dict[str, Any]] | None:
    """A stored chunk if it is complete, for exactly ``ids`` and (given ``rec``) of the manifest's output shape:
    [len(ids), C], or [len(ids), copies, C] for ``copies`` > 1 perturbed copies (else None: it is recomputed)."""
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            index, values = z["index"], z["values"]
        meta = load_json(meta_path, MAX_PROVENANCE_BYTES)
    except (OSError, KeyError, ValueError, MemoryError, zipfile.BadZipFile):  # ContractError is a ValueError
        return None
    if not np.array_equal(index, ids) or len(values) != len(ids) or not isinstance(meta, dict):
        return None
    if copies > 1 and (values.ndim != 3 or values.shape[1] != copies):
        return None
    flat = values.reshape(-1, values.shape[-1]) if copies > 1 else values
    if rec is not None and bad_outputs(rec, flat, len(ids) * copies, n_labels) is not None:
        return None
    return values.astype(np.float32), meta


def verified_artifact(rd: RunDir, rec: ArtifactRecord) -> Path:
    """``rec``'s artifact file, after checking it is there with the manifest's sha256 (one line naming the fix)."""
    artifact_file = rd.artifact_path(rec)
    if not artifact_file.is_file():
        raise HarnessError(f"{artifact_file}: artifact file of {rec.id} is missing; rerun `compleak build`")
    actual = sha256_file(artifact_file)
    if actual != rec.sha256:
        raise HarnessError(
            f"{artifact_file}: sha256 {actual[:12]}… does not match the manifest ({rec.sha256[:12]}…); "
            f"the file changed after it was built: rebuild with `compleak build --force` or restore it"
        )
    return artifact_file


def drop_partial(partial: Path) -> None:
    """Remove a finished artifact's stored chunks (``.partial/<artifact>/``), and ``.partial/`` when left empty."""
    shutil.rmtree(partial.parent, ignore_errors=True)
    try:
        partial.parent.parent.rmdir()
    except OSError:
        pass


@dataclass(frozen=True)
class ArtifactQueries:
    """One artifact's queries on one device, in resumable chunks.

    Attributes:
        rec / artifact_file: the artifact (its file checked against the manifest's sha256).
        ids: int64 [M], the example ids queried, in order.
        spans: chunks as (start, stop) positions into ``ids``.
        partial: the folder where finished chunks are stored (``RunDir.partial_dir``).
        queries: ``queries(a, b)`` gives what the runner is sent for ``ids[a:b]``: float32 [(b-a)*copies, H, W, C]
            (perturbed copies in order) or the runner's dataset rows.
        copies: rows per example (SAMIA's perturbed copies; 1 for plain queries).
        label: the progress line's text.
    """

    rec: ArtifactRecord
    artifact_file: Path
    ids: np.ndarray
    spans: list[tuple[int, int]]
    partial: Path
    queries: Callable[[int, int], Any]
    copies: int = 1
    label: str = ""


@dataclass
class CollectProgress:
    """The collect's rich progress: one overall bar (queries on the device) and one per artifact."""

    progress: Progress
    overall: Any

    def artifact(self, label: str, total: int, completed: int) -> Any:
        return self.progress.add_task(label, total=total, completed=completed)

    def advance(self, n: int, task: Any = None) -> None:
        if task is not None:
            self.progress.advance(task, n)
        self.progress.advance(self.overall, n)

    def done(self, task: Any, label: str) -> None:
        self.progress.update(task, description=label)


def query_chunks(job: ArtifactQueries, dev: Any, runner: Any, progress: CollectProgress, n_labels: int
                 ) -> tuple[np.ndarray, list[dict[str, Any]], Any]:
    """Query ``job.rec`` chunk by chunk, resumably: every span already stored under ``job.partial`` is reused; the
    rest is inferred through one runner session and stored as it arrives.

    Returns the values, float32 [M, C] (``copies`` == 1) or [M, copies, C], the per-chunk runner metadata in span
    order, and the artifact's progress task. Outputs that disagree with the manifest are refused before anything of
    them is stored."""
    rec, ids, copies = job.rec, job.ids, job.copies
    stored: dict[tuple[int, int], tuple[np.ndarray, dict[str, Any]]] = {}
    for a, b in job.spans:
        got = load_chunk(job.partial / f"{a}-{b}.npz", ids[a:b], rec, n_labels, copies)
        if got is not None:
            stored[(a, b)] = got
            progress.advance((b - a) * copies)
    task = progress.artifact(job.label, len(ids) * copies, sum(b - a for a, b in stored) * copies)
    missing = [s for s in job.spans if s not in stored]
    if missing:
        with runner.session(dev, job.artifact_file, rec) as infer:
            for a, b in missing:
                values, meta = infer(job.queries(a, b))
                refuse_bad_outputs(rec, values, (b - a) * copies, n_labels, dev.id)  # nothing stored
                if copies > 1:
                    values = np.asarray(values, np.float32).reshape(b - a, copies, -1)
                atomic_save_npz(job.partial / f"{a}-{b}.npz", index=ids[a:b], values=values)
                atomic_write_json(job.partial / f"{a}-{b}.json", meta)
                stored[(a, b)] = (values, meta)
                progress.advance((b - a) * copies, task)
    values = np.concatenate([stored[s][0] for s in job.spans]) if job.spans else np.zeros((0, 0), np.float32)
    return values, [stored[s][1] for s in job.spans], task

