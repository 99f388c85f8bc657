"""Emulated edge devices: a ``device-linux`` (or Python-less ``device-linux-native``) container started as an SSH
device on a loopback port with generated keys (:func:`edge_up`), and stopped (:func:`edge_down`). The credentials
go to :mod:`devices.known_devices`, so that ``connect()`` finds them."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from rich.console import Console

from harness.errors import HarnessError
from harness.toolchain.engine import Engine, detect_engine, last_line, say
from harness.toolchain.images import ImageSpec, build_image, image_spec
from harness.toolchain.rootfs import base_image_ref, cache_root, ensure_binfmt, host_arch
from rundir import atomic_path

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


def _edge_arch(name: str) -> str:
    """The Debian architecture of edge device ``name``; one-line error for an unknown one."""
    if name not in EDGE_DEVICES:
        raise HarnessError(f"unknown edge device '{name}'; use one of: {', '.join(EDGE_DEVICES)}")
    return EDGE_DEVICES[name]


def _run_argv(
    eng: Engine, name: str, spec: ImageSpec, keys: EdgeKeys, port: int, cpu: str | None
) -> list[str]:
    """``ENGINE run`` arguments of edge device ``name``: sshd of ``spec.ref`` on 127.0.0.1:``port`` with the
    generated keys; under qemu (``cpu``: the CPU model it emulates) with ``QEMU_CPU`` passed on to login sessions,
    and a native device also gets the board's own /proc/cpuinfo."""
    arch = EDGE_DEVICES[name]
    argv = ["run", "-d", "--name", _container_name(name), "--network", "host", *eng.limits(),
            "--label", f"io.compleak.edge={name}",
            "-v", f"{keys.host_key}:/etc/ssh/ssh_host_ed25519_key:ro",
            "-v", f"{keys.authorized_keys}:/root/.ssh/authorized_keys:ro"]
    if cpu:  # qemu-user reads QEMU_CPU at every exec; sshd passes it on to login sessions through SetEnv
        argv += ["-e", f"QEMU_CPU={cpu}"]
    if cpu and name in NATIVE_EDGE_DEVICES and arch in EDGE_CPUINFO:  # the board's /proc/cpuinfo, not the x86 host's
        cpuinfo = keys.folder / "cpuinfo"
        _write_private(cpuinfo, EDGE_CPUINFO[arch].encode())
        cpuinfo.chmod(0o644)
        argv += ["-v", f"{cpuinfo}:/proc/cpuinfo:ro"]
    argv += [spec.ref, "-p", str(port), "-o", f"ListenAddress=127.0.0.1:{port}", "-h", "/etc/ssh/ssh_host_ed25519_key"]
    if cpu:
        argv += ["-o", f"SetEnv=QEMU_CPU={cpu}"]
    return argv


def _wait_for_sshd(eng: Engine, cname: str, port: int, deadline_s: float = 120.0) -> None:
    """Wait until sshd in ``cname`` answers with an SSH banner on 127.0.0.1:``port``."""
    t_end = time.monotonic() + deadline_s
    while time.monotonic() < t_end:
        state = eng.container_state(cname)
        if state not in ("running", "created", "configured"):
            logs = eng.call(["logs", "--tail", "5", cname], f"reading logs of {cname}", check=False)
            raise HarnessError(
                f"edge device {cname} stopped ({state}): {last_line(logs.stderr + logs.stdout) or 'no output'}"
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

    arch = _edge_arch(name)
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
                say(console, f"{name}: already up")
                return dev.uri
        say(console, f"{name}: running with other settings; restarting")
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
    eng.call(_run_argv(eng, name, spec, keys, port, cpu), f"starting {cname} from {spec.ref}")
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
    say(console, f"{name}: up ({arch}, {spec.ref}) at {uri}")
    return uri


def edge_down(name: str, engine: str | None = None, console: Console | None = None) -> None:
    """Stop and remove edge device ``name`` and forget its registration (its keys are kept for the next ``up``)."""
    from devices import known_devices

    _edge_arch(name)
    eng = detect_engine(engine)
    cname = _container_name(name)
    if eng.container_state(cname) is None:
        say(console, f"{name}: not running")
    else:
        eng.call(["rm", "-f", "-t", "2", cname] if eng.name == "podman" else ["rm", "-f", cname], f"removing {cname}")
        say(console, f"{name}: stopped and removed")
    known_devices.unregister(name)
