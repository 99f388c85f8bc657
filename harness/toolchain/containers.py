"""Container engine, the project's images, the Debian base rootfs, and emulated edge devices (up/down).

- :class:`Engine` wraps the Podman or Docker command line (argv lists, never shell strings) with the flags each
  needs on this kind of host (Podman: ``--runtime runc``, ``nofile``/``nproc`` ulimits, host networking for
  builds that reach PyPI).
- :func:`build_base_image` debootstraps a Debian rootfs (cross-architecture through qemu-user-static + binfmt),
  keeps the rootfs tarball in a cache and imports it as ``localhost/compleak-base:bookworm-<arch>``, for hosts
  that reach no container registry.
- :func:`build_image` builds ``docker/<name>/Dockerfile`` on that base, tagged with the pinned versions.
- :func:`build_in_container` runs the build stage inside a toolchain image (``compleak build --container``) and
  stamps the image id into the manifest records it wrote.
- :func:`edge_up` / :func:`edge_down` start and stop a ``device-linux`` container as an SSH device with generated
  keys; the credentials go to :mod:`devices.known_devices` so that ``connect()`` finds them.

Every failure is a one-line :class:`~harness.errors.HarnessError` naming the thing and the fix.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from rich.console import Console
from rich.markup import escape

from rundir import RunDir, atomic_path
from harness.errors import HarnessError, esc

SUITE = "bookworm"
ARCHES = ("amd64", "arm64")
_QEMU = {"arm64": "aarch64", "amd64": "x86_64"}  # binfmt entry name per Debian arch
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates", "openssh-server")
DOCKER_DIR = Path(__file__).resolve().parents[2] / "docker"
SOURCE_PACKAGES = ("rundir", "compleak", "devices", "harness")  # mounted into toolchain containers
EDGE_DEVICES = {"edge-arm64": "arm64", "edge-amd64": "amd64", "edge-arm64-native": "arm64",
                "edge-amd64-native": "amd64"}
#: edge devices without Python (docker/device-linux-native): only the native runner works there
NATIVE_EDGE_DEVICES = ("edge-arm64-native", "edge-amd64-native")
# CPU model qemu emulates for a foreign-architecture edge device: a Raspberry Pi 4 class Cortex-A72. qemu's default
# ("max") advertises SVE/dot-product/i8mm extensions under which tflite-runtime 2.14's dynamic-range kernels hang
# (batch > 1) or segfault (measured here); a real board's CPU model is also the honest thing to emulate.
EDGE_QEMU_CPU = {"arm64": "cortex-a72"}
#: /proc/cpuinfo of the emulated board (2 Cortex-A72 cores, as arm64 Linux prints it), mounted over the host's
#: x86 one in native edge devices: qemu-user passes the host's file through, and the CPU detection of LiteRT's
#: XNNPACK accelerator (cpuinfo) crashes parsing an x86 cpuinfo on aarch64 (segfault in LiteRtCreateCompiledModel,
#: measured with ai-edge-litert 2.3.0); with the board's own cpuinfo it runs (docs/native.md)
EDGE_CPUINFO = {"arm64": "".join(
    f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
    f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n" for i in range(2))}
DEFAULT_DEVICE_RUNTIMES = ("tflite-runtime==2.14.0", "onnxruntime==1.23.2")
DEFAULT_TF_VERSION = "2.14.0"
TORCH_VERSION, EXECUTORCH_VERSION = "2.13.0", "1.5.1"


@dataclass(frozen=True)
class TfPins:
    """Library versions that go with one TensorFlow release in ``toolchain-tf``.

    tfmot: tensorflow-model-optimization release tested with that TF; tf_keras: the tf-keras release (None up to
    TF 2.15, where ``tf.keras`` is the bundled Keras 2 and tfmot uses it).
    """

    tfmot: str
    tf_keras: str | None


# TensorFlow -> (tfmot, tf-keras), from the tfmot release notes and the tf-keras release line (tf-keras X.Y
# follows TF X.Y; tf-keras exists from 2.14.1 on, but TF <= 2.15 ships Keras 2 itself).
TF_TOOLCHAINS: dict[str, TfPins] = {
    "2.13.1": TfPins("0.7.5", None),
    "2.14.0": TfPins("0.7.5", None),
    "2.14.1": TfPins("0.7.5", None),
    "2.15.0": TfPins("0.7.5", None),
    "2.15.1": TfPins("0.7.5", None),
    "2.16.1": TfPins("0.8.0", "2.16.0"),
    "2.16.2": TfPins("0.8.0", "2.16.0"),
    "2.17.1": TfPins("0.8.0", "2.17.0"),
    "2.18.1": TfPins("0.8.0", "2.18.0"),
    "2.19.1": TfPins("0.8.0", "2.19.0"),
    "2.20.0": TfPins("0.8.0", "2.20.1"),
    "2.21.0": TfPins("0.8.1", "2.21.0"),
}


# --------------------------------------------------------------------------- helpers


def _say(console: Console | None, text: str) -> None:
    if console is not None:  # literally: texts carry paths, names and URIs, never markup
        console.print(text, highlight=False, markup=False)


def host_arch() -> str:
    """The Debian name of this machine's architecture (amd64 | arm64)."""
    from devices.native.bundle import ARCH_OF_MACHINE  # the one machine -> Debian arch table

    return ARCH_OF_MACHINE.get(platform.machine().lower(), platform.machine().lower())


def _check_arch(arch: str) -> str:
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


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-").lower()


# --------------------------------------------------------------------------- engine


@dataclass(frozen=True)
class Engine:
    """The container engine command line.

    name: ``podman`` or ``docker``; exe: its absolute path.
    """

    name: str
    exe: str

    def base_cmd(self) -> list[str]:
        """argv prefix; Podman gets ``--runtime runc`` when runc is installed (crun fails on this kind of host)."""
        if self.name == "podman" and shutil.which("runc"):
            return [self.exe, "--runtime", "runc"]
        return [self.exe]

    def limits(self) -> list[str]:
        """Flags for ``run``/``build`` that keep processes within the host's limits (Podman's defaults exceed them)."""
        if self.name == "podman":
            return ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
        return []

    def call(
        self, args: list[str], what: str, timeout: float | None = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ENGINE args`` and capture its output; on failure raise a one-line error about ``what``."""
        try:
            res = subprocess.run(self.base_cmd() + args, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"{self.name} {args[0]}: {what} did not finish within {timeout:.0f} s") from None
        except OSError as exc:
            raise HarnessError(f"cannot run {self.exe} ({exc.strerror}); check the --engine path") from None
        if check and res.returncode != 0:
            reason = _last_line(res.stderr or res.stdout) or f"{self.name} exit {res.returncode}"
            raise HarnessError(f"{what} failed: {reason}")
        return res

    def stream(self, args: list[str], what: str, console: Console | None, echo: bool = False) -> None:
        """Run ``ENGINE args`` showing its progress (last line in a status spinner, or every line with ``echo``);
        one-line error on failure."""
        _stream(self.base_cmd() + args, what, console, echo=echo)

    def image_exists(self, ref: str) -> bool:
        """True when ``ref`` is in the engine's local storage."""
        if self.name == "podman":
            return self.call(["image", "exists", ref], f"looking up image {ref}", check=False).returncode == 0
        return self.call(["image", "inspect", ref], f"looking up image {ref}", check=False).returncode == 0

    def image_id(self, ref: str) -> str:
        """Full image id (``sha256:...``) of a local image."""
        return self.call(["image", "inspect", "--format", "{{.Id}}", ref], f"inspecting image {ref}").stdout.strip()

    def image_labels(self, ref: str) -> dict[str, str]:
        """The labels of a local image."""
        import json

        out = self.call(["image", "inspect", "--format", "{{json .Config.Labels}}", ref], f"inspecting image {ref}")
        try:
            return json.loads(out.stdout.strip() or "{}") or {}
        except ValueError:
            return {}

    def container_state(self, name: str) -> str | None:
        """``running``, ``exited``, ... or None when no container ``name`` exists."""
        res = self.call(
            ["container", "inspect", "--format", "{{.State.Status}}", name], f"inspecting {name}", check=False
        )
        return res.stdout.strip() or None if res.returncode == 0 else None

    def require_image(self, ref: str, build_hint: str) -> None:
        """Raise a one-line error naming the command that builds ``ref`` when it is missing."""
        if not self.image_exists(ref):
            raise HarnessError(f"image {ref} not found in {self.name}; build it with: {build_hint}")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


_MILESTONES = ("STEP ", "I: Retrieving Release", "I: Configuring openssh-server", "I: Base system installed",
               "Successfully installed", "COMMIT ")


def _stream(argv: list[str], what: str, console: Console | None, env: dict[str, str] | None = None,
            echo: bool = False) -> None:
    """Run argv, showing its latest output line as progress; keep a tail for the error message."""
    tail: deque[str] = deque(maxlen=40)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    except OSError as exc:
        raise HarnessError(f"cannot run {argv[0]} ({exc.strerror})") from None
    assert proc.stdout is not None
    live = console is not None and console.is_terminal and not echo
    status = console.status(esc(what)) if live else None
    try:
        if status is not None:
            status.start()
        for line in proc.stdout:
            line = line.rstrip()
            if not line:
                continue
            tail.append(line)
            if echo and console is not None:
                console.print(line, highlight=False, markup=False)
            elif status is not None:
                status.update(f"{esc(what)}: [dim]{escape(line[:110])}[/]")
            elif console is not None and line.startswith(_MILESTONES):  # logs (CI): milestones only
                console.print(f"{what}: {line[:160]}", highlight=False, markup=False, soft_wrap=True)
        rc = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        raise
    finally:
        if status is not None:
            status.stop()
    if rc != 0:
        # the engine's own "Error: building at STEP ..." only repeats the command: prefer the step's own error
        useful = [ln for ln in tail if not ln.startswith(("Error: building at STEP", "STEP ", "--> "))]
        errors = [ln for ln in useful if re.search(r"error|failed|denied|not found|cannot|no matching", ln, re.I)]
        detail = (errors[-1] if errors else (useful or list(tail) or [f"exit status {rc}"])[-1]).removeprefix("error: ")
        raise HarnessError(f"{what} failed: {detail}")


def detect_engine(engine: str | None = None) -> Engine:
    """The container engine to use: ``engine`` (``podman``, ``docker`` or a path to either), else Podman, else
    Docker."""
    if engine:
        exe = shutil.which(engine)
        name = Path(engine).name
        if name not in ("podman", "docker"):
            raise HarnessError(f"--engine '{engine}': unsupported container engine; use podman or docker")
        if exe is None:
            raise HarnessError(f"container engine '{engine}' not found; install {name} or pass --engine with its path")
        return Engine(name, exe)
    for name in ("podman", "docker"):
        exe = shutil.which(name)
        if exe:
            return Engine(name, exe)
    raise HarnessError(
        "no container engine found (podman or docker); install podman (e.g. apt-get install podman runc)"
    )


# --------------------------------------------------------------------------- binfmt (cross-architecture)


BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_CONF_DIR = Path("/usr/lib/binfmt.d")


def ensure_binfmt(arch: str, binfmt_dir: Path = BINFMT_DIR, conf_dir: Path = BINFMT_CONF_DIR) -> None:
    """Make sure this kernel runs ``arch`` binaries through qemu-user-static (no-op for the host's own arch).

    Mounts binfmt_misc when needed and registers ``<conf_dir>/qemu-<cpu>.conf``; raises a one-line error naming
    the fix when that is not possible (no qemu-user-static, not root, a container without privileges).
    """
    _check_arch(arch)
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
                f"({_last_line(res.stderr) or 'no register file'}); "
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
    return f"localhost/compleak-base:{SUITE}-{_check_arch(arch)}"


def rootfs_tarball(arch: str, force: bool = False, console: Console | None = None) -> Path:
    """A Debian ``bookworm`` minbase rootfs (with :data:`BASE_PACKAGES`) as a tar file, cached across runs.

    Built with debootstrap (needs root; foreign architectures run their maintainer scripts under qemu).
    The tarball is ``<rootfs_cache_dir>/rootfs-bookworm-<arch>.tar``; an existing one is reused unless ``force``.
    """
    _check_arch(arch)
    cache = rootfs_cache_dir()
    tar = cache / f"rootfs-{SUITE}-{arch}.tar"
    if tar.is_file() and not force:
        _say(console, f"rootfs {arch}: cached {tar}")
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
        _stream(
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
            _say(console, f"rootfs {arch}: added {added} CA certificate(s) this host trusts beyond Debian's")
        for junk in list((work / "var/lib/apt/lists").glob("*")) + list((work / "etc/ssh").glob("ssh_host_*")):
            if junk.is_file():
                junk.unlink()
        with atomic_path(tar, mode=0o644) as part:  # readable by a non-root engine importing a root-built rootfs
            argv = ["tar", "--numeric-owner", "-C", str(work), "-cf", str(part), "."]
            _stream(argv, f"packing rootfs {arch}", console)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _say(console, f"rootfs {arch}: built {tar} in {time.monotonic() - t0:.0f} s")
    return tar


def build_base_image(arch: str, engine: str | None = None, force: bool = False, console: Console | None = None) -> str:
    """Import a debootstrapped Debian rootfs as ``localhost/compleak-base:bookworm-<arch>``; returns the reference.

    Skipped when the image exists (``force`` rebuilds the rootfs and re-imports it).
    """
    _check_arch(arch)
    eng = detect_engine(engine)
    ref = base_image_ref(arch)
    if not force and eng.image_exists(ref):
        _say(console, f"{ref}: present (use --force to rebuild)")
        return ref
    tar = rootfs_tarball(arch, force=force, console=console)
    platform_flag = ["--arch", arch] if eng.name == "podman" else ["--platform", f"linux/{arch}"]
    eng.call(["import", *platform_flag, "--change", "CMD [\"/bin/bash\"]", str(tar), ref],
             f"importing {tar} as {ref}", timeout=1800)
    _say(console, f"{ref}: imported")
    return ref


# --------------------------------------------------------------------------- project images


@dataclass(frozen=True)
class ImageSpec:
    """How to build one of the project's images: ``docker/<dockerfile_dir>`` with ``build_args``, tagged ``ref``."""

    name: str
    ref: str
    arch: str
    build_args: dict[str, str] = field(default_factory=dict)
    network: bool = True  # builds install from PyPI

    @property
    def context(self) -> Path:
        return DOCKER_DIR / self.name

    @property
    def build_command(self) -> str:
        """The ``compleak images build`` invocation that produces this image (for error messages)."""
        name = self.name
        if name == "toolchain-tf":
            name += f":{self.build_args['TF_VERSION']}"
        extra = f" --arch {self.arch}"
        if name == "device-linux":
            extra += "".join(f" --runtime {r}" for r in self.build_args["RUNTIMES"].split())
        return f"compleak images build {name}{extra}"


def tf_pins(version: str) -> TfPins:
    """tfmot / tf-keras pins for TensorFlow ``version``; one-line error listing the known versions."""
    if version not in TF_TOOLCHAINS:
        raise HarnessError(
            f"toolchain-tf:{version}: no tested tfmot/tf-keras pairing for TensorFlow {version}; "
            f"known: {', '.join(TF_TOOLCHAINS)}"
        )
    return TF_TOOLCHAINS[version]


def image_spec(name: str, arch: str = "amd64", runtimes: Iterable[str] | None = None) -> ImageSpec:
    """Resolve ``toolchain-tf[:TF]``, ``toolchain-torch``, ``device-linux`` or ``android-runner`` to an
    :class:`ImageSpec`."""
    _check_arch(arch)
    base, _, version = name.partition(":")
    suffix = "" if arch == "amd64" else f"-{arch}"
    if base == "toolchain-tf":
        version = version or DEFAULT_TF_VERSION
        pins = tf_pins(version)
        args = {
            "TF_VERSION": version,
            "TFMOT_VERSION": pins.tfmot,
            "TF_KERAS_VERSION": pins.tf_keras or "",
            "TF_PACKAGE": "tensorflow-cpu" if arch == "amd64" else "tensorflow",
        }
        return ImageSpec(base, f"localhost/compleak-toolchain-tf:{version}{suffix}", arch, args)
    if version:
        raise HarnessError(f"image '{name}': only toolchain-tf takes a version (toolchain-tf:2.14.0)")
    if base == "toolchain-torch":
        args = {"TORCH_VERSION": TORCH_VERSION, "EXECUTORCH_VERSION": EXECUTORCH_VERSION}
        return ImageSpec(
            base, f"localhost/compleak-toolchain-torch:{TORCH_VERSION}-et{EXECUTORCH_VERSION}{suffix}", arch, args
        )
    if base == "device-linux":
        reqs = sorted(runtimes or DEFAULT_DEVICE_RUNTIMES)
        if not reqs:
            reqs = sorted(DEFAULT_DEVICE_RUNTIMES)
        for r in reqs:
            if not re.fullmatch(
                r"[A-Za-z0-9_.\-]+(\[[A-Za-z0-9_,\-]+\])?((==|>=|<=|~=|!=|<|>)[A-Za-z0-9_.*+!\-]+)?", r
            ):
                raise HarnessError(f"--runtime '{r}': not a pip requirement like tflite-runtime==2.14.0")
        tag = f"{arch}-" + "-".join(_slug(r.replace("==", "-")) for r in reqs)
        return ImageSpec(base, f"localhost/compleak-device-linux:{tag}", arch, {"RUNTIMES": " ".join(reqs)})
    if base == "device-linux-native":  # no runtimes, no Python: the build only removes packages (no network)
        if runtimes:
            raise HarnessError("device-linux-native has no Python: --runtime does not apply (the native runner "
                               "brings its runtimes: compleak runners build)")
        return ImageSpec(base, f"localhost/compleak-device-linux-native:{arch}", arch, {}, network=False)
    if base == "android-runner":
        return ImageSpec(base, "localhost/compleak-android-runner:latest", arch, {})
    raise HarnessError(
        f"unknown image '{name}'; use toolchain-tf[:TF_VERSION], toolchain-torch, device-linux, device-linux-native "
        f"or android-runner"
    )


def build_image(name: str, arch: str = "amd64", engine: str | None = None, force: bool = False,
                console: Console | None = None, runtimes: Iterable[str] | None = None) -> str:
    """Build ``docker/<name>`` for ``arch`` (cached: skipped when the tag exists unless ``force``); returns the tag.

    The base is ``localhost/compleak-base:bookworm-<arch>`` when present (``compleak images base``), else the
    Dockerfile's default official Python image, which the engine must be able to pull.
    """
    spec = image_spec(name, arch, runtimes)
    eng = detect_engine(engine)
    if not force and eng.image_exists(spec.ref):
        _say(console, f"{spec.ref}: present (use --force to rebuild)")
        return spec.ref
    ensure_binfmt(arch)
    base = base_image_ref(arch)
    local_base = eng.image_exists(base)
    args = dict(spec.build_args)
    if local_base:
        args["BASE_IMAGE"] = base
    argv = ["build", "--platform", f"linux/{arch}", "-t", spec.ref, *eng.limits()]
    if spec.network:
        argv += ["--network", "host"]
    if local_base:
        argv += ["--pull=never"] if eng.name == "podman" else []
    for k, v in args.items():
        argv += ["--build-arg", f"{k}={v}"]
    argv += ["-f", str(spec.context / "Dockerfile"), str(spec.context)]
    t0 = time.monotonic()
    try:
        eng.stream(argv, f"building {spec.ref}", console)
    except HarnessError as exc:
        hint = (
            ""
            if local_base
            else f" (no local base {base}; on hosts without a registry run: compleak images base --arch {arch})"
        )
        raise HarnessError(f"{exc}{hint}") from None
    _say(console, f"{spec.ref}: built in {time.monotonic() - t0:.0f} s")
    return spec.ref


# --------------------------------------------------------------------------- build stage in a container


def _toolchain_image(container: str, eng: Engine) -> ImageSpec:
    name = container.removeprefix("localhost/compleak-")
    if not name.startswith(("toolchain-tf", "toolchain-torch")):
        raise HarnessError(f"--container '{container}': use toolchain-tf[:TF_VERSION] or toolchain-torch")
    spec = image_spec(name, host_arch())
    eng.require_image(spec.ref, spec.build_command)
    return spec


def build_in_container(experiment: Path, out: Path | None = None, data_dir: Path | None = None, force: bool = False,
                       container: str = "toolchain-tf", engine: str | None = None,
                       console: Console | None = None) -> Path:
    """Run ``compleak build`` inside a toolchain image and return the run directory.

    Mounts (same absolute paths inside): the project's packages read-only on ``PYTHONPATH``, the experiment file and
    the data folders read-only (and the user's dataset cache under the container's ``HOME=/tmp``), the working
    directory read-only, the run directory read-write. No network unless
    the experiment downloads its dataset. Afterwards every manifest record written by this build gets
    ``toolchain.container = {"image", "image_id", "engine", "versions"}``.
    """
    from harness.config import load_experiment

    experiment = Path(experiment).resolve()
    exp = load_experiment(experiment)
    eng = detect_engine(engine)
    spec = _toolchain_image(container, eng)
    wanted = set(exp.export.frameworks)
    have = {"toolchain-tf": {"tf"}, "toolchain-torch": {"torch"}}[spec.name]
    if wanted - have:
        raise HarnessError(
            f"{experiment}: [export] frameworks {sorted(wanted)} but {spec.name} builds only {sorted(have)}; "
            f"set frameworks = {sorted(have)} for this build (build the rest on the host or in the other toolchain)"
        )
    run = Path(out).resolve() if out else (Path.cwd() / "runs" / exp.experiment.name).resolve()
    run.mkdir(parents=True, exist_ok=True)
    src = Path(__file__).resolve().parents[2]

    mounts: list[tuple[Path, str]] = [(src / pkg, f"/opt/compleak-src/{pkg}:ro") for pkg in SOURCE_PACKAGES]
    cwd = Path.cwd().resolve()
    ro_dirs = [cwd] if cwd != Path("/") else []
    ro_dirs.append(experiment.parent)
    for d in (data_dir, exp.data.data_dir, "/usr/share/datasets"):
        if d and Path(d).expanduser().is_dir():
            ro_dirs.append(Path(d).expanduser().resolve())
    for prefix in ("npz:", "imagefolder:"):
        if exp.data.dataset.startswith(prefix):
            p = Path(exp.data.dataset[len(prefix):]).expanduser()
            p = p if p.is_absolute() else cwd / p
            if p.exists():
                ro_dirs.append(p.resolve().parent)
    for d in dict.fromkeys(ro_dirs):
        if d != run:  # nested mounts are fine: the engine mounts parents first
            mounts.append((d, f"{d}:ro"))
    mounts.append((run, f"{run}:rw"))
    # datasets harness.data cached under the user's cache folder appear at the same place under the container's HOME
    datasets = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "compleak" / "datasets"
    if datasets.is_dir():
        mounts.append((datasets, f"/tmp/.cache/compleak/datasets:{'rw' if exp.data.download else 'ro'}"))

    argv = ["run", "--rm", *eng.limits(), "--workdir", str(cwd if cwd in ro_dirs else run)]
    argv += ["--network", "host" if exp.data.download else "none"]
    if eng.name == "docker" and os.geteuid() != 0:
        argv += ["--user", f"{os.getuid()}:{os.getgid()}"]
    for host, target in mounts:
        argv += ["-v", f"{host}:{target}"]
    env = {"PYTHONPATH": "/opt/compleak-src", "HOME": "/tmp", "PYTHONUNBUFFERED": "1", "COMPLEAK_CONTAINER": spec.ref}
    for k, v in env.items():
        argv += ["-e", f"{k}={v}"]
    # serial inside the container: the toolchain images hold no Ray (the container is the unit of isolation)
    inner = ["python", "-m", "harness.cli.main", "build", str(experiment), "--out", str(run), "--no-ray"]
    if data_dir:
        inner += ["--data-dir", str(Path(data_dir).expanduser().resolve())]
    if force:
        inner.append("--force")
    argv += [spec.ref, *inner]

    rundir = RunDir(run)
    before = _manifest_fingerprints(rundir)
    t0 = time.time()
    _say(console, f"building {experiment.name} in {spec.ref} ({eng.name})")
    eng.stream(argv, f"build in {spec.ref}", console, echo=True)
    _stamp_manifest(rundir, before, t0, spec, eng)
    return run


def _manifest_fingerprints(rundir: RunDir) -> dict[str, str]:
    """artifact id -> sha256 of the manifest as it is now (empty when there is none yet)."""
    if not rundir.manifest.is_file():
        return {}
    return {a.id: a.sha256 for a in rundir.load_manifest().artifacts}


def _stamp_manifest(rundir: RunDir, before: dict[str, str], started: float, spec: ImageSpec, eng: Engine) -> None:
    """Add ``toolchain.container`` to each record the containerised build wrote (new, changed or touched files)."""
    if not rundir.manifest.is_file():
        raise HarnessError(f"build in {spec.ref} finished but wrote no {rundir.manifest}")
    manifest = rundir.load_manifest()
    labels = eng.image_labels(spec.ref)
    stamp = {
        "image": spec.ref,
        "image_id": eng.image_id(spec.ref),
        "engine": eng.name,
        "versions": {
            k.removeprefix("io.compleak."): v for k, v in labels.items() if k.startswith("io.compleak.") and v
        },
    }
    changed = False
    for rec in manifest.artifacts:
        path = rundir.artifact_path(rec)
        written = before.get(rec.id) != rec.sha256 or (path.is_file() and path.stat().st_mtime >= started - 1)
        if written:
            rec.toolchain["container"] = stamp
            changed = True
    if changed:
        manifest.save(rundir.manifest)


# --------------------------------------------------------------------------- edge devices


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_port_free(port: int) -> None:
    """One-line error when 127.0.0.1:``port`` cannot be bound (taken, privileged or out of range)."""
    if not 1 <= port <= 65535:
        raise HarnessError(f"--port {port}: not a TCP port (1-65535)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise HarnessError(
                f"port {port} on 127.0.0.1 is not available ({exc.strerror}); "
                f"pass another --port or omit it to pick a free one"
            ) from None


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable by its owner only (0600)."""
    with atomic_path(path, mode=0o600) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


@dataclass(frozen=True)
class EdgeKeys:
    """Files of one edge device under ``<cache>/edge/<name>/``.

    identity: client private key (ed25519, OpenSSH format); authorized_keys: its public half, mounted into the
    device; host_key: the device's sshd host key (mounted read-only); known_hosts: the host key for the client.
    """

    folder: Path

    @property
    def identity(self) -> Path:
        return self.folder / "id_ed25519"

    @property
    def authorized_keys(self) -> Path:
        return self.folder / "device" / "authorized_keys"

    @property
    def host_key(self) -> Path:
        return self.folder / "device" / "ssh_host_ed25519_key"

    @property
    def known_hosts(self) -> Path:
        return self.folder / "known_hosts"


def _ed25519() -> tuple[bytes, bytes]:
    """A new ed25519 key pair: (OpenSSH private key PEM, ``ssh-ed25519 AAAA...`` public line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public


def edge_keys(name: str) -> EdgeKeys:
    """The keys of edge device ``name``, generated on first use (0600 private files)."""
    keys = EdgeKeys(cache_root() / "edge" / name)
    if not keys.identity.is_file() or not keys.authorized_keys.is_file():
        private, public = _ed25519()
        _write_private(keys.identity, private)
        _write_private(keys.identity.with_suffix(".pub"), public + f" compleak-{name}\n".encode())
        _write_private(keys.authorized_keys, public + b"\n")
    if not keys.host_key.is_file():
        private, public = _ed25519()
        _write_private(keys.host_key, private)
        _write_private(keys.host_key.with_suffix(".pub"), public + b"\n")
    return keys


def _container_name(name: str) -> str:
    return f"compleak-{name}"


def _wait_for_sshd(eng: Engine, cname: str, port: int, deadline_s: float = 120.0) -> None:
    """Wait until sshd in ``cname`` answers with an SSH banner on 127.0.0.1:``port``."""
    t_end = time.monotonic() + deadline_s
    while time.monotonic() < t_end:
        state = eng.container_state(cname)
        if state not in ("running", "created", "configured"):
            logs = eng.call(["logs", "--tail", "5", cname], f"reading logs of {cname}", check=False)
            raise HarnessError(
                f"edge device {cname} stopped ({state}): {_last_line(logs.stderr + logs.stdout) or 'no output'}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                s.settimeout(10)
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise HarnessError(f"edge device {cname}: sshd did not answer on 127.0.0.1:{port} within {deadline_s:.0f} s")


def edge_up(name: str, runtimes: Iterable[str] | None = None, engine: str | None = None, port: int | None = None,
            console: Console | None = None) -> str:
    """Start ``device-linux`` as SSH device ``name`` (edge-arm64 | edge-amd64); returns ``ssh://root@127.0.0.1:PORT``.

    ``edge-arm64-native`` / ``edge-amd64-native`` start ``device-linux-native`` instead: the same board with no Python
    at all (only the native runner works there); its image is built from the local base image when missing (no
    network: the build only removes packages) and ``runtimes`` must be empty.

    sshd listens on the loopback port only, with a generated host key that is recorded in a known_hosts file the
    tool owns, and accepts only the generated client key. The device is registered in
    :mod:`devices.known_devices`, so later commands need no ``--identity``/``--known-hosts``. Idempotent: a device
    already up is returned as is.
    """
    from devices import known_devices

    if name not in EDGE_DEVICES:
        raise HarnessError(f"unknown edge device '{name}'; use one of: {', '.join(EDGE_DEVICES)}")
    arch = EDGE_DEVICES[name]
    eng = detect_engine(engine)
    native = name in NATIVE_EDGE_DEVICES
    if native and runtimes:
        raise HarnessError(f"{name} has no Python: --runtime does not apply (the native runner brings its runtimes)")
    spec = image_spec("device-linux-native", arch) if native else image_spec("device-linux", arch, list(runtimes or []))
    cname = _container_name(name)
    state = eng.container_state(cname)
    if state == "running":
        for dev in known_devices.known_devices():
            if dev.name == name and dev.meta.get("image") == spec.ref:
                _say(console, f"{name}: already up")
                return dev.uri
        _say(console, f"{name}: running with other settings; restarting")
    if state is not None:
        eng.call(["rm", "-f", cname], f"removing old container {cname}")
    if native and not eng.image_exists(spec.ref) and eng.image_exists(base_image_ref(arch)):
        build_image(spec.name, arch, engine=engine, console=console)  # offline: it only removes packages
    eng.require_image(spec.ref, spec.build_command)
    ensure_binfmt(arch)
    if port is None:
        port = _free_port()
    else:
        check_port_free(port)
    keys = edge_keys(name)
    host_pub = keys.host_key.with_suffix(".pub").read_text().split()
    known_hosts_line = f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n"
    _write_private(keys.known_hosts, known_hosts_line.encode())

    cpu = EDGE_QEMU_CPU.get(arch) if arch != host_arch() else None
    argv = ["run", "-d", "--name", cname, "--network", "host", *eng.limits(),
            "--label", f"io.compleak.edge={name}",
            "-v", f"{keys.host_key}:/etc/ssh/ssh_host_ed25519_key:ro",
            "-v", f"{keys.authorized_keys}:/root/.ssh/authorized_keys:ro"]
    if cpu:  # qemu-user reads QEMU_CPU at every exec; sshd passes it on to login sessions through SetEnv
        argv += ["-e", f"QEMU_CPU={cpu}"]
    if cpu and native and arch in EDGE_CPUINFO:  # the board's /proc/cpuinfo, not the x86 host's
        cpuinfo = keys.folder / "cpuinfo"
        _write_private(cpuinfo, EDGE_CPUINFO[arch].encode())
        cpuinfo.chmod(0o644)
        argv += ["-v", f"{cpuinfo}:/proc/cpuinfo:ro"]
    argv += [spec.ref, "-p", str(port), "-o", f"ListenAddress=127.0.0.1:{port}", "-h", "/etc/ssh/ssh_host_ed25519_key"]
    if cpu:
        argv += ["-o", f"SetEnv=QEMU_CPU={cpu}"]
    eng.call(argv, f"starting {cname} from {spec.ref}")
    try:
        _wait_for_sshd(eng, cname, port)
    except BaseException:
        eng.call(["rm", "-f", cname], f"removing {cname}", check=False)
        raise
    uri = f"ssh://root@127.0.0.1:{port}"
    known_devices.register(known_devices.KnownDevice(
        uri=uri, name=name, identity=str(keys.identity), known_hosts=str(keys.known_hosts),
        meta={"engine": eng.name, "container": cname, "image": spec.ref, "arch": arch, "qemu_cpu": cpu,
              "runtimes": spec.build_args.get("RUNTIMES", "").split(), "python": not native},
    ))
    _say(console, f"{name}: up ({arch}, {spec.ref}) at {uri}")
    return uri


def edge_down(name: str, engine: str | None = None, console: Console | None = None) -> None:
    """Stop and remove edge device ``name`` and forget its registration (its keys are kept for the next ``up``)."""
    from devices import known_devices

    if name not in EDGE_DEVICES:
        raise HarnessError(f"unknown edge device '{name}'; use one of: {', '.join(EDGE_DEVICES)}")
    eng = detect_engine(engine)
    cname = _container_name(name)
    if eng.container_state(cname) is None:
        _say(console, f"{name}: not running")
    else:
        eng.call(["rm", "-f", "-t", "2", cname] if eng.name == "podman" else ["rm", "-f", cname], f"removing {cname}")
        _say(console, f"{name}: stopped and removed")
    known_devices.unregister(name)


def image_size(eng: Engine, ref: str) -> int:
    """Size in bytes of a local image (as the engine reports it)."""
    out = eng.call(["image", "inspect", "--format", "{{.Size}}", ref], f"inspecting image {ref}").stdout.strip()
    return int(out) if out.isdigit() else 0


__all__ = [
    "Engine", "detect_engine", "ensure_binfmt", "build_base_image", "build_image", "build_in_container",
    "edge_up", "edge_down", "image_spec", "rootfs_tarball", "check_port_free",
]
