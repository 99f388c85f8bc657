"""Android devices over ADB, through the standard ``adb`` client (Android platform-tools / Debian ``adb``).

Every operation is one ``adb -s SERIAL ...`` subprocess: ``shell`` for commands, ``push``/``pull`` for files
(the sync protocol, so remote paths are not parsed by a shell there), ``getprop`` for properties. The adb
server the client talks to is the usual one (``ANDROID_ADB_SERVER_PORT`` / ``ADB_SERVER_SOCKET`` select another).

Exit codes: devices whose adbd lacks the ``shell_v2`` feature (Android < 7, and minimal adbd builds) do not
report the command's exit status, and interleave stderr into stdout. :meth:`AdbDevice.run` therefore wraps
every command: stderr goes to a scratch file on the device, and the exit status is printed after a random
marker that cannot occur in the command's own output; both are parsed back here. The same wrapper works
unchanged on shell_v2 devices.

Workspaces live under ``/data/local/tmp/compleak`` (the one world-writable, exec-allowed place on a stock
phone); every path put into a device command line is ``shlex.quote``-d.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from devices.base import (
    LIBC_SCRIPT,
    PRIVATE_BASE_CHECK,
    CommandResult,
    Device,
    DeviceProperties,
    _keyed,
    unsafe_base_error,
)
from devices.errors import DeviceError, UnreachableDevice

WORKSPACE_BASE = "/data/local/tmp/compleak"
SCRATCH_DIR = "/data/local/tmp"
INSTALL_HINT = "install the Android platform-tools (Debian/Ubuntu: `apt install adb`) or pass the adb client's path"

_GETPROP_LINE = re.compile(r"^\[([^\]]+)\]: \[(.*)\]$")

#: machine names (``uname -m``) of the Android ABIs
ABI_MACHINES = {"arm64-v8a": "aarch64", "armeabi-v7a": "armv7l", "armeabi": "armv7l", "x86_64": "x86_64",
                "x86": "i686", "riscv64": "riscv64"}


def find_adb(adb_path: str | os.PathLike[str] | None = None) -> str:
    """Path of the adb client: ``adb_path`` if given, else ``$ADB``, else ``adb`` on PATH."""
    candidate = str(adb_path) if adb_path else os.environ.get("ADB") or shutil.which("adb")
    if not candidate or not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
        where = f"'{adb_path}' is not an executable file" if adb_path else "no `adb` on PATH"
        raise DeviceError(f"adb client not found ({where}): {INSTALL_HINT}")
    return candidate


def parse_getprop(text: str) -> dict[str, str]:
    """``getprop`` output (``[key]: [value]`` lines) -> dict."""
    props: dict[str, str] = {}
    for line in text.splitlines():
        m = _GETPROP_LINE.match(line.strip())
        if m:
            props[m.group(1)] = m.group(2)
    return props


def adb_error(device_id: str, serial: str, what: str, output: str, detail: str | None = None) -> DeviceError:
    """Turn the adb client's complaint into a one-line :class:`DeviceError` that says how to fix it.

    ``output`` (all the client printed) is classified; its last error line is quoted (else the last line of
    ``detail``, else of ``output``).
    """
    text = " ".join(output.split())
    low = text.lower()
    if "unauthorized" in low:
        return DeviceError(
            f"{device_id}: device unauthorized: accept the 'Allow USB debugging?' prompt on the device "
            f"(or add this host's ~/.android/adbkey.pub to its adb_keys), then retry"
        )
    if "offline" in low:
        return UnreachableDevice(
            f"{device_id}: device offline: reconnect it (`adb reconnect`, or `adb disconnect {serial}` and "
            f"`adb connect {serial}` for a network device) or restart adbd on it"
        )
    if "not found" in low and ("device" in low or "emulator" in low) or "no devices" in low:
        hint = f"run `adb connect {serial}` first" if ":" in serial else "plug it in and enable USB debugging"
        return UnreachableDevice(
            f"{device_id}: the adb server has no device '{serial}' ({hint}; `adb devices` lists the serials)"
        )
    if "cannot connect to daemon" in low or "failed to start daemon" in low:
        return UnreachableDevice(f"{device_id}: the adb server could not be started or reached: {text[:200]}")
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]  # adb prints some on stdout
    detail_lines = [ln.strip() for ln in (detail or "").splitlines() if ln.strip()]
    last = errors or detail_lines or lines
    return DeviceError(f"{device_id}: {what} failed: {(last[-1] if last else 'no output')[:300]}")


class AdbDevice(Device):
    """An Android device (phone, board or emulator) known to the adb server as ``serial``.

    Args:
        serial: as ``adb devices`` lists it (``R58M...``, ``emulator-5554``, ``192.168.1.7:5555``).
        binaries: a folder with native runners per ABI (``<abi>/benchmark_model``, ``<abi>/executor_runner``),
            see :mod:`devices.runners.android`.
        timeout: seconds allowed for short housekeeping commands and for waiting on the device.
        adb_path: the adb client to use (default: ``$ADB`` or ``adb`` on PATH).

    Raises:
        DeviceError: adb missing, or the device is unknown, unauthorized or offline (checked on construction).
    """

    def __init__(self, serial: str, binaries: str | os.PathLike[str] | None = None, timeout: float = 30.0,
                 adb_path: str | os.PathLike[str] | None = None) -> None:
        if not serial or any(c.isspace() for c in serial):
            raise DeviceError(f"adb://{serial}: invalid adb serial {serial!r}; `adb devices` lists the serials")
        self.serial = serial
        self.id = f"adb://{serial}"
        self.binaries = Path(binaries) if binaries else None
        self.timeout = float(timeout)
        self.adb = find_adb(adb_path)
        self._props: dict[str, str] | None = None
        self._python: list[str] | None | bool = False  # False: not looked up yet
        self.ensure_ready()

    # ------------------------------------------------------------------ the adb client

    def adb_argv(self, *args: str) -> list[str]:
        """``adb -s SERIAL ARGS...``."""
        return [self.adb, "-s", self.serial, *args]

    def _adb(self, args: list[str], timeout: float, what: str) -> subprocess.CompletedProcess[bytes]:
        """Run the adb client; raise a one-line DeviceError if the client itself fails."""
        try:
            cp = subprocess.run(self.adb_argv(*args), stdin=subprocess.DEVNULL, capture_output=True,
                                timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.id}: {what} timed out after {timeout:g} s (is the device responsive? "
                              f"`adb -s {self.serial} get-state`)") from None
        except OSError as exc:
            raise DeviceError(
                f"{self.id}: cannot run the adb client {self.adb}: {exc.strerror}; {INSTALL_HINT}"
            ) from None
        if cp.returncode != 0:
            err = cp.stderr.decode("utf-8", "replace")
            raise adb_error(self.id, self.serial, what, err + "\n" + cp.stdout.decode("utf-8", "replace"), err)
        return cp

    def state(self) -> str:
        """``adb get-state``: ``device`` when usable (errors for unknown, unauthorized, offline devices)."""
        cp = self._adb(["get-state"], timeout=self.timeout, what="adb get-state")
        return cp.stdout.decode().strip()

    def ensure_ready(self) -> None:
        """Raise a one-line DeviceError unless the device is online and authorised."""
        state = self.state()
        if state != "device":
            raise adb_error(self.id, self.serial, "adb get-state", f"device {state}")

    # ------------------------------------------------------------------ Device primitives

    def run(self, argv: list[str], timeout: float, stdin: bytes | None = None) -> CommandResult:
        """Run ``argv`` with the device's shell; exit status and stderr recovered even without shell_v2."""
        token = secrets.token_hex(8)
        marker = f"__compleak_rc_{token}="
        err = f"{SCRATCH_DIR}/.compleak-{token}.err"
        src = "/dev/null"
        if stdin is not None:
            src = f"{SCRATCH_DIR}/.compleak-{token}.in"
            with tempfile.TemporaryDirectory(prefix="compleak-adb-") as tmp:
                local = Path(tmp) / "stdin"
                local.write_bytes(stdin)
                self.put(local, src)
        command = shlex.join(argv)
        script = (f"( {command} ) 2>{shlex.quote(err)} <{shlex.quote(src)}; r=$?; "
                  f"printf '\\n{marker}%d\\n' \"$r\"; cat {shlex.quote(err)} 2>/dev/null; "
                  f"rm -f {shlex.quote(err)}" + (f" {shlex.quote(src)}" if stdin is not None else ""))
        start = time.monotonic()
        try:
            cp = subprocess.run(self.adb_argv("shell", "-n", script), stdin=subprocess.DEVNULL, capture_output=True,
                                timeout=timeout)
        except subprocess.TimeoutExpired:
            try:  # best effort: the scratch files of the abandoned command
                scratch = [err, *([src] if stdin is not None else [])]
                subprocess.run(self.adb_argv("shell", "-n", shlex.join(["rm", "-f", *scratch])),
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
            raise DeviceError(f"{self.id}: `{_short(command)}` timed out after {timeout:g} s; "
                              f"raise the timeout or check the device") from None
        except OSError as exc:
            raise DeviceError(
                f"{self.id}: cannot run the adb client {self.adb}: {exc.strerror}; {INSTALL_HINT}"
            ) from None
        seconds = time.monotonic() - start
        out = cp.stdout
        pos = out.rfind(b"\n" + marker.encode())
        if pos < 0:
            if cp.returncode != 0:
                raise adb_error(self.id, self.serial, f"`{_short(command)}`",
                                cp.stderr.decode("utf-8", "replace") + "\n" + out.decode("utf-8", "replace"))
            raise UnreachableDevice(f"{self.id}: the shell stream ended before `{_short(command)}` finished "
                                    f"(device disconnected or adbd restarted); reconnect and rerun")
        tail = out[pos + 1 + len(marker):]
        line, _, stderr = tail.partition(b"\n")
        try:
            rc = int(line)
        except ValueError:
            rc = -1
        return CommandResult(argv=list(argv), returncode=rc, stdout=out[:pos], stderr=stderr, seconds=seconds)

    def put(self, local: Path, remote: str) -> None:
        local = Path(local)
        if not local.is_file():
            raise DeviceError(f"{self.id}: cannot push {local}: no such local file")
        timeout = max(self.timeout, 60.0 + local.stat().st_size / 2e6)  # >= 2 MB/s
        self._adb(["push", str(local), remote], timeout=timeout, what=f"adb push {local} to {remote}")

    def get(self, remote: str, local: Path) -> None:
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        self._adb(["pull", remote, str(local)], timeout=max(self.timeout, 600.0), what=f"adb pull {remote}")
        if not local.is_file():
            raise DeviceError(f"{self.id}: adb pull {remote} produced no file at {local}")

    # ------------------------------------------------------------------ shared behaviour, Android flavour

    def workspace_base(self) -> str:
        """``/data/local/tmp/compleak`` or the configured ``base_dir`` (created 0700 if missing; an existing one that
        is a symlink, another user's or group/world-writable is refused, see ``devices.base.PRIVATE_BASE_CHECK``)."""
        base = (self.base_dir or WORKSPACE_BASE).rstrip("/") or "/"
        res = self.run(["sh", "-c", f'b={shlex.quote(base)}; (umask 077; mkdir -p -- "$b") && {PRIVATE_BASE_CHECK}'],
                       timeout=self.timeout)
        unsafe_base_error(self.id, _keyed(res.text))
        res.check(self.id, f"creating {base}")
        return base

    def python_command(self) -> list[str] | None:
        """``python3`` on the device's PATH (e.g. Termux's), looked up once per connection."""
        if self._python is False:
            self._python = super().python_command()
        return self._python  # type: ignore[return-value]

    def getprops(self, refresh: bool = False) -> dict[str, str]:
        """All system properties (``getprop``), cached."""
        if self._props is None or refresh:
            res = self.run(["getprop"], timeout=self.timeout).check(self.id, "getprop")
            self._props = parse_getprop(res.text)
        return self._props

    def getprop(self, key: str) -> str | None:
        value = self.getprops().get(key, "")
        return value or None

    @property
    def abi(self) -> str | None:
        """Primary ABI (``ro.product.cpu.abi``): arm64-v8a, armeabi-v7a, x86_64, x86."""
        return self.getprop("ro.product.cpu.abi")

    def abis(self) -> list[str]:
        """All ABIs the device runs, preferred first (``ro.product.cpu.abilist``)."""
        listed = [a for a in (self.getprop("ro.product.cpu.abilist") or "").split(",") if a]
        return listed or ([self.abi] if self.abi else [])

    def properties(self) -> DeviceProperties:
        """API level, ABI, SoC and model from getprop; uname, free space, Python and runtimes from the shell."""
        gp = self.getprops(refresh=True)
        props = DeviceProperties(id=self.id)
        sdk = gp.get("ro.build.version.sdk", "")
        props.android_api = int(sdk) if sdk.isdigit() else None
        props.android_abi = gp.get("ro.product.cpu.abi") or None
        props.soc = next((gp[k] for k in ("ro.soc.model", "ro.board.platform", "ro.hardware") if gp.get(k)), None)
        maker = gp.get("ro.soc.manufacturer")
        if props.soc and maker and maker.lower() not in props.soc.lower():
            props.soc = f"{maker} {props.soc}"
        model = " ".join(v for v in (gp.get("ro.product.manufacturer"), gp.get("ro.product.model")) if v)
        props.model = model or None
        release = gp.get("ro.build.version.release")
        props.os = f"Android {release}" if release else "Android"
        props.hostname = gp.get("ro.product.device") or None
        extra = {"abilist": self.abis(), "serial": self.serial, "fingerprint": gp.get("ro.build.fingerprint"),
                 "board": gp.get("ro.board.platform")}
        props.extra = {k: v for k, v in extra.items() if v}
        uname = self.run(["sh", "-c", f'echo "arch=$(uname -m)"; {LIBC_SCRIPT}'], timeout=self.timeout)
        facts = _keyed(uname.text) if uname.ok else {}
        props.arch = facts.get("arch") or ABI_MACHINES.get(props.android_abi or "", props.android_abi)
        props.libc = facts.get("libc") or None
        props.workspace_base = self.workspace_base()
        df = self.run(["df", "-k", props.workspace_base], timeout=self.timeout)
        if df.ok:
            try:
                props.free_bytes = int(df.text.strip().splitlines()[-1].split()[3]) * 1024
            except (IndexError, ValueError):
                pass
        self._fill_runtimes(props)
        if props.python and self.python_command():
            props.extra["python_cmd"] = self.python_command()
        return props


def _short(command: str, n: int = 80) -> str:
    return command if len(command) <= n else command[: n - 3] + "..."
