"""The ``compleak`` command line (Typer).

Each command is a thin shell: it parses options, calls one stage function, and turns the project's own
error types into a single red line and exit status 2 (never a traceback). Stage modules are imported
inside the commands so that ``compleak --help`` stays fast and a missing optional extra (TensorFlow,
torch, paramiko) only matters to the command that needs it.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence, TypeVar

import typer
from rich.console import Console

from harness.cli.examples import EPILOG, EXAMPLES
from harness.cli.gate import FAIL_ON_HELP, gate_exit, register_gate
from harness.errors import Terminated, esc, on_sigterm, user_errors

if TYPE_CHECKING:
    from devices.spec import DeviceSpec
    from harness.execution import ExecOptions


# rich_markup_mode=None: plain click help, so '[attack]' in a help text prints as written and flags show no
# '<bool>' metavar (Typer's rich help does both); tests/test_cli_help.py checks the rendered help
app = typer.Typer(
    name="compleak",
    help="Audit membership leakage of compressed models as deployed on devices (CompLeak NR/SR/MR, RMIA, LiRA).",
    epilog=EXAMPLES,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},  # every subcommand inherits -h
)
devices_app = typer.Typer(help="List, probe, start and stop devices.", no_args_is_help=True, rich_markup_mode=None)
images_app = typer.Typer(
    help="Build container images (toolchains, emulated edge devices).", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(devices_app, name="devices")
app.add_typer(images_app, name="images")

# a log file or CI job gets wide tables instead of rich's 80-column fallback for non-terminals
console = Console() if sys.stdout.isatty() else Console(width=160)
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., object])
_invocation: dict[str, object] = {}  # the global options of the current invocation (set by _global_options)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("compleak-harness")
        except PackageNotFoundError:
            v = "unknown (not installed as a package)"
        console.print(f"compleak {v}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _global_options(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", envvar="COMPLEAK_VERBOSE",
        help="show third-party library output (TensorFlow, torch, ExecuTorch, onnxruntime, Ray, Python warnings) on "
        "the terminal; by default it goes to RUN/logs/<command>.log (or ~/.cache/compleak/logs/)",
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version of compleak and exit"
    ),
) -> None:
    """Audit membership leakage of compressed models as deployed on devices (CompLeak NR/SR/MR, RMIA, LiRA)."""
    _invocation["verbose"] = verbose  # set on every invocation (Typer runs commands outside click's context)


def _typed_strings(values: object) -> list[str]:
    """The strings among a command's arguments (lists flattened): URIs whose passwords must never be echoed."""
    out: list[str] = []
    for v in values if isinstance(values, (list, tuple)) else [values]:
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out.extend(_typed_strings(v))
    return out


def one_line(message: object, typed: Sequence[str] = ()) -> str:
    """``message`` as one line with every password masked (see ``devices.uri.mask_secrets``)."""
    from devices.uri import mask_secrets

    text = "; ".join(ln.strip() for ln in str(message).splitlines() if ln.strip())
    return mask_secrets(text, *[t for t in typed if "@" in t])


def print_error(message: object, typed: Sequence[str] = ()) -> None:
    """Print ``error: MESSAGE`` on stderr as exactly one literal line (no markup is interpreted, secrets masked)."""
    from rich.text import Text

    err_console.print(
        Text.assemble(("error:", "bold red"), " ", one_line(message, typed)), highlight=False, soft_wrap=True
    )


def _write_traceback(exc: BaseException, typed: Sequence[str]) -> str:
    """Write the traceback of an unexpected exception to a private temp file (0600, secrets masked); its path."""
    import tempfile
    import traceback

    from devices.uri import mask_secrets

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        fd, name = tempfile.mkstemp(prefix="compleak-traceback-", suffix=".txt")
        with open(fd, "w", encoding="utf-8", errors="replace") as fh:
            fh.write(mask_secrets(text, *[t for t in typed if "@" in t]))
        return name
    except OSError:
        return "nowhere: the temp directory is not writable"


def friendly(fn: F) -> F:
    """Turn the project's user-facing errors into one red line on stderr and exit code 2.

    The project's error types print their message; an ``OSError`` naming a file prints that file and the reason;
    anything else is a bug and prints ``error: internal error: TYPE: FIRST LINE (traceback written to FILE; please
    report it)``. Every line is printed literally (markup in paths or device names is not interpreted) with any
    password of a typed URI masked. Typer/click usage errors and exits pass through unchanged.
    """

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        from harness.cli.quiet import quiet, run_of
        from harness.errors import cli_exits

        typed = _typed_strings([*args, *kwargs.values()])
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_sigterm)  # a clean stop: `with` blocks close, finished work stays
        try:  # third-party log noise goes to a log file, not the terminal, unless -v (harness/cli/quiet.py)
            with quiet(fn.__name__.strip("_").replace("_", "-"), run_of(kwargs), _verbose(), [err_console]):
                return fn(*args, **kwargs)
        except user_errors() as exc:
            print_error(str(exc), typed)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: finished work is kept; rerun the same command to resume")
            raise typer.Exit(130) from None
        except Terminated:
            print_error("terminated (SIGTERM): finished work is kept; rerun the same command to resume")
            raise typer.Exit(143) from None
        except cli_exits():
            raise
        except Exception as exc:
            if _terminated(exc):
                print_error("terminated (SIGTERM): finished work is kept; rerun the same command to resume")
                raise typer.Exit(143) from None
            print_error(_unexpected(exc, typed), typed)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _terminated(exc: BaseException | None) -> bool:
    """Whether SIGTERM's :class:`Terminated` is in ``exc``'s chain (a C extension running when the signal came may
    wrap it, e.g. Ray's ``SystemError: ... returned a result with an exception set``)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, Terminated):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _unexpected(exc: Exception, typed: Sequence[str]) -> str:
    """The one line for an exception that is not a user error: an ``OSError`` naming a file gives that file and the
    reason; anything else is a bug, an internal error with the traceback written to a file."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
        return f"{where}: {exc.strerror}; check the path, its permissions and free space"
    return _internal(exc, typed)


def _verbose() -> bool:
    """The global ``-v/--verbose`` of this invocation."""
    return bool(_invocation.get("verbose"))


def _internal(exc: BaseException, typed: Sequence[str]) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    first = (lines[0] if lines else "")[:200]
    where = _write_traceback(exc, typed)
    return f"internal error: {type(exc).__name__}: {first} (traceback written to {where}; please report it)"


def _execution(ray_address: Optional[str], workers: Optional[int], no_ray: bool) -> "ExecOptions":
    """Where a stage's units run (harness.execution; docs/scale.md): serial, embedded Ray, or a cluster. Checked
    before any work: an embedded Ray needs authentication on, a cluster address must answer."""
    from harness.execution import ExecOptions
    from harness.execution.ray_executor import check_reachable

    options = ExecOptions(serial=no_ray, address=ray_address, workers=workers)
    if options.cluster_address and not options.serial:
        check_reachable(options.cluster_address)
    return options


def _split(values: str | Sequence[str] | None) -> Optional[list[str]]:
    """A list option's values, given as repeated flags, comma-separated, or both (``--families NR,SR --families
    MR`` -> [NR, SR, MR]); None when none was given. Every list option (--device, --families, --artifacts) uses it."""
    given = [values] if isinstance(values, str) else list(values or [])
    out = [v.strip() for value in given for v in str(value).split(",") if v.strip()]
    return out or None


LIST_HELP = "; repeat or comma-separate"
DATA_DIR_HELP = "folder holding the dataset files (default: the cache ~/.cache/compleak/datasets and system folders)"
IDENTITY_HELP = "ssh private key for ssh:// devices (default: ssh's own keys, or the key of an edge device it started)"
KNOWN_HOSTS_HELP = "known_hosts file for ssh:// devices (default ~/.ssh/known_hosts)"
TRUST_HELP = "accept and record an unknown ssh host key (first contact only; a changed key is always refused)"
ENGINE_HELP = "container engine: podman or docker (default: the one found)"
RUNNER_HELP = ("on-device runner: auto (Python where the device has a usable one, else the native compleak-runner), "
               "python or native (docs/native.md)")
ALL_HELP = "print every attack row per device (default: one line per device; compleak export has them all)"
BUNDLE_HELP = "native runner bundle folder (default: the one `compleak runners build` made for the device's arch)"


def _device_options(identity: Optional[Path] = None, known_hosts: Optional[Path] = None, trust_new_host: bool = False,
                    runner: str = "auto", bundle: Optional[Path] = None, binaries: Optional[Path] = None,
                    start_timeout: float | None = None) -> "DeviceSpec":
    """The command line's device options as one value (its ``uri`` is a placeholder, replaced per device), checked
    before any work starts (one line naming the option)."""
    from devices.spec import DEFAULT_START_TIMEOUT_S, DeviceSpec

    return DeviceSpec("local", identity=identity, known_hosts=known_hosts, trust_new_host=trust_new_host,
                      binaries=binaries, runner=runner, bundle=bundle,
                      start_timeout=DEFAULT_START_TIMEOUT_S if start_timeout is None else start_timeout)


# --------------------------------------------------------------------------- build


@app.command()
@friendly
def build(
    experiment: Path = typer.Argument(..., help="experiment.toml"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default runs/<experiment name>)"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="where the dataset files are"),
    force: bool = typer.Option(False, "--force", help="rebuild every artifact even if its inputs did not change"),
    container: Optional[str] = typer.Option(
        None, "--container", help="run the build inside a toolchain image, e.g. toolchain-tf:2.14.0"
    ),
    engine: Optional[str] = typer.Option(None, "--engine", help="container engine: podman or docker (detected)"),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="join this Ray cluster (default: $RAY_ADDRESS, else an embedded local Ray)"
    ),
    workers: Optional[int] = typer.Option(None, "--workers", help="at most N units at once (default: all CPUs)"),
    no_ray: bool = typer.Option(False, "--no-ray", help="run every unit serially in this process (debugging)"),
) -> None:
    """Train, compress and export every artifact of EXPERIMENT into a run directory."""
    from harness.build.stage import build_run

    run = build_run(
        experiment, out=out, data_dir=data_dir, force=force, container=container, engine=engine, console=console,
        execution=_execution(ray_address, workers, no_ray),
    )
    console.print(f"run directory: [bold]{esc(run)}[/]")


# --------------------------------------------------------------------------- import


@app.command("import", epilog=EPILOG["import"])
@friendly
def import_(
    run: Path = typer.Argument(..., help="run directory to create or extend"),
    target: list[str] = typer.Option(..., "--target", help="PATH[:VARIANT] of a shipped artifact; repeat"),
    data: str = typer.Option(
        ..., "--data", help="dataset spec: fashion-mnist, cifar10, npz:PATH, imagefolder:PATH, ..."
    ),
    members: Path = typer.Option(..., "--members", help="member ids (one per line) or a CSV with a membership column"),
    nonmembers: Optional[Path] = typer.Option(
        None, "--nonmembers", help="non-member ids; default: as many drawn at random from the rest"
    ),
    shadow: list[str] = typer.Option(
        [], "--shadow", help="PATH[:VARIANT]@K: artifact of user-supplied shadow model K (default 0); repeat"
    ),
    shadow_arch: Optional[str] = typer.Option(
        None, "--shadow-arch", help="zoo arch (cnn-small, ...) to train shadow models with"
    ),
    shadow_members: list[Path] = typer.Option(
        [], "--shadow-members", help="ids shadow K was trained on (id list or membership CSV); repeat, K = 0, 1, ..."
    ),
    preprocess: Optional[Path] = typer.Option(None, "--preprocess", help="TOML with resize/scale/mean/std/layout"),
    config: Optional[Path] = typer.Option(
        None, "--config", help="experiment.toml whose experiment/train/compress/attack sections apply"
    ),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
) -> None:
    """Create or extend RUN from artifacts built outside this tool."""
    from harness.importer.stage import import_run

    import_run(
        run,
        targets=target,
        data=data,
        members=members,
        nonmembers=nonmembers,
        shadows=shadow,
        shadow_arch=shadow_arch,
        preprocess=preprocess,
        data_dir=data_dir,
        console=console,
        shadow_members=shadow_members,
        config=config,
    )


# --------------------------------------------------------------------------- collect


@app.command(epilog=EPILOG["collect"])
@friendly
def collect(
    run: Path = typer.Argument(..., help="run directory"),
    device: list[str] = typer.Option(
        ["local"], "--device", "-d", metavar="URI",
        help="local | ssh://user@host:port | adb://SERIAL | emulator://AVD" + LIST_HELP + " (one after another)",
    ),
    artifacts: list[str] = typer.Option(
        [], "--artifacts", metavar="IDS", help="artifact ids to collect (default: all)" + LIST_HELP
    ),
    identity: Optional[Path] = typer.Option(None, "--identity", help="ssh private key"),
    known_hosts: Optional[Path] = typer.Option(
        None, "--known-hosts", help="known_hosts file (default ~/.ssh/known_hosts)"
    ),
    trust_new_host: bool = typer.Option(False, "--trust-new-host", help="accept and record an unknown ssh host key"),
    binaries: Optional[Path] = typer.Option(None, "--binaries", help="folder with benchmark_model / executor_runner"),
    batch_size: int = typer.Option(512, "--batch-size", help="examples per device invocation"),
    perturbations: Optional[int] = typer.Option(
        None, "--perturbations", help="SAMIA: perturbed copies per example (default: [attack] samia_perturbations)"
    ),
    start_timeout: float = typer.Option(
        30.0, "--start-timeout", help="seconds the device's runner may take to start (interpreter + runtime imports)"
    ),
    runner: str = typer.Option("auto", "--runner", help=RUNNER_HELP),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help=BUNDLE_HELP),
) -> None:
    """Run the artifacts of RUN on a device and store its raw outputs."""
    from harness.collect.stage import collect_run

    options = _device_options(identity, known_hosts, trust_new_host, runner, bundle, binaries, start_timeout)
    for one in _split(device) or ["local"]:
        collect_run(run, options.replace(uri=one), artifacts=_split(artifacts), batch_size=batch_size,
                    console=console, perturbations=perturbations)


# --------------------------------------------------------------------------- attack


@app.command()
@friendly
def attack(
    run: Path = typer.Argument(..., help="run directory"),
    device: list[str] = typer.Option(
        [], "--device", "-d", metavar="URI", help="device id (default: every collected device)" + LIST_HELP
    ),
    families: list[str] = typer.Option(
        [], "--families", metavar="FAMILIES",
        help="subset of NR,SR,MR (default: the families of the run's config's [attack] section); merged into the "
        "rows of the other families" + LIST_HELP,
    ),
    force: bool = typer.Option(False, "--force", help="recompute even when the inputs did not change"),
) -> None:
    """Run the CompLeak attacks and baselines on collected outputs (skipped when nothing changed)."""
    from harness.attack.stage import FitCache, attack_run

    fits = FitCache()  # several --device: each attack group is fitted once
    for one in _split(device) or [None]:
        attack_run(run, device=one, families=_split(families) or [], console=console, fits=fits, force=force)


# --------------------------------------------------------------------------- report


@app.command()
@friendly
def report(
    run: Path = typer.Argument(..., help="run directory"),
    no_compare: bool = typer.Option(
        False, "--no-compare", help="do not compare collected devices with the host first (see 'compleak compare')"
    ),
) -> None:
    """Write report/index.html and report/summary.json for RUN. Devices collected besides the host are compared with
    it first (as 'compleak compare RUN'; skipped when up to date), so the report shows host versus device."""
    from harness.compare import compare_for_report
    from harness.report.stage import write_report

    if not no_compare and Path(run).is_dir():
        compare_for_report(run, console=console)
    index = write_report(run, console=console)
    console.print(f"report: [bold]{esc(index)}[/]")


# --------------------------------------------------------------------------- compare


@app.command()
@friendly
def compare(
    run: Path = typer.Argument(..., help="run directory with outputs of the host (local) and of other devices"),
    device: Optional[str] = typer.Option(
        None, "--device", "-d", metavar="URI", help="compare only this device (default: every collected device)"
    ),
    force: bool = typer.Option(False, "--force", help="recompute even when the inputs did not change"),
) -> None:
    """Host versus device: output divergence, leakage deltas and host-shadow attacks on device targets, per device
    (RUN/compare/<device>.json; docs/report.md). 'audit' and 'report' run it too."""
    from harness.compare import compare_device, compare_run
    from harness.errors import HarnessError

    if not Path(run).is_dir():
        raise HarnessError(f"{run}: no such run directory; create one with 'compleak build' or 'compleak import'")
    if device is not None:
        written = [compare_device(run, device, console=console, force=force)]
    else:
        written = compare_run(run, console=console, force=force)
    if not written:
        console.print(
            f"nothing to compare: only the host (local) was collected in {esc(run)}; collect on a device first "
            f"('compleak collect {esc(run)} --device URI')",
            highlight=False,
        )


# --------------------------------------------------------------------------- check / export (docs/ci.md)



@app.command("export", epilog=EPILOG["export"])
@friendly
def export(
    run: Path = typer.Argument(..., help="run directory"),
    fmt: str = typer.Option("csv", "--format", "-f", metavar="FORMAT", help="csv | parquet | json"),
    scores: bool = typer.Option(
        False, "--scores", help="export the per-example scores (attacks/<device>/scores.npz) instead of the results"
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="file to write; '-' for standard output (default RUN/report/results.FORMAT)"
    ),
) -> None:
    """Write RUN's attack results (one row per attack; tpr@FPR and CI columns) or per-example scores as a table."""
    from harness.export import export_run

    written = export_run(run, fmt.lower(), scores=scores, out=out)
    if written is not None:
        err_console.print(f"exported: [bold]{esc(written)}[/]", highlight=False)


# --------------------------------------------------------------------------- audit / demo


@app.command(epilog=EPILOG["audit"])
@friendly
def audit(
    experiment: Path = typer.Argument(..., help="experiment.toml"),
    device: list[str] = typer.Option(
        [], "--device", "-d", metavar="URI",
        help="device URI, besides the config's [audit] devices ('local' is always included)" + LIST_HELP,
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default runs/<experiment name>)"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    identity: Optional[Path] = typer.Option(None, "--identity", help=IDENTITY_HELP),
    known_hosts: Optional[Path] = typer.Option(None, "--known-hosts", help=KNOWN_HOSTS_HELP),
    trust_new_host: bool = typer.Option(False, "--trust-new-host", help=TRUST_HELP),
    families: list[str] = typer.Option(
        [], "--families", metavar="FAMILIES",
        help="attack families, a subset of NR,SR,MR (default: the config's [attack] families)" + LIST_HELP,
    ),
    batch_size: int = typer.Option(512, "--batch-size", help="collect: examples per device invocation"),
    force: bool = typer.Option(
        False, "--force", help="build: rebuild every artifact even if its inputs did not change"
    ),
    container: Optional[str] = typer.Option(
        None, "--container", help="build: run the build inside a toolchain image, e.g. toolchain-tf:2.14.0"
    ),
    engine: Optional[str] = typer.Option(None, "--engine", help=ENGINE_HELP + " (with --container)"),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="join this Ray cluster (default: $RAY_ADDRESS, else an embedded local Ray)"
    ),
    workers: Optional[int] = typer.Option(None, "--workers", help="at most N units at once (default: all CPUs)"),
    no_ray: bool = typer.Option(False, "--no-ray", help="run every unit serially in this process (debugging)"),
    shadows_on_devices: bool = typer.Option(
        False, "--shadows-on-devices", help="also run the reference (shadow) artifacts on every device, not only on "
        "the host's CPU workers"
    ),
    fail_on: list[str] = typer.Option(
        [], "--fail-on", metavar="EXPR", help=FAIL_ON_HELP + "; checked after the report is written"
    ),
    runner: str = typer.Option("auto", "--runner", help=RUNNER_HELP),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help=BUNDLE_HELP),
    all_rows: bool = typer.Option(False, "--all", "-v", help=ALL_HELP),
) -> None:
    """build -> collect (every device) -> attack -> report, resumable at every stage."""
    from harness.audit import StageOptions, audit_run
    from harness.gate import parse_rules

    rules = parse_rules(fail_on)  # a malformed rule fails now, not after hours of building
    index = audit_run(
        experiment,
        devices=_split(device) or [],
        out=out,
        data_dir=data_dir,
        console=console,
        execution=_execution(ray_address, workers, no_ray),
        stage=StageOptions(_split(families), batch_size, force, container, engine, all_rows),
        device_options=_device_options(identity, known_hosts, trust_new_host, runner, bundle),
        shadows_on_devices=shadows_on_devices,
    )
    if rules:
        gate_exit(Path(index).parent.parent, rules, "text", console)  # RUN/report/index.html -> RUN


@app.command()
@friendly
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="run directory"),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="folder holding the four Fashion-MNIST IDX files (default: the cache and "
        "/usr/share/datasets/fashion-mnist)"
    ),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="join this Ray cluster (default: $RAY_ADDRESS, else an embedded local Ray)"
    ),
    workers: Optional[int] = typer.Option(None, "--workers", help="at most N units at once (default: all CPUs)"),
    no_ray: bool = typer.Option(False, "--no-ray", help="run every unit serially in this process (debugging)"),
    all_rows: bool = typer.Option(False, "--all", "-v", help=ALL_HELP),
) -> None:
    """The embedded default audit: Fashion-MNIST, cnn-small, on this host. Builds TF-Lite (.tflite) and PyTorch
    variants as ExecuTorch (.pte), PyTorch Mobile (.ptl) and ONNX (.onnx) artifacts, collects, attacks, reports."""
    from harness.audit import StageOptions, demo_run

    demo_run(out=out, data_dir=data_dir, console=console, execution=_execution(ray_address, workers, no_ray),
             stage=StageOptions(all_rows=all_rows))


# --------------------------------------------------------------------------- devices


@devices_app.command("list")
@friendly
def devices_list(
    as_json: bool = typer.Option(False, "--json", help="print a JSON list of {id, kind, state, details} (for scripts)"),
) -> None:
    """Devices this tool can see: local, adb devices, and edge containers it started."""
    from harness.cli.devices import list_devices

    list_devices(console=console, as_json=as_json)


@devices_app.command("probe")
@friendly
def devices_probe(
    uri: str = typer.Argument(..., help="device URI"),
    identity: Optional[Path] = typer.Option(None, "--identity", help=IDENTITY_HELP),
    known_hosts: Optional[Path] = typer.Option(None, "--known-hosts", help=KNOWN_HOSTS_HELP),
    trust_new_host: bool = typer.Option(False, "--trust-new-host", help=TRUST_HELP),
    as_json: bool = typer.Option(False, "--json", help="print the properties as one JSON object (for scripts)"),
) -> None:
    """Show a device's properties: architecture, OS, Android API/ABI/SoC, Python and runtimes, free space."""
    from harness.cli.devices import probe_device

    probe_device(_device_options(identity, known_hosts, trust_new_host).replace(uri=uri), console=console,
                 as_json=as_json, notes=err_console)


@devices_app.command("up")
@friendly
def devices_up(
    name: str = typer.Argument(
        ..., help="edge-arm64 | edge-amd64 | edge-arm64-native | edge-amd64-native (no Python) | phone-arm64 | "
        "phone-x86_64 (phone-shaped, not Android: adb, no glibc, no Python, uid 2000)"
    ),
    runtime: list[str] = typer.Option([], "--runtime", help="pip requirement for the device runtime; repeat"),
    engine: Optional[str] = typer.Option(None, "--engine", help=ENGINE_HELP),
    port: Optional[int] = typer.Option(None, "--port", help="loopback port for ssh / adb (default: a free one)"),
) -> None:
    """Start an emulated device and print its URI: an edge container as an SSH device (ssh://), or a phone-shaped
    device (phone-shaped, NOT Android: static Debian tools, mksh, uid 2000, no SELinux/bionic/ART) served by the
    project's adbd on loopback (adb://)."""
    from harness.cli.devices import device_up

    console.print(device_up(name, runtime, engine, port, console, err_console), markup=False, highlight=False)


@devices_app.command("down")
@friendly
def devices_down(
    name: str = typer.Argument(
        ..., help="the device 'devices up' started: edge-arm64 | edge-amd64 | edge-arm64-native | "
        "edge-amd64-native | phone-arm64 | phone-x86_64"
    ),
    engine: Optional[str] = typer.Option(None, "--engine", help=ENGINE_HELP),
) -> None:
    """Stop a device started by 'devices up' (an edge container, or a phone-shaped device's adbd)."""
    from harness.cli.devices import device_down

    device_down(name, engine, console, err_console)


# --------------------------------------------------------------------------- images


@images_app.command("base")
@friendly
def images_base(
    arch: str = typer.Option("amd64", "--arch", help="amd64 | arm64"),
    engine: Optional[str] = typer.Option(None, "--engine", help=ENGINE_HELP),
    force: bool = typer.Option(False, "--force", help="rebuild the image even if it exists"),
) -> None:
    """Build a Debian base image with debootstrap and import it (for hosts without a registry)."""
    from harness.toolchain.rootfs import build_base_image

    console.print(build_base_image(arch, engine=engine, force=force, console=console), markup=False)


@images_app.command("build")
@friendly
def images_build(
    name: str = typer.Argument(
        ..., help="toolchain-tf[:TF_VERSION] | toolchain-torch | device-linux | device-linux-native"
    ),
    arch: str = typer.Option("amd64", "--arch", help="image architecture: amd64 | arm64 (arm64 runs emulated)"),
    engine: Optional[str] = typer.Option(None, "--engine", help=ENGINE_HELP),
    force: bool = typer.Option(False, "--force", help="rebuild the image even if it exists"),
    runtime: list[str] = typer.Option(
        [], "--runtime", help="device-linux: pip requirement of a device runtime; repeat"
    ),
) -> None:
    """Build one of the project's images from docker/."""
    from harness.toolchain.images import build_image

    console.print(
        build_image(name, arch=arch, engine=engine, force=force, console=console, runtimes=runtime or None),
        markup=False,
    )


from harness.cli.runners import register_runners  # noqa: E402 - needs friendly/console above

register_runners(app, friendly, console)
register_gate(app, friendly, console)


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    sys.exit(main())
