"""What a cross build of the native runner needs: the target's wheels and a CMake toolchain file.

``compleak runners build --arch arm64`` on an x86-64 host compiles ``devices/native`` with Debian's cross toolchain
(``g++-aarch64-linux-gnu``, sysroot ``/usr/aarch64-linux-gnu``: glibc 2.36, libstdc++ of GCC 12, as on Debian
bookworm boards) against the runtimes' own aarch64 libraries, taken from their wheels:

- ``executorch`` (:data:`EXECUTORCH_VERSION`): ``executorch/lib/*.so``, ``include/`` and the CMake package under
  ``share/cmake`` (tagged ``manylinux_2_28_aarch64``; newest symbol versions GLIBC_2.27 and GLIBCXX_3.4.22);
- ``ai-edge-litert`` (:data:`LITERT_VERSION`): ``ai_edge_litert/libLiteRt.so``, LiteRT's C API (tagged
  ``manylinux_2_27_aarch64``; GLIBC_2.34 at most).

``tflite-runtime``'s aarch64 wheel is no alternative: its only library is a Python extension that exports no TF-Lite
C API (no ``TfLiteInterpreterCreate``) and needs libpython (docs/native.md, "arm64 and boards without Python").

The wheels are fetched with ``pip download`` (the registry pip is configured for; no host is named here) into
``<cache>/wheels/<arch>/`` (``<cache>``: ``$COMPLEAK_CACHE_DIR`` or ``~/.cache/compleak``) and unpacked there once;
later builds reuse them. pip does not widen ``--platform`` to older or newer manylinux tags, so every tag from
``manylinux_2_17`` to ``manylinux_2_36`` (bookworm's glibc) is passed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from rich.console import Console

from devices.native.bundle import MACHINE_OF_ARCH, SOURCE_DIR
from harness.errors import HarnessError
from harness.toolchain.engine import say
from harness.toolchain.images import EXECUTORCH_VERSION
from harness.toolchain.rootfs import check_arch, host_arch
from rundir import sha256_file

#: ai-edge-litert release whose libLiteRt.so a cross-built bundle carries (the host build uses the installed one)
LITERT_VERSION = "2.3.0"
#: newest glibc of the targets (Debian bookworm): wheels needing a newer one would not load on the board
TARGET_GLIBC = (2, 36)
#: GNU triple and toolchain file per target architecture (Debian names)
CROSS_TRIPLES = {"arm64": "aarch64-linux-gnu"}
TOOLCHAIN_DIR = SOURCE_DIR / "cmake"
#: ELF e_machine of each architecture's libraries
ELF_MACHINES = {"arm64": 183, "amd64": 62}


def wheel_cache_dir(arch: str) -> Path:
    """``<cache>/wheels/<arch>``: where the target's wheels are downloaded and unpacked."""
    from devices.known_devices import cache_dir

    return cache_dir() / "wheels" / check_arch(arch)


def pip_platforms(arch: str) -> list[str]:
    """``--platform`` values for ``pip download``: every manylinux tag the target's glibc can load."""
    machine = MACHINE_OF_ARCH[check_arch(arch)]
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(TARGET_GLIBC[1], 16, -1)]
    return tags + [f"manylinux2014_{machine}"]


def toolchain_file(arch: str) -> Path | None:
    """The CMake toolchain file that cross-compiles for ``arch`` on this host (None: ``arch`` is the host's)."""
    check_arch(arch)
    if arch == host_arch():
        return None
    triple = CROSS_TRIPLES.get(arch)
    path = TOOLCHAIN_DIR / f"{triple}.cmake" if triple else None
    if path is None or not path.is_file():
        raise HarnessError(f"no cross toolchain file for {arch} on a {host_arch()} host; build the runner on a "
                           f"{arch} machine (or in the emulated {arch} image)")
    return path


def check_cross_compiler(arch: str) -> str:
    """The cross C++ compiler for ``arch`` (its path); one-line error naming the Debian package when it is missing."""
    triple = CROSS_TRIPLES[check_arch(arch)]
    exe = shutil.which(f"{triple}-g++")
    if exe is None:
        raise HarnessError(f"{triple}-g++ not found: install Debian's cross toolchain "
                           f"(apt-get install g++-{triple}) to build the {arch} runner")
    return exe


def _elf_machine(path: Path) -> int | None:
    """e_machine of an ELF file (little-endian), None when it is not one."""
    with open(path, "rb") as fh:
        head = fh.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return int.from_bytes(head[18:20], "little")


def _download(requirement: str, arch: str, dest: Path, console: Console | None) -> Path:
    """``pip download`` one binary wheel for the target into ``dest``; the wheel's path."""
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
            "--disable-pip-version-check", "-q", "-d", str(dest), requirement]
    for tag in pip_platforms(arch):
        argv += ["--platform", tag]
    say(console, f"fetching {requirement} for {arch} (pip download)")
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"pip download {requirement} for {arch} did not finish within 30 min") from None
    name = requirement.split("==")[0].replace("-", "_").lower()
    wheels = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(name + "-"))
    if res.returncode != 0 or not wheels:
        lines = [ln.strip() for ln in (res.stderr or res.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")]
        why = (errors or lines or [f"exit status {res.returncode}"])[-1][:200]
        raise HarnessError(f"cannot fetch the {arch} wheel of {requirement} ({why}); check pip's index and network, "
                           f"or put the wheel into {dest}")
    return wheels[-1]


def _extract(wheel: Path, prefixes: tuple[str, ...], out: Path) -> int:
    """Unpack the members of ``wheel`` under ``prefixes`` into ``out`` (names checked to stay inside); how many."""
    n = 0
    root = out.resolve()
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.is_dir() or not info.filename.startswith(prefixes):
                continue
            target = (out / info.filename).resolve()
            if root not in target.parents:
                raise HarnessError(f"{wheel.name}: member {info.filename!r} would land outside {out}; not unpacked")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            if (info.external_attr >> 16) & 0o111:
                target.chmod(0o755)
            n += 1
    return n


def fetch_wheels(arch: str, force: bool = False, console: Console | None = None) -> Path:
    """The target's runtime libraries, unpacked: ``<cache>/wheels/<arch>/`` holding ``executorch/`` (lib, include,
    share/cmake) and ``ai_edge_litert/libLiteRt.so`` with their ``*.dist-info`` folders, plus ``wheels.json`` (wheel
    names and sha256).

    Downloads and unpacks once; an existing unpacked folder is reused unless ``force``. The libraries are checked to
    be ELF files for ``arch``.
    """
    check_arch(arch)
    folder = wheel_cache_dir(arch)
    record = folder / "wheels.json"
    wanted = {"executorch": EXECUTORCH_VERSION, "ai-edge-litert": LITERT_VERSION}
    if record.is_file() and not force:
        try:
            have = json.loads(record.read_text())
        except ValueError:
            have = {}
        if have.get("versions") == wanted and (folder / "executorch/lib/libexecutorch.so").is_file() \
                and (folder / "ai_edge_litert/libLiteRt.so").is_file() \
                and (folder / f"executorch-{EXECUTORCH_VERSION}.dist-info").is_dir():
            say(console, f"{arch} runtime wheels: cached in {folder}")
            return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    downloads = folder.parent / f"{arch}-downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    et = _download(f"executorch=={EXECUTORCH_VERSION}", arch, downloads, console)
    lrt = _download(f"ai-edge-litert=={LITERT_VERSION}", arch, downloads, console)
    with tempfile.TemporaryDirectory(prefix=f".{arch}-", dir=folder.parent) as tmp:
        part = Path(tmp) / "unpacked"
        part.mkdir()
        # the dist-info folders beside the packages say which versions the bundle carries (native_runner reads them)
        _extract(et, ("executorch/lib/", "executorch/include/", "executorch/share/",
                      f"executorch-{EXECUTORCH_VERSION}.dist-info/"), part)
        _extract(lrt, ("ai_edge_litert/libLiteRt.so", f"ai_edge_litert-{LITERT_VERSION}.dist-info/"), part)
        for lib in (part / "executorch/lib/libexecutorch.so", part / "ai_edge_litert/libLiteRt.so"):
            machine = _elf_machine(lib) if lib.is_file() else None
            if machine != ELF_MACHINES[arch]:
                raise HarnessError(f"{lib.name} from the {arch} wheels is not an {arch} library (ELF machine "
                                   f"{machine}); delete {downloads} and retry")
        info: dict[str, Any] = {"arch": arch, "versions": wanted,
                                "wheels": {w.name: sha256_file(w) for w in (et, lrt)}}
        (part / "wheels.json").write_text(json.dumps(info, indent=1) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        part.rename(folder)
    say(console, f"{arch} runtime wheels: unpacked into {folder}")
    return folder


def cross_build_args(arch: str, console: Console | None = None, force: bool = False) -> dict[str, Path]:
    """Keyword arguments for ``devices.native.bundle.build_bundle`` when ``arch`` is not this host's:
    ``{"executorch_root", "litert_lib", "toolchain_file"}`` (the unpacked target wheels and the CMake toolchain
    file); ``{}`` for the host's own architecture. One-line errors name the missing cross compiler or wheel."""
    tc = toolchain_file(arch)
    if tc is None:
        return {}
    check_cross_compiler(arch)
    wheels = fetch_wheels(arch, force=force, console=console)
    return {"executorch_root": wheels / "executorch", "litert_lib": wheels / "ai_edge_litert" / "libLiteRt.so",
            "toolchain_file": tc}
