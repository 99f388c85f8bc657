"""``compleak runners ...``: build and inspect the native on-device runner bundles (docs/native.md).

``harness/cli.py`` registers the group with :func:`register_runners` (its ``friendly`` wrapper turns errors into one
line). The work is in :mod:`devices.native.bundle`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import typer

RUNNERS_HELP = "Build the native on-device runner (compleak-runner: ExecuTorch + LiteRT, no Python on the device)."


def register_runners(app: typer.Typer, friendly: Callable[[Any], Any], console: Any) -> typer.Typer:
    """Add the ``runners`` command group to ``app``; return the group."""
    runners_app = typer.Typer(help=RUNNERS_HELP, no_args_is_help=True, rich_markup_mode=None)
    app.add_typer(runners_app, name="runners")

    @runners_app.command("build")
    @friendly
    def runners_build(
        arch: Optional[str] = typer.Option(None, "--arch", help="amd64 | arm64 (default: this host's)"),
        force: bool = typer.Option(False, "--force", help="rebuild even when the bundle exists"),
        jobs: int = typer.Option(2, "--jobs", "-j", help="parallel compile jobs"),
        executorch_root: Optional[Path] = typer.Option(
            None, "--executorch-root", help="executorch/ folder of the wheel to build against (default: installed)"),
        litert_lib: Optional[Path] = typer.Option(
            None, "--litert-lib", help="libLiteRt.so to bundle (default: the installed ai-edge-litert's)"),
        toolchain_file: Optional[Path] = typer.Option(
            None, "--toolchain-file", help="CMake toolchain file for a cross build"),
        tarball: bool = typer.Option(False, "--tarball", help="print the bundle's .tar.gz path instead of its folder"),
    ) -> None:
        """Build the native runner bundle (bin/compleak-runner + lib/) and print its path."""
        from devices.native.bundle import BUNDLE_NAME, build_bundle, read_bundle_manifest

        def say(msg: str) -> None:
            console.print(msg, markup=False, highlight=False, style="dim")

        kw: dict[str, Any] = {}
        if not (executorch_root or litert_lib or toolchain_file):  # another arch: its wheels + a cross toolchain
            from devices.native.bundle import host_arch
            from harness.toolchain.cross import cross_build_args

            kw = dict(cross_build_args(arch or host_arch(), console))
        kw.update({k: v for k, v in (("executorch_root", executorch_root), ("litert_lib", litert_lib),
                                     ("toolchain_file", toolchain_file)) if v})
        bundle = build_bundle(arch, force=force, jobs=jobs, log=say, **kw)
        manifest = read_bundle_manifest(bundle)
        path = bundle.parent / f"{BUNDLE_NAME}-linux-{manifest.get('arch')}.tar.gz" if tarball else bundle
        console.print(str(path), markup=False, highlight=False)

    @runners_app.command("show")
    @friendly
    def runners_show(
        arch: Optional[str] = typer.Option(None, "--arch", help="amd64 | arm64 (default: this host's)"),
    ) -> None:
        """Print the manifest of the current bundle for an architecture (arch, runtimes, formats, files)."""
        from devices.native.bundle import BundleError, find_bundle, host_arch, read_bundle_manifest

        bundle = find_bundle(arch)
        if bundle is None:
            raise BundleError(f"no native runner bundle for {arch or host_arch()} yet; build it with "
                              f"`compleak runners build --arch {arch or host_arch()}`")
        console.print_json(json.dumps({"path": str(bundle), **read_bundle_manifest(bundle)}))

    return runners_app
