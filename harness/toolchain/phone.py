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
import struct
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from devices.phone.adbd import adb_public_key_line, parse_adb_public_key
from devices.phone.layout import PHONES, PhoneKind, build_prop_text
from harness.errors import HarnessError
from harness.toolchain.edge import _free_port, check_port_free
from harness.toolchain.phone_rootfs import ensure_phone_rootfs, host_runs
from harness.toolchain.rootfs import cache_root, ensure_binfmt

#: the daemon's module; a pid file's process is only signalled when its command line names it
DAEMON_MODULE = "devices.phone.device"
READY_DEADLINE_S = 60.0
AUTH_DEADLINE_S = 15.0


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


def _android_dir() -> Path:
    """The folder where the adb server keeps its key (``adbkey``): as adb finds it."""
    if os.environ.get("ANDROID_USER_HOME"):
        return Path(os.environ["ANDROID_USER_HOME"])
    home = os.environ.get("ANDROID_SDK_HOME") or os.environ.get("HOME") or str(Path.home())
    return Path(home) / ".android"


def _adb_private_keys() -> list[Path]:
    """The private keys an adb server started from this environment signs with: ``$ADB_VENDOR_KEYS`` (files, or
    folders of ``*.adb_key``) and the user key ``adbkey``, which is created (``adb keygen``) when missing."""
    keys: list[Path] = []
    for entry in filter(None, os.environ.get("ADB_VENDOR_KEYS", "").split(":")):
        path = Path(entry)
        keys += sorted(path.glob("*.adb_key")) if path.is_dir() else [path] if path.is_file() else []
    user = _android_dir() / "adbkey"
    if not user.is_file():
        try:
            user.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HarnessError(f"cannot create {user.parent} for the adb key: {exc.strerror}") from None
        res = _adb("keygen", str(user))
        if not user.is_file():
            out = (res.stdout + res.stderr).strip().splitlines()
            raise HarnessError(f"`adb keygen {user}` made no key: {out[-1][:300] if out else 'no output'}")
    return keys + [user]


def _public_line(private: Path) -> str:
    """The ``adb_keys`` line of ``private``: its ``.pub`` file when there, else derived from the private key."""
    pub = Path(f"{private}.pub")
    try:
        if pub.is_file():
            line = pub.read_text(errors="replace")[:8192].strip().splitlines()[0]
            parse_adb_public_key(line)
            return line
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        return adb_public_key_line(load_pem_private_key(private.read_bytes()[:65536], None), private.name)
    except (OSError, ValueError, TypeError, IndexError, struct.error) as exc:
        raise HarnessError(f"cannot read the adb key {private}: {str(exc)[:200] or type(exc).__name__}") from None


def authorize_adb_keys(root: Path) -> list[str]:
    """Authorise this environment's adb keys on the device at ``root``: their public lines are added to its
    ``/data/misc/adb/adb_keys`` (root-owned, read-only inside the device), as tapping "Allow" does on a phone."""
    lines = [_public_line(k) for k in _adb_private_keys()]
    keys_file = root / "data" / "misc" / "adb" / "adb_keys"
    keys_file.parent.mkdir(parents=True, exist_ok=True)
    old = keys_file.read_text(errors="replace").splitlines() if keys_file.exists() else []
    known = {ln.split()[0] for ln in old if ln.strip()}
    new = []
    for line in lines:
        if line.split()[0] not in known:
            known.add(line.split()[0])
            new.append(line)
    if new or not keys_file.exists():
        keys_file.write_text("".join(f"{ln}\n" for ln in old + new))
        keys_file.chmod(0o644)
    return lines


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
    """``adb connect`` and wait until the adb server has authenticated (state ``device``)."""
    res = _adb("connect", serial)
    out = (res.stdout + res.stderr).strip()
    if res.returncode != 0 or "connected to" not in out:
        last = out.splitlines()[-1][:300] if out else "no output"
        raise HarnessError(f"{name}: `adb connect {serial}` failed: {last}")
    state = ""
    deadline = time.monotonic() + AUTH_DEADLINE_S
    while time.monotonic() < deadline:
        state = _adb("-s", serial, "get-state").stdout.strip()
        if state == "device":
            return
        time.sleep(0.2)
    if "unauthorized" in _adb("devices").stdout:
        raise HarnessError(f"{name}: the device refuses the adb server (unauthorized): it signs with another key "
                           f"than those `devices up` authorised ({_android_dir() / 'adbkey'}), i.e. it was started "
                           f"with another HOME or ADB_VENDOR_KEYS; run `adb kill-server` and retry")
    raise HarnessError(f"{name}: {serial} is not online after {AUTH_DEADLINE_S:.0f} s (adb state '{state}')")


def phone_up(name: str, port: int | None = None, console: Console | None = None) -> str:
    """Build (once) and start phone-shaped device ``name``; returns ``adb://127.0.0.1:PORT``. Idempotent: a device
    already up is connected and returned as is (a different ``port`` is then an error)."""
    kind = phone_kind(name)
    state = running(name)
    if state is not None:
        if port is not None and port != state["port"]:
            raise HarnessError(f"{name} is already up on port {state['port']}; `compleak devices down {name}` first")
        authorize_adb_keys(phone_folder(name) / "root")
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
    prop = root / "system" / "build.prop"
    if prop.read_text(errors="replace") != build_prop_text(kind.props()):  # built by an older version
        prop.write_text(build_prop_text(kind.props()))
    authorize_adb_keys(root)
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
