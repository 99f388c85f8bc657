"""The collect stage: run every artifact of a run on one device and store the raw outputs.

For each artifact of ``RUN/manifest.json`` (or the ``--artifacts`` subset): a target artifact is queried on
``target_in ∪ target_out``, a shadow artifact on its own ``shadow_in_k ∪ shadow_out_k`` and on the target candidates
(``Splits.collected_ids``: shadow models are the attacker's reference models for RMIA / LiRA).
Query inputs are ``RUN/queries.npz`` (``index`` int64 [M], ``x`` float32 [M, H, W, C]) when the run carries one
(imported runs), else rebuilt from the dataset and ``experiment.toml``'s preprocessing (``harness.data``).

Outputs: ``outputs/<device>/<artifact>.npz`` (``index`` + ``logits``/``probs``) and ``<artifact>.json``
(provenance), both written atomically, the ``.json`` last.

Resumability: an artifact is done when both files exist and the provenance's sha256 equals the manifest's; a rerun
skips it. Within an artifact, queries go to the device in chunks of ``chunk_size`` (default 32768: one device
invocation for typical runs, a few for very large query sets); each finished chunk is stored atomically under
``outputs/<device>/.partial/<artifact>/<sha256[:16]>/<start>-<stop>.npz`` (+ ``.json``), reused on rerun, and
deleted once the artifact's final files are written. A device failure raises a one-line DeviceError; everything
finished stays on disk.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Sequence

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
from harness.errors import HarnessError

DEFAULT_CHUNK = 32768


# --------------------------------------------------------------------------- query inputs


class QueryInputs:
    """Model inputs for example ids of one run, float32 [M, H, W, C] (NHWC), from ``queries.npz`` or the dataset."""

    def __init__(self, run: RunDir, needed: np.ndarray) -> None:
        self.source: str
        queries = run.root / "queries.npz"
        needed = np.unique(np.asarray(needed, dtype=np.int64))
        if queries.is_file():
            try:
                with np.load(queries, allow_pickle=False) as z:
                    index, x = z["index"].astype(np.int64), z["x"]
            except (OSError, KeyError, ValueError) as exc:
                raise ContractError(f"{queries}: needs arrays 'index' and 'x' ({exc})") from None
            if x.ndim != 4 or len(x) != len(index):
                raise ContractError(f"{queries}: x must be float32 [M, H, W, C] with one row per index entry")
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

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Inputs for ``ids`` in that order, float32 [len(ids), H, W, C] (``self.ids`` is sorted and unique)."""
        pos = np.searchsorted(self.ids, ids)
        if len(pos) and pos[-1] - pos[0] == len(pos) - 1 and np.all(np.diff(pos) == 1):
            return self.x[pos[0] : pos[-1] + 1]  # a contiguous run of ids: a view, no copy
        return self.x[pos]


# --------------------------------------------------------------------------- helpers


def _done(run: RunDir, device_id: str, rec: ArtifactRecord, ids: np.ndarray) -> bool:
    """The artifact's outputs exist, match its sha256 and cover exactly ``ids``."""
    npz, prov = run.output_npz(device_id, rec.id), run.output_provenance(device_id, rec.id)
    if not (npz.is_file() and prov.is_file()):
        return False
    try:
        meta = json.loads(prov.read_text())
        if meta.get("artifact", {}).get("sha256") != rec.sha256:
            return False
        batch = OutputBatch.load(npz)
    except (OSError, json.JSONDecodeError, ContractError):
        return False
    return len(batch.index) == len(ids) and bool(np.array_equal(np.sort(batch.index), np.sort(ids)))


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _load_chunk(path: Path, ids: np.ndarray) -> tuple[np.ndarray, dict[str, Any]] | None:
    """A stored chunk if it is complete and for exactly ``ids`` (else None: it is recomputed)."""
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            index, values = z["index"], z["values"]
        meta = json.loads(meta_path.read_text())
    except (OSError, KeyError, ValueError):
        return None
    if not np.array_equal(index, ids) or len(values) != len(ids):
        return None
    return values.astype(np.float32), meta


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
    """
    from devices.runner_server import RunnerServerPool
    from devices.runners import choose_runner
    from devices.uri import connect, parse_device_uri

    console = console or Console()
    if batch_size < 1 or chunk_size < 1:
        raise HarnessError(f"--batch-size must be >= 1 (got {batch_size}) and chunk size >= 1 (got {chunk_size})")
    rd = RunDir(run)
    if not rd.root.is_dir():
        raise HarnessError(f"{rd.root}: run directory not found; create it with `compleak build` or `compleak import`")
    manifest = rd.load_manifest()
    splits: Splits = rd.load_splits()
    records = list(manifest.artifacts)
    if artifacts:
        known = {a.id for a in records}
        unknown = [a for a in artifacts if a not in known]
        if unknown:
            raise HarnessError(f"{rd.manifest}: no artifact {unknown[0]!r}; available: {', '.join(sorted(known))}")
        records = [a for a in records if a.id in set(artifacts)]
    if not records:
        raise HarnessError(f"{rd.manifest}: no artifacts to collect; run `compleak build` first")
    ids_of = {}
    for rec in records:
        if rec.role == "shadow" and (rec.shadow or 0) >= splits.n_shadows:
            raise ContractError(f"{rd.manifest}: {rec.id} is shadow {rec.shadow} but splits.npz has {splits.n_shadows}")
        ids_of[rec.id] = splits.collected_ids(rec.role, rec.shadow)

    device_id = parse_device_uri(device).canonical  # == the connected device's id, so finished work is known first
    written: dict[str, Path] = {}
    todo = [r for r in records if not _done(rd, device_id, r, ids_of[r.id])]
    for rec in records:
        if rec not in todo:
            written[rec.id] = rd.output_npz(device_id, rec.id)
    if not todo:
        console.print(f"[green]all {len(records)} artifact(s) already collected on {device_id}[/]")
        return written
    console.print(f"collecting {len(todo)} artifact(s) on [bold]{device_id}[/] "
                  f"({len(records) - len(todo)} already done)")
    with ExitStack() as stack:
        # the query inputs are prepared on a thread while the device connects, is probed and starts its runner
        executor = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="compleak-inputs"))
        pending_inputs = executor.submit(QueryInputs, rd, np.concatenate([ids_of[r.id] for r in todo]))
        dev = stack.enter_context(connect(device, identity=identity, known_hosts=known_hosts,
                                          trust_new_host=trust_new_host, binaries=binaries, password_env=password_env,
                                          workspace=workspace, log=console.print))
        pool = stack.enter_context(RunnerServerPool(dev))
        if dev.can_spawn:  # the runner's start-up (interpreter, runtime imports) overlaps with the probe
            pool.start_default(preload=sorted({r.format for r in todo}))
        props = dev.properties()
        if dev.can_spawn and props.extra.get("python_cmd"):
            pool.adopt_default(props.extra["python_cmd"])  # the probe's name for that same interpreter
        inputs = pending_inputs.result()
        total = int(sum(len(ids_of[r.id]) for r in todo))
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("queries"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
        ) as progress:
            overall = progress.add_task(f"{device_id}", total=total)
            for rec in todo:
                runner = choose_runner(dev, rec, binaries, props=props, batch_size=batch_size, pool=pool)
                written[rec.id] = _collect_one(rd, dev, runner, props, rec, ids_of[rec.id], inputs, batch_size,
                                               chunk_size, progress, overall)
        console.print(f"outputs of {len(records)} artifact(s) on {device_id}: {rd.outputs_dir(device_id)}")
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
) -> Path:
    device_id = dev.id
    artifact_file = rd.artifact_path(rec)
    if not artifact_file.is_file():
        raise HarnessError(f"{artifact_file}: artifact file of {rec.id} is missing; rerun `compleak build`")
    actual = sha256_file(artifact_file)
    if actual != rec.sha256:
        raise HarnessError(
            f"{artifact_file}: sha256 {actual[:12]}… does not match the manifest ({rec.sha256[:12]}…); "
            f"the file changed "
            f"after it was built: rebuild with `compleak build --force` or restore it"
        )
    partial = rd.outputs_dir(device_id) / ".partial" / rec.id / rec.sha256[:16]
    spans = _chunks(len(ids), chunk_size)
    stored: dict[tuple[int, int], tuple[np.ndarray, dict[str, Any]]] = {}
    for a, b in spans:
        got = _load_chunk(partial / f"{a}-{b}.npz", ids[a:b])
        if got is not None:
            stored[(a, b)] = got
            progress.advance(overall, b - a)
    task = progress.add_task(f"  {rec.id}", total=len(ids), completed=sum(b - a for a, b in stored))
    missing = [s for s in spans if s not in stored]
    if missing:
        with runner.session(dev, artifact_file, rec) as infer:
            for a, b in missing:
                values, meta = infer(inputs.rows(ids[a:b]))
                atomic_save_npz(partial / f"{a}-{b}.npz", index=ids[a:b], values=values)
                atomic_write_json(partial / f"{a}-{b}.json", meta)
                stored[(a, b)] = (values, meta)
                progress.advance(task, b - a)
                progress.advance(overall, b - a)
    values = np.concatenate([stored[s][0] for s in spans]) if spans else np.zeros((0, 0), np.float32)
    metas = [stored[s][1] for s in spans]
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
    shutil.rmtree(partial.parent, ignore_errors=True)
    try:
        partial.parent.parent.rmdir()  # .partial/ when empty
    except OSError:
        pass
    progress.update(task, description=f"  [green]✓[/] {rec.id}")
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
        "compat_notes": first.get("compat_notes", []),
        "started": metas[0].get("started") if metas else None,
        "finished": metas[-1].get("finished") if metas else None,
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
    }
