"""The root file system of a phone-shaped device, built from Debian packages only (:func:`ensure_phone_rootfs`).

``apt-get download`` fetches ``mksh`` and ``busybox-static`` for the device's architecture (arm64 packages need
``dpkg --add-architecture arm64`` and ``apt-get update``, which this does itself when run as root), ``dpkg-deb -x``
unpacks them, and only their static programs are kept: mksh's static build (musl, else dietlibc) as
``/system/bin/sh``, busybox with one link per applet in ``/system/bin``, and a ``getprop`` script. No glibc, no
dynamic loader, no Python. The tree lives under ``<cache>/phones/NAME/root``; owned by root, except
``/data/local/tmp`` and ``/sdcard`` (uid/gid 2000).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from devices.phone.layout import (
    DATA_LOCAL_TMP,
    DEV_NODES,
    GETPROP,
    SDCARD,
    SHELL_GID,
    SHELL_UID,
    SKIP_APPLETS,
    SYS_CPU,
    SYS_CPU_LISTS,
    PhoneKind,
    build_prop_text,
)
from harness.errors import HarnessError
from harness.toolchain.rootfs import ensure_binfmt, host_arch

#: Debian packages a phone's root file system is made of
PHONE_PACKAGES = ("mksh", "busybox-static")
#: static builds of mksh inside the mksh package, best first ({triplet}: the Debian multiarch triplet)
MKSH_STATIC = ("usr/lib/{triplet}-linux-musl/bin/mksh", "usr/lib/diet/bin/mksh", "bin/mksh-static")
_TRIPLET = {"arm64": "aarch64", "amd64": "x86_64"}
APT_ARCHIVES = Path("/var/cache/apt/archives")


def is_static_elf(path: Path) -> bool:
    """True when ``path`` is a 64-bit little-endian ELF program with no ``PT_INTERP`` (needs no dynamic loader)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
                return False
            phoff = int.from_bytes(head[32:40], "little")
            phentsize = int.from_bytes(head[54:56], "little")
            phnum = min(int.from_bytes(head[56:58], "little"), 256)
            fh.seek(phoff)
            table = fh.read(phentsize * phnum)
    except OSError:
        return False
    return all(int.from_bytes(table[i : i + 4], "little") != 3 for i in range(0, len(table), phentsize or 1))


def _foreign_arch_ready(deb_arch: str) -> bool:
    native = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    if deb_arch == native:
        return True
    foreign = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True).stdout.split()
    return deb_arch in foreign


def _add_architecture(deb_arch: str) -> None:
    """``dpkg --add-architecture`` + ``apt-get update`` (root only), or the one-line error naming the step."""
    step = f"dpkg --add-architecture {deb_arch} && apt-get update"
    if os.geteuid() != 0:
        raise HarnessError(f"{deb_arch} Debian packages are not available: run `{step}` as root")
    for argv in (["dpkg", "--add-architecture", deb_arch], ["apt-get", "update", "-qq"]):
        res = subprocess.run(argv, capture_output=True, text=True)
        if res.returncode != 0:
            raise HarnessError(f"`{' '.join(argv)}` failed: {_last(res.stderr)}; run `{step}` as root")


def _last(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("W:")]
    return (lines[-1] if lines else "no output")[:300]


def fetch_deb(package: str, deb_arch: str, folder: Path) -> Path:
    """The ``.deb`` of ``package`` for ``deb_arch``: from apt's archive cache, else ``apt-get download`` into
    ``folder``; a one-line error naming the package when neither works."""
    for where in (folder, APT_ARCHIVES):
        found = sorted(glob.glob(str(where / f"{package}_*_{deb_arch}.deb")))
        if found:
            return Path(found[-1])
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise HarnessError(f"cannot fetch Debian package {package}:{deb_arch}: apt-get and dpkg-deb are needed "
                           f"(a Debian-based host)")
    if not _foreign_arch_ready(deb_arch):
        _add_architecture(deb_arch)
    folder.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["apt-get", "download", f"{package}:{deb_arch}"], cwd=folder, capture_output=True, text=True)
    found = sorted(glob.glob(str(folder / f"{package}_*_{deb_arch}.deb")))
    if res.returncode != 0 or not found:
        raise HarnessError(f"missing Debian package {package}:{deb_arch}: apt-get download failed: "
                           f"{_last(res.stderr + res.stdout)}")
    return Path(found[-1])


def _unpack(deb: Path, into: Path) -> None:
    res = subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], capture_output=True, text=True)
    if res.returncode != 0:
        raise HarnessError(f"dpkg-deb -x {deb}: {_last(res.stderr)}")


def _static_program(unpacked: Path, candidates: tuple[str, ...], what: str) -> Path:
    for rel in candidates:
        path = unpacked / rel
        if path.is_file() and is_static_elf(path):
            return path
    raise HarnessError(f"{what}: no static program among {', '.join(candidates)} in the Debian package")


def _applets(busybox: Path, kind: PhoneKind) -> list[str]:
    """busybox's applet names (``busybox --list``, run through qemu-user for a foreign architecture)."""
    ensure_binfmt(kind.deb_arch)
    res = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, timeout=60)
    names = [n.strip() for n in res.stdout.splitlines()]
    if res.returncode != 0 or not names:
        raise HarnessError(f"{busybox} --list failed: {_last(res.stderr)}")
    return [n for n in names if n and "/" not in n and n not in SKIP_APPLETS]


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _lay_out(root: Path, kind: PhoneKind, mksh: Path, busybox: Path) -> None:
    """Populate ``root``: /system/bin (sh, busybox + applets, getprop), build.prop, cpuinfo, /dev, /proc, data."""
    bin_dir = root / "system" / "bin"
    bin_dir.mkdir(parents=True)
    shutil.copy2(mksh, bin_dir / "sh")
    shutil.copy2(busybox, bin_dir / "busybox")
    for name in _applets(bin_dir / "busybox", kind):
        if not (bin_dir / name).exists():
            (bin_dir / name).symlink_to("busybox")
    _write(bin_dir / "getprop", GETPROP, 0o755)
    _write(root / "system" / "build.prop", build_prop_text(kind.props()))
    if kind.cpuinfo:
        _write(root / "system" / "etc" / "cpuinfo", kind.cpuinfo)
    (root / "etc").symlink_to("system/etc")
    for d in DEV_NODES:
        _write(root / "dev" / d, "")
    (root / "proc").mkdir()
    for name in SYS_CPU_LISTS:
        _write(root / SYS_CPU / name, kind.cpu_list())
    (root / "data" / "misc" / "adb").mkdir(parents=True)
    for folder, mode in ((DATA_LOCAL_TMP, 0o771), (SDCARD, 0o770)):
        path = root / folder.lstrip("/")
        path.mkdir(parents=True)
        os.chown(path, SHELL_UID, SHELL_GID)
        path.chmod(mode)
    for path in (root, root / "system", root / "data", root / "data" / "local"):
        path.chmod(0o755)


def ensure_phone_rootfs(kind: PhoneKind, folder: Path) -> Path:
    """``folder/root``, built from the Debian packages when it is not there yet; returns it."""
    root = folder / "root"
    laid_out = [root / "system" / "bin" / "sh", root / "system" / "build.prop", root / SYS_CPU / SYS_CPU_LISTS[-1]]
    if all(p.is_file() for p in laid_out):
        return root
    if os.geteuid() != 0:
        raise HarnessError(f"{kind.name}: building and serving a phone-shaped device needs root (chroot, mounts, "
                           f"uid 2000)")
    folder.mkdir(parents=True, exist_ok=True)
    debs = [fetch_deb(p, kind.deb_arch, folder / "debs") for p in PHONE_PACKAGES]
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as tmp:
        unpacked = Path(tmp) / "unpacked"
        for deb in debs:
            _unpack(deb, unpacked)
        triplet = _TRIPLET.get(kind.deb_arch, kind.deb_arch)
        mksh = _static_program(unpacked, tuple(c.format(triplet=triplet) for c in MKSH_STATIC), "mksh")
        busybox = _static_program(unpacked, ("bin/busybox",), "busybox-static")
        staged = Path(tmp) / "root"
        _lay_out(staged, kind, mksh, busybox)
        if root.exists():
            shutil.rmtree(root)
        staged.rename(root)
    return root


def host_runs(kind: PhoneKind) -> bool:
    """True when this machine runs ``kind``'s programs natively (no qemu-user needed)."""
    return kind.deb_arch == host_arch()
