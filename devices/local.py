"""The ``local`` device: this host. Commands run as subprocesses; the runner uses this same Python."""

from __future__ import annotations

import getpass
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devices.base import CommandResult, Device, DeviceProperties
from devices.errors import DeviceError


class LocalDevice(Device):
    """This host as a device. Workspaces live under ``$TMPDIR/compleak-<user>``."""

    def __init__(self) -> None:
        self.id = "local"

    def run(self, argv: list[str], timeout: float, stdin: bytes | None = None) -> CommandResult:
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"local: '{argv[0]}' did not finish within {timeout:.0f}s; raise the timeout") from None
        except FileNotFoundError:
            return CommandResult(list(argv), 127, b"", f"{argv[0]}: command not found".encode(),
                                 time.perf_counter() - t0)
        except PermissionError:
            return CommandResult(list(argv), 126, b"", f"{argv[0]}: permission denied".encode(),
                                 time.perf_counter() - t0)
        return CommandResult(list(argv), proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - t0)

    def put(self, local: Path, remote: str) -> None:
        try:
            shutil.copyfile(local, remote)
        except OSError as exc:
            raise DeviceError(f"local: cannot copy {local} to {remote} ({exc.strerror})") from None

    def get(self, remote: str, local: Path) -> None:
        try:
            shutil.copyfile(remote, local)
        except OSError as exc:
            raise DeviceError(f"local: cannot copy {remote} to {local} ({exc.strerror})") from None

    def _base_script(self) -> str:
        return f"b={shlex.quote(self.workspace_base())}; echo \"base=$b\""

    def host_path(self, remote: str) -> Path | None:
        return Path(remote)

    def python_command(self) -> list[str] | None:
        return [self.python or sys.executable]

    def properties(self) -> DeviceProperties:
        if not self.python:
            self.python = sys.executable  # the runner uses this same Python
        return super().properties()

    def _fill_runtimes(self, props: DeviceProperties, py: list[str] | None = None) -> None:
        if (py or [self.python])[0] != sys.executable:
            return super()._fill_runtimes(props, py)
        from devices.ondevice.compleak_runner import probe  # this very Python: no subprocess needed

        found = probe()
        props.python, props.numpy = found["python"], found["numpy"]
        props.runtimes = {k: v for k, v in found["runtimes"].items() if v}
        props.extra["python_cmd"] = [sys.executable]

    def workspace_base(self) -> str:
        base = Path(self.base_dir) if self.base_dir else Path(tempfile.gettempdir()) / f"compleak-{getpass.getuser()}"
        try:
            base.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise DeviceError(f"local: cannot create workspace base {base} ({exc.strerror})") from None
        return os.path.realpath(base)
