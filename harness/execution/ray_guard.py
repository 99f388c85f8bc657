"""An embedded Ray confined to this user and this machine (docs/scale.md, "Security").

Ray 2.60 on Linux rewrites a loopback node address to the machine's LAN address and then binds its gRPC servers
(GCS, raylet, workers) to every interface, writes ``~/.ray/auth_token`` world-readable, re-chmods its temp folder
to 0777, and leaves its agents running when the driver is killed. :class:`EmbeddedRayGuard` closes each of those:

- **loopback only**: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps the node address at 127.0.0.1 (Ray then binds
  every server there: checked by the tests with ``ss``), set before Ray reads it;
- **token authentication always**: ``RAY_AUTH_MODE=token`` with a fresh random token in a 0600 file under the
  private folder (``RAY_AUTH_TOKEN_PATH``); an environment that disables authentication is refused in one line;
- **a private folder**: Ray's temp folder lives under a 0700 parent made by ``mkdtemp``, so whatever Ray does to
  its own folder's mode, no other user reaches its sockets, logs or token;
- **nothing left behind**: a watchdog process (:mod:`harness.execution.ray_watchdog`, in its own session) waits on
  a pipe from this process; when the pipe closes -- a normal close, SIGTERM or SIGKILL of the driver -- it stops
  every process carrying this instance's marker in its environment and removes the private folder;
- **logs copied safely**: :func:`copy_logs` copies only regular files, never through a symbolic link, bounded in
  size.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.errors import HarnessError

#: the environment variable every process of one embedded instance carries (its value names the instance)
MARKER_ENV = "COMPLEAK_RAY_INSTANCE"
#: Ray reads this at import: 0 keeps a loopback node address on Linux (ray._private.ray_constants)
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
AUTH_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"
#: the largest log file copied into RUN/logs/ray/ and the most copied in all (bytes)
MAX_LOG_FILE_BYTES = 64 << 20
MAX_LOG_BYTES = 256 << 20


def check_auth_environment() -> None:
    """Refuse, in one line, an environment that turns Ray's authentication off for an embedded instance."""
    mode = os.environ.get(AUTH_MODE_ENV)
    if mode is not None and mode.strip().lower() != "token":
        raise HarnessError(
            f"{AUTH_MODE_ENV}={mode[:20]!r} in the environment would start Ray without authentication; unset it "
            f"(the embedded Ray always uses token authentication), or pass --no-ray"
        )


class EmbeddedRayGuard:
    """The private folder, token, environment and watchdog of one embedded Ray instance.

    Use: ``guard = EmbeddedRayGuard(); guard.start()`` before ``import ray`` / ``ray.init(_temp_dir=guard.temp_dir)``,
    ``guard.close()`` after ``ray.shutdown()``. ``temp_dir`` is Ray's folder (its sessions and logs), inside the
    0700 ``root``."""

    def __init__(self) -> None:
        self.root: Path | None = None
        self.instance = secrets.token_hex(8)
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._saved_env: dict[str, str | None] = {}
        self._cluster_constant: bool | None = None

    @property
    def temp_dir(self) -> Path:
        assert self.root is not None
        return self.root / "r"  # short: Ray's Unix sockets live below it

    def start(self) -> None:
        """Make the private folder and token, set the environment Ray and its processes read, start the
        watchdog."""
        check_auth_environment()
        self.root = Path(tempfile.mkdtemp(prefix="compleak-ray-"))  # 0700, ours
        token_file = self.root / "auth_token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        self.temp_dir.mkdir(mode=0o700)
        self._set_env({LOOPBACK_ENV: "0", AUTH_MODE_ENV: "token", AUTH_TOKEN_PATH_ENV: str(token_file),
                       AUTH_TOKEN_ENV: None, MARKER_ENV: self.instance})
        self._watchdog = subprocess.Popen(
            [sys.executable, "-m", "harness.execution.ray_watchdog", str(self.root), self.instance],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            close_fds=True,
        )
        self._cluster_constant = _set_cluster_constant(False)
        refresh_ray_config()

    def _set_env(self, values: dict[str, str | None]) -> None:
        for key, value in values.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def close(self, wait_s: float = 15.0) -> None:
        """Let the watchdog stop what is left of the instance and remove the private folder; restore the
        environment. Safe to call twice."""
        proc, self._watchdog = self._watchdog, None
        if proc is not None:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()  # EOF: the watchdog sweeps
                proc.wait(timeout=wait_s)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self._cluster_constant is not None:  # a later join of a cluster in this process resolves addresses again
            _set_cluster_constant(self._cluster_constant)
            self._cluster_constant = None
        if self._saved_env:
            refresh_ray_config()
        self._saved_env = {}


def _set_cluster_constant(value: bool) -> bool | None:
    """Set Ray's ``ENABLE_RAY_CLUSTER`` (what :data:`LOOPBACK_ENV` sets when Ray is imported; Ray reads the constant
    when it resolves a node address) in a Ray imported already; returns the value it had (None: Ray not imported)."""
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is None:
        return None
    old = bool(getattr(constants, "ENABLE_RAY_CLUSTER", True))
    constants.ENABLE_RAY_CLUSTER = value  # type: ignore[attr-defined]
    return old


def refresh_ray_config() -> None:
    """When Ray is imported already, it has read its authentication settings and cached its token: make it read
    the environment again (what Ray itself does when it turns token authentication on: ``Config.initialize`` and
    the token loader's ``reset_cache``), so the driver and the processes it starts agree."""
    if "ray._raylet" not in sys.modules:
        return
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def copy_logs(src: Path, dest: Path, skip_suffixes: tuple[str, ...] = (".sock",)) -> int:
    """Copy the regular files below ``src`` to ``dest`` (same relative paths); returns the bytes copied.

    Symbolic links are never followed (neither for folders nor for files), anything but a regular file (a FIFO, a
    device, a socket) is skipped, a file is read through ``O_NOFOLLOW | O_NONBLOCK`` and checked again on the open
    descriptor, and at most :data:`MAX_LOG_FILE_BYTES` per file and :data:`MAX_LOG_BYTES` in all are copied. Folders
    and files are created private (0700 / 0600)."""
    total = 0
    for folder, dirs, files in os.walk(src, followlinks=False):
        here = Path(folder)
        dirs[:] = [d for d in dirs if not (here / d).is_symlink() and d != "old"]
        out = dest / here.relative_to(src)
        for name in sorted(files):
            if name.endswith(skip_suffixes) or total >= MAX_LOG_BYTES:
                continue
            total += _copy_regular(here / name, out / name, min(MAX_LOG_FILE_BYTES, MAX_LOG_BYTES - total))
    return total


def _copy_regular(src: Path, dest: Path, limit: int) -> int:
    try:
        if not stat.S_ISREG(os.lstat(src).st_mode):
            return 0
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return 0
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return 0
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        copied = 0
        try:
            while copied < limit and (block := os.read(fd, min(1 << 20, limit - copied))):
                os.write(out, block)
                copied += len(block)
        finally:
            os.close(out)
        return copied
    except OSError:
        return 0
    finally:
        os.close(fd)
