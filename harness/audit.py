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
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Self

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from compleak.rundir import RunDir, load_results
from harness.config import Experiment, load_experiment
from harness.errors import HarnessError

#: Relative cost of each stage, used for the progress bar and its time-remaining estimate (measured on the
#: Fashion-MNIST default on 2 cores: the build dominates, attacks come second).
STAGE_WEIGHT = {"build": 60.0, "collect": 8.0, "attack": 12.0, "compare": 1.0, "report": 2.0}
DEMO_CONFIG = "fashion-default.toml"


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
            )
        )
    for uri in cli_devices:
        if _canonical(uri) in seen:
            continue
        seen.add(_canonical(uri))
        out.append(AuditDevice(uri, identity=identity, known_hosts=known_hosts, trust_new_host=trust_new_host))
    return out


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
        self.progress.update(self.task, description=f"{name}{' (up to date)' if skip else ''}")
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
) -> Path:
    from harness.attack_stage import attack_run
    from harness.build import build_run
    from harness.collect import collect_run
    from harness.compare import compare_run
    from harness.report import write_report

    for d in devices:
        if d.trust_new_host:
            console.print(
                f"[yellow]note[/]: {d.uri}: an unknown ssh host key will be accepted and recorded (--trust-new-host)"
            )
    n = len(devices)
    steps = [("build", STAGE_WEIGHT["build"])]
    steps += [(f"collect {d.uri}", STAGE_WEIGHT["collect"]) for d in devices]
    steps += [(f"attack {d.uri}", STAGE_WEIGHT["attack"]) for d in devices]
    steps += [("compare", STAGE_WEIGHT["compare"]), ("report", STAGE_WEIGHT["report"])]
    families = list(exp.attack.families)
    console.print(
        f"audit [bold]{exp.experiment.name}[/]: {n} device{'s' if n > 1 else ''} "
        f"({', '.join(d.uri for d in devices)}), attacks {', '.join(families)}"
        f"{' + ' + ', '.join(exp.attack.baselines) if exp.attack.baselines else ''}",
        highlight=False,
    )
    with _Stages(console, steps) as st:
        run = st.run(
            "build",
            STAGE_WEIGHT["build"],
            lambda: build_run(
                experiment, out=out, data_dir=data_dir, force=False, container=None, engine=None, console=console
            ),
        )
        run = Path(run)  # type: ignore[arg-type]
        for d in devices:
            st.run(
                f"collect {d.uri}",
                STAGE_WEIGHT["collect"],
                lambda d=d: collect_run(
                    run,
                    d.uri,
                    artifacts=None,
                    identity=d.identity,
                    known_hosts=d.known_hosts,
                    trust_new_host=d.trust_new_host,
                    binaries=d.binaries,
                    batch_size=512,
                    console=console,
                    password_env=d.password_env,
                ),
            )
        for d in devices:
            st.run(
                f"attack {d.uri}",
                STAGE_WEIGHT["attack"],
                lambda d=d: attack_run(run, device=d.device_id, families=families, console=console),
                skip=attack_is_current(run, d.device_id, families),
            )
        st.run("compare", STAGE_WEIGHT["compare"], lambda: compare_run(run, console=console))
        index = st.run("report", STAGE_WEIGHT["report"], lambda: write_report(run, console=console))
    total = time.monotonic() - st.t0
    console.print(f"audit finished in {total / 60:.1f} min; report: [bold]{index}[/]", highlight=False)
    return Path(index)  # type: ignore[arg-type]


def audit_run(
    experiment: Path,
    devices: list[str],
    out: Path | None = None,
    data_dir: Path | None = None,
    identity: Path | None = None,
    known_hosts: Path | None = None,
    trust_new_host: bool = False,
    console: Console | None = None,
) -> Path:
    """build -> collect (every device; ``local`` always) -> attack -> compare -> report. Returns report/index.html.

    Args:
        experiment: the experiment.toml.
        devices: device URIs from the command line, added to the config's ``[audit] devices``.
        out: run directory (default: the build stage's default, runs/<experiment name>).
        data_dir: where the dataset files are.
        identity / known_hosts / trust_new_host: ssh options for devices the config does not give them for.
    """
    console = console or Console()
    exp = load_experiment(experiment)
    devs = audit_devices(exp, list(devices), identity, known_hosts, trust_new_host)
    return _run_audit(Path(experiment), exp, devs, out, data_dir, console)


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


def demo_run(out: Path, data_dir: Path | None = None, console: Console | None = None) -> Path:
    """The embedded default audit: Fashion-MNIST, ``cnn-small`` (TF-Lite and PyTorch/ExecuTorch variants), one shadow
    model, device ``local``, NR / SR / MR (with and without the original) and RMIA. Returns report/index.html."""
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
    index = _run_audit(config, exp, [AuditDevice("local")], Path(out), data_dir, console)
    console.print(f"open the report in a browser: [bold]{index.resolve().as_uri()}[/]", highlight=False)
    return index
