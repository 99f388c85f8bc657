"""The :class:`Device` interface every transport implements (local, ssh, adb, emulator).

A device runs commands with a timeout, moves files in and out, reports its properties and hands out a
per-job workspace directory that is removed afterwards. Transports subclass :class:`Device` and implement the
abstract methods; :meth:`Device.workspace` and :meth:`Device.properties` have shared implementations built on
:meth:`Device.run` that a transport may override.
"""

from __future__ import annotations

import json
import shlex
import threading
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from devices.errors import DeviceError


@dataclass(frozen=True)
class CommandResult:
    """Outcome of one command on a device.

    Attributes:
        argv: the command as run (list of arguments).
        returncode: exit status (``-1`` when the transport could not tell).
        stdout / stderr: the raw bytes the command wrote.
        seconds: wall time of the command on the host side.
    """

    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def text(self) -> str:
        """stdout decoded as UTF-8 (errors replaced)."""
        return self.stdout.decode("utf-8", "replace")

    def last_error_line(self) -> str:
        """The last non-empty line of stderr (or stdout), for one-line error messages."""
        for stream in (self.stderr, self.stdout):
            lines = [ln.strip() for ln in stream.decode("utf-8", "replace").splitlines() if ln.strip()]
            if lines:
                return lines[-1][:300]
        return f"exit status {self.returncode}"

    def check(self, device_id: str, what: str) -> "CommandResult":
        """Raise :class:`DeviceError` naming ``what`` unless the command succeeded."""
        if not self.ok:
            raise DeviceError(f"{device_id}: {what} failed (exit {self.returncode}): {self.last_error_line()}")
        return self


class DeviceProcess(ABC):
    """A command running on a device with its stdin and stdout open (see :meth:`Device.spawn`).

    ``send`` and ``recv_exact`` take an absolute ``time.monotonic()`` deadline and raise a one-line
    :class:`DeviceError` when it passes, when the command exits or when the transport is lost. stderr is drained in
    the background; its last 64 KiB are kept for error messages.
    """

    device_id: str
    argv: list[str]
    #: what the command is, in error messages (default: its argv[0])
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.argv[0]

    @abstractmethod
    def send(self, data: bytes, deadline: float) -> None:
        """Write all of ``data`` to the command's stdin."""

    @abstractmethod
    def recv_exact(self, n: int, deadline: float) -> bytes:
        """Read exactly ``n`` bytes of the command's stdout."""

    @abstractmethod
    def exit_status(self) -> int | None:
        """The exit status once the command has ended, else None."""

    @abstractmethod
    def stderr_text(self) -> str:
        """What the command wrote to stderr so far (the last 64 KiB)."""

    @abstractmethod
    def close(self, timeout: float = 10.0) -> int | None:
        """Close stdin, wait up to ``timeout`` s for the command to end (then kill it); return its exit status."""

    def ended_error(self, what: str) -> DeviceError:
        """A one-line error for a command that ended (or died) while ``what`` was going on."""
        detail = failure_detail(self.exit_status(), self.stderr_text())
        return DeviceError(f"{self.device_id}: {self.name} ended during {what}: {detail}")


def failure_detail(status: int | None, stderr: str) -> str:
    """Why a command failed, in one line: its own last ``error: ...`` line (the on-device runner's), else its last
    stderr line with the exit status, a crash named as such."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    own = [ln[len("error: "):].strip() for ln in lines if ln.startswith("error: ")]
    if own:
        return own[-1]
    last = lines[-1][:300] if lines else "no message"
    if status in (-11, 139) or "(Segmentation fault)" in last:  # qemu-user: "uncaught target signal 11 (...)"
        return f"the runtime crashed (segmentation fault): {last}"
    return f"exited with status {status}: {last}" if status is not None else last


class StderrTail:
    """The last ``limit`` bytes written to a stream, filled by a drain thread."""

    def __init__(self, limit: int = 1 << 16) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._lock = threading.Lock()

    def add(self, data: bytes) -> None:
        with self._lock:
            self._buf += data
            if len(self._buf) > self.limit:
                del self._buf[: len(self._buf) - self.limit]

    def text(self) -> str:
        with self._lock:
            return self._buf.decode("utf-8", "replace")

    def value(self) -> bytes:
        with self._lock:
            return bytes(self._buf)


@dataclass
class DeviceProperties:
    """What a device is and what it can run.

    ``runtimes`` maps a runtime name (``tflite_runtime``, ``ai_edge_litert``, ``tensorflow``, ``onnxruntime``,
    ``executorch``, ``torch``) to its version string, as reported by the on-device runner's ``--probe``.
    ``free_bytes`` is the free space (bytes) in the directory where workspaces are created.
    """

    id: str
    arch: str | None = None  # uname -m or ro.product.cpu.abi's machine: x86_64, aarch64, armv7l ...
    os: str | None = None  # "Linux 6.1.0 (Debian GNU/Linux 12)" or "Android 14"
    hostname: str | None = None
    android_api: int | None = None
    android_abi: str | None = None
    soc: str | None = None
    model: str | None = None
    python: str | None = None  # path-independent version, e.g. "3.11.2"; None when the device has no Python
    numpy: str | None = None
    runtimes: dict[str, str] = field(default_factory=dict)
    free_bytes: int | None = None
    workspace_base: str | None = None
    #: C library of the device's native programs: ``gnu`` (glibc loader present), ``musl``, ``bionic`` (Android) or
    #: None when unknown; decides which native runner build can run there
    libc: str | None = None
    #: runner kind (``python``, ``native``) -> one line saying whether it can run here and with what; not a fact the
    #: transport reports: filled by the runners wing (:func:`devices.runners.choose.probe`)
    runners: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Device(ABC):
    """One device reachable by this host. ``id`` is its URI (``local``, ``ssh://u@h:p``, ``adb://SERIAL`` ...)."""

    id: str
    #: directory under which job workspaces are created; None: ``~/.cache/compleak`` or ``/tmp/compleak-<user>``
    base_dir: str | None = None
    #: the device's Python interpreter for the runner; None: ``python3`` found on the device's PATH
    python: str | None = None

    # ------------------------------------------------------------------ transport primitives

    @abstractmethod
    def run(self, argv: list[str], timeout: float, stdin: bytes | None = None) -> CommandResult:
        """Run ``argv`` on the device; return its result. Raise :class:`DeviceError` on timeout or transport loss."""

    @abstractmethod
    def put(self, local: Path, remote: str) -> None:
        """Copy the host file ``local`` to the device path ``remote``."""

    @abstractmethod
    def get(self, remote: str, local: Path) -> None:
        """Copy the device file ``remote`` to the host path ``local``."""

    def host_path(self, remote: str) -> Path | None:
        """The host path of a device path when the device shares this host's file system (local), else None.

        Runners write inputs straight there and read outputs from there instead of copying them.
        """
        return None

    #: this transport implements :meth:`spawn` (a long-lived command with open pipes)
    can_spawn: bool = False

    def spawn(self, argv: list[str], label: str = "") -> "DeviceProcess":
        """Start ``argv`` on the device with stdin and stdout left open for a conversation; return at once.

        ``label`` names the command in error messages. Only transports with ``can_spawn`` implement it; others raise
        NotImplementedError and callers fall back to :meth:`run` with files.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot keep a command running")

    def default_python_argv(self) -> list[str]:
        """argv prefix that starts the device's Python with no round trip first: the configured interpreter, else
        ``python3`` (or ``python``) from the PATH, resolved by the device's shell when the command starts. The probe
        resolves the same rule, so both name one interpreter."""
        if self.python:
            return [self.python]
        return ["sh", "-c", 'p="$(command -v python3 || command -v python)" || exit 127; exec "$p" "$@"', "python3"]

    def close(self) -> None:
        """Release connections. Safe to call twice."""

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ shared behaviour

    def shell(self, script: str, timeout: float) -> CommandResult:
        """Run a POSIX shell snippet (``sh -c``). Callers must ``shlex.quote`` every path they interpolate."""
        return self.run(["sh", "-c", script], timeout=timeout)

    def python_command(self) -> list[str] | None:
        """argv prefix that starts Python 3 on the device, or None when it has none."""
        if self.python:
            res = self.run([self.python, "-c", "import sys; print(sys.version_info[0])"], timeout=60)
            if not res.ok or res.text.strip() != "3":
                raise DeviceError(
                    f"{self.id}: the configured Python {self.python!r} does not run: {res.last_error_line()}"
                )
            return [self.python]
        res = self.run(["sh", "-c", "command -v python3 || command -v python"], timeout=30)
        path = res.text.strip().splitlines()[0] if res.ok and res.text.strip() else ""
        return [path] if path else None

    def workspace_base(self) -> str:
        """Directory under which per-job workspaces are created (created if missing; cached per base_dir)."""
        cached = getattr(self, "_workspace_base_cache", None)
        if cached and cached[0] == self.base_dir:
            return cached[1]
        base = self._make_workspace_base()
        self._workspace_base_cache = (self.base_dir, base)
        return base

    def _base_script(self) -> str:
        """POSIX shell that creates the workspace base (mode 0700) and prints ``base=<absolute path>``, or
        ``unsafe_base=<path>`` and ``unsafe=<why>`` when an existing base is a symlink, not owned by the login user
        or group/world-writable (see :data:`PRIVATE_BASE_CHECK`)."""
        if self.base_dir:
            q = shlex.quote(self.base_dir)
            return (f'b={q}; (umask 077; mkdir -p -- "$b") && {PRIVATE_BASE_CHECK} && '
                    f'b="$(cd -- "$b" && pwd -P)" && echo "base=$b"')
        return (
            'b="${XDG_CACHE_HOME:-$HOME/.cache}/compleak"; '
            'if (umask 077; mkdir -p "$b") 2>/dev/null && [ -w "$b" ]; then :; '
            'else b="/tmp/compleak-$(id -un 2>/dev/null || echo user)"; (umask 077; mkdir -p "$b"); fi && '
            f'{PRIVATE_BASE_CHECK} && echo "base=$b"'
        )

    def _make_workspace_base(self) -> str:
        res = self.shell(self._base_script(), timeout=30)
        unsafe_base_error(self.id, _keyed(res.text))
        res.check(self.id, f"creating the workspace base directory {self.base_dir or '(default)'}")
        base = _keyed(res.text).get("base")
        if not base:
            raise DeviceError(f"{self.id}: could not create a workspace base directory: {res.last_error_line()}")
        return base

    @contextmanager
    def workspace(self) -> Iterator[str]:
        """A fresh directory on the device (``mktemp -d`` under :meth:`workspace_base`), removed on exit.

        Removal is confined: only the directory ``mktemp`` created is deleted, and only if it still lies under
        the base directory.
        """
        base = self.workspace_base()
        res = self.run(["mktemp", "-d", base.rstrip("/") + "/job.XXXXXXXX"], timeout=30)
        res.check(self.id, f"creating a workspace under {base}")
        path = res.text.strip().splitlines()[-1]
        if not path.startswith(base.rstrip("/") + "/job."):
            raise DeviceError(f"{self.id}: mktemp returned {path!r}, outside the workspace base {base}")
        try:
            yield path
        finally:
            self.remove_workspace(path, base)

    def remove_workspace(self, path: str, base: str) -> None:
        """Delete a workspace created by :meth:`workspace` (never anything outside ``base``)."""
        if not path.startswith(base.rstrip("/") + "/job.") or "/../" in path or path.endswith("/.."):
            raise DeviceError(f"{self.id}: refusing to remove {path!r}: not a workspace under {base}")
        try:
            self.run(["rm", "-rf", "--", path], timeout=60)
        except DeviceError:
            pass  # the transport is gone; nothing more can be done and the original error matters more

    #: run the runtime probe in the same remote command as the system facts (one round trip instead of two);
    #: transports where each command costs a connection round trip and a login shell (ssh) turn this on
    fuse_probe: bool = False

    def properties(self) -> DeviceProperties:
        """Architecture, OS, Python and runtimes, free space (generic POSIX implementation, one or two commands)."""
        from devices.ondevice import runner_source

        props = DeviceProperties(id=self.id)
        script = (
            'echo "arch=$(uname -m)"; echo "kernel=$(uname -sr)"; echo "host=$(hostname 2>/dev/null || uname -n)"; '
            'echo "pretty=$( (. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME") )"; '
            'echo "python=$(command -v python3 || command -v python)"; ' + LIBC_SCRIPT + '; '
            + self._base_script() + '; echo "df=$(df -Pk "$b" 2>/dev/null | tail -n 1)"'
        )
        fused = self.fuse_probe
        if fused:  # the runner's --probe prints one JSON line last; its source comes on stdin
            p = shlex.quote(self.python) if self.python else '"$(command -v python3 || command -v python)"'
            script += f'; p={p}; if [ -n "$p" ]; then "$p" - --probe || echo "probe_rc=$?"; fi'
        res = self.run(["sh", "-c", script], timeout=120, stdin=runner_source().encode() if fused else None)
        info = _keyed(res.text)
        unsafe_base_error(self.id, info)
        if not info.get("base"):
            raise DeviceError(f"{self.id}: could not create a workspace base directory: {res.last_error_line()}")
        props.arch, props.hostname = info.get("arch") or None, info.get("host") or None
        props.os = info.get("kernel") or None
        if info.get("pretty"):
            props.os = f"{props.os} ({info['pretty']})"
        props.workspace_base = info["base"]
        self._workspace_base_cache = (self.base_dir, info["base"])
        try:
            props.free_bytes = int(info.get("df", "").split()[3]) * 1024
        except (IndexError, ValueError):
            pass
        props.libc = info.get("libc") or None
        python = self.python or info.get("python")
        if python and fused:
            self._read_probe(props, [python], res)
        elif python:
            self._fill_runtimes(props, [python])
        return props

    def _fill_runtimes(self, props: DeviceProperties, py: list[str] | None = None) -> None:
        """Run the on-device runner's ``--probe`` (source sent on stdin) for Python, NumPy and runtime versions.

        ``py`` is the interpreter argv (default: :meth:`python_command`); nothing is filled when there is none.
        """
        from devices.ondevice import runner_source

        py = py or self.python_command()
        if not py:
            return
        self._read_probe(props, py, self.run(py + ["-", "--probe"], timeout=120, stdin=runner_source().encode()))

    @staticmethod
    def _read_probe(props: DeviceProperties, py: list[str], res: CommandResult) -> None:
        """Fill Python, NumPy and runtime versions from the ``--probe`` JSON line that ends ``res``'s output."""
        lines = res.text.strip().splitlines()
        failed = not res.ok or not lines or _keyed(lines[-1]).get("probe_rc")
        if failed:
            props.extra["probe_error"] = f"{' '.join(py)}: {res.last_error_line()}"
            return
        try:
            probe = json.loads(lines[-1][:1 << 16])
        except (ValueError, RecursionError):
            probe = None
        runtimes = probe.get("runtimes", {}) if isinstance(probe, dict) else None
        if not isinstance(runtimes, dict):  # the device's answer is untrusted: only the expected shape is used
            props.extra["probe_error"] = f"unreadable probe output: {res.text[-200:]!r}"
            return
        text = lambda v: v[:100] if isinstance(v, str) else None  # noqa: E731
        props.extra["python_cmd"] = py
        props.python = text(probe.get("python"))
        props.numpy = text(probe.get("numpy"))
        props.runtimes = {str(k)[:100]: text(v) for k, v in runtimes.items() if text(v)}


#: POSIX shell printing ``libc=gnu|musl|bionic`` (which dynamic loader the device has; nothing when none is known):
#: a native program built against one C library does not start on a device with another
LIBC_SCRIPT = (
    'g=""; m=""; for f in /lib/ld-linux* /lib64/ld-linux*; do [ -e "$f" ] && g=1; done; '
    'for f in /lib/ld-musl-*; do [ -e "$f" ] && m=1; done; '
    'if [ -e /system/bin/linker64 ] || [ -e /system/bin/linker ]; then echo "libc=bionic"; '
    'elif [ -n "$g" ]; then echo "libc=gnu"; elif [ -n "$m" ]; then echo "libc=musl"; fi'
)


#: POSIX shell (``$b`` is the base): fails, printing ``unsafe_base=`` and ``unsafe=<why>``, unless ``$b`` is a real
#: directory owned by the login user and writable by nobody else
PRIVATE_BASE_CHECK = (
    '{ u=""; if [ -L "$b" ]; then u="a symlink"; elif [ ! -d "$b" ]; then u="not a directory"; '
    'elif [ ! -O "$b" ]; then u="owned by another user"; '
    'else m="$(stat -c %a "$b" 2>/dev/null || stat -f %Lp "$b" 2>/dev/null)"; '
    'case "$m" in *[2367]?|*[2367]) u="group/world-writable (mode $m)";; esac; fi; '
    '[ -z "$u" ] || { echo "unsafe_base=$b"; echo "unsafe=$u"; false; }; }'
)

#: name of the file in every job workspace that says which process owns it (JSON: pid, host, started)
JOB_MARKER = ".compleak-job"


def private_base_fix(path: str) -> str:
    """The fix for an unsafe workspace base, for error messages."""
    return (f"it may have been planted by another user: remove it (rm -rf -- {shlex.quote(path)}) or choose a "
            f"private workspace base (TMPDIR for local, workspace= for a device)")


def unsafe_base_error(device_id: str, info: dict[str, str]) -> None:
    """Raise the one-line refusal for a base directory :data:`PRIVATE_BASE_CHECK` found unsafe (``info``: its
    ``key=value`` output)."""
    if info.get("unsafe"):
        path = info.get("unsafe_base") or "(workspace base)"
        raise DeviceError(f"{device_id}: workspace base {path} is {info['unsafe'][:80]}; {private_base_fix(path)}")


def job_marker() -> bytes:
    """Content of :data:`JOB_MARKER` for a job workspace created by this process."""
    import os
    import socket
    import time

    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()


def is_stale_job(marker: bytes) -> bool:
    """Whether a job workspace whose :data:`JOB_MARKER` holds ``marker`` was left by a process of this host that is
    gone (killed mid-run). Workspaces of other hosts, of live processes or with an unreadable marker are kept."""
    import os
    import socket

    try:
        info = json.loads(marker[:4096].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    if not isinstance(info, dict) or info.get("host") != socket.gethostname() or type(info.get("pid")) is not int:
        return False
    pid = info["pid"]
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # exists (another user's): not ours to judge
    return False


def _keyed(text: str) -> dict[str, str]:
    """``key=value`` lines of a command's output (later lines win; other lines, e.g. login banners, ignored)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            out[key] = value.strip()
    return out
