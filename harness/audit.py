"""``compleak audit`` and ``compleak demo``: one command from an experiment config to a report.

The audit runs the stages in order -- build, collect on every device (the host always included as ``local``),
attack on every device, compare each device with the host, report -- and shows one stage-level progress bar with
elapsed time and an estimate of the time remaining. Every stage is resumable on its own (build skips unchanged
artifacts, collect skips collected ones, compare skips when its inputs did not change); the audit additionally
skips a device's attack stage when its results are newer than every output and the manifest, so rerunning an
interrupted audit never redoes finished work.
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Self

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from devices.spec import DeviceSpec
from harness.attack.resume import up_to_date
from harness.collect.fanout import AuditDevice, audit_devices, collect_devices, prestart_collect_actors
from harness.config import Experiment, load_experiment
from harness.errors import HarnessError, esc
from harness.execution import ExecOptions, Executor, make_executor
from rundir import RunDir, atomic_write_bytes
from rundir.vocabulary import families_problem

#: Relative cost of each stage, used for the progress bar and its time-remaining estimate (measured on the
#: Fashion-MNIST default on 2 cores: the build dominates, attacks come second).
STAGE_WEIGHT = {"build": 60.0, "collect": 8.0, "attack": 12.0, "compare": 1.0, "report": 2.0}
DEMO_CONFIG = "fashion-default.toml"


class _Stages:
    """A stage-level progress bar: weighted steps, elapsed time, and the time remaining estimated from the stages
    that actually ran (seconds per unit of weight so far times the weight still to go; stages skipped because they
    were already done do not count, so a resumed audit is not predicted to finish instantly)."""

    def __init__(self, console: Console, steps: list[tuple[str, float]]) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]audit[/]"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("elapsed"),
            TimeElapsedColumn(),
            TextColumn("remaining [cyan]{task.fields[eta]}[/]"),
            TextColumn("{task.description}"),
            console=console,
            transient=False,
        )
        self.total = sum(w for _, w in steps)
        self.task = self.progress.add_task("starting", total=self.total, eta="estimating…")
        self.t0 = time.monotonic()
        self.done = 0.0  # weight finished (run or skipped)
        self.ran_weight = 0.0  # weight of the stages that actually ran
        self.ran_seconds = 0.0
        self.timings: dict[str, float] = {}

    def __enter__(self) -> Self:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def remaining_seconds(self) -> float | None:
        """Estimated seconds still to go, or None before any stage ran."""
        if self.ran_weight <= 0:
            return None if self.done < self.total else 0.0
        return max((self.total - self.done) * self.ran_seconds / self.ran_weight, 0.0)

    def eta(self) -> str:
        """:meth:`remaining_seconds` as H:MM:SS, or 'estimating…'."""
        left = self.remaining_seconds()
        if left is None:
            return "estimating…"
        return time.strftime("%H:%M:%S", time.gmtime(round(left))).removeprefix("0")

    def run(self, name: str, weight: float, fn: Callable[[], object], skip: bool = False) -> object:
        self.progress.update(self.task, description=f"{esc(name)}{' (up to date)' if skip else ''}")
        t = time.monotonic()
        result = None if skip else fn()
        took = time.monotonic() - t
        self.timings[name] = took
        self.done += weight
        if not skip:
            self.ran_weight += weight
            self.ran_seconds += took
        self.progress.update(self.task, advance=weight, eta=self.eta())
        return result


@dataclass(frozen=True)
class _SeedRun:
    """One complete run of an audit: ``label`` prefixes its stage names (``seed 3: ``, or nothing), ``config`` is
    its experiment.toml and ``out`` its run directory (None: the build stage's default)."""

    label: str
    config: Path
    out: Path | None


def _seed_runs(experiment: Path, exp: Experiment, out: Path | None) -> tuple[Path | None, list[_SeedRun]]:
    """(root, runs): one run per seed of ``experiment.seeds`` (a complete run in ``RUN/seeds/<seed>/``), else the
    run itself."""
    if exp.experiment.seeds:
        root = Path(out) if out is not None else Path("runs") / exp.experiment.name
        return root, [_SeedRun(f"seed {s}: ", cfg, cfg.parent) for s, cfg in prepare_seed_runs(experiment, root, exp)]
    return (Path(out) if out is not None else None), [_SeedRun("", experiment, out)]


def _collect_step(label: str, n: int) -> str:
    return f"{label}collect ({n} device{'s' if n > 1 else ''})"


def _steps(runs: list[_SeedRun], devices: list[AuditDevice], across_seeds: bool) -> list[tuple[str, float]]:
    """The progress bar's (stage name, weight) steps, in order."""
    steps: list[tuple[str, float]] = []
    for r in runs:
        steps += [(f"{r.label}build", STAGE_WEIGHT["build"])]
        steps += [(_collect_step(r.label, len(devices)), STAGE_WEIGHT["collect"] * len(devices))]
        steps += [(f"{r.label}attack {d.uri}", STAGE_WEIGHT["attack"]) for d in devices]
        steps += [(f"{r.label}compare", STAGE_WEIGHT["compare"]), (f"{r.label}report", STAGE_WEIGHT["report"])]
    if across_seeds:
        steps += [("report across seeds", STAGE_WEIGHT["report"])]
    return steps


@dataclass
class _Audit:
    """What every stage of one audit shares: its devices, options, executor, progress bar and console."""

    devices: list[AuditDevice]
    families: list[str]
    stage: StageOptions
    data_dir: Path | None
    shadows_on_devices: bool
    executor: Executor
    stages: _Stages
    console: Console

    def run_one(self, r: _SeedRun) -> Path:
        """build -> collect -> attack (every device) -> compare -> report of one run; returns its report page."""
        from harness.attack.stage import FitCache, attack_run
        from harness.build.stage import build_run
        from harness.compare import compare_run
        from harness.report.stage import write_report

        st, ex, console, stage = self.stages, self.executor, self.console, self.stage
        run = Path(st.run(f"{r.label}build", STAGE_WEIGHT["build"], lambda: build_run(  # type: ignore[arg-type]
            r.config, out=r.out, data_dir=self.data_dir, force=stage.force, container=stage.container,
            engine=stage.engine, console=console, executor=ex)))
        n = len(self.devices)
        st.run(_collect_step(r.label, n), STAGE_WEIGHT["collect"] * n, lambda: collect_devices(
            run, self.devices, ex, console, self.shadows_on_devices, stage.batch_size))
        fits = FitCache()  # attack groups fitted once, reused by every device's attack stage and by compare
        for d in self.devices:
            st.run(f"{r.label}attack {d.uri}", STAGE_WEIGHT["attack"],
                   lambda d=d: attack_run(run, device=d.device_id, families=stage.families, console=console,
                                          fits=fits, executor=ex, table=stage.all_rows),
                   skip=up_to_date(RunDir(run), d.device_id, self.families))  # fmt: skip
        st.run(f"{r.label}compare", STAGE_WEIGHT["compare"], lambda: compare_run(run, console=console, fits=fits))
        return Path(st.run(f"{r.label}report", STAGE_WEIGHT["report"],  # type: ignore[arg-type]
                           lambda: write_report(run, console=console)))


def _run_audit(
    experiment: Path,
    exp: Experiment,
    devices: list[AuditDevice],
    out: Path | None,
    data_dir: Path | None,
    console: Console,
    execution: ExecOptions | None = None,
    shadows_on_devices: bool = False,
    stage: StageOptions | None = None,
) -> Path:
    from harness.report.stage import write_report

    for d in devices:
        if d.spec.trust_new_host:
            console.print(
                f"[yellow]note[/]: {esc(d.uri)}: an unknown ssh host key will be accepted and recorded "
                "(--trust-new-host)"
            )
    n = len(devices)
    stage = stage or StageOptions()
    families = list(stage.families or exp.attack.families)
    root, runs = _seed_runs(experiment, exp, out)
    seeds = exp.experiment.seeds
    console.print(
        f"audit [bold]{esc(exp.experiment.name)}[/]: {n} device{'s' if n > 1 else ''} "
        f"({esc(', '.join(d.uri for d in devices))}), attacks {', '.join(families)}"
        f"{' + ' + ', '.join(exp.attack.baselines) if exp.attack.baselines else ''}"
        + (f", seeds {', '.join(map(str, seeds))}" if seeds else ""),
        highlight=False,
    )
    # one executor (embedded Ray, a cluster, or serial) for every stage of the audit; Ray starts on first use
    logs_root = root if root is not None else Path("runs") / exp.experiment.name
    steps = _steps(runs, devices, bool(seeds))
    with make_executor(execution or ExecOptions(serial=True), logs_root) as ex, _Stages(console, steps) as st:
        prestart_collect_actors(ex, devices)  # they start with Ray, during the first build
        audit = _Audit(devices, families, stage, data_dir, shadows_on_devices, ex, st, console)
        for r in runs:
            index = audit.run_one(r)
        if seeds:
            assert root is not None
            index = Path(st.run("report across seeds", STAGE_WEIGHT["report"],  # type: ignore[arg-type]
                                lambda: write_report(root, console=console)))
    total = time.monotonic() - st.t0
    console.print(f"audit finished in {total / 60:.1f} min; report: [bold]{esc(index)}[/]", highlight=False)
    return index


def seed_config(config: bytes, seed: int) -> bytes:
    """The experiment.toml of one seed's run: ``config`` with ``[experiment] seed = seed`` and no ``seeds`` list
    (the same bytes for the same config and seed, so a rerun's build cache keys match). Comments are not kept."""
    import tomli_w

    raw = tomllib.loads(config.decode("utf-8"))
    section = raw.setdefault("experiment", {})
    section.pop("seeds", None)
    section["seed"] = int(seed)
    head = f"# seed {seed} of experiment.seeds in ../../experiment.toml (written by compleak audit)\n"
    return (head + tomli_w.dumps(raw)).encode("utf-8")


def prepare_seed_runs(experiment: Path, root: Path, exp: Experiment) -> list[tuple[int, Path]]:
    """Write ``root/experiment.toml`` (the config as given) and, per seed of ``experiment.seeds``,
    ``root/seeds/<seed>/experiment.toml`` (:func:`seed_config`); return [(seed, that config path)]. Files are
    rewritten only when their content changes (the stages' resume keys on their mtimes)."""
    def _write_if_changed(path: Path, data: bytes) -> None:
        if not (path.is_file() and path.read_bytes() == data):
            atomic_write_bytes(path, data)

    config = Path(experiment).read_bytes()
    root.mkdir(parents=True, exist_ok=True)
    rd = RunDir(root)
    if rd.experiment.resolve() != Path(experiment).resolve():
        _write_if_changed(rd.experiment, config)
    out = []
    for seed in exp.experiment.seeds or []:
        cfg = RunDir(rd.seed_dir(int(seed))).experiment
        cfg.parent.mkdir(parents=True, exist_ok=True)
        _write_if_changed(cfg, seed_config(config, seed))
        out.append((int(seed), cfg))
    return out


@dataclass(frozen=True)
class StageOptions:
    """The stage options ``audit`` passes through: ``families`` to the attack stage (None: the config's
    ``[attack] families``), ``batch_size`` to collect, ``force`` / ``container`` / ``engine`` to build."""

    families: list[str] | None = None
    batch_size: int = 512
    force: bool = False
    container: str | None = None
    engine: str | None = None
    all_rows: bool = False  # print every attack row (the attack stage's tables), not one line per device


def audit_run(
    experiment: Path,
    devices: Sequence[str | DeviceSpec] = (),
    out: Path | None = None,
    data_dir: Path | None = None,
    console: Console | None = None,
    execution: ExecOptions | None = None,
    stage: StageOptions | None = None,
    device_options: DeviceSpec | None = None,
    shadows_on_devices: bool = False,
) -> Path:
    """build -> collect (every device; ``local`` always) -> attack -> compare -> report. Returns report/index.html.

    Args:
        experiment: the experiment.toml.
        devices: devices besides the config's ``[audit] devices``: URIs (``URI@ray:NAME`` pins the device's collect
            to a Ray resource), which take ``device_options``, or whole :class:`~devices.spec.DeviceSpec` values.
        out: run directory (default: the build stage's default, runs/<experiment name>).
        data_dir: where the dataset files are.
        execution: where units run (``harness.execution``; default serial in-process; the CLI's default is an
            embedded Ray); devices collect in parallel under Ray.
        stage: the stage options (:class:`StageOptions`: attack families, collect's batch size, the build's
            force / container / engine).
        device_options: the command line's device options (ssh identity, known hosts, trust, runner, bundle,
            start timeout; its ``uri`` is unused): they fill in what a config entry leaves unset.
        shadows_on_devices: run the reference (shadow) artifacts on every device too (default: on the host only;
            the attack stage takes their outputs from ``local``).
    """
    stage = stage or StageOptions()
    problem = families_problem(stage.families or [])
    if problem:  # before anything is built
        raise HarnessError(problem)
    console = console or Console()
    exp = load_experiment(experiment)
    devs = audit_devices(exp, list(devices), device_options)
    return _run_audit(Path(experiment), exp, devs, out, data_dir, console, execution, shadows_on_devices, stage)


def demo_config() -> Path:
    """The packaged Fashion-MNIST default (``harness/experiments/fashion-default.toml``), or the repository's
    ``experiments/fashion-default.toml`` when running from a source checkout."""
    packaged = resources.files("harness").joinpath("experiments", DEMO_CONFIG)
    if packaged.is_file():
        return Path(str(packaged))
    repo = Path(__file__).resolve().parents[1] / "experiments" / DEMO_CONFIG
    if repo.is_file():
        return repo
    raise HarnessError(f"the demo config {DEMO_CONFIG} is missing from this installation; reinstall compleak-harness")


def demo_run(
    out: Path, data_dir: Path | None = None, console: Console | None = None, execution: ExecOptions | None = None,
    stage: StageOptions | None = None,
) -> Path:
    """The embedded default audit: Fashion-MNIST, ``cnn-small`` (TF-Lite and PyTorch/ExecuTorch variants) sized so
    the original overfits and leaks (300 members, 50 epochs, no regularisation), one shadow model, device ``local``,
    NR (with SAMIA's perturbed queries) / SR / MR and RMIA / LiRA. Returns report/index.html."""
    from harness.data import load_dataset

    console = console or Console()
    config = demo_config()
    exp = load_experiment(config)
    try:
        load_dataset(exp.data.dataset, data_dir=data_dir, download=False)
    except HarnessError as exc:
        if "not found" not in str(exc):
            raise  # found but unreadable: the data module's message names the file
        where = f"in {data_dir}" if data_dir is not None else "in /usr/share/datasets/fashion-mnist or the cache"
        raise HarnessError(
            f"the demo needs Fashion-MNIST, not found {where}; install it with "
            "'apt-get install dataset-fashion-mnist' (Debian) or pass --data-dir FOLDER holding the four IDX files"
        ) from None
    index = _run_audit(config, exp, audit_devices(exp, []), Path(out), data_dir, console, execution,
                       stage=stage)
    console.print(f"open the report in a browser: [bold]{esc(index.resolve().as_uri())}[/]", highlight=False)
    return index
