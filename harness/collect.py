"""The collect stage: run every artifact of a run on one device and store the raw outputs.

For each artifact of ``RUN/manifest.json`` (or the ``--artifacts`` subset), the ids are ``Splits.collected_ids``:
a target artifact is queried on ``target_in ∪ target_out`` and the attacker's ``population`` (when the run has one),
a reference (shadow) artifact on its own ``shadow_in_k ∪ shadow_out_k``, the target candidates (shadow models are
the attacker's reference models for RMIA / LiRA) and the population, each id once (online references overlap the
candidates). Hold-outs (``target_val``, ``shadow_val_k``) are not queried for their own sake.
Query inputs are ``RUN/queries.npz`` (``index`` int64 [M], ``x`` float32 [M, H, W, C]) when the run carries one
(imported runs), else rebuilt from the dataset and ``experiment.toml``'s preprocessing (``harness.data``).

Where those inputs are exactly raw uint8 pixels under an affine preprocessing (a uint8 dataset, no resize; checked
bit for bit), a runner that lists the ``dataset`` op gets them once per runner process as uint8 and each chunk names
its rows (``DatasetRows``; docs/devices.md, "Runner protocol"); otherwise, and for SAMIA's perturbed queries, the
chunks carry float32 queries. The outputs are the same either way; the provenance says which (``query_transport``)
and what the host sent (``bytes_sent``).

Outputs: ``outputs/<device>/<artifact>.npz`` (``index`` + ``logits``/``probs``) and ``<artifact>.json``
(provenance), both written atomically, the ``.json`` last.

Resumability: an artifact is done when both files exist and the provenance's sha256 equals the manifest's; a rerun
skips it. Within an artifact, queries go to the device in chunks of ``chunk_size`` (default 32768: one device
invocation for typical runs, a few for very large query sets); each finished chunk is stored atomically under
``outputs/<device>/.partial/<artifact>/<sha256[:16]>/<start>-<stop>.npz`` (+ ``.json``), reused on rerun, and
deleted once the artifact's final files are written. A device failure raises a one-line DeviceError; everything
finished stays on disk.

Perturbed queries (SAMIA, ``[attack] samia_perturbations = P`` > 0 or ``compleak collect --perturbations P``): every
target artifact on the target candidates and every artifact of shadow 0 on that shadow's own members/non-members
(:func:`perturbed_ids`) is also queried on ``P`` Gaussian copies of each example (:func:`perturbed_inputs`: std
``samia_epsilon`` in preprocessed input units, a deterministic function of the example's input, its id,
``[attack] seed``, epsilon and P), through the same device connection and runner process as the plain queries, in
resumable chunks of ``chunk_size // P`` examples under ``.partial/<artifact>.perturbed/``. Output:
``outputs/<device>/<artifact>.perturbed.npz`` (``index`` int64 [M], ``logits``/``probs`` float32 [M, P, C],
``epsilon`` float64 scalar, ``seed`` int64 scalar) and ``<artifact>.perturbed.json`` (provenance with a
``perturbation`` entry); it is redone when the artifact, P, epsilon or the seed changes.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from compleak.rundir import (
    ArtifactRecord,
    ContractError,
    OutputBatch,
    RunDir,
    Splits,
    atomic_save_npz,
    atomic_write_json,
    sha256_file,
)
from devices.runner_server import DEFAULT_START_TIMEOUT_S
from harness.collect_guard import CollectLock, bad_outputs, check_input_shape, load_queries, refuse_bad_outputs
from harness.errors import HarnessError, esc, literal_log

DEFAULT_CHUNK = 32768
PERTURBED = ".perturbed"  # outputs/<device>/<artifact>.perturbed.npz / .json
_NOISE_STREAM = 0x5A311A  # separates the perturbation noise from any other stream seeded by [attack] seed


# --------------------------------------------------------------------------- query inputs


class QueryInputs:
    """Model inputs for example ids of one run, float32 [M, H, W, C] (NHWC), from ``queries.npz`` or the dataset.

    ``dataset`` (a :class:`~devices.runner_server.DeviceDataset`, or None) holds the same inputs as raw uint8 pixels
    plus the affine preprocessing, when they are exactly that (a uint8 dataset, no resize, and the runner's float32
    arithmetic checked bit for bit against ``x`` here); ``device_dataset=False`` never makes one."""

    def __init__(self, run: RunDir, needed: np.ndarray, device_dataset: bool = True) -> None:
        self.source: str
        self.dataset: Any = None
        queries = run.root / "queries.npz"
        needed = np.unique(np.asarray(needed, dtype=np.int64))
        if queries.is_file():
            index, x = load_queries(queries)
            order = np.argsort(index, kind="stable")
            where = np.searchsorted(index, needed, sorter=order)
            where = np.minimum(where, len(index) - 1) if len(index) else where
            found = order[where] if len(index) else np.zeros(0, np.int64)
            ok = index[found] == needed if len(index) else np.zeros(len(needed), bool)
            if not ok.all():
                missing = needed[~ok]
                raise ContractError(
                    f"{queries}: {len(missing)} queried example ids missing (e.g. {missing[:3].tolist()})"
                )
            self.ids = needed
            same = len(found) == len(x) and np.array_equal(found, np.arange(len(x)))
            self.x = np.ascontiguousarray(x if same else x[found], dtype=np.float32)
            self.source = str(queries)
        else:
            from harness.config import load_experiment
            from harness.data import load_dataset, query_inputs

            if not run.experiment.is_file():
                raise HarnessError(
                    f"{run.root}: neither queries.npz nor experiment.toml; the run cannot rebuild its query inputs"
                )
            exp = load_experiment(run.experiment)
            data_dir = Path(exp.data.data_dir) if exp.data.data_dir else None
            ds = load_dataset(exp.data.dataset, data_dir=data_dir, download=exp.data.download)
            self.ids = needed
            self.x = query_inputs(ds, exp.data.preprocess, needed)
            self.source = f"{exp.data.dataset} + {run.experiment.name} [data.preprocess]"
            if device_dataset:
                self.dataset = _device_dataset(ds.x, exp.data.preprocess, needed, self.x)

    def for_runner(self, runner: Any, ids: np.ndarray) -> Any:
        """The queries of ``ids`` as ``runner``'s session takes them: rows of :attr:`dataset` (``DatasetRows``)
        when there is one and the runner takes rows (``accepts_dataset_rows``), else float32 [len(ids), H, W, C]."""
        if self.dataset is None or not getattr(runner, "accepts_dataset_rows", False):
            return self.rows(ids)
        from devices.runner_server import DatasetRows

        return DatasetRows(self.dataset, np.searchsorted(self.ids, ids))

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Inputs for ``ids`` in that order, float32 [len(ids), H, W, C] (``self.ids`` is sorted and unique)."""
        pos = np.searchsorted(self.ids, ids)
        if len(pos) and pos[-1] - pos[0] == len(pos) - 1 and np.all(np.diff(pos) == 1):
            return self.x[pos[0] : pos[-1] + 1]  # a contiguous run of ids: a view, no copy
        return self.x[pos]


def _device_dataset(raw_all: np.ndarray, pre: Any, ids: np.ndarray, x: np.ndarray) -> Any:
    """A :class:`~devices.runner_server.DeviceDataset` of the raw rows ``raw_all[ids]`` when ``x`` (the host's
    float32 queries of ``ids``) is exactly their affine preprocessing in the runner's arithmetic (checked bit for
    bit, in blocks), else None: float datasets, a resize, anything else keeps the float32 path."""
    from devices.runner_server import MAX_DATASET_BYTES, DeviceDataset

    if raw_all.dtype != np.uint8 or raw_all.ndim != 4 or x.shape != (len(ids), *raw_all.shape[1:]):
        return None
    if pre.resize is not None and tuple(pre.resize) != tuple(raw_all.shape[1:3]):
        return None
    if len(ids) * int(np.prod(raw_all.shape[1:])) > MAX_DATASET_BYTES:
        return None
    tup = lambda v: None if v is None else tuple(float(a) for a in v)  # noqa: E731
    ds = DeviceDataset(raw_all[ids], float(pre.scale), tup(pre.mean), tup(pre.std))
    for a in range(0, len(ids), 4096):
        b = min(a + 4096, len(ids))
        mine = ds.inputs(np.arange(a, b))
        if mine.shape != x[a:b].shape or not np.array_equal(mine.view(np.uint32), x[a:b].view(np.uint32)):
            return None
    return ds


# --------------------------------------------------------------------------- helpers


def _done(run: RunDir, device_id: str, rec: ArtifactRecord, ids: np.ndarray, n_labels: int = 0) -> bool:
    """The artifact's outputs exist, match its sha256, cover exactly ``ids`` and have the manifest's shape
    (:func:`bad_outputs`; outputs stored by an older release without that check are redone)."""
    npz, prov = run.output_npz(device_id, rec.id), run.output_provenance(device_id, rec.id)
    if not (npz.is_file() and prov.is_file()):
        return False
    try:
        meta = json.loads(prov.read_text())
        if meta.get("artifact", {}).get("sha256") != rec.sha256:
            return False
        batch = OutputBatch.load(npz)
    except (OSError, json.JSONDecodeError, ContractError, AttributeError):
        return False
    if bad_outputs(rec, batch.values, len(ids), n_labels) is not None or batch.kind != rec.output_kind:
        return False
    return len(batch.index) == len(ids) and bool(np.array_equal(np.sort(batch.index), np.sort(ids)))


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _load_chunk(path: Path, ids: np.ndarray, rec: ArtifactRecord | None = None, n_labels: int = 0, copies: int = 1
                ) -> tuple[np.ndarray, dict[str, Any]] | None:
    """A stored chunk if it is complete, for exactly ``ids`` and (given ``rec``) of the manifest's output shape:
    [len(ids), C], or [len(ids), copies, C] for ``copies`` > 1 perturbed copies (else None: it is recomputed)."""
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            index, values = z["index"], z["values"]
        meta = json.loads(meta_path.read_text())
    except (OSError, KeyError, ValueError, MemoryError, zipfile.BadZipFile):
        return None
    if not np.array_equal(index, ids) or len(values) != len(ids) or not isinstance(meta, dict):
        return None
    if copies > 1 and (values.ndim != 3 or values.shape[1] != copies):
        return None
    flat = values.reshape(-1, values.shape[-1]) if copies > 1 else values
    if rec is not None and bad_outputs(rec, flat, len(ids) * copies, n_labels) is not None:
        return None
    return values.astype(np.float32), meta


def _verified_artifact(rd: RunDir, rec: ArtifactRecord) -> Path:
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


def _drop_partial(partial: Path) -> None:
    """Remove a finished artifact's stored chunks (``.partial/<artifact>/``), and ``.partial/`` when left empty."""
    shutil.rmtree(partial.parent, ignore_errors=True)
    try:
        partial.parent.parent.rmdir()
    except OSError:
        pass


def _query_chunks(
    dev: Any,
    runner: Any,
    rec: ArtifactRecord,
    artifact_file: Path,
    ids: np.ndarray,
    spans: list[tuple[int, int]],
    partial: Path,
    queries: Callable[[int, int], np.ndarray],
    copies: int,
    label: str,
    progress: Progress,
    overall: Any,
    n_labels: int,
) -> tuple[np.ndarray, list[dict[str, Any]], Any]:
    """Query ``rec`` chunk by chunk, resumably: every span of ``spans`` (positions into ``ids``) already stored under
    ``partial`` is reused; the rest is inferred through one runner session and stored as it arrives.

    ``queries(a, b)`` gives the float32 inputs of ``ids[a:b]``, ``copies`` rows per example (perturbed copies in
    order). Returns the values, float32 [len(ids), C] (``copies`` == 1) or [len(ids), copies, C], the per-chunk
    runner metadata in span order, and the progress task. Outputs that disagree with the manifest are refused before
    anything of them is stored.
    """
    stored: dict[tuple[int, int], tuple[np.ndarray, dict[str, Any]]] = {}
    for a, b in spans:
        got = _load_chunk(partial / f"{a}-{b}.npz", ids[a:b], rec, n_labels, copies)
        if got is not None:
            stored[(a, b)] = got
            progress.advance(overall, (b - a) * copies)
    task = progress.add_task(label, total=len(ids) * copies, completed=sum(b - a for a, b in stored) * copies)
    missing = [s for s in spans if s not in stored]
    if missing:
        with runner.session(dev, artifact_file, rec) as infer:
            for a, b in missing:
                values, meta = infer(queries(a, b))
                refuse_bad_outputs(rec, values, (b - a) * copies, n_labels, dev.id)  # nothing stored
                if copies > 1:
                    values = np.asarray(values, np.float32).reshape(b - a, copies, -1)
                atomic_save_npz(partial / f"{a}-{b}.npz", index=ids[a:b], values=values)
                atomic_write_json(partial / f"{a}-{b}.json", meta)
                stored[(a, b)] = (values, meta)
                progress.advance(task, (b - a) * copies)
                progress.advance(overall, (b - a) * copies)
    values = np.concatenate([stored[s][0] for s in spans]) if spans else np.zeros((0, 0), np.float32)
    return values, [stored[s][1] for s in spans], task


# --------------------------------------------------------------------------- perturbed queries (SAMIA)


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
    return rd.outputs_dir(device_id) / f"{artifact_id}{PERTURBED}.npz"


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


def _perturbed_done(rd: RunDir, device_id: str, rec: ArtifactRecord, ids: np.ndarray, p: Perturbation) -> bool:
    """The artifact's perturbed outputs exist for its sha256, these settings and exactly ``ids``."""
    npz = perturbed_npz(rd, device_id, rec.id)
    prov = npz.with_suffix(".json")
    if not (npz.is_file() and prov.is_file()):
        return False
    try:
        meta = json.loads(prov.read_text())
        if meta.get("artifact", {}).get("sha256") != rec.sha256:
            return False
        got = meta.get("perturbation", {})
        if (got.get("count"), got.get("epsilon"), got.get("seed")) != (p.count, p.epsilon, p.seed):
            return False
        with np.load(npz, allow_pickle=False) as z:
            index, values = z["index"], z[rec.output_kind]
    except (OSError, json.JSONDecodeError, KeyError, ValueError, AttributeError):
        return False
    if values.ndim != 3 or values.shape[:2] != (len(ids), p.count) or not np.array_equal(index, ids):
        return False
    return bad_outputs(rec, values.reshape(-1, values.shape[-1]), len(ids) * p.count) is None


def _collect_perturbed(
    rd: RunDir,
    dev: Any,
    runner: Any,
    props: Any,
    rec: ArtifactRecord,
    ids: np.ndarray,
    inputs: QueryInputs,
    p: Perturbation,
    batch_size: int,
    chunk_size: int,
    progress: Progress,
    overall: Any,
    n_labels: int = 0,
) -> Path:
    """Query ``rec`` on ``p.count`` perturbed copies of each of ``ids`` through ``runner`` on ``dev``; write
    ``<artifact>.perturbed.npz`` + ``.json``. Resumable per chunk of ``chunk_size // p.count`` examples."""
    device_id = dev.id
    artifact_file = _verified_artifact(rd, rec)
    key = f"{rec.sha256[:16]}-p{p.count}-e{p.epsilon:g}-s{p.seed}"
    partial = rd.outputs_dir(device_id) / ".partial" / f"{rec.id}{PERTURBED}" / key
    spans = _chunks(len(ids), max(1, chunk_size // p.count))

    def queries(a: int, b: int) -> np.ndarray:
        chunk = perturbed_inputs(inputs.rows(ids[a:b]), ids[a:b], p)
        return chunk.reshape(-1, *chunk.shape[2:])

    values, metas, task = _query_chunks(dev, runner, rec, artifact_file, ids, spans, partial, queries, p.count,
                                        f"  {esc(rec.id)} ×{p.count} perturbed", progress, overall, n_labels)
    npz = perturbed_npz(rd, device_id, rec.id)
    atomic_save_npz(npz, index=ids.astype(np.int64), **{rec.output_kind: values.astype(np.float32)},
                    epsilon=np.float64(p.epsilon), seed=np.int64(p.seed))
    prov = _provenance(rec, dev, props, metas, spans, batch_size, max(1, chunk_size // p.count), inputs)
    prov["n_queries"] = int(len(ids) * p.count)
    which = "target candidates" if rec.role == "target" else "shadow 0 members, non-members"
    prov["perturbation"] = {**p.to_dict(), "n_examples": int(len(ids)), "examples": which}
    atomic_write_json(npz.with_suffix(".json"), prov)
    _drop_partial(partial)
    progress.update(task, description=f"  [green]✓[/] {esc(rec.id)} ×{p.count} perturbed")
    return npz


# --------------------------------------------------------------------------- the stage


def collect_run(
    run: Path | str,
    device: str = "local",
    artifacts: Sequence[str] | None = None,
    identity: Path | str | None = None,
    known_hosts: Path | str | None = None,
    trust_new_host: bool = False,
    binaries: Path | str | None = None,
    batch_size: int = 512,
    console: Console | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    password_env: str | None = None,
    workspace: str | None = None,
    perturbations: int | None = None,
    start_timeout: float = DEFAULT_START_TIMEOUT_S,
    device_dataset: bool = True,
    runner: str = "auto",
    bundle: Path | str | None = None,
) -> dict[str, Path]:
    """Collect the outputs of the run's artifacts on ``device``; return {artifact id: outputs npz}.

    Args:
        run: run directory (needs manifest.json, splits.npz, artifacts/, and experiment.toml or queries.npz).
        device: device URI (``local``, ``ssh://user@host:port``, ``adb://SERIAL``, ``emulator://AVD``).
        artifacts: artifact ids to collect (default: all in the manifest).
        identity / known_hosts / trust_new_host / password_env: ssh options (see ``devices.uri.connect``).
        binaries: folder with benchmark_model / executor_runner (adb devices).
        batch_size: examples per runtime invocation on the device.
        chunk_size: examples per device round trip; the unit of resumption.
        perturbations: SAMIA's perturbed copies per example (overrides ``[attack] samia_perturbations``; 0: none).
        start_timeout: seconds the device's runner may take to start (``--start-timeout``); then one line.
        device_dataset: send uint8 query inputs once per runner process and name rows per chunk, where the inputs
            are raw uint8 pixels under an affine preprocessing and the runner lists the ``dataset`` op (False:
            always float32 queries; the outputs are the same).
        runner: ``auto`` (the device's Python runner where it has a usable Python, else the native
            ``compleak-runner``), ``python`` or ``native`` (``collect --runner``); bundle: a native runner bundle
            folder instead of the one ``compleak runners build`` made (``--bundle``).

    One collect per (run, device) at a time: a second one fails at once naming the holder (:class:`CollectLock`).
    """
    from devices.runner_server import RunnerServerPool
    from devices.runners import choose_runner
    from devices.uri import connect, parse_device_uri

    console = console or Console()
    if batch_size < 1 or chunk_size < 1:
        raise HarnessError(f"--batch-size must be >= 1 (got {batch_size}) and chunk size >= 1 (got {chunk_size})")
    if not 0 < start_timeout <= 3600:
        raise HarnessError(f"--start-timeout must be in (0, 3600] seconds, got {start_timeout}")
    rd = RunDir(run)
    if not rd.root.is_dir():
        raise HarnessError(f"{rd.root}: run directory not found; create it with `compleak build` or `compleak import`")
    rd.require_writable("collect", "outputs")
    manifest = rd.load_manifest()
    splits: Splits = rd.load_splits()
    records = list(manifest.artifacts)
    if artifacts:  # user input: checked names that the manifest holds, nothing else
        try:
            records = manifest.select(artifacts, rd.manifest)
        except ContractError as exc:
            raise HarnessError(str(exc)) from None
    if not records:
        raise HarnessError(f"{rd.manifest}: no artifacts to collect; run `compleak build` first")
    ids_of = {}
    for rec in records:
        if rec.role == "shadow" and (rec.shadow or 0) >= splits.n_shadows:
            raise ContractError(f"{rd.manifest}: {rec.id} is shadow {rec.shadow} but splits.npz has {splits.n_shadows}")
        ids_of[rec.id] = splits.collected_ids(rec.role, rec.shadow)

    device_id = parse_device_uri(device).canonical  # == the connected device's id, so finished work is known first
    written: dict[str, Path] = {}
    todo = [r for r in records if not _done(rd, device_id, r, ids_of[r.id], splits.n_classes)]
    for rec in records:
        if rec not in todo:
            written[rec.id] = rd.output_npz(device_id, rec.id)
    perturbation = resolve_perturbation(rd, perturbations)
    perturb_ids: dict[str, np.ndarray] = {}
    if perturbation is not None:
        perturb_ids = {r.id: i for r in records if (i := perturbed_ids(splits, r)) is not None}
    perturb_todo = [r for r in records if r.id in perturb_ids and perturbation is not None
                    and not _perturbed_done(rd, device_id, r, perturb_ids[r.id], perturbation)]
    if not todo and not perturb_todo:
        console.print(f"[green]all {len(records)} artifact(s) already collected on {esc(device_id)}[/]")
        return written
    console.print(f"collecting {len(todo)} artifact(s) on [bold]{esc(device_id)}[/] "
                  f"({len(records) - len(todo)} already done)"
                  + (f", perturbed queries for {len(perturb_todo)}" if perturb_todo else ""))
    with ExitStack() as stack:
        stack.enter_context(CollectLock(rd, device_id))  # one collect per (run, device): the second fails at once
        # the query inputs are prepared on a thread while the device connects, is probed and starts its runner
        executor = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="compleak-inputs"))
        pending_inputs = executor.submit(QueryInputs, rd, np.concatenate(
            [ids_of[r.id] for r in todo] + [perturb_ids[r.id] for r in perturb_todo]), device_dataset)
        dev = stack.enter_context(connect(device, identity=identity, known_hosts=known_hosts,
                                          trust_new_host=trust_new_host, binaries=binaries, password_env=password_env,
                                          workspace=workspace, log=literal_log(console)))
        pool = stack.enter_context(RunnerServerPool(dev, start_timeout_s=start_timeout))
        if dev.can_spawn:  # the runner's start-up (interpreter, runtime imports) overlaps with the probe
            pool.start_default(preload=sorted({r.format for r in todo + perturb_todo}))
        props = dev.properties()
        if dev.can_spawn and props.extra.get("python_cmd"):
            pool.adopt_default(props.extra["python_cmd"])  # the probe's name for that same interpreter
        inputs = pending_inputs.result()
        check_input_shape(inputs, todo + perturb_todo)
        total = int(sum(len(ids_of[r.id]) for r in todo))
        n_copies = perturbation.count if perturbation is not None else 0
        total += int(sum(len(perturb_ids[r.id]) for r in perturb_todo)) * n_copies
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("queries"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
        ) as progress:
            overall = progress.add_task(esc(device_id), total=total)
            plain_ids, perturb_of = {r.id for r in todo}, {r.id for r in perturb_todo}
            order = list({r.id: r for r in [*todo, *perturb_todo]}.values())
            for rec in order:  # an artifact's plain then perturbed (SAMIA) queries: the runner loads it once
                chosen = choose_runner(dev, rec, binaries, props=props, batch_size=batch_size, pool=pool, runner=runner,
                                       bundle=bundle)
                if rec.id in plain_ids:
                    written[rec.id] = _collect_one(rd, dev, chosen, props, rec, ids_of[rec.id], inputs, batch_size,
                                                   chunk_size, progress, overall, n_labels=splits.n_classes)
                if rec.id in perturb_of:
                    assert perturbation is not None
                    _collect_perturbed(rd, dev, chosen, props, rec, perturb_ids[rec.id], inputs, perturbation,
                                       batch_size, chunk_size, progress, overall, n_labels=splits.n_classes)
        console.print(f"outputs of {len(records)} artifact(s) on {esc(device_id)}: {esc(rd.outputs_dir(device_id))}")
        sent = pool.bytes_sent()
        if any(sent.values()):
            console.print(f"host → {esc(device_id)}: {_mb(sum(sent.values()))} sent to the runner (models "
                          f"{_mb(sent['model'])}, query dataset {_mb(sent['dataset'])}, queries {_mb(sent['queries'])}"
                          f", runner source and headers {_mb(sent['runner'] + sent['headers'])})")
        return written


def _collect_one(
    rd: RunDir,
    dev: Any,
    runner: Any,
    props: Any,
    rec: ArtifactRecord,
    ids: np.ndarray,
    inputs: QueryInputs,
    batch_size: int,
    chunk_size: int,
    progress: Progress,
    overall: Any,
    n_labels: int = 0,
) -> Path:
    device_id = dev.id
    artifact_file = _verified_artifact(rd, rec)
    partial = rd.outputs_dir(device_id) / ".partial" / rec.id / rec.sha256[:16]
    spans = _chunks(len(ids), chunk_size)
    values, metas, task = _query_chunks(dev, runner, rec, artifact_file, ids, spans, partial,
                                        lambda a, b: inputs.for_runner(runner, ids[a:b]), 1, f"  {esc(rec.id)}",
                                        progress, overall, n_labels)
    batch = OutputBatch(ids.astype(np.int64), values.astype(np.float32), rec.output_kind)
    try:
        batch.validate(f"{rec.id} on {device_id}")
    except ContractError as exc:
        shutil.rmtree(partial, ignore_errors=True)  # bad device output is not kept for reuse
        raise HarnessError(str(exc)) from None
    npz = rd.output_npz(device_id, rec.id)
    batch.save(npz)
    atomic_write_json(rd.output_provenance(device_id, rec.id), _provenance(rec, dev, props, metas, spans, batch_size,
                                                                           chunk_size, inputs))
    _drop_partial(partial)
    progress.update(task, description=f"  [green]✓[/] {esc(rec.id)}")
    return npz


def _provenance(
    rec: ArtifactRecord,
    dev: Any,
    props: Any,
    metas: list[dict[str, Any]],
    spans: list[tuple[int, int]],
    batch_size: int,
    chunk_size: int,
    inputs: QueryInputs,
) -> dict[str, Any]:
    first = metas[0] if metas else {}
    device = props.to_dict() if hasattr(props, "to_dict") else dict(props)
    device["id"] = dev.id
    return {
        "artifact": {"id": rec.id, "sha256": rec.sha256, "format": rec.format, "variant": rec.variant,
                     "role": rec.role, "shadow": rec.shadow, "bytes": rec.bytes},
        "device": device,
        "runner": first.get("runner"),
        "runtime": {"name": first.get("runtime"), "version": first.get("runtime_version")},
        "delegate": first.get("delegate"),
        "threads": first.get("threads"),
        "batch_size": batch_size,
        "chunk_size": chunk_size,
        "n_queries": int(sum(b - a for a, b in spans)),
        "output_kind": rec.output_kind,
        "wall_seconds_per_batch": [s for m in metas for s in m.get("batch_seconds", [])],
        "examples_per_batch": [s for m in metas for s in m.get("batch_sizes", [])],
        "chunks": [{"start": a, "stop": b, **{k: v for k, v in m.items() if k not in ("batch_seconds", "batch_sizes")}}
                   for (a, b), m in zip(spans, metas)],
        "query_inputs": inputs.source,
        "transfer": sorted({m["transfer"] for m in metas if isinstance(m.get("transfer"), str)}),
        "query_transport": _transport(metas),
        "bytes_sent": _bytes_sent(metas),
        "compat_notes": first.get("compat_notes", []),
        "started": metas[0].get("started") if metas else None,
        "finished": metas[-1].get("finished") if metas else None,
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
    }


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _transport(metas: list[dict[str, Any]]) -> str:
    """How an artifact's queries reached the device, over its chunks: ``device dataset`` (rows named in the uint8
    dataset the runner holds), ``float32`` (the queries themselves), or ``mixed`` (a resumed collection)."""
    kinds = {"device dataset" if "query_dataset" in m else "float32" for m in metas}
    return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "none")


def _bytes_sent(metas: list[dict[str, Any]]) -> dict[str, int]:
    """Bytes the host sent the device for an artifact, summed over its chunks (resumed ones: what their session
    sent), by kind: ``model``, ``dataset`` (the share of the query dataset this artifact's session sent),
    ``queries`` (float32 rows or row numbers), ``headers``."""
    out = dict.fromkeys(("model", "dataset", "queries", "headers"), 0)
    for m in metas:
        sent = m.get("bytes_sent")
        if isinstance(sent, dict):
            for k in out:
                v = sent.get(k, 0)
                out[k] += v if type(v) is int and v >= 0 else 0
    return out


def collect_pending(run: Path | str, device_id: str, artifacts: Sequence[str] | None = None) -> bool:
    """True when :func:`collect_run` on ``device_id`` (canonical id) would collect anything for ``artifacts``
    (default all): the same resume checks, read-only. The audit's fan-out starts no worker for a device that is done.
    A run it cannot read counts as pending (the collect itself then reports the problem)."""
    try:
        rd = RunDir(run)
        splits = rd.load_splits()
        wanted = set(artifacts) if artifacts else None
        records = [r for r in rd.load_manifest().artifacts if wanted is None or r.id in wanted]
        if any(not _done(rd, device_id, r, splits.collected_ids(r.role, r.shadow), splits.n_classes) for r in records):
            return True
        perturbation = resolve_perturbation(rd, None)
        if perturbation is None:
            return False
        return any((ids := perturbed_ids(splits, r)) is not None
                   and not _perturbed_done(rd, device_id, r, ids, perturbation) for r in records)  # fmt: skip
    except (ContractError, HarnessError, OSError, ValueError):
        return True
