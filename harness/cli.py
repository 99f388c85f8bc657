"""The ``compleak`` command line (Typer).

Each command is a thin shell: it parses options, calls one stage function, and turns the project's own
error types into a single red line and exit status 2 (never a traceback). Stage modules are imported
inside the commands so that ``compleak --help`` stays fast and a missing optional extra (TensorFlow,
torch, paramiko) only matters to the command that needs it.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, Optional, TypeVar

import typer
from rich.console import Console

from harness.errors import user_errors

app = typer.Typer(
    name="compleak",
    help="Audit membership leakage of compressed models as deployed on devices (CompLeak NR/SR/MR, RMIA, LiRA).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
devices_app = typer.Typer(help="List, probe, start and stop devices.", no_args_is_help=True)
images_app = typer.Typer(help="Build container images (toolchains, emulated edge devices).", no_args_is_help=True)
app.add_typer(devices_app, name="devices")
app.add_typer(images_app, name="images")

# a log file or CI job gets wide tables instead of rich's 80-column fallback for non-terminals
console = Console() if sys.stdout.isatty() else Console(width=160)
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., object])


def friendly(fn: F) -> F:
    """Turn the project's user-facing errors into one red line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return fn(*args, **kwargs)
        except user_errors() as exc:
            from rich.markup import escape

            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: finished work is kept; rerun the same command to resume")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _split(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


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
) -> None:
    """Train, compress and export every artifact of EXPERIMENT into a run directory."""
    from harness.build import build_run

    run = build_run(
        experiment, out=out, data_dir=data_dir, force=force, container=container, engine=engine, console=console
    )
    console.print(f"run directory: [bold]{run}[/]")


# --------------------------------------------------------------------------- import


@app.command("import")
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
    data_dir: Optional[Path] = typer.Option(None, "--data-dir"),
) -> None:
    """Create or extend RUN from artifacts built outside this tool."""
    from harness.importer import import_run

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


@app.command()
@friendly
def collect(
    run: Path = typer.Argument(..., help="run directory"),
    device: str = typer.Option("local", "--device", "-d", help="local | ssh://user@host:port | adb://SERIAL | emulator://AVD"),
    artifacts: Optional[str] = typer.Option(None, "--artifacts", help="comma-separated artifact ids (default all)"),
    identity: Optional[Path] = typer.Option(None, "--identity", help="ssh private key"),
    known_hosts: Optional[Path] = typer.Option(
        None, "--known-hosts", help="known_hosts file (default ~/.ssh/known_hosts)"
    ),
    trust_new_host: bool = typer.Option(False, "--trust-new-host", help="accept and record an unknown ssh host key"),
    binaries: Optional[Path] = typer.Option(None, "--binaries", help="folder with benchmark_model / executor_runner"),
    batch_size: int = typer.Option(512, "--batch-size", help="examples per device invocation"),
) -> None:
    """Run the artifacts of RUN on a device and store its raw outputs."""
    from harness.collect import collect_run

    collect_run(
        run,
        device,
        artifacts=_split(artifacts),
        identity=identity,
        known_hosts=known_hosts,
        trust_new_host=trust_new_host,
        binaries=binaries,
        batch_size=batch_size,
        console=console,
    )


# --------------------------------------------------------------------------- attack


@app.command()
@friendly
def attack(
    run: Path = typer.Argument(..., help="run directory"),
    device: Optional[str] = typer.Option(None, "--device", "-d", help="device id (default: every collected device)"),
    families: Optional[str] = typer.Option(
        None, "--families", help="comma-separated subset of NR,SR,MR (default: [attack] families of the run's config)"
    ),
) -> None:
    """Run the CompLeak attacks and baselines on collected outputs."""
    from harness.attack_stage import attack_run

    attack_run(run, device=device, families=_split(families) or [], console=console)


# --------------------------------------------------------------------------- report


@app.command()
@friendly
def report(run: Path = typer.Argument(..., help="run directory")) -> None:
    """Write report/index.html and report/summary.json for RUN."""
    from harness.report import write_report

    index = write_report(run, console=console)
    console.print(f"report: [bold]{index}[/]")


# --------------------------------------------------------------------------- audit / demo


@app.command()
@friendly
def audit(
    experiment: Path = typer.Argument(..., help="experiment.toml"),
    device: list[str] = typer.Option([], "--device", "-d", help="device URI; repeat. 'local' is always included"),
    out: Optional[Path] = typer.Option(None, "--out", "-o"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir"),
    identity: Optional[Path] = typer.Option(None, "--identity"),
    known_hosts: Optional[Path] = typer.Option(None, "--known-hosts"),
    trust_new_host: bool = typer.Option(False, "--trust-new-host"),
) -> None:
    """build -> collect (every device) -> attack -> report, resumable at every stage."""
    from harness.audit import audit_run

    audit_run(
        experiment,
        devices=device,
        out=out,
        data_dir=data_dir,
        identity=identity,
        known_hosts=known_hosts,
        trust_new_host=trust_new_host,
        console=console,
    )


@app.command()
@friendly
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir"),
) -> None:
    """The embedded default audit: Fashion-MNIST, cnn-small, TF-Lite + ExecuTorch variants, on this host."""
    from harness.audit import demo_run

    demo_run(out=out, data_dir=data_dir, console=console)


# --------------------------------------------------------------------------- devices


@devices_app.command("list")
@friendly
def devices_list() -> None:
    """Devices this tool can see: local, adb devices, and edge containers it started."""
    from harness.device_cmds import list_devices

    list_devices(console=console)


@devices_app.command("probe")
@friendly
def devices_probe(
    uri: str = typer.Argument(..., help="device URI"),
    identity: Optional[Path] = typer.Option(None, "--identity"),
    known_hosts: Optional[Path] = typer.Option(None, "--known-hosts"),
    trust_new_host: bool = typer.Option(False, "--trust-new-host"),
) -> None:
    """Show a device's properties: architecture, OS, Android API/ABI/SoC, Python and runtimes, free space."""
    from harness.device_cmds import probe_device

    probe_device(uri, identity=identity, known_hosts=known_hosts, trust_new_host=trust_new_host, console=console)


@devices_app.command("up")
@friendly
def devices_up(
    name: str = typer.Argument(..., help="edge-arm64 | edge-amd64"),
    runtime: list[str] = typer.Option([], "--runtime", help="pip requirement for the device runtime; repeat"),
    engine: Optional[str] = typer.Option(None, "--engine"),
    port: Optional[int] = typer.Option(None, "--port", help="loopback port for ssh (default: a free one)"),
) -> None:
    """Start an emulated edge device container as an SSH device and print its ssh:// URI."""
    from harness.containers import edge_up

    uri = edge_up(name, runtimes=runtime, engine=engine, port=port, console=console)
    console.print(uri)


@devices_app.command("down")
@friendly
def devices_down(name: str = typer.Argument(...), engine: Optional[str] = typer.Option(None, "--engine")) -> None:
    """Stop an edge device container started by 'devices up'."""
    from harness.containers import edge_down

    edge_down(name, engine=engine, console=console)


# --------------------------------------------------------------------------- images


@images_app.command("base")
@friendly
def images_base(
    arch: str = typer.Option("amd64", "--arch", help="amd64 | arm64"),
    engine: Optional[str] = typer.Option(None, "--engine"),
    force: bool = typer.Option(False, "--force"),
) -> None:
    """Build a Debian base image with debootstrap and import it (for hosts without a registry)."""
    from harness.containers import build_base_image

    console.print(build_base_image(arch, engine=engine, force=force, console=console))


@images_app.command("build")
@friendly
def images_build(
    name: str = typer.Argument(..., help="toolchain-tf[:TF_VERSION] | toolchain-torch | device-linux"),
    arch: str = typer.Option("amd64", "--arch"),
    engine: Optional[str] = typer.Option(None, "--engine"),
    force: bool = typer.Option(False, "--force"),
    runtime: list[str] = typer.Option(
        [], "--runtime", help="device-linux: pip requirement of a device runtime; repeat"
    ),
) -> None:
    """Build one of the project's images from docker/."""
    from harness.containers import build_image

    console.print(build_image(name, arch=arch, engine=engine, force=force, console=console, runtimes=runtime or None))


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    sys.exit(main())
