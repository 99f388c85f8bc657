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
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Self

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from compleak.rundir import RunDir, atomic_write_bytes, load_results
from harness.config import Experiment, load_experiment
from harness.errors import HarnessError, esc
from harness.execution import ExecOptions, Executor, SerialExecutor, Unit, make_executor

#: Relative cost of each stage, used for the progress bar and its time-remaining estimate (measured on the
#: Fashion-MNIST default on 2 cores: the build dominates, attacks come second).
STAGE_WEIGHT = {"build": 60.0, "collect": 8.0, "attack": 12.0, "compare": 1.0, "report": 2.0}
DEMO_CONFIG = "fashion-default.toml"
SEEDS_DIR = "seeds"  # experiment.seeds: RUN/seeds/<seed>/ is one complete run per seed


@dataclass
class AuditDevice:
    """One device of an audit and the options to reach it (from ``[audit] devices`` or ``--device``)."""

    uri: str
    device_id: str = ""  # the canonical id (outputs/<device>/ is named after it); filled from uri
    identity: Path | None = None
    known_hosts: Path | None = None
    trust_new_host: bool = False
    binaries: Path | None = None
    password_env: str | None = None  # name of an env var holding an ssh password (never the password itself)
    resource: str | None = None  # Ray custom resource its collect actor is pinned to (``URI@ray:NAME``, docs/scale.md)
    start_timeout: float = 30.0  # seconds its runner may take to start (collect_run's start_timeout; a loaded host)
    batch_size: int = 512  # examples per device invocation (collect_run's batch_size; ``audit --batch-size``)
    runner: str = "auto"  # auto | python | native (collect_run's runner; ``audit --runner``)
    bundle: Path | None = None  # a native runner bundle instead of the built one (``audit --bundle``)

    def __post_init__(self) -> None:
        from devices.uri import parse_device_uri

        if not self.device_id:
            self.device_id = parse_device_uri(self.uri).canonical


def audit_devices(
    exp: Experiment,
    cli_devices: list[str],
    identity: Path | None = None,
    known_hosts: Path | None = None,
    trust_new_host: bool = False,
) -> list[AuditDevice]:
    """``local`` first, then the config's ``[audit] devices``, then ``--device`` URIs; duplicates (by their
    on-disk name) dropped. Command-line ssh options fill in what a config entry leaves unset."""
    out = [AuditDevice("local")]
    seen = {"local"}
    for e in exp.audit.devices:
        if _canonical(e.uri) in seen:
            continue
        seen.add(_canonical(e.uri))
        out.append(
            AuditDevice(
                e.uri,
                identity=Path(e.identity).expanduser() if e.identity else identity,
                known_hosts=Path(e.known_hosts).expanduser() if e.known_hosts else known_hosts,
                trust_new_host=e.trust_new_host or trust_new_host,
                binaries=Path(e.binaries).expanduser() if e.binaries else None,
                password_env=e.password_env,
                resource=e.resource,
            )
        )
    for given in cli_devices:
        uri, resource = split_resource(given)
        if _canonical(uri) in seen:
            continue
        seen.add(_canonical(uri))
        out.append(AuditDevice(uri, identity=identity, known_hosts=known_hosts, trust_new_host=trust_new_host,
                               resource=resource))  # fmt: skip
    return out


RESOURCE_SUFFIX = "@ray:"


def split_resource(given: str) -> tuple[str, str | None]:
    """``URI@ray:NAME`` -> (URI, NAME): the device's collect actor runs on a Ray node offering custom resource
    NAME (a phone farm's USB hub host). A plain URI -> (URI, None)."""
    import re

    from devices.uri import mask_uri  # error messages are printed literally (no esc), passwords masked

    if RESOURCE_SUFFIX not in given:
        return given, None
    uri, name = given.rsplit(RESOURCE_SUFFIX, 1)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise HarnessError(
            f"--device {mask_uri(given[:120])}: '{mask_uri(name[:40])}' is not a Ray resource name; use letters, "
            "digits, '_', '.', '-' (e.g. ssh://pi@board.lan@ray:hub-a)"
        )
    return uri, name


# --------------------------------------------------------------------------- collect fan-out


def _collect_unit(
    run: str, device: AuditDevice, artifacts: list[str] | None, console: Console | None = None
) -> tuple[str, int]:
    """One collect unit: ``collect_run`` on one device (a Ray actor, or in-process); returns (device id, count)."""
    from harness.collect import collect_run

    written = collect_run(
        run,
        device.uri,
        artifacts=artifacts,
        identity=device.identity,
        known_hosts=device.known_hosts,
        trust_new_host=device.trust_new_host,
        binaries=device.binaries,
        batch_size=device.batch_size,
        console=console or Console(quiet=True),
        password_env=device.password_env,
        start_timeout=device.start_timeout,
        runner=device.runner,
        bundle=device.bundle,
    )
    return device.device_id, len(written)


def _warm_collect() -> None:
    """A collect actor's warm-up, run while the build still goes on: import what a device collect uses (the
    collect stage, the device drivers, paramiko), so the collect itself starts at once."""
    import devices.adb  # noqa: F401
    import devices.runner_server  # noqa: F401
    import devices.runners  # noqa: F401
    import devices.ssh  # noqa: F401
    import devices.uri  # noqa: F401
    import harness.collect  # noqa: F401
    import harness.data  # noqa: F401


def device_collect_unit(device: AuditDevice, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Unit:
    """A device's collect unit: a Ray actor (key ``collect <device id>``, 0 CPUs, pinned by the device's
    resource) running :func:`_collect_unit` with ``args``; the same key for every run, so an audit's seeds reuse
    the device's actor and :meth:`Executor.prestart` can start it during the build (``args`` are then unused)."""
    return Unit(f"collect {device.device_id}", _collect_unit, args, kwargs or {}, num_cpus=0.0,
                resources={device.resource: 1.0} if device.resource else {}, actor=True,
                warm=_warm_collect)  # fmt: skip


def prestart_collect_actors(executor: Executor, devices: list[AuditDevice]) -> None:
    """Have ``executor`` start every non-host device's collect actor as soon as it starts (during the build), so
    the actors' process start and imports overlap the build instead of delaying the collect."""
    executor.prestart([device_collect_unit(d) for d in devices if d.device_id != "local"])


def collect_units(
    run: Path, devices: list[AuditDevice], shadows_on_devices: bool, in_process: bool, console: Console
) -> list[Unit]:
    """The collect units of an audit that have work left (:func:`harness.collect.collect_pending`): one per
    device, as a Ray actor pinned by the device's resource, and the host (``local``) as a CPU task. The reference
    (shadow) artifacts run only on the host unless ``shadows_on_devices``; the other devices run only the target
    artifacts (the attack stage takes the shadows' outputs from the host). ``in_process``: the units run in this
    process (serial executor) and print to ``console``."""
    from compleak.rundir import RunDir
    from harness.collect import collect_pending

    run = Path(run).resolve()  # a worker's working directory is not the driver's
    records = RunDir(run).load_manifest().artifacts
    targets = [r.id for r in records if r.role == "target"]
    kw: dict[str, Any] = {"console": console} if in_process else {}
    units: list[Unit] = []
    for d in devices:
        host = d.device_id == "local"
        ids = None if host or shadows_on_devices else targets
        if not collect_pending(run, d.device_id, ids):
            if in_process:  # as the serial collect says it
                console.print(f"[green]all artifacts already collected on {esc(d.device_id)}[/]")
            continue
        if host:
            units.append(Unit(f"collect {d.device_id}", _collect_unit, (str(run), d, ids), kw, num_cpus=1.0))
        else:
            units.append(device_collect_unit(d, (str(run), d, ids), kw))
    return units


def collect_devices(
    run: Path,
    devices: list[AuditDevice],
    executor: Executor,
    console: Console,
    shadows_on_devices: bool = False,
) -> dict[str, int]:
    """Collect on every device at once (one actor per device; the host's reference outputs on CPU workers);
    returns {device id: artifacts collected}. Serially (``--no-ray``) the devices are visited one after another."""
    in_process = isinstance(executor, SerialExecutor)
    units = collect_units(run, devices, shadows_on_devices, in_process, console)
    done: dict[str, int] = {}
    for unit, (device_id, n) in executor.run(units):
        done[device_id] = done.get(device_id, 0) + n
        if not in_process:
            console.print(f"  collected {n} artifact(s): {esc(unit.key)}", highlight=False)
    return done


def _canonical(uri: str) -> str:
    from devices.uri import parse_device_uri

    return parse_device_uri(uri).canonical


def attack_is_current(run: Path, device_id: str, families: list[str]) -> bool:
    """True when ``attacks/<device>/results.json`` is newer than the manifest, the run's experiment.toml and every
    output of the device and of the host (the stage may take shadows from the host), and already holds every
    requested family: then the attack stage has nothing to redo."""
    rd = RunDir(run)
    res = rd.results(device_id)
    if not res.is_file() or not rd.manifest.is_file():
        return False
    inputs = [rd.manifest, *rd.outputs_dir(device_id).glob("*.npz"), *rd.outputs_dir("local").glob("*.npz")]
    if rd.experiment.is_file():  # the [attack] settings live there
        inputs.append(rd.experiment)
    newest = max(p.stat().st_mtime_ns for p in inputs)
    if res.stat().st_mtime_ns < newest:
        return False
    have = {r.family for r in load_results(res)}
    return set(families) <= have


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
    from harness.attack_stage import FitCache, attack_run
    from harness.build import build_run
    from harness.compare import compare_run
    from harness.report import write_report

    for d in devices:
        if d.trust_new_host:
            console.print(
                f"[yellow]note[/]: {esc(d.uri)}: an unknown ssh host key will be accepted and recorded "
                "(--trust-new-host)"
            )
    n = len(devices)
    stage = stage or StageOptions()
    families = list(stage.families or exp.attack.families)
    # one unit per seed (experiment.seeds: a complete run in RUN/seeds/<seed>/), else the run itself
    if exp.experiment.seeds:
        root = Path(out) if out is not None else Path("runs") / exp.experiment.name
        units = [(f"seed {s}: ", cfg, cfg.parent) for s, cfg in prepare_seed_runs(experiment, root, exp)]
    else:
        root, units = (Path(out) if out is not None else None), [("", experiment, out)]
    steps: list[tuple[str, float]] = []
    for label, _, _ in units:
        steps += [(f"{label}build", STAGE_WEIGHT["build"])]
        steps += [(f"{label}collect ({n} device{'s' if n > 1 else ''})", STAGE_WEIGHT["collect"] * n)]
        steps += [(f"{label}attack {d.uri}", STAGE_WEIGHT["attack"]) for d in devices]
        steps += [(f"{label}compare", STAGE_WEIGHT["compare"]), (f"{label}report", STAGE_WEIGHT["report"])]
    if exp.experiment.seeds:
        steps += [("report across seeds", STAGE_WEIGHT["report"])]
    console.print(
        f"audit [bold]{esc(exp.experiment.name)}[/]: {n} device{'s' if n > 1 else ''} "
        f"({esc(', '.join(d.uri for d in devices))}), attacks {', '.join(families)}"
        f"{' + ' + ', '.join(exp.attack.baselines) if exp.attack.baselines else ''}"
        + (f", seeds {', '.join(map(str, exp.experiment.seeds))}" if exp.experiment.seeds else ""),
        highlight=False,
    )
    # one executor (embedded Ray, a cluster, or serial) for every stage of the audit; Ray starts on first use
    logs_root = root if root is not None else Path("runs") / exp.experiment.name
    with make_executor(execution or ExecOptions(serial=True), logs_root) as ex, _Stages(console, steps) as st:
        prestart_collect_actors(ex, devices)  # they start with Ray, during the first build
        for label, config, unit_out in units:
            run = st.run(
                f"{label}build",
                STAGE_WEIGHT["build"],
                lambda config=config, unit_out=unit_out: build_run(
                    config, out=unit_out, data_dir=data_dir, force=stage.force, container=stage.container,
                    engine=stage.engine, console=console, executor=ex,
                ),
            )
            run = Path(run)  # type: ignore[arg-type]
            st.run(
                f"{label}collect ({n} device{'s' if n > 1 else ''})",
                STAGE_WEIGHT["collect"] * n,
                lambda run=run: collect_devices(run, devices, ex, console, shadows_on_devices),
            )
            fits = FitCache()  # attack groups fitted once, reused by every device's attack stage and by compare
            for d in devices:
                st.run(
                    f"{label}attack {d.uri}",
                    STAGE_WEIGHT["attack"],
                    lambda d=d, run=run, fits=fits: attack_run(
                        run, device=d.device_id, families=families, console=console, fits=fits, executor=ex
                    ),
                    skip=attack_is_current(run, d.device_id, families),
                )
            st.run(f"{label}compare", STAGE_WEIGHT["compare"],
                   lambda run=run, fits=fits: compare_run(run, console=console, fits=fits))
            index = st.run(f"{label}report", STAGE_WEIGHT["report"], lambda run=run: write_report(run, console=console))
        if exp.experiment.seeds:
            assert root is not None
            index = st.run("report across seeds", STAGE_WEIGHT["report"], lambda: write_report(root, console=console))
    total = time.monotonic() - st.t0
    console.print(f"audit finished in {total / 60:.1f} min; report: [bold]{esc(index)}[/]", highlight=False)
    return Path(index)  # type: ignore[arg-type]


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
        cfg = root / SEEDS_DIR / str(int(seed)) / "experiment.toml"
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


def audit_run(
    experiment: Path,
    devices: list[str],
    out: Path | None = None,
    data_dir: Path | None = None,
    identity: Path | None = None,
    known_hosts: Path | None = None,
    trust_new_host: bool = False,
    console: Console | None = None,
    execution: ExecOptions | None = None,
    shadows_on_devices: bool = False,
    families: list[str] | None = None,
    batch_size: int = 512,
    force: bool = False,
    container: str | None = None,
    engine: str | None = None,
    runner: str = "auto",
    bundle: Path | None = None,
) -> Path:
    """build -> collect (every device; ``local`` always) -> attack -> compare -> report. Returns report/index.html.

    Args:
        experiment: the experiment.toml.
        devices: device URIs from the command line, added to the config's ``[audit] devices``.
        out: run directory (default: the build stage's default, runs/<experiment name>).
        data_dir: where the dataset files are.
        identity / known_hosts / trust_new_host: ssh options for devices the config does not give them for.
        execution: where units run (``harness.execution``; default serial in-process; the CLI's default is an
            embedded Ray); devices collect in parallel under Ray.
        shadows_on_devices: run the reference (shadow) artifacts on every device too (default: on the host only;
            the attack stage takes their outputs from ``local``).
        families: attack families (subset of NR, SR, MR; None: the config's ``[attack] families``).
        batch_size: collect's examples per device invocation.
        runner / bundle: collect's runner choice on every device (``auto``: Python where the device has a usable
            one, else native; ``python`` / ``native`` force one) and a native runner bundle to use.
        force / container / engine: the build stage's options (rebuild everything; build in a toolchain image).
    """
    from harness.config import ATTACK_FAMILIES

    bad = [f for f in families or [] if f not in ATTACK_FAMILIES]
    if bad:  # before anything is built
        raise HarnessError(f"--families: unknown attack families {bad}; choose from {', '.join(ATTACK_FAMILIES)}")
    console = console or Console()
    exp = load_experiment(experiment)
    devs = audit_devices(exp, list(devices), identity, known_hosts, trust_new_host)
    for d in devs:
        d.batch_size = int(batch_size)
        d.runner, d.bundle = runner, bundle
    stage = StageOptions(list(families) if families else None, int(batch_size), force, container, engine)
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
    out: Path, data_dir: Path | None = None, console: Console | None = None, execution: ExecOptions | None = None
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
    index = _run_audit(config, exp, [AuditDevice("local")], Path(out), data_dir, console, execution)
    console.print(f"open the report in a browser: [bold]{esc(index.resolve().as_uri())}[/]", highlight=False)
    return index
