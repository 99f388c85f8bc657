"""The build stage: experiment.toml -> splits, trained and compressed artifacts, manifest.json.

``build_run`` loads the dataset, draws the membership splits, and for every framework, every model owner (the
target and each shadow) and every configured variant asks the framework builder (``harness.tf_build`` /
``harness.torch_build``) for the artifact files. Each finished artifact is then described and evaluated by running
the FILE ITSELF with the on-device runner on the host (``devices.ondevice.compleak_runner``), and its record is
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from compleak.rundir import ArtifactRecord, ContractError, Manifest, RunDir, Splits, TensorSpec, atomic_write_bytes
from compleak.rundir import sha256_file
from harness.artifacts import artifact_id, content_digest
from harness.config import Experiment, load_experiment, parse_variant
from harness.data import Dataset, load_dataset, make_splits, owner_data, query_inputs
from harness.errors import HarnessError

FRAMEWORKS_BUILT = ("tf", "torch")  # records of other frameworks (e.g. imported ones) are left alone
CACHE_DIRS = {"tf": "tf-cache", "torch": "torch-cache"}  # the builders' model caches under artifacts/


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
    from harness.torch_build import plan_formats

    return plan_formats(variant, list(exp.export.torch_formats))


def plan(exp: Experiment) -> tuple[list[PlannedArtifact], dict[str, str]]:
    """Every artifact of the experiment, in build order (framework, owner, variant, format)."""
    planned: list[PlannedArtifact] = []
    skipped: dict[str, str] = {}
    owners: list[tuple[str, int | None]] = [("target", None)] + [("shadow", k) for k in range(exp.splits.n_shadows)]
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
    static int8, so changing them rebuilds exactly the artifacts they affect.
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
    )


def _owner_seed(exp: Experiment, role: str, shadow: int | None) -> int:
    """Each owner trains with its own seed: the target with experiment.seed, shadow k with seed + 1 + k."""
    return exp.experiment.seed + (0 if role == "target" else 1 + int(shadow or 0))


# --------------------------------------------------------------------------- host side of an artifact


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
    if not run.manifest.is_file():
        return Manifest()
    try:
        return run.load_manifest()
    except ContractError as exc:
        console.print(f"[yellow]warning:[/] {exc}; starting a fresh manifest (finished files are re-checked)")
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
            old = Splits.load(run.splits)
            same = (
                np.array_equal(old.labels, splits.labels)
                and np.array_equal(old.target_in, splits.target_in)
                and np.array_equal(old.target_out, splits.target_out)
                and old.n_shadows == splits.n_shadows
                and all(
                    np.array_equal(a, b)
                    for a, b in zip(old.shadow_in + old.shadow_out, splits.shadow_in + splits.shadow_out)
                )
            )
            if same:
                return
        except ContractError:
            pass
    splits.save(run.splits)


def _splits_digest(splits: Splits) -> str:
    return content_digest(splits.labels, splits.target_in, splits.target_out, *splits.shadow_in, *splits.shadow_out)


def build_into(
    exp: Experiment,
    config_bytes: bytes,
    run_root: Path,
    data_dir: Path | None = None,
    force: bool = False,
    console: Console | None = None,
    on_artifact: Callable[[ArtifactRecord], None] | None = None,
) -> BuildReport:
    """Build every artifact of ``exp`` into ``run_root`` (resumable); see the module docstring.

    ``on_artifact`` is called after each artifact's record is saved to manifest.json (progress hooks, tests).
    """
    console = console or Console()
    report = BuildReport()
    run = RunDir(run_root)
    run.root.mkdir(parents=True, exist_ok=True)
    _write_if_changed(run.experiment, config_bytes)

    t0 = time.perf_counter()
    ds: Dataset = load_dataset(
        exp.data.dataset, data_dir or (Path(exp.data.data_dir) if exp.data.data_dir else None), exp.data.download
    )
    splits = make_splits(exp, ds.y)
    _save_splits(run, splits)
    data_digest = content_digest(ds.name.split(":")[0], ds.x, ds.y)
    splits_digest = _splits_digest(splits)
    report.seconds["data"] = time.perf_counter() - t0

    planned, not_produced = plan(exp)
    report.not_produced = not_produced
    manifest = _load_manifest(run, console)
    wanted = {p.id for p in planned}
    for rec in list(manifest.artifacts):  # variants no longer in the config
        if rec.framework in FRAMEWORKS_BUILT and rec.id not in wanted:
            manifest.artifacts = [a for a in manifest.artifacts if a.id != rec.id]
            run.artifact_path(rec).unlink(missing_ok=True)
            report.removed.append(rec.id)
    if force:
        for d in CACHE_DIRS.values():
            shutil.rmtree(run.artifacts_dir / d, ignore_errors=True)
    existing = {a.id: a for a in manifest.artifacts}
    keys = {p.id: build_key(exp, p, data_digest, splits_digest) for p in planned}
    todo = [p for p in planned if force or not _up_to_date(run, existing.get(p.id), keys[p.id])]
    report.skipped = [p.id for p in planned if p not in todo]
    if report.removed:
        manifest.save(run.manifest)
    if not todo:
        console.print(f"build: all {len(planned)} artifacts up to date in {run.root}")
        if not run.manifest.is_file():
            manifest.save(run.manifest)
        return report

    console.print(
        f"build: {len(todo)} of {len(planned)} artifacts to build ({len(report.skipped)} up to date) from {ds.name} "
        f"[{len(ds)} examples] into {run.root}"
    )
    groups: dict[tuple[str, str, int | None, str], list[PlannedArtifact]] = {}
    for p in todo:
        groups.setdefault((p.framework, p.role, p.shadow, p.variant), []).append(p)

    owners: dict[tuple[str, int | None], Any] = {}
    evals: dict[tuple[str, int | None], tuple[np.ndarray, ...]] = {}
    columns = (
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("build", total=len(todo))
        for (fw, role, shadow, variant), items in groups.items():
            key_o = (role, shadow)
            if key_o not in owners:
                owners[key_o] = owner_data(
                    ds,
                    splits,
                    exp.data.preprocess,
                    role,
                    shadow,
                    exp.splits.holdout_fraction,
                    _owner_seed(exp, role, shadow),
                )
                ids_in, ids_out = splits.members(role, shadow), splits.nonmembers(role, shadow)
                evals[key_o] = (
                    query_inputs(ds, exp.data.preprocess, ids_in), ds.y[ids_in],
                    query_inputs(ds, exp.data.preprocess, ids_out), ds.y[ids_out],
                )  # fmt: skip
            owner = owners[key_o]
            tag = items[0].tag

            def hook(msg: str) -> None:
                bar.update(task, description=msg)

            hook(f"{fw} {tag} {variant}")
            t1 = time.perf_counter()
            if fw == "tf":
                from harness.tf_build import build_variants
            else:
                from harness.torch_build import build_variants  # type: ignore[no-redef]
            results = build_variants(exp, owner, [variant], run.artifacts_dir, tag, [p.format for p in items], hook)
            report.seconds[f"{fw}:{variant}"] = report.seconds.get(f"{fw}:{variant}", 0.0) + time.perf_counter() - t1
            by_fmt = {b.format: b for b in results}
            for p in items:
                b = by_fmt.get(p.format)
                if b is None:
                    raise HarnessError(f"the {fw} builder did not write {p.id}; rerun with --force, or report a bug")
                hook(f"{p.id}: host evaluation")
                t2 = time.perf_counter()
                path = Path(b.path)
                desc = _describe(path)
                inputs = [TensorSpec(**t) for t in desc["inputs"]]
                outputs = [TensorSpec(**t) for t in desc["outputs"]]
                rec = ArtifactRecord(
                    id=p.id,
                    role=p.role,  # type: ignore[arg-type]
                    shadow=p.shadow,
                    variant=p.variant,
                    framework=p.framework,
                    format=p.format,  # type: ignore[arg-type]
                    path=str(path.resolve().relative_to(run.root.resolve())),
                    sha256=sha256_file(path),
                    bytes=path.stat().st_size,
                    inputs=inputs,
                    outputs=outputs,
                    output_kind=b.output_kind,  # type: ignore[arg-type]
                    compression=dict(b.compression),
                    host_accuracy=_host_accuracy(path, *evals[key_o]),
                    toolchain=_toolchain(b.toolchain, desc, path, p.format),
                    build_key=keys[p.id],
                )
                manifest.upsert(rec)
                manifest.save(run.manifest)
                report.seconds["host_eval"] = report.seconds.get("host_eval", 0.0) + time.perf_counter() - t2
                report.built.append(p.id)
                bar.advance(task)
                acc = rec.host_accuracy
                console.print(
                    f"  built {p.id}  {rec.bytes / 1024:.0f} KiB  host acc train {acc.get('train', 0):.3f} "
                    f"test {acc.get('test', 0):.3f}",
                    highlight=False,
                )
                if on_artifact is not None:
                    on_artifact(rec)
        bar.update(task, description=f"built {len(todo)} artifacts")
    # keep the manifest in plan order (stable diffs, predictable listings)
    order = {p.id: i for i, p in enumerate(planned)}
    manifest.artifacts.sort(key=lambda a: order.get(a.id, len(order)))
    manifest.save(run.manifest)
    return report


def build_run(
    experiment: Path,
    out: Path | None = None,
    data_dir: Path | None = None,
    force: bool = False,
    container: str | None = None,
    engine: str | None = None,
    console: Console | None = None,
) -> Path:
    """The ``compleak build`` stage: write ``RUN/`` (experiment.toml, splits.npz, artifacts/, manifest.json).

    Args:
        experiment: path of experiment.toml.
        out: run directory (default ``runs/<experiment.name>``).
        data_dir: dataset folder (overrides ``data.data_dir`` and the default search path).
        force: rebuild every artifact, including the cached trained models.
        container: build inside this toolchain image instead (delegated to ``harness.containers``).
        engine: container engine (podman | docker) for ``container``.
    Returns:
        The run directory.
    """
    console = console or Console()
    if container:
        from harness.containers import build_in_container

        return build_in_container(experiment, out, data_dir, force, container, engine, console)
    exp = load_experiment(experiment)
    run_root = Path(out) if out is not None else Path("runs") / exp.experiment.name
    build_into(exp, Path(experiment).read_bytes(), run_root, data_dir=data_dir, force=force, console=console)
    return run_root
