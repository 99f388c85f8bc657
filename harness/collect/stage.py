"""The collect stage: run every artifact of a run on one device and store the raw outputs.

``collect_run`` reads what is left to do (:class:`~harness.collect.plan.CollectPlan`), opens one session on the
device (:func:`device_session`: the per-(run, device) lock, the connection, the runner pool, the probe, and the
query inputs prepared on a thread meanwhile), then queries each artifact through the resumable chunk loop
(:mod:`harness.collect.chunks`), its plain then its perturbed (SAMIA, :mod:`harness.collect.perturb`) queries.

Query inputs are ``RUN/queries.npz`` when the run carries one (imported runs), else rebuilt from the dataset and
``experiment.toml``'s preprocessing (:mod:`harness.collect.queries`). Where those inputs are exactly raw uint8 pixels
under an affine preprocessing (a uint8 dataset, no resize; checked bit for bit), a runner that lists the
``dataset`` op gets them once per runner process as uint8 and each chunk names its rows (``DatasetRows``;
docs/native.md, "Runner protocol"); otherwise, and for SAMIA's perturbed queries, the chunks carry float32 queries.
The outputs are the same either way; the provenance says which (``query_transport``) and what the host sent
(``bytes_sent``).

Outputs: ``outputs/<device>/<artifact>.npz`` (``index`` + ``logits``/``probs``) and ``<artifact>.json``
(provenance, :mod:`harness.collect.provenance`), both written atomically, the ``.json`` last; perturbed ones as
``<artifact>.perturbed.npz`` (``index`` int64 [M], ``logits``/``probs`` float32 [M, P, C], ``epsilon``, ``seed``)
and ``.perturbed.json``, redone when the artifact, P, epsilon or the seed changes.

Resumability: an artifact is done when both files exist and the provenance's sha256 equals the manifest's; a rerun
skips it. Within an artifact, queries go to the device in chunks of ``chunk_size`` (default 32768: one device
invocation for typical runs, a few for very large query sets; ``chunk_size // P`` examples for perturbed queries),
each stored as it finishes and reused on a rerun. A device failure raises a one-line DeviceError; everything
finished stays on disk.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress

from devices.base import Device, DeviceProperties
from devices.errors import NoRunnerError
from devices.runners.choose import choose_runner, probe
from devices.runners.server import RunnerServerPool
from devices.spec import DeviceSpec, as_spec
from harness.collect.chunks import (
    DEFAULT_CHUNK,
    ArtifactQueries,
    CollectProgress,
    drop_partial,
    query_chunks,
    spans,
    verified_artifact,
)
from harness.collect.guard import CollectLock, check_input_shape
from harness.collect.perturb import Perturbation, perturbed_inputs
from harness.collect.plan import CollectPlan, collect_pending
from harness.collect.provenance import mb, provenance
from harness.collect.queries import QueryInputs
from harness.errors import HarnessError, esc, literal_log
from harness.progress import stage_progress
from rundir import ArtifactRecord, ContractError, OutputBatch, RunDir, atomic_save_npz, atomic_write_json

__all__ = ["DEFAULT_CHUNK", "collect_pending", "collect_run"]


@dataclass
class DeviceSession:
    """An open collect session on one device: the connection, its runner pool, its probed facts and the query
    inputs."""

    dev: Device
    pool: RunnerServerPool
    props: DeviceProperties
    inputs: QueryInputs


@contextmanager
def device_session(plan: CollectPlan, spec: DeviceSpec, console: Console,
                   device_dataset: bool = True) -> Iterator[DeviceSession]:
    """Lock the (run, device), connect, start the runner pool and probe the device, while the query inputs are
    prepared on a thread; everything is closed and the lock released on exit."""
    rd = plan.run
    with ExitStack() as stack:
        stack.enter_context(CollectLock(rd, plan.device_id))  # one collect per (run, device): the second fails
        threads = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="compleak-inputs"))
        pending_inputs = threads.submit(QueryInputs, rd, plan.needed_ids(), device_dataset)
        dev = stack.enter_context(spec.connect(log=literal_log(console)))
        pool = stack.enter_context(RunnerServerPool(dev, start_timeout_s=spec.start_timeout))
        if dev.can_spawn:  # the runner's start-up (interpreter, runtime imports) overlaps with the probe
            pool.start_default(preload=sorted({r.format for r in plan.order}))
        props = probe(dev)
        if dev.can_spawn and props.extra.get("python_cmd"):
            pool.adopt_default(props.extra["python_cmd"])  # the probe's name for that same interpreter
        inputs = pending_inputs.result()
        check_input_shape(inputs, plan.order)
        yield DeviceSession(dev, pool, props, inputs)


@dataclass
class _Collector:
    """Stores one device's outputs of the plan's artifacts, chunk by chunk."""

    plan: CollectPlan
    session: DeviceSession
    batch_size: int
    chunk_size: int
    progress: CollectProgress

    def plain(self, rec: ArtifactRecord, runner: Any) -> Path:
        """``rec``'s outputs on its collected ids: ``<artifact>.npz`` + ``.json``."""
        rd, dev, inputs = self.plan.run, self.session.dev, self.session.inputs
        ids = self.plan.ids_of[rec.id]
        partial = rd.partial_dir(dev.id, rec.id, rec.sha256[:16])
        job = ArtifactQueries(rec, verified_artifact(rd, rec), ids, spans(len(ids), self.chunk_size), partial,
                              lambda a, b: inputs.for_runner(runner, ids[a:b]), 1, f"  {esc(rec.id)}")
        values, metas, task = query_chunks(job, dev, runner, self.progress, self.plan.splits.n_classes)
        batch = OutputBatch(ids.astype(np.int64), values.astype(np.float32), rec.output_kind)
        try:
            batch.validate(f"{rec.id} on {dev.id}")
        except ContractError as exc:
            shutil.rmtree(partial, ignore_errors=True)  # bad device output is not kept for reuse
            raise HarnessError(str(exc)) from None
        npz = rd.output_npz(dev.id, rec.id)
        batch.save(npz)
        atomic_write_json(rd.output_provenance(dev.id, rec.id), provenance(
            rec, dev, self.session.props, metas, job.spans, self.batch_size, self.chunk_size, inputs))
        drop_partial(partial)
        self.progress.done(task, f"  [green]✓[/] {esc(rec.id)}")
        return npz

    def perturbed(self, rec: ArtifactRecord, runner: Any, p: Perturbation) -> Path:
        """``rec`` on ``p.count`` perturbed copies of each of its perturbed ids: ``<artifact>.perturbed.npz`` +
        ``.json``; resumable per chunk of ``chunk_size // p.count`` examples."""
        rd, dev, inputs = self.plan.run, self.session.dev, self.session.inputs
        ids = self.plan.perturb_ids[rec.id]
        key = f"{rec.sha256[:16]}-p{p.count}-e{p.epsilon:g}-s{p.seed}"
        partial = rd.partial_dir(dev.id, rec.id, key, suffix=".perturbed")
        chunk = max(1, self.chunk_size // p.count)

        def queries(a: int, b: int) -> np.ndarray:
            x = perturbed_inputs(inputs.rows(ids[a:b]), ids[a:b], p)
            return x.reshape(-1, *x.shape[2:])

        job = ArtifactQueries(rec, verified_artifact(rd, rec), ids, spans(len(ids), chunk), partial, queries,
                              p.count, f"  {esc(rec.id)} ×{p.count} perturbed")
        values, metas, task = query_chunks(job, dev, runner, self.progress, self.plan.splits.n_classes)
        npz = rd.perturbed_npz(dev.id, rec.id)
        atomic_save_npz(npz, index=ids.astype(np.int64), **{rec.output_kind: values.astype(np.float32)},
                        epsilon=np.float64(p.epsilon), seed=np.int64(p.seed))
        prov = provenance(rec, dev, self.session.props, metas, job.spans, self.batch_size, chunk, inputs)
        prov["n_queries"] = int(len(ids) * p.count)
        which = "target candidates" if rec.role == "target" else "shadow 0 members, non-members"
        prov["perturbation"] = {**p.to_dict(), "n_examples": int(len(ids)), "examples": which}
        atomic_write_json(rd.perturbed_provenance(dev.id, rec.id), prov)
        drop_partial(partial)
        self.progress.done(task, f"  [green]✓[/] {esc(rec.id)} ×{p.count} perturbed")
        return npz


def _progress(console: Console) -> Progress:
    return stage_progress(console, unit="queries")


def collect_run(
    run: Path | str,
    device: DeviceSpec | str = "local",
    artifacts: Sequence[str] | None = None,
    batch_size: int = 512,
    console: Console | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    perturbations: int | None = None,
    device_dataset: bool = True,
) -> dict[str, Path]:
    """Collect the outputs of the run's artifacts on ``device``; return {artifact id: outputs npz}.

    Args:
        run: run directory (needs manifest.json, splits.npz, artifacts/, and experiment.toml or queries.npz).
        device: the device (:class:`~devices.spec.DeviceSpec`: its URI, ssh options, runner choice, native bundle,
            runner start timeout, workspace), or a URI with default options.
        artifacts: artifact ids to collect (default: all in the manifest).
        batch_size: examples per runtime invocation on the device.
        chunk_size: examples per device round trip; the unit of resumption.
        perturbations: SAMIA's perturbed copies per example (overrides ``[attack] samia_perturbations``; 0: none).
        device_dataset: send uint8 query inputs once per runner process and name rows per chunk, where the inputs
            are raw uint8 pixels under an affine preprocessing and the runner lists the ``dataset`` op (False:
            always float32 queries; the outputs are the same).

    One collect per (run, device) at a time: a second one fails at once naming the holder (:class:`CollectLock`).
    """
    console = console or Console()
    spec = as_spec(device)
    if batch_size < 1 or chunk_size < 1:
        raise HarnessError(f"--batch-size must be >= 1 (got {batch_size}) and chunk size >= 1 (got {chunk_size})")
    rd = RunDir(run)
    if not rd.root.is_dir():
        raise HarnessError(f"{rd.root}: run directory not found; create it with `compleak build` or `compleak import`")
    rd.require_writable("collect", "outputs")
    plan = CollectPlan.make(rd, spec.device_id, artifacts, perturbations)
    if not plan.records:
        raise HarnessError(f"{rd.manifest}: no artifacts to collect; run `compleak build` first")
    device_id = plan.device_id  # == the connected device's id, so finished work is known first
    written = {r.id: rd.output_npz(device_id, r.id) for r in plan.records if r not in plan.todo}
    if not plan.pending:
        console.print(f"[green]all {len(plan.records)} artifact(s) already collected on {esc(device_id)}[/]")
        return written
    console.print(f"collecting {len(plan.todo)} artifact(s) on [bold]{esc(device_id)}[/] "
                  f"({len(plan.records) - len(plan.todo)} already done)"
                  + (f", perturbed queries for {len(plan.perturb_todo)}" if plan.perturb_todo else ""))
    with device_session(plan, spec, console, device_dataset) as session, _progress(console) as bar:
        progress = CollectProgress(bar, bar.add_task(esc(device_id), total=plan.n_queries()))
        collector = _Collector(plan, session, batch_size, chunk_size, progress)
        skipped: list[tuple[ArtifactRecord, str]] = []
        for rec in plan.order:  # an artifact's plain then perturbed (SAMIA) queries: the runner loads it once
            try:
                runner = choose_runner(session.dev, rec, spec.binaries, props=session.props, batch_size=batch_size,
                                       pool=session.pool, runner=spec.runner, bundle=spec.bundle)
            except NoRunnerError as exc:
                if artifacts:  # asked for by id: the user must hear why it cannot be collected
                    raise
                skipped.append((rec, str(exc)))
                copies = plan.perturbation.count if plan.perturbation is not None and rec in plan.perturb_todo else 0
                plain = len(plan.ids_of[rec.id]) if rec in plan.todo else 0
                progress.advance(plain + len(plan.perturb_ids.get(rec.id, ())) * copies)
                continue
            if rec in plan.todo:
                written[rec.id] = collector.plain(rec, runner)
            if rec in plan.perturb_todo:
                assert plan.perturbation is not None
                collector.perturbed(rec, runner, plan.perturbation)
        sent = session.pool.bytes_sent()
    if skipped:
        formats = sorted({r.format for r, _ in skipped})
        console.print(f"[yellow]note[/] {esc(device_id)}: {len(skipped)} artifact(s) skipped, nothing on the device "
                      f"runs {', '.join(formats)} ({esc(skipped[0][1])}); collect them on another device or give a "
                      "runtime", highlight=False)  # fmt: skip
    done = len(plan.records) - len(skipped)
    console.print(f"outputs of {done} artifact(s) on {esc(device_id)}: {esc(rd.outputs_dir(device_id))}")
    if any(sent.values()):
        console.print(f"host → {esc(device_id)}: {mb(sum(sent.values()))} sent to the runner (models "
                      f"{mb(sent['model'])}, query dataset {mb(sent['dataset'])}, queries {mb(sent['queries'])}"
                      f", runner source and headers {mb(sent['runner'] + sent['headers'])})")
    return written
