"""The build stage: experiment.toml -> splits, trained and compressed artifacts, manifest.json.

``build_run`` loads the dataset, draws the membership splits, and for every framework, every model owner (the
target and each shadow) and every configured variant asks the framework builder (``harness.build.tf_pipeline`` /
``harness.build.torch_pipeline``) for the artifact files. Each finished artifact is then described and evaluated by
running the FILE ITSELF with the on-device runner on the host (``devices.ondevice.compleak_runner``), and its record is
written to ``manifest.json`` at once (atomically), so an interrupted build loses at most the artifact in progress.

Caching: every record carries ``build_key``, a content hash of everything that determines the file (dataset
content, splits, the model/train/compress settings that matter, variant, format, owner). A rerun skips an artifact
whose key is unchanged and whose file still has the recorded sha256; ``force`` rebuilds everything, including the
builders' cached trained models.
"""

from __future__ import annotations

import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.console import Console

from harness.build.artifacts import CACHE_DIRS, NOTICE, BuiltArtifact, artifact_id, cache_entry_prefix, content_digest
from harness.build.threat import build_threat_model, write_threat_model
from harness.config import Experiment, load_experiment, parse_variant
from harness.data import Dataset, OwnerData, load_dataset, make_splits, owner_data, query_inputs
from harness.errors import HarnessError, esc
from harness.execution import ExecEvents, ExecOptions, Executor, Unit, make_executor
from harness.progress import stage_progress
from rundir import (
    ArtifactRecord,
    ContractError,
    Manifest,
    RunDir,
    Splits,
    TensorSpec,
    UnsafePathError,
    atomic_write_bytes,
    sha256_file,
)

FRAMEWORKS_BUILT = ("tf", "torch")  # records of other frameworks (e.g. imported ones) are left alone


@dataclass
class PlannedArtifact:
    """One artifact the experiment asks for."""

    framework: str
    role: str
    shadow: int | None
    variant: str
    format: str

    @property
    def tag(self) -> str:
        return "target" if self.role == "target" else f"shadow{self.shadow}"

    @property
    def id(self) -> str:
        return artifact_id(self.framework, self.tag, self.variant, self.format)


@dataclass
class BuildReport:
    """What one ``build_run`` did (returned by :func:`build_into` for tests and benchmarks)."""

    built: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    not_produced: dict[str, str] = field(default_factory=dict)  # id -> why the builder does not make it
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds


# --------------------------------------------------------------------------- planning


def _formats(exp: Experiment, framework: str, variant: str) -> tuple[list[str], dict[str, str]]:
    """Formats a variant is exported to in ``framework`` and why each other requested one is not."""
    if framework == "tf":
        return ["tflite"], {}
    from harness.build.torch_export import plan_formats

    return plan_formats(variant, list(exp.export.torch_formats))


def plan(exp: Experiment) -> tuple[list[PlannedArtifact], dict[str, str]]:
    """Every artifact of the experiment, in build order (framework, owner, variant, format)."""
    planned: list[PlannedArtifact] = []
    skipped: dict[str, str] = {}
    # the target, then reference models 0..K-1: every owner goes through the same variants (compression pipeline)
    owners: list[tuple[str, int | None]] = [("target", None)] + [("shadow", k) for k in range(exp.reference_models)]
    for fw in exp.export.frameworks:
        variants = exp.compress.tf if fw == "tf" else exp.compress.torch
        for role, k in owners:
            for v in variants:
                fmts, why = _formats(exp, fw, v)
                planned += [PlannedArtifact(fw, role, k, v, f) for f in fmts]
                for f, reason in why.items():
                    skipped[PlannedArtifact(fw, role, k, v, f).id] = reason
    return planned, skipped


def build_key(exp: Experiment, item: PlannedArtifact, data_digest: str, splits_digest: str) -> str:
    """Content hash of everything that determines one artifact file (not its variant list neighbours).

    Fine-tuning settings count only for variants that fine-tune (prune, cluster, QAT), the calibration size only for
    static int8, so changing them rebuilds exactly the artifacts they affect; ``[build]`` (threads, op determinism)
    counts for every artifact. ``splits_digest`` is the digest of the owner's own splits (``_owner_digest``: its
    members, hold-out and non-members), so adding reference models or population ids rebuilds no existing owner.
    """
    c = exp.compress
    steps = parse_variant(item.variant)
    compress: dict[str, Any] = {}
    if any(s.startswith(("prune-", "cluster-")) or s == "qat-int8" for s in steps):
        compress.update(finetune_epochs=c.finetune_epochs, finetune_lr=c.finetune_lr)
    if steps[-1] in ("int8", "qat-int8"):
        compress["representative_samples"] = c.representative_samples
    return content_digest(
        "build-key/1",
        item.framework,
        item.tag,
        item.variant,
        item.format,
        exp.experiment.seed,
        exp.data.preprocess.model_dump(mode="json"),
        data_digest,
        splits_digest,
        exp.splits.holdout_fraction,
        exp.model.model_dump(mode="json"),
        exp.train.model_dump(mode="json"),
        compress,
        exp.build.model_dump(mode="json"),  # threads, op determinism: they shape the bytes too
    )


def training_record(owner: OwnerData) -> dict[str, Any]:
    """What the builder was handed, recorded in each artifact's manifest record as ``training``: the number and a
    digest of the ids trained on (``ids_train``, sorted int64) and of the hold-out, and a digest of the exact training
    arrays (x_train float32, y_train int64, rows ordered by id). A check of membership truth compares these with
    ``splits.npz`` (tests/test_owners.py)."""
    order = np.argsort(owner.ids_train, kind="stable")
    return {
        "n_train": int(len(owner.ids_train)),
        "ids_sha256": content_digest(np.sort(owner.ids_train).astype(np.int64)),
        "inputs_sha256": content_digest(owner.x_train[order], owner.y_train[order].astype(np.int64)),
        "n_holdout": int(len(owner.ids_holdout)),
        "holdout_ids_sha256": content_digest(np.sort(owner.ids_holdout).astype(np.int64)),
        "seed": int(owner.seed),
    }


# --------------------------------------------------------------------------- host side of an artifact


def _builder(framework: str) -> Callable[..., Any]:
    """The framework builder's ``build_variants`` (``harness.build.tf_pipeline`` or
    ``harness.build.torch_pipeline``)."""
    if framework == "tf":
        from harness.build.tf_pipeline import build_variants
    else:
        from harness.build.torch_pipeline import build_variants  # type: ignore[no-redef]
    return build_variants


def _describe(path: Path) -> dict[str, Any]:
    from devices.ondevice.compleak_runner import describe

    return describe(str(path))


def _host_accuracy(
    path: Path, x_in: np.ndarray, y_in: np.ndarray, x_out: np.ndarray, y_out: np.ndarray
) -> dict[str, float]:
    """Accuracy of the artifact file run by the host runtime on the owner's members (train) and non-members (test)."""
    from devices.ondevice.compleak_runner import load_model

    model = load_model(str(path))
    acc = {}
    for name, x, y in (("train", x_in, y_in), ("test", x_out, y_out)):
        pred = model.predict(x)
        acc[name] = round(float(np.mean(np.argmax(pred, axis=1) == y)), 6) if len(y) else None
    return acc


def _toolchain(builder_toolchain: dict[str, Any], desc: dict[str, Any], path: Path, fmt: str) -> dict[str, Any]:
    tc = dict(builder_toolchain)
    tc["python"] = platform.python_version()
    tc["numpy"] = np.__version__
    rt = desc.get("runtime", {})
    tc["host_runtime"] = {"name": rt.get("runtime"), "version": rt.get("runtime_version")}
    if fmt == "tflite":
        from devices.compat import tflite_op_versions

        tc["tflite_op_versions"] = tflite_op_versions(path)
    return tc


# --------------------------------------------------------------------------- the stage


def _load_manifest(run: RunDir, console: Console) -> Manifest:
    """The run's manifest; a fresh one when it is unreadable, but a hostile one (a name or path that would leave the
    run: :class:`UnsafePathError`) is refused, never repaired around."""
    if not run.manifest.is_file():
        return Manifest()
    try:
        return run.load_manifest()
    except UnsafePathError:
        raise
    except ContractError as exc:
        console.print(f"[yellow]warning:[/] {esc(exc)}; starting a fresh manifest (finished files are re-checked)")
        return Manifest()


def _up_to_date(run: RunDir, rec: ArtifactRecord | None, key: str) -> bool:
    if rec is None or getattr(rec, "build_key", None) != key:
        return False
    path = run.artifact_path(rec)
    return path.is_file() and path.stat().st_size == rec.bytes and sha256_file(path) == rec.sha256


def _write_if_changed(path: Path, data: bytes) -> None:
    if not (path.is_file() and path.read_bytes() == data):
        atomic_write_bytes(path, data)


def _save_splits(run: RunDir, splits: Splits) -> None:
    """Write splits.npz only when it changes (keeps the file and its mtime on reruns)."""
    if run.splits.is_file():
        try:
            if _splits_digest(Splits.load(run.splits)) == _splits_digest(splits):
                return
        except ContractError:
            pass
    splits.save(run.splits)


def _splits_digest(splits: Splits) -> str:
    """Digest of every array and flag of ``splits`` (two splits with equal digests are the same file content)."""
    return content_digest(
        "splits/2", splits.labels, splits.target_in, splits.target_out, splits.target_val, splits.population_ids,
        splits.online, *splits.shadow_in, *splits.shadow_out, *(splits.holdout("shadow", k) for k in range(
            splits.n_shadows)),
    )


def _owner_digest(splits: Splits, role: str, shadow: int | None) -> str:
    """Digest of what one owner's artifacts depend on: the labels, its members, hold-out and non-members (the
    latter for the recorded host accuracy). Adding reference models or population ids rebuilds no other owner."""
    return content_digest(
        "owner-splits/1", splits.labels, splits.members(role, shadow), splits.holdout(role, shadow),
        splits.nonmembers(role, shadow),
    )


# --------------------------------------------------------------------------- one unit: one (framework, owner)


@dataclass
class OwnerJob:
    """One build unit: every artifact still to build of one framework and one owner (target or shadow k)."""

    framework: str
    role: str
    shadow: int | None
    items: list[PlannedArtifact]  # in plan order
    keys: dict[str, str]  # artifact id -> build key

    @property
    def tag(self) -> str:
        return self.items[0].tag


@dataclass
class OwnerResult:
    """What a build unit returns to the driver: the records of the artifacts it wrote, and its timings."""

    records: list[ArtifactRecord]
    seconds: dict[str, float]


def _remove_stale_temps(run: RunDir, job: OwnerJob) -> None:
    """Remove the temp files (``rundir.atomic_path``: ``.<name>.<random>.tmp[.suffix]``) a previous
    attempt of this unit left when its process was killed (a Ray retry after a worker died, or an interrupted
    serial build). Only this unit's own names: its artifacts and its owner's cache entries."""
    cache = CACHE_DIRS.get(job.framework)
    patterns = [(run.artifacts_dir, f".{job.framework}-{job.tag}-*.tmp*")]
    if cache is not None:
        patterns.append((run.artifacts_dir / cache, f".{cache_entry_prefix(job.framework, job.tag)}*.tmp*"))
    for folder, pattern in patterns:
        if folder.is_dir() and not folder.is_symlink():
            for stale in folder.glob(pattern):
                if stale.is_file() and not stale.is_symlink():
                    stale.unlink(missing_ok=True)


def _owner_inputs(
    exp: Experiment, data_dir: str | None, splits: Splits, job: OwnerJob, dataset: Dataset | None
) -> tuple[OwnerData, tuple[np.ndarray, ...]]:
    """The owner's training data (what the builder gets) and the host evaluation sets (x, y of its members, then
    of its non-members)."""
    ds = dataset if dataset is not None else load_dataset(
        exp.data.dataset, Path(data_dir) if data_dir else None, exp.data.download
    )
    owner = owner_data(
        ds, splits, exp.data.preprocess, job.role, job.shadow, exp.splits.holdout_fraction,
        exp.owner_seed(job.role, job.shadow),
    )  # fmt: skip
    ids_in, ids_out = splits.members(job.role, job.shadow), splits.nonmembers(job.role, job.shadow)
    evals = (
        query_inputs(ds, exp.data.preprocess, ids_in), ds.y[ids_in],
        query_inputs(ds, exp.data.preprocess, ids_out), ds.y[ids_out],
    )  # fmt: skip
    return owner, evals


def _record(
    run: RunDir, p: PlannedArtifact, built: BuiltArtifact, key: str, training: dict[str, Any],
    evals: tuple[np.ndarray, ...],
) -> ArtifactRecord:
    """The manifest record of the file the builder wrote for ``p``: described and evaluated by the host runtime
    running the file itself."""
    path = Path(built.path)
    desc = _describe(path)
    return ArtifactRecord(
        id=p.id,
        role=p.role,  # type: ignore[arg-type]
        shadow=p.shadow,
        variant=p.variant,
        framework=p.framework,
        format=p.format,  # type: ignore[arg-type]
        path=str(path.resolve().relative_to(run.root.resolve())),
        sha256=sha256_file(path),
        bytes=path.stat().st_size,
        inputs=[TensorSpec(**t) for t in desc["inputs"]],
        outputs=[TensorSpec(**t) for t in desc["outputs"]],
        output_kind=built.output_kind,  # type: ignore[arg-type]
        compression=dict(built.compression),
        host_accuracy=_host_accuracy(path, *evals),
        toolchain=_toolchain(built.toolchain, desc, path, p.format),
        build_key=key,
        training=training,
        build=dict(built.settings),
    )


def build_owner(
    exp: Experiment,
    run_root: str,
    data_dir: str | None,
    splits: Splits,
    job: OwnerJob,
    dataset: Dataset | None = None,
    hook: Callable[[str], None] | None = None,
) -> OwnerResult:
    """Build the artifacts of one (framework, owner) unit into ``run_root/artifacts/`` and describe them.

    Runs in the driver (serial) or on a Ray worker: it writes only this owner's artifact files and cache entries
    (atomically) and returns the records; the driver alone writes manifest.json. ``dataset`` is the loaded dataset
    when the caller has it in the same process (else it is loaded here, from ``data_dir`` on a shared file system).
    Wherever it runs, it runs with the config's ``[build]`` settings (:mod:`harness.build.runtime`), so its bytes
    do not depend on the executor.
    """
    from harness.build.runtime import unit_runtime

    with unit_runtime(exp.build, exp.owner_seed(job.role, job.shadow)):
        return _build_owner(exp, RunDir(run_root), data_dir, splits, job, dataset, hook or (lambda _msg: None))


def _build_owner(
    exp: Experiment, run: RunDir, data_dir: str | None, splits: Splits, job: OwnerJob, dataset: Dataset | None,
    say: Callable[[str], None],
) -> OwnerResult:  # fmt: skip
    """:func:`build_owner` inside the unit's runtime settings."""
    _remove_stale_temps(run, job)
    owner, evals = _owner_inputs(exp, data_dir, splits, job, dataset)
    training = training_record(owner)
    build_variants = _builder(job.framework)
    by_variant: dict[str, list[PlannedArtifact]] = {}
    for p in job.items:
        by_variant.setdefault(p.variant, []).append(p)
    records: list[ArtifactRecord] = []
    seconds: dict[str, float] = {}
    for variant, items in by_variant.items():
        say(f"{job.framework} {job.tag} {variant}")
        t1 = time.perf_counter()
        results = build_variants(exp, owner, [variant], run.artifacts_dir, job.tag, [p.format for p in items], say)
        step = f"{job.framework}:{variant}"
        seconds[step] = seconds.get(step, 0.0) + (time.perf_counter() - t1)
        by_fmt = {b.format: b for b in results}
        for p in items:
            b = by_fmt.get(p.format)
            if b is None:
                raise HarnessError(
                    f"the {job.framework} builder did not write {p.id}; rerun with --force, or report a bug"
                )
            say(f"{p.id}: host evaluation")
            t2 = time.perf_counter()
            records.append(_record(run, p, b, job.keys[p.id], training, evals))
            seconds["host_eval"] = seconds.get("host_eval", 0.0) + time.perf_counter() - t2
    return OwnerResult(records, seconds)


class _Started(ExecEvents):
    """The build's progress line names how its units run."""

    def __init__(self, hook: Callable[[str], None]) -> None:
        self.hook = hook

    def started(self, units: Sequence[Unit], where: str) -> None:
        self.hook(f"{len(units)} units {where}")


@dataclass
class BuildContext:
    """What the steps of one :func:`build_into` share: the experiment and its run, the data and splits, the plan
    with each artifact's build key, and what the build writes to (manifest, report, console, ``on_artifact``)."""

    exp: Experiment
    run: RunDir
    data_dir: Path | None
    ds: Dataset
    splits: Splits
    planned: list[PlannedArtifact]  # in plan order
    keys: dict[str, str]  # artifact id -> build key
    manifest: Manifest
    report: BuildReport
    console: Console
    on_artifact: Callable[[ArtifactRecord], None] | None = None

    def sort_manifest(self) -> None:
        """Keep the manifest in plan order (stable diffs, predictable listings)."""
        order = {p.id: i for i, p in enumerate(self.planned)}
        self.manifest.artifacts.sort(key=lambda a: order.get(a.id, len(order)))


def _units(
    ctx: BuildContext, jobs: dict[tuple[str, str, int | None], list[PlannedArtifact]], hook: Callable[[str], None]
) -> list[Unit]:
    """One unit per (framework, owner): :func:`build_owner` of its artifacts, asking for ``[build] threads`` CPUs
    (the threads it will run with, wherever it runs)."""
    exp = ctx.exp
    # absolute paths: a worker's working directory is not the driver's (a cluster node)
    data_dir = ctx.data_dir or exp.data.data_dir
    data_arg = str(Path(data_dir).resolve()) if data_dir else None
    gpus: Any = "auto" if exp.train.device != "cpu" else 0.0
    units = []
    for (fw, role, shadow), items in jobs.items():
        job = OwnerJob(fw, role, shadow, items, {p.id: ctx.keys[p.id] for p in items})
        units.append(
            Unit(f"{fw}:{job.tag}", build_owner, (exp, str(ctx.run.root.resolve()), data_arg, ctx.splits, job),
                 num_cpus=float(exp.build.threads), num_gpus=gpus, local={"dataset": ctx.ds, "hook": hook})
        )  # fmt: skip
    return units


def _save_record(ctx: BuildContext, rec: ArtifactRecord) -> None:
    """Add a finished artifact's record to manifest.json (one atomic save per record, so ``on_artifact`` sees it
    on disk) and say so."""
    ctx.manifest.upsert(rec)
    ctx.sort_manifest()
    ctx.manifest.save(ctx.run.manifest)
    ctx.report.built.append(rec.id)
    acc = rec.host_accuracy
    ctx.console.print(
        f"  built {esc(rec.id)}  {rec.bytes / 1024:.0f} KiB  host acc train {acc.get('train', 0):.3f} "
        f"test {acc.get('test', 0):.3f}",
        highlight=False,
    )


def _run_units(
    ctx: BuildContext, jobs: dict[tuple[str, str, int | None], list[PlannedArtifact]], ex: Executor
) -> None:
    """Run the build units on ``ex``; as each finishes, add its records to manifest.json (this process is the one
    writer; an atomic save per record of the finished unit, then ``on_artifact(record)``)."""
    total = sum(len(v) for v in jobs.values())
    with stage_progress(ctx.console, spinner=True) as bar:
        task = bar.add_task("build", total=total)

        def hook(msg: str) -> None:
            if NOTICE in msg:  # e.g. a refused build-cache entry (harness.build.artifacts.NOTICE): keep it on screen
                bar.console.print(esc(msg))
            bar.update(task, description=esc(msg))

        for _unit, result in ex.run(_units(ctx, jobs, hook), _Started(hook)):
            for k, v in result.seconds.items():
                ctx.report.seconds[k] = ctx.report.seconds.get(k, 0.0) + v
            for rec in result.records:
                _save_record(ctx, rec)
                bar.advance(task)
                if ctx.on_artifact is not None:
                    ctx.on_artifact(rec)
        bar.update(task, description=f"built {total} artifacts")


def _prepare(
    exp: Experiment, run: RunDir, data_dir: Path | None, console: Console,
    on_artifact: Callable[[ArtifactRecord], None] | None,
) -> BuildContext:  # fmt: skip
    """Load the data, draw and validate the splits, plan every artifact and its build key, read the manifest:
    everything that can be checked, writing nothing (a refused build leaves the run byte-identical)."""
    report = BuildReport()
    run.require_writable("build", "artifacts")
    t0 = time.perf_counter()
    ds: Dataset = load_dataset(
        exp.data.dataset, data_dir or (Path(exp.data.data_dir) if exp.data.data_dir else None), exp.data.download
    )
    splits = make_splits(exp, ds.y)
    splits.validate(f"{run.splits} (drawn from {ds.name})")
    data_digest = content_digest(ds.name.split(":")[0], ds.x, ds.y)
    report.seconds["data"] = time.perf_counter() - t0
    planned, report.not_produced = plan(exp)
    manifest = _load_manifest(run, console)
    keys = {p.id: build_key(exp, p, data_digest, _owner_digest(splits, p.role, p.shadow)) for p in planned}
    return BuildContext(exp, run, data_dir, ds, splits, planned, keys, manifest, report, console, on_artifact)


def _triage(
    ctx: BuildContext, force: bool
) -> tuple[list[tuple[ArtifactRecord, Path]], list[PlannedArtifact]]:
    """(records no longer in the config with their files, artifacts to build): the rest are up to date. Checks that
    each framework still to build has its builder, and each stale file lies inside ``artifacts/``."""
    wanted = {p.id for p in ctx.planned}
    stale = [r for r in ctx.manifest.artifacts if r.framework in FRAMEWORKS_BUILT and r.id not in wanted]
    stale_files = [ctx.run.artifact_path(r) for r in stale]  # checked inside artifacts/ before anything is deleted
    existing = {a.id: a for a in ctx.manifest.artifacts if a not in stale}
    todo = [p for p in ctx.planned if force or not _up_to_date(ctx.run, existing.get(p.id), ctx.keys[p.id])]
    ctx.report.skipped = [p.id for p in ctx.planned if p not in todo]
    for fw in sorted({p.framework for p in todo}):  # a missing framework fails now, not after the commit
        _builder(fw)
    return list(zip(stale, stale_files)), todo


def _commit(
    ctx: BuildContext, stale: list[tuple[ArtifactRecord, Path]], todo: list[PlannedArtifact], config_bytes: bytes,
    force: bool,
) -> None:  # fmt: skip
    """Commit the new configuration: first drop from the manifest every record that no longer matches it (variants
    dropped from the config, artifacts about to be rebuilt), so an interrupted build never lists an artifact that
    disagrees with experiment.toml; then splits.npz, threat_model.json and experiment.toml; then delete the dropped
    variants' files (and, with ``force``, the builders' caches)."""
    run, manifest = ctx.run, ctx.manifest
    rebuilt = {p.id for p in todo}
    dropped = [rec for rec, _ in stale]
    kept = [a for a in manifest.artifacts if a not in dropped and a.id not in rebuilt]
    changed = len(kept) != len(manifest.artifacts)
    manifest.artifacts = kept
    run.root.mkdir(parents=True, exist_ok=True)
    if changed or not run.manifest.is_file():
        manifest.save(run.manifest)
    _save_splits(run, ctx.splits)
    write_threat_model(run, build_threat_model(ctx.exp, ctx.splits, sha256_file(run.splits)))
    _write_if_changed(run.experiment, config_bytes)
    for rec, path in stale:  # variants no longer in the config
        path.unlink(missing_ok=True)
        ctx.report.removed.append(rec.id)
    if force:
        for d in CACHE_DIRS.values():
            shutil.rmtree(run.artifacts_dir / d, ignore_errors=True)


def build_into(
    exp: Experiment,
    config_bytes: bytes,
    run_root: Path,
    data_dir: Path | None = None,
    force: bool = False,
    console: Console | None = None,
    on_artifact: Callable[[ArtifactRecord], None] | None = None,
    execution: ExecOptions | None = None,
    executor: Executor | None = None,
) -> BuildReport:
    """Build every artifact of ``exp`` into ``run_root`` (resumable); see the module docstring.

    ``on_artifact`` is called after each artifact's record is saved to manifest.json (progress hooks, tests).
    """
    ctx = _prepare(exp, RunDir(run_root), data_dir, console or Console(), on_artifact)
    run, report = ctx.run, ctx.report
    stale, todo = _triage(ctx, force)
    _commit(ctx, stale, todo, config_bytes, force)
    if not todo:
        ctx.console.print(f"build: all {len(ctx.planned)} artifacts up to date in {esc(run.root)}")
        if not run.manifest.is_file():
            ctx.manifest.save(run.manifest)
        return report

    ctx.console.print(
        f"build: {len(todo)} of {len(ctx.planned)} artifacts to build ({len(report.skipped)} up to date) "
        f"from {esc(ctx.ds.name)} [{len(ctx.ds)} examples] into {esc(run.root)}"
    )
    jobs: dict[tuple[str, str, int | None], list[PlannedArtifact]] = {}
    for p in todo:  # one unit per (framework, owner), its artifacts in plan order
        jobs.setdefault((p.framework, p.role, p.shadow), []).append(p)
    own_executor = executor is None
    ex = executor if executor is not None else make_executor(execution, run.root)
    try:
        _run_units(ctx, jobs, ex)
    finally:
        if own_executor:
            ex.close()
    ctx.sort_manifest()
    ctx.manifest.save(run.manifest)
    return report


def build_run(
    experiment: Path,
    out: Path | None = None,
    data_dir: Path | None = None,
    force: bool = False,
    container: str | None = None,
    engine: str | None = None,
    console: Console | None = None,
    execution: ExecOptions | None = None,
    executor: Executor | None = None,
) -> Path:
    """The ``compleak build`` stage: write ``RUN/`` (experiment.toml, splits.npz, artifacts/, manifest.json).

    Args:
        experiment: path of experiment.toml.
        out: run directory (default ``runs/<experiment.name>``).
        data_dir: dataset folder (overrides ``data.data_dir`` and the default search path).
        force: rebuild every artifact, including the cached trained models.
        container: build inside this toolchain image instead (delegated to ``harness.toolchain.container_build``).
        engine: container engine (podman | docker) for ``container``.
        execution: where the units run (``harness.execution``: serial, embedded Ray, a cluster); default serial.
        executor: an executor already started (``audit`` shares one between its stages); overrides ``execution``.
    Returns:
        The run directory.
    """
    console = console or Console()
    if container:
        from harness.toolchain.container_build import build_in_container

        return build_in_container(experiment, out, data_dir, force, container, engine, console)
    exp = load_experiment(experiment)
    run_root = Path(out) if out is not None else Path("runs") / exp.experiment.name
    build_into(exp, Path(experiment).read_bytes(), run_root, data_dir=data_dir, force=force, console=console,
               execution=execution, executor=executor)
    return run_root
