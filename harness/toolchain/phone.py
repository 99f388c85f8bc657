"""Phone-shaped devices (``phone-arm64``, ``phone-x86_64``): ``compleak devices up NAME`` builds the root file
system (:mod:`harness.toolchain.phone_rootfs`), starts the project's adbd for it detached
(:mod:`devices.phone.device`; pid file and log under ``<cache>/phones/NAME/``), ``adb connect``s the adb server
in use and returns ``adb://127.0.0.1:PORT``; ``devices down NAME`` stops it. Phone-shaped, NOT Android.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from devices.phone.layout import PHONES, PhoneKind
from harness.errors import HarnessError
from harness.toolchain.edge import _free_port, check_port_free
from harness.toolchain.phone_rootfs import ensure_phone_rootfs, host_runs
from harness.toolchain.rootfs import cache_root, ensure_binfmt

#: the daemon's module; a pid file's process is only signalled when its command line names it
DAEMON_MODULE = "devices.phone.device"
READY_DEADLINE_S = 60.0


def phone_kind(name: str) -> PhoneKind:
    """The phone-shaped device called ``name``, or a one-line error listing the names."""
    if name not in PHONES:
        raise HarnessError(f"unknown phone-shaped device '{name}'; use one of: {', '.join(PHONES)}")
    return PHONES[name]


def phone_folder(name: str) -> Path:
    """``<cache>/phones/NAME``: the root file system, the daemon's pid file and log."""
    return cache_root() / "phones" / name


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()[:4096].replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (scanning /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) > 1 and fields[1] == str(pid):
                found.append(int(entry.name))
    return found


def running(name: str) -> dict[str, int] | None:
    """``{"pid", "port"}`` of ``name``'s daemon when its pid file names a live daemon process, else None."""
    pid_file = phone_folder(name) / "adbd.pid"
    try:
        state = json.loads(pid_file.read_text()[:1000])
        pid, port = int(state["pid"]), int(state["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {"pid": pid, "port": port} if DAEMON_MODULE in _cmdline(pid) else None


def _adb(*args: str) -> subprocess.CompletedProcess[str]:
    adb = os.environ.get("ADB") or shutil.which("adb")
    if adb is None:
        raise HarnessError("adb not found: install Debian's adb package (apt-get install adb)")
    try:
        return subprocess.run([adb, *args], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"adb {' '.join(args)} did not answer in 30 s; try `adb kill-server`") from None


def _check_host(kind: PhoneKind) -> None:
    for tool, package in (("unshare", "util-linux"), ("mount", "mount"), ("dpkg-deb", "dpkg")):
        if shutil.which(tool) is None:
            raise HarnessError(f"{kind.name}: {tool} not found; install Debian's {package} package")
    if not host_runs(kind):
        ensure_binfmt(kind.deb_arch)


def _wait_ready(name: str, proc: subprocess.Popen, log: Path, port: int) -> None:
    deadline = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")[-4000:] if log.exists() else ""
        if "listening on" in text:
            return
        if proc.poll() is not None:
            lines = text.strip().splitlines()
            raise HarnessError(f"{name}: adbd exited ({lines[-1][:300] if lines else 'no output'}; log {log})")
        time.sleep(0.2)
    _stop_pid(proc.pid)
    raise HarnessError(f"{name}: adbd did not listen on 127.0.0.1:{port} within {READY_DEADLINE_S:.0f} s (log {log})")


def _connect(name: str, serial: str) -> None:
    res = _adb("connect", serial)
    out = (res.stdout + res.stderr).strip()
    if res.returncode != 0 or "connected to" not in out:
        last = out.splitlines()[-1][:300] if out else "no output"
        raise HarnessError(f"{name}: `adb connect {serial}` failed: {last}")


def phone_up(name: str, port: int | None = None, console: Console | None = None) -> str:
    """Build (once) and start phone-shaped device ``name``; returns ``adb://127.0.0.1:PORT``. Idempotent: a device
    already up is connected and returned as is (a different ``port`` is then an error)."""
    kind = phone_kind(name)
    state = running(name)
    if state is not None:
        if port is not None and port != state["port"]:
            raise HarnessError(f"{name} is already up on port {state['port']}; `compleak devices down {name}` first")
        _connect(name, f"127.0.0.1:{state['port']}")
        return f"adb://127.0.0.1:{state['port']}"
    if port is not None:
        check_port_free(port)
    _adb("version")  # adb missing: say so before building anything
    _check_host(kind)
    folder = phone_folder(name)
    if console is not None and not (folder / "root").exists():
        console.print(f"building {name} from Debian packages (mksh, busybox-static) ...", style="dim")
    root = ensure_phone_rootfs(kind, folder)
    port = port or _free_port()
    log = folder / "adbd.log"
    argv = [sys.executable, "-m", DAEMON_MODULE, "--rootfs", str(root), "--port", str(port)]
    if kind.qemu_cpu and not host_runs(kind):
        argv += ["--qemu-cpu", kind.qemu_cpu]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd="/")
    (folder / "adbd.pid").write_text(json.dumps({"pid": proc.pid, "port": port}))
    _wait_ready(name, proc, log, port)
    _connect(name, f"127.0.0.1:{port}")
    return f"adb://127.0.0.1:{port}"


def _stop_pid(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the daemon (the child of ``pid``, the ``unshare`` wrapper, which ignores SIGTERM), then SIGKILL the
    wrapper if it is still there after ``grace_s``: its death kills the daemon and every process of the device."""
    for child in _children(pid):
        if DAEMON_MODULE in _cmdline(child):
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        _reap(pid)
        time.sleep(0.1)
    if Path(f"/proc/{pid}").exists():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        time.sleep(0.2)
        _reap(pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def phone_down(name: str, console: Console | None = None) -> bool:
    """Stop phone-shaped device ``name`` (disconnecting adb from it); False when it was not running."""
    phone_kind(name)
    state = running(name)
    pid_file = phone_folder(name) / "adbd.pid"
    if state is None:
        pid_file.unlink(missing_ok=True)
        if console is not None:
            console.print(f"{name} is not running", style="dim")
        return False
    if shutil.which("adb") or os.environ.get("ADB"):
        _adb("disconnect", f"127.0.0.1:{state['port']}")
    _stop_pid(state["pid"])
    pid_file.unlink(missing_ok=True)
    return True
