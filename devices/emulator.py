"""``emulator://AVD``: start a headless Android emulator, use it as an adb device, shut it down on close.

The emulator is the Android SDK's ``emulator`` binary (``$ANDROID_HOME/emulator/emulator``). It is started with
``-no-window -no-audio -no-boot-anim -no-snapshot-save -port P`` (P an even console port in 5554..5682 that is
free, so the adb serial is ``emulator-P``), then the device is waited for until ``sys.boot_completed`` is ``1``
(with a deadline), and from then on it is an :class:`~devices.adb.AdbDevice`. :meth:`EmulatorDevice.close` sends
``adb -s emulator-P emu kill`` and, should the emulator outlive its grace period, kills its process group.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from devices.adb import AdbDevice, find_adb
from devices.errors import DeviceError, UnreachableDevice

_AVD = re.compile(r"^[A-Za-z0-9._\-]+$")
EMULATOR_HINT = ("install the Android SDK emulator (`sdkmanager emulator`) and set ANDROID_HOME (or ANDROID_SDK_ROOT), "
                 "or pass the emulator's path")


def find_emulator(emulator_path: str | os.PathLike[str] | None = None) -> str:
    """The emulator binary: ``emulator_path``, ``$ANDROID_EMULATOR``, the SDK's ``emulator/emulator``, or PATH."""
    if emulator_path:
        candidates = [str(emulator_path)]
    else:
        candidates = [os.environ.get("ANDROID_EMULATOR", "")]
        for var in ("ANDROID_HOME", "ANDROID_SDK_ROOT"):
            if os.environ.get(var):
                candidates.append(str(Path(os.environ[var]) / "emulator" / "emulator"))
        candidates.append(shutil.which("emulator") or "")
    for cand in candidates:
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    where = (
        f"'{emulator_path}' is not an executable file" if emulator_path else "not in $ANDROID_HOME/emulator nor on PATH"
    )
    raise DeviceError(f"Android emulator not found ({where}): {EMULATOR_HINT}")


def emulator_command(emulator: str, avd: str, port: int) -> list[str]:
    """argv that starts AVD ``avd`` headless on console port ``port`` (adb serial ``emulator-<port>``)."""
    return [emulator, "-avd", avd, "-no-window", "-no-audio", "-no-boot-anim", "-no-snapshot-save",
            "-port", str(port)]


def list_avds(emulator: str) -> list[str]:
    """AVD names as ``emulator -list-avds`` prints them."""
    try:
        cp = subprocess.run([emulator, "-list-avds"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeviceError(f"cannot run {emulator} -list-avds: {exc}; {EMULATOR_HINT}") from None
    return [ln.strip() for ln in cp.stdout.splitlines() if ln.strip() and not ln.startswith(("INFO", "WARNING"))]


def free_console_port() -> int:
    """An even port in 5554..5682 whose console and adb ports (P, P+1) are both free on loopback."""
    for port in range(5554, 5684, 2):
        if all(_port_free(p) for p in (port, port + 1)):
            return port
    raise DeviceError("no free emulator console port in 5554..5682: stop some emulators (`adb emu kill`)")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class EmulatorDevice(AdbDevice):
    """A headless emulator started for this session, used as ``AdbDevice("emulator-<port>")``.

    Args:
        avd: AVD name (``emulator -list-avds``).
        emulator_path: the emulator binary (default: found via ANDROID_HOME / PATH).
        boot_timeout: seconds to wait for ``sys.boot_completed`` = 1.
        binaries, timeout, adb_path: as for :class:`AdbDevice`.
        port: console port (default: the first free even port from 5554).
    """

    def __init__(self, avd: str, emulator_path: str | os.PathLike[str] | None = None, boot_timeout: float = 300,
                 binaries: str | os.PathLike[str] | None = None, timeout: float = 30.0,
                 adb_path: str | os.PathLike[str] | None = None, port: int | None = None) -> None:
        if not avd or not _AVD.match(avd):
            raise DeviceError(f"emulator://{avd}: bad AVD name; see `emulator -list-avds`")
        self.avd = avd
        self.emulator = find_emulator(emulator_path)
        adb = find_adb(adb_path)
        known = list_avds(self.emulator)
        if avd not in known:
            raise DeviceError(
                f"emulator://{avd}: no AVD named '{avd}' (found: {', '.join(known) or 'none'}); create one, e.g. "
                f"`avdmanager create avd -n {avd} -k 'system-images;android-34;google_apis;x86_64'`"
            )
        self.port = port or free_console_port()
        serial = f"emulator-{self.port}"
        self._log = tempfile.NamedTemporaryFile(prefix=f"compleak-emulator-{avd}-", suffix=".log", delete=False)
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            emulator_command(self.emulator, avd, self.port), stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_for_boot(adb, serial, boot_timeout)
            super().__init__(serial, binaries=binaries, timeout=timeout, adb_path=adb)
        except BaseException:
            self._stop(adb, serial)
            raise
        self.id = f"emulator://{avd}"

    def _last_log_line(self) -> str:
        try:
            lines = [ln.strip() for ln in Path(self._log.name).read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return lines[-1][:200] if lines else ""

    def _wait_for_boot(self, adb: str, serial: str, boot_timeout: float) -> None:
        deadline = time.monotonic() + boot_timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise DeviceError(f"emulator://{self.avd}: the emulator exited with status {self._proc.returncode} "
                                  f"before booting: {self._last_log_line()} (log: {self._log.name})")
            try:
                cp = subprocess.run([adb, "-s", serial, "shell", "getprop", "sys.boot_completed"],
                                    stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=15)
                if cp.returncode == 0 and cp.stdout.strip() == "1":
                    return
            except subprocess.TimeoutExpired:
                pass
            time.sleep(2)
        raise UnreachableDevice(f"emulator://{self.avd}: not booted after {boot_timeout:g} s "
                                f"(sys.boot_completed != 1); raise boot_timeout or check the log {self._log.name}")

    def _stop(self, adb: str, serial: str) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                subprocess.run([adb, "-s", serial, "emu", "kill"], stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                pass
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        self._log.close()

    def close(self) -> None:
        """Shut the emulator down (``adb emu kill``). Safe to call twice."""
        self._stop(self.adb, self.serial)

    def __del__(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
