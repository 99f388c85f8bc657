"""The ``local`` device: this host. Commands run as subprocesses; the runner uses this same Python."""

from __future__ import annotations

import getpass
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from devices.base import (
    JOB_MARKER,
    CommandResult,
    Device,
    DeviceProcess,
    DeviceProperties,
    StderrTail,
    is_stale_job,
    job_marker,
    private_base_fix,
)
from devices.errors import DeviceError


class LocalDevice(Device):
    """This host as a device. Workspaces live under ``$TMPDIR/compleak-<user>``."""

    can_spawn = True

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

    def spawn(self, argv: list[str], label: str = "") -> "LocalProcess":
        proc = LocalProcess(argv)
        proc.label = label
        return proc

    def default_python_argv(self) -> list[str]:
        return [self.python or sys.executable]

    def put(self, local: Path, remote: str) -> None:
        """Copy ``local`` to the new file ``remote`` (mode 0600): an existing name, a planted symlink included, is
        never written through (``O_EXCL | O_NOFOLLOW``)."""
        try:
            fd = os.open(remote, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise DeviceError(f"local: cannot create {remote} ({exc.strerror}); workspace files are always new "
                              f"files, so something else put it there") from None
        try:
            with open(local, "rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except OSError as exc:
            os.unlink(remote)
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
        """``base_dir`` or ``$TMPDIR/compleak-<user>``, created 0700. An existing one that is a symlink, not a
        directory, not owned by this user or writable by group/others is refused with one line (another local
        user could swap the job directories inside it)."""
        base = Path(self.base_dir) if self.base_dir else Path(tempfile.gettempdir()) / f"compleak-{getpass.getuser()}"
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(base, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise DeviceError(f"local: cannot create workspace base {base} ({exc.strerror})") from None
        check_private_dir(str(base))
        return os.path.join(os.path.realpath(base.parent), base.name)

    @contextmanager
    def workspace(self) -> Iterator[str]:
        """A fresh ``BASE/job.<random>`` (``mkdtemp``: mode 0700, unpredictable name) holding a marker with this
        process's pid; removed on exit. Job directories a killed run left behind (their pid is gone) are removed
        first."""
        base = self.workspace_base()
        remove_stale_jobs(base)
        try:
            path = tempfile.mkdtemp(prefix="job.", dir=base)
            fd = os.open(os.path.join(path, JOB_MARKER), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(job_marker())
        except OSError as exc:
            raise DeviceError(f"local: cannot create a workspace under {base} ({exc.strerror})") from None
        try:
            yield path
        finally:
            self.remove_workspace(path, base)

    def remove_workspace(self, path: str, base: str) -> None:
        """Delete a workspace made by :meth:`workspace` (never anything outside ``base``; symlinks not followed)."""
        if not path.startswith(base.rstrip("/") + "/job.") or "/" in path[len(base.rstrip("/")) + 1:]:
            raise DeviceError(f"local: refusing to remove {path!r}: not a workspace under {base}")
        shutil.rmtree(path, ignore_errors=True)


def check_private_dir(path: str) -> None:
    """Refuse (one-line :class:`DeviceError`) a workspace base that is a symlink, not a directory, not owned by
    this user, or group/world-writable; the fix names the path."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise DeviceError(f"local: cannot inspect workspace base {path} ({exc.strerror})") from None
    why = ""
    if stat.S_ISLNK(st.st_mode):
        why = f"a symlink (to {os.readlink(path)!r:.80})"
    elif not stat.S_ISDIR(st.st_mode):
        why = "not a directory"
    elif st.st_uid != os.geteuid():
        why = f"owned by uid {st.st_uid}, not by you (uid {os.geteuid()})"
    elif st.st_mode & 0o022:
        why = f"group/world-writable (mode {stat.S_IMODE(st.st_mode):04o})"
    if why:
        raise DeviceError(f"local: workspace base {path} is {why}; {private_base_fix(path)}")


def remove_stale_jobs(base: str) -> list[str]:
    """Remove the ``job.*`` directories under ``base`` whose marker names a process of this host that is gone;
    return their paths. Symlinks are never followed; anything unreadable is left alone."""
    removed = []
    try:
        names = [n for n in os.listdir(base) if n.startswith("job.")]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(base, name)
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                continue
            fd = os.open(os.path.join(path, JOB_MARKER), os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as fh:
                marker = fh.read(4096)
        except OSError:
            continue
        if is_stale_job(marker):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class LocalProcess(DeviceProcess):
    """A subprocess with open pipes. Blocking reads and writes are bounded by a watchdog that kills the process at
    the deadline (its pipes then close and the blocked call returns)."""

    def __init__(self, argv: list[str]) -> None:
        self.device_id, self.argv = "local", list(argv)
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            raise DeviceError(f"local: cannot start {argv[0]} ({exc.strerror or exc})") from None
        self._tail = StderrTail()
        self._expired = False
        self._drain = threading.Thread(target=self._pump_stderr, daemon=True)
        self._drain.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _pump_stderr(self) -> None:
        assert self._proc.stderr is not None
        for chunk in iter(lambda: self._proc.stderr.read1(1 << 16), b""):  # type: ignore[union-attr]
            self._tail.add(chunk)

    @contextmanager
    def _watchdog(self, deadline: float) -> Iterator[None]:
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._expire)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _expire(self) -> None:
        self._expired = True
        self._proc.kill()

    def _failure(self, what: str, started: float, deadline: float) -> DeviceError:
        try:
            self._proc.wait(timeout=5)  # killed at the deadline, or ended on its own: reap it
        except subprocess.TimeoutExpired:
            pass
        if self._expired:
            return DeviceError(f"local: {self.name} gave no answer within {deadline - started:.0f}s during "
                               f"{what}; raise the timeout or use a smaller batch")
        self._drain.join(timeout=2)
        return self.ended_error(what)

    def send(self, data: bytes, deadline: float) -> None:
        started = time.monotonic()
        try:
            with self._watchdog(deadline):
                assert self._proc.stdin is not None
                self._proc.stdin.write(data)
                self._proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise self._failure("sending", started, deadline) from None

    def recv_exact(self, n: int, deadline: float) -> bytes:
        started = time.monotonic()
        with self._watchdog(deadline):
            assert self._proc.stdout is not None
            data = self._proc.stdout.read(n)
        if len(data) < n:
            raise self._failure("receiving", started, deadline)
        return data

    def exit_status(self) -> int | None:
        return self._proc.poll()

    def stderr_text(self) -> str:
        return self._tail.text()

    def close(self, timeout: float = 10.0) -> int | None:
        try:
            if self._proc.stdin and not self._proc.stdin.closed:
                self._proc.stdin.close()
        except OSError:
            pass
        try:
            status = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            status = self._proc.wait()
        self._drain.join(timeout=2)
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream:
                stream.close()
        return status
