"""The phone-shaped device's adbd: :class:`devices.phone.adbd.AdbDaemon` serving a root file system as uid 2000.

The daemon is host Python (the device has no Python) and runs BESIDE the root file system, as root, in mount and
PID namespaces of its own (``unshare --mount --pid --fork``; :func:`main` re-executes itself that way). At start it
builds the device's view of its root file system there (:func:`mount_view`): the root bound read-only (nosuid,
nodev), ``/data/local/tmp`` bound writable and executable, ``/sdcard`` writable but noexec, a ``proc`` of the
namespace's own processes, the host's ``/dev/null``, ``zero``, ``random``, ``urandom``, and for arm64 the phone's
``/proc/cpuinfo`` (its ``/sys/devices/system/cpu`` lists are files of the root file system; x86_64 gets the host's). Every ``shell:`` command and every ``sync:`` operation then runs through
``unshare --root ROOT --wd /data/local/tmp --setuid 2000 --setgid 2000`` (no supplementary groups, no
capabilities) with the device's ``/system/bin/sh``, so file permissions, read-only and noexec mounts are the
kernel's answer, not the daemon's. arm64 programs run through qemu-user (binfmt_misc). PID 1 of the namespace is a
small init (:func:`_reap_as_init`) that reaps every orphaned process of the device and passes SIGTERM to the daemon,
its child; when the daemon exits, init exits and the kernel kills every process left in the namespace.

Run: ``python -m devices.phone.device --rootfs ROOT --port PORT`` (``compleak devices up`` does, detached).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from devices.phone.adbd import SYNC_DATA_MAX, AdbDaemon, OpenFailed
from devices.phone.layout import (
    DATA_LOCAL_TMP,
    DEV_NODES,
    SDCARD,
    SHELL_ENV,
    SHELL_GID,
    SHELL_UID,
    SYS_CPU,
    SYS_CPU_LISTS,
    read_build_prop,
)

#: at most this many bytes of a sync helper's stdout (STAT, LIST) or stderr are read
HELPER_OUTPUT_MAX = 16 << 20
HELPER_TIMEOUT_S = 60.0

_STAT = 'exec stat -c "%f %s %Y" -- "$1"'
_LIST = ('cd -- "$1" 2>/dev/null || exit 0; for f in .* *; do case $f in .|..) continue ;; esac; '
         '[ -e "$f" ] || [ -L "$f" ] || continue; stat -c "%f %s %Y" -- "$f" && printf "%s\\0" "$f"; done')
_SEND_OPEN = 'd=${1%/*}; [ -z "$d" ] || [ -d "$d" ] || mkdir -p -- "$d" || exit 1; exec cat > "$1"'
_SEND_DONE = 'chmod "$2" -- "$1" && touch -c -d "@$3" -- "$1"'
_RECV = 'exec cat -- "$1"'


def mount_view(root: Path, cpuinfo: bool) -> None:
    """Build the device's view of ``root`` in this (private) mount namespace; raise ``OSError`` naming the failed
    mount. Order matters: the writable binds are made before the root is remounted read-only."""
    r = str(root)
    steps = [["--bind", r, r]]
    steps += [["--bind", f"{r}{d}", f"{r}{d}"] for d in (DATA_LOCAL_TMP, SDCARD)]
    steps += [["-o", "remount,bind,nosuid,nodev", f"{r}{DATA_LOCAL_TMP}"],
              ["-o", "remount,bind,nosuid,nodev,noexec", f"{r}{SDCARD}"]]
    steps += [["--bind", f"/dev/{d}", f"{r}/dev/{d}"] for d in DEV_NODES]
    steps += [["-t", "proc", "-o", "nosuid,nodev,noexec,hidepid=2", "proc", f"{r}/proc"]]
    if cpuinfo:
        steps += [["--bind", f"{r}/system/etc/cpuinfo", f"{r}/proc/cpuinfo"]]
    else:  # the host's CPUs: its /sys CPU lists too
        steps += [["--bind", f"/{SYS_CPU}/{n}", f"{r}/{SYS_CPU}/{n}"] for n in SYS_CPU_LISTS]
    steps += [["-o", "remount,bind,ro,nosuid,nodev", r]]
    for args in steps:
        res = subprocess.run(["mount", *args], capture_output=True, text=True)
        if res.returncode != 0:
            raise OSError(f"mount {' '.join(args)}: {(res.stderr.strip() or 'failed')[:300]}")


class _HelperSink:
    """A SEND as the shell user: ``cat > PATH`` in the device, then chmod and the mtime on DONE."""

    def __init__(self, daemon: PhoneAdbd, path: str, mode: int) -> None:
        self.daemon, self.path, self.mode = daemon, path, mode
        self.broken = False
        self.proc = subprocess.Popen(daemon.helper_argv(_SEND_OPEN, path), stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=daemon.env,
                                     start_new_session=True)

    def write(self, data: bytes) -> None:
        if not self.broken:
            try:
                self.proc.stdin.write(data)
            except OSError:  # the helper could not open the file and exited: its stderr says why
                self.broken = True

    def finish(self, mtime: int) -> str:
        error = _finish(self.proc)
        if error:
            return error
        res = self.daemon.run_helper(_SEND_DONE, self.path, f"{self.mode & 0o777:o}", str(mtime))
        return "" if res.returncode == 0 else _last_line(res.stderr)

    def abort(self) -> None:
        _finish(self.proc)
        self.daemon.run_helper('rm -f -- "$1"', self.path)


class _HelperSource:
    """A RECV as the shell user: ``cat PATH`` in the device."""

    def __init__(self, daemon: PhoneAdbd, path: str) -> None:
        self.proc = subprocess.Popen(daemon.helper_argv(_RECV, path), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=daemon.env,
                                     start_new_session=True)

    def chunks(self) -> Iterator[bytes]:
        while data := self.proc.stdout.read1(SYNC_DATA_MAX):
            yield data

    def error(self) -> str:
        self.proc.stdout.close()
        return _finish(self.proc)


def _finish(proc: subprocess.Popen) -> str:
    """Close a helper's stdin, wait for it; "" when it succeeded, else the last line of its stderr."""
    if proc.stdin is not None:
        try:
            proc.stdin.close()
        except OSError:
            pass
    try:
        err = proc.stderr.read(HELPER_OUTPUT_MAX) if proc.stderr is not None else b""
        rc = proc.wait(timeout=HELPER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        return "timed out on the device"
    finally:
        if proc.stderr is not None:
            proc.stderr.close()
    return "" if rc == 0 else _last_line(err) or f"failed with exit status {rc}"


def _last_line(err: bytes) -> str:
    """A helper's stderr as one bounded line (mksh says why, then "redirection failure")."""
    lines = [ln.strip() for ln in err[:4096].decode("utf-8", "replace").splitlines() if ln.strip()]
    return "; ".join(lines)[:300]


class PhoneAdbd(AdbDaemon):
    """adbd of the phone-shaped device rooted at ``root`` (its view must already be mounted: :func:`mount_view`)."""

    def __init__(self, root: Path, *, port: int = 0, qemu_cpu: str | None = None) -> None:
        self.root = Path(root).resolve()
        props = read_build_prop(self.root / "system" / "build.prop")
        adb = self.root / "data" / "misc" / "adb"
        # RSA authentication always on (ro.adb.secure=1): only host keys listed in /data/misc/adb/adb_keys (written
        # by `compleak devices up`, read-only inside the device) get a shell; keys offered and refused are recorded
        # beside the root file system (the root is mounted read-only here)
        super().__init__(props, adb / "adb_keys", self.root.parent / "pending_keys", host="127.0.0.1", port=port,
                         require_auth=True)
        self.env = dict(SHELL_ENV, **({"QEMU_CPU": qemu_cpu} if qemu_cpu else {}))
        self.unshare = shutil.which("unshare") or "/usr/bin/unshare"  # the host's, found on the host's PATH

    def _as_shell_user(self) -> list[str]:
        """The prefix that runs a program inside the device as uid/gid 2000 in /data/local/tmp."""
        return [self.unshare, f"--root={self.root}", f"--wd={DATA_LOCAL_TMP}", f"--setuid={SHELL_UID}",
                f"--setgid={SHELL_GID}", "--"]

    def shell_argv(self, command: str) -> tuple[list[str], dict[str, object]]:
        """``/system/bin/sh -c COMMAND`` (an interactive shell when empty) inside the device."""
        sh = ["/system/bin/sh", "-c", command] if command.strip() else ["/system/bin/sh"]
        return self._as_shell_user() + sh, {"env": self.env}

    def helper_argv(self, script: str, *args: str) -> list[str]:
        """A sync helper: ``sh -c SCRIPT sh ARGS...`` inside the device (paths are arguments, never spliced)."""
        return self._as_shell_user() + ["/system/bin/sh", "-c", script, "sh", *args]

    def run_helper(self, script: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        """Run a sync helper to completion (bounded time; output is the caller's to bound)."""
        try:
            return subprocess.run(self.helper_argv(script, *args), capture_output=True, env=self.env,
                                  timeout=HELPER_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess([], 124, b"", b"timed out on the device")

    def sync_stat(self, path: str) -> tuple[int, int, int]:
        """lstat ``path`` as the shell user; zeros when it cannot."""
        res = self.run_helper(_STAT, path)
        parsed = _stat_fields(res.stdout[:200]) if res.returncode == 0 else None
        return parsed or (0, 0, 0)

    def sync_list(self, path: str) -> Iterable[tuple[bytes, int, int, int]]:
        """The entries of ``path`` the shell user may list (``.`` and ``..`` left out)."""
        res = self.run_helper(_LIST, path)
        out = []
        for record in res.stdout[:HELPER_OUTPUT_MAX].split(b"\0")[:100_000]:
            head, sep, name = record.partition(b"\n")
            fields = _stat_fields(head) if sep else None
            if fields and name and len(name) <= 1024:
                out.append((name, *fields))
        return out

    def sync_sink(self, path: str, mode: int) -> _HelperSink:
        """``path`` opened for writing by the shell user."""
        if not path.startswith("/"):
            raise OpenFailed(f"remote path {path!r} is not absolute")
        return _HelperSink(self, path, mode)

    def sync_source(self, path: str) -> _HelperSource:
        """``path`` opened for reading by the shell user."""
        return _HelperSource(self, path)


def _stat_fields(line: bytes) -> tuple[int, int, int] | None:
    """``(mode, size, mtime)`` from ``stat -c "%f %s %Y"`` output (mode in hex), None when it is not that."""
    parts = line.split()
    if len(parts) != 3:
        return None
    try:
        return int(parts[0], 16) & 0xFFFFFFFF, int(parts[1]) & 0xFFFFFFFF, int(parts[2]) & 0xFFFFFFFF
    except ValueError:
        return None


def _reexec_in_namespaces(argv: list[str]) -> None:
    """Replace this process by itself in new mount and PID namespaces (it becomes PID 1 there)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise SystemExit("phone adbd: unshare not found; install util-linux")
    os.execv(unshare, [unshare, "--mount", "--pid", "--fork", "--propagation", "private", "--kill-child", "--",
                       sys.executable, "-m", "devices.phone.device", *argv])


def _reap_as_init(daemon_pid: int) -> int:
    """PID 1 of the device: every process orphaned inside it becomes this one's child, so reap them all (as init
    does) while the daemon (``daemon_pid``) runs; SIGTERM/SIGINT are passed on to it. Returns its exit status."""
    def pass_on(signum: int, _frame: object) -> None:
        try:
            os.kill(daemon_pid, signum)
        except ProcessLookupError:
            pass  # already gone: the wait below returns

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, pass_on)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 1
        if pid == daemon_pid:
            return os.waitstatus_to_exitcode(status) & 0xFF


def main(argv: list[str] | None = None) -> int:
    """Mount the device's view, serve adb on 127.0.0.1:PORT until SIGTERM; print one line when listening."""
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description="adbd of the phone-shaped device (phone-shaped, not Android)")
    ap.add_argument("--rootfs", type=Path, required=True, help="the device's root file system")
    ap.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    ap.add_argument("--qemu-cpu", default=None, help="CPU model qemu-user emulates for foreign binaries")
    args = ap.parse_args(argv)
    if os.getpid() != 1:
        _reexec_in_namespaces(argv)
    child = os.fork()
    if child:
        return _reap_as_init(child)
    root = args.rootfs.resolve()
    try:
        mount_view(root, cpuinfo=(root / "system" / "etc" / "cpuinfo").is_file())
        daemon = PhoneAdbd(root, port=args.port, qemu_cpu=args.qemu_cpu)
    except OSError as exc:
        print(f"phone adbd: {exc}", flush=True)
        return 1
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    daemon.start()
    print(f"phone adbd listening on {daemon.serial}", flush=True)
    while not done.wait(3600):
        pass
    daemon.stop()
    print("phone adbd stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
