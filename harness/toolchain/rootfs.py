"""The Debian base rootfs of the project's images: architectures, binfmt registration for foreign ones
(qemu-user-static), the debootstrapped ``bookworm`` rootfs tarball (cached across runs, trusting this host's extra CA
certificates) and its import as ``localhost/compleak-base:bookworm-<arch>``, for hosts that reach no container
registry."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path

from rich.console import Console

from harness.errors import HarnessError
from harness.toolchain.engine import detect_engine, last_line, say, stream_command
from rundir import atomic_path

SUITE = "bookworm"
ARCHES = ("amd64", "arm64")
_QEMU = {"arm64": "aarch64", "amd64": "x86_64"}  # binfmt entry name per Debian arch
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates", "openssh-server")


def host_arch() -> str:
    """The Debian name of this machine's architecture (amd64 | arm64)."""
    from devices.native.bundle import ARCH_OF_MACHINE  # the one machine -> Debian arch table

    return ARCH_OF_MACHINE.get(platform.machine().lower(), platform.machine().lower())


def check_arch(arch: str) -> str:
    if arch not in ARCHES:
        raise HarnessError(f"unknown architecture '{arch}'; use one of: {', '.join(ARCHES)}")
    return arch


def cache_root() -> Path:
    """Per-user cache of the tool (keys of edge devices); shared with :mod:`devices.known_devices`."""
    from devices.known_devices import cache_dir

    return cache_dir()


def rootfs_cache_dir() -> Path:
    """Where debootstrap rootfs tarballs are kept: ``$COMPLEAK_ROOTFS_CACHE``, else ``/var/cache/compleak`` when
    writable (so CI jobs on one machine share it), else the per-user cache."""
    if os.environ.get("COMPLEAK_ROOTFS_CACHE"):
        return Path(os.environ["COMPLEAK_ROOTFS_CACHE"])
    system = Path("/var/cache/compleak")
    try:
        system.mkdir(parents=True, exist_ok=True)
        if os.access(system, os.W_OK):
            return system
    except OSError:
        pass
    return cache_root() / "rootfs"


# --------------------------------------------------------------------------- binfmt (cross-architecture)


BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_CONF_DIR = Path("/usr/lib/binfmt.d")


def ensure_binfmt(arch: str, binfmt_dir: Path = BINFMT_DIR, conf_dir: Path = BINFMT_CONF_DIR) -> None:
    """Make sure this kernel runs ``arch`` binaries through qemu-user-static (no-op for the host's own arch).

    Mounts binfmt_misc when needed and registers ``<conf_dir>/qemu-<cpu>.conf``; raises a one-line error naming
    the fix when that is not possible (no qemu-user-static, not root, a container without privileges).
    """
    check_arch(arch)
    if arch == host_arch():
        return
    cpu = _QEMU[arch]
    entry = binfmt_dir / f"qemu-{cpu}"
    if entry.is_file():
        if entry.read_text().splitlines()[:1] == ["enabled"]:
            return
        raise HarnessError(f"binfmt entry {entry} is disabled; enable it with: echo 1 > {entry}")
    conf = conf_dir / f"qemu-{cpu}.conf"
    if not conf.is_file():
        raise HarnessError(f"cannot emulate {arch}: {conf} not found; install qemu-user-static and binfmt-support")
    register = binfmt_dir / "register"
    if not register.exists():
        res = subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt_dir)], capture_output=True, text=True
        )
        if res.returncode != 0 or not register.exists():
            raise HarnessError(
                f"cannot emulate {arch}: binfmt_misc is not mounted at {binfmt_dir} and mounting it failed "
                f"({last_line(res.stderr) or 'no register file'}); "
                f"run as root: mount -t binfmt_misc binfmt_misc {binfmt_dir}"
            )
    line = next((ln for ln in conf.read_text().splitlines() if ln.strip() and not ln.startswith("#")), "")
    try:
        with open(register, "w") as fh:
            fh.write(line)
    except OSError as exc:
        raise HarnessError(
            f"cannot emulate {arch}: registering {conf} in {register} failed ({exc.strerror or exc}); "
            f"run as root, or: systemctl restart systemd-binfmt"
        ) from None
    if not entry.is_file():
        raise HarnessError(f"cannot emulate {arch}: {register} accepted {conf} but {entry} did not appear")


# --------------------------------------------------------------------------- base image (debootstrap)


_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")


def host_ca_bundle() -> Path | None:
    """The CA bundle this host's TLS clients use (``$SSL_CERT_FILE`` or Debian's), if any."""
    for p in (
        os.environ.get("SSL_CERT_FILE"),
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ):
        if p and Path(p).is_file():
            return Path(p)
    return None


def add_host_cas(rootfs: Path) -> int:
    """Make the rootfs trust the CA certificates this host trusts beyond Debian's own (e.g. a TLS-intercepting
    proxy in front of PyPI). Each extra certificate goes to ``usr/local/share/ca-certificates/`` (kept by later
    ``update-ca-certificates`` runs) and is appended to the rootfs bundle. Returns how many were added."""
    host = host_ca_bundle()
    bundle = rootfs / "etc/ssl/certs/ca-certificates.crt"
    if host is None or not bundle.is_file():
        return 0
    def norm(pem: bytes) -> bytes:
        return b"".join(pem.split())
    have = {norm(m.group(0)) for m in _PEM.finditer(bundle.read_bytes())}
    extra = [m.group(0) for m in _PEM.finditer(host.read_bytes()) if norm(m.group(0)) not in have]
    if not extra:
        return 0
    local = rootfs / "usr/local/share/ca-certificates"
    local.mkdir(parents=True, exist_ok=True)
    for i, pem in enumerate(extra):
        (local / f"compleak-host-{i:03d}.crt").write_bytes(pem + b"\n")
    with open(bundle, "ab") as fh:
        fh.write(b"".join(pem + b"\n" for pem in extra))
    return len(extra)


def base_image_ref(arch: str) -> str:
    """``localhost/compleak-base:bookworm-<arch>``."""
    return f"localhost/compleak-base:{SUITE}-{check_arch(arch)}"


def rootfs_tarball(arch: str, force: bool = False, console: Console | None = None) -> Path:
    """A Debian ``bookworm`` minbase rootfs (with :data:`BASE_PACKAGES`) as a tar file, cached across runs.

    Built with debootstrap (needs root; foreign architectures run their maintainer scripts under qemu).
    The tarball is ``<rootfs_cache_dir>/rootfs-bookworm-<arch>.tar``; an existing one is reused unless ``force``.
    """
    check_arch(arch)
    cache = rootfs_cache_dir()
    tar = cache / f"rootfs-{SUITE}-{arch}.tar"
    if tar.is_file() and not force:
        say(console, f"rootfs {arch}: cached {tar}")
        return tar
    if shutil.which("debootstrap") is None:
        raise HarnessError("debootstrap not found; install it (apt-get install debootstrap) to build base images")
    if os.geteuid() != 0:
        raise HarnessError(f"debootstrap needs root; run: sudo compleak images base --arch {arch}")
    ensure_binfmt(arch)
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / f"rootfs-{SUITE}-{arch}.d"
    shutil.rmtree(work, ignore_errors=True)  # a previous run was interrupted: start clean
    work.mkdir(parents=True)
    t0 = time.monotonic()
    try:
        stream_command(
            [
                "debootstrap",
                "--variant=minbase",
                f"--arch={arch}",
                f"--include={','.join(BASE_PACKAGES)}",
                SUITE,
                str(work),
            ],
            f"debootstrap {SUITE} {arch}",
            console,
        )
        subprocess.run(["chroot", str(work), "apt-get", "clean"], capture_output=True)
        added = add_host_cas(work)
        if added:
            say(console, f"rootfs {arch}: added {added} CA certificate(s) this host trusts beyond Debian's")
        for junk in list((work / "var/lib/apt/lists").glob("*")) + list((work / "etc/ssh").glob("ssh_host_*")):
            if junk.is_file():
                junk.unlink()
        with atomic_path(tar, mode=0o644) as part:  # readable by a non-root engine importing a root-built rootfs
            argv = ["tar", "--numeric-owner", "-C", str(work), "-cf", str(part), "."]
            stream_command(argv, f"packing rootfs {arch}", console)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(console, f"rootfs {arch}: built {tar} in {time.monotonic() - t0:.0f} s")
    return tar


def build_base_image(arch: str, engine: str | None = None, force: bool = False, console: Console | None = None) -> str:
    """Import a debootstrapped Debian rootfs as ``localhost/compleak-base:bookworm-<arch>``; returns the reference.

    Skipped when the image exists (``force`` rebuilds the rootfs and re-imports it).
    """
    check_arch(arch)
    eng = detect_engine(engine)
    ref = base_image_ref(arch)
    if not force and eng.image_exists(ref):
        say(console, f"{ref}: present (use --force to rebuild)")
        return ref
    tar = rootfs_tarball(arch, force=force, console=console)
    platform_flag = ["--arch", arch] if eng.name == "podman" else ["--platform", f"linux/{arch}"]
    eng.call(["import", *platform_flag, "--change", "CMD [\"/bin/bash\"]", str(tar), ref],
             f"importing {tar} as {ref}", timeout=1800)
    say(console, f"{ref}: imported")
    return ref
