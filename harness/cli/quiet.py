"""A quiet terminal: third-party log noise goes to a log file, the tool's own output stays on the terminal.

TensorFlow (absl ``I0000``/``W0000`` lines, CUDA probing), the TF-Lite converter, torchao's library-load failures,
ExecuTorch's ``cpuinfo`` lines, onnxruntime's quantizer, Python ``warnings`` (FutureWarning, DeprecationWarning,
UserWarning) and Ray print to file descriptor 2 or to ``sys.stderr``, much of it from C/C++ code that Python cannot
filter. :func:`quiet` therefore redirects fd 2 itself (``os.dup2``) to a log file for the duration of a command and
points ``sys.stderr`` there too, while the command's rich consoles keep writing to the terminal:

- the stdout console (``console``) is untouched (fd 1 is never redirected);
- each console given in ``consoles`` (the CLI's ``err_console``: ``error:`` lines, interruptions) is pointed at a
  duplicate of the terminal's fd 2 taken before the redirection, so error lines still reach the terminal;
- the log stream is a :class:`rich.file_proxy.FileProxy` subclass, so a rich progress bar (``Live``), which wraps
  ``sys.stderr`` to print it above the bar, leaves it alone and the noise does not leak around the bars.

Where the log goes: while the command runs, ``~/.cache/compleak/logs/<stage>-<time>-<pid>.log``
(``$XDG_CACHE_HOME`` honoured; :func:`cache_log_dir`). When the command succeeds and its run directory is known,
the log (if not empty) is appended to ``RUN/logs/<stage>.log`` and the cache file removed; when it fails, nothing is
written into the run (a refused command leaves the run byte-identical) and the log stays in the cache folder.
An empty log is removed. ``verbose`` (``compleak -v``) turns all of this off: everything prints as the libraries
print it. Nothing here is used by the stage functions: it is the CLI's concern only (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.file_proxy import FileProxy

from rundir import RunDir


def cache_log_dir() -> Path:
    """``$XDG_CACHE_HOME/compleak/logs`` (default ``~/.cache/compleak/logs``): logs of commands without a run."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "compleak" / "logs"


def run_log_path(run: Path, stage: str) -> Path:
    """``RUN/logs/<stage>.log``: the third-party output of every successful ``stage`` command on ``run``."""
    return RunDir(run).log_file(stage)


class _LogStream(FileProxy):
    """``sys.stderr`` during a quiet command: writes go straight to the log file.

    It is a ``FileProxy`` only so that rich's ``Live`` (every progress bar) does not wrap it: ``Live`` replaces a
    plain ``sys.stderr`` by a proxy that prints its lines on the console, which would put library warnings back on
    the terminal around the bars.
    """

    def __init__(self, file: IO[str]) -> None:
        super().__init__(None, file)  # type: ignore[arg-type]  (the console is never used: write is overridden)
        self._file = file

    def write(self, text: str) -> int:
        try:
            return self._file.write(text)
        except ValueError:  # closed: a handler kept from an earlier command; drop the line
            return len(text)

    def flush(self) -> None:
        with contextlib.suppress(ValueError):
            self._file.flush()

    def fileno(self) -> int:
        return self._file.fileno()

    def isatty(self) -> bool:
        return False


@dataclass
class QuietLog:
    """What :func:`quiet` did: the log file while the command runs, and where the log ended up (``kept``:
    ``RUN/logs/<stage>.log``, the cache file when the command failed, or None when nothing was logged)."""

    path: Path | None
    kept: Path | None = None
    terminal: IO[str] | None = field(default=None, repr=False)  # a stream on the terminal's stderr


def _fileno(stream: Any) -> int | None:
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError, TypeError):  # a capture buffer (CliRunner, pytest)
        return None


def _open_cache_log(stage: str) -> tuple[Path, int] | None:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    for folder in (cache_log_dir(), Path(os.environ.get("TMPDIR") or "/tmp")):
        path = folder / f"{stage}-{stamp}-{os.getpid()}.log"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        except OSError:
            continue
    return None


def _keep(log: Path, run: Path | None, stage: str, ok: bool) -> Path | None:
    """Move a finished command's log to ``RUN/logs/<stage>.log`` (appended) when it succeeded; else leave it."""
    try:
        if log.stat().st_size == 0:
            log.unlink()
            return None
    except OSError:
        return None
    if not ok or run is None or not Path(run).is_dir():
        return log
    dest = run_log_path(run, stage)
    try:
        dest.parent.mkdir(exist_ok=True)
        if dest.parent.is_symlink() or dest.parent.resolve().parent != Path(run).resolve():
            return log  # RUN/logs planted as a link out of the run: never write through it
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "ab") as out, open(log, "rb") as src:
            out.write(f"===== compleak {stage} (pid {os.getpid()}) {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n"
                      .encode())
            while block := src.read(1 << 20):
                out.write(block)
        log.unlink()
        return dest
    except OSError:  # a read-only run or a planted link: the log stays in the cache folder
        return log


@contextlib.contextmanager
def quiet(
    stage: str, run: Path | None = None, verbose: bool = False, consoles: Sequence[Any] = ()
) -> Iterator[QuietLog]:
    """Send fd 2 and ``sys.stderr`` to a log file while the block runs (see the module docstring).

    Args:
        stage: the command's name (``build``, ``collect``, ``devices-probe``, ...): names the log file.
        run: the run directory the command works on, if known: a successful command's log lands in
            ``RUN/logs/<stage>.log``.
        verbose: do nothing (``compleak -v``): every library prints to the terminal as usual.
        consoles: rich consoles that must keep reaching the terminal's stderr (the CLI's error console).
    """
    if verbose:
        yield QuietLog(None)
        return
    opened = _open_cache_log(stage)
    if opened is None:  # nowhere to write: leave the terminal as it is
        yield QuietLog(None)
        return
    path, log_fd = opened
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    old_stderr = sys.stderr
    saved_fd = os.dup(2)
    terminal: IO[str]
    if _fileno(old_stderr) == 2:  # the real stderr: keep a stream on the terminal's original fd 2
        terminal = os.fdopen(os.dup(saved_fd), "w", buffering=1, encoding=getattr(old_stderr, "encoding", None)
                             or "utf-8", errors="backslashreplace")  # fmt: skip
    else:  # already a capture (CliRunner, pytest): what the caller reads
        terminal = old_stderr
    old_files = [(c, c._file) for c in consoles]  # rich keeps an explicit file in _file (None: sys.stderr)
    for c in consoles:
        c.file = terminal
    log_stream = _LogStream(os.fdopen(os.dup(log_fd), "w", buffering=1, encoding="utf-8", errors="backslashreplace"))
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stderr = log_stream  # type: ignore[assignment]
    old_showwarning = warnings.showwarning

    def showwarning(
        message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
        log_stream.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = showwarning  # even where a caller (pytest, a notebook) records warnings itself
    ok = False
    result = QuietLog(path, terminal=terminal)
    try:
        yield result
        ok = True
    except BaseException as exc:
        import typer

        ok = isinstance(exc, typer.Exit)  # a deliberate exit status (--fail-on), no failure
        raise
    finally:
        log_stream.flush()
        if warnings.showwarning is showwarning:
            warnings.showwarning = old_showwarning
        if sys.stderr is log_stream:
            sys.stderr = old_stderr
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        for c, f in old_files:
            c._file = f
        if terminal is not old_stderr:
            with contextlib.suppress(OSError, ValueError):
                terminal.close()
        result.kept = _keep(path, run, stage, ok)


def run_of(arguments: Mapping[str, object]) -> Path | None:
    """The run directory a command's ``arguments`` name: ``run``, else ``out``, else ``runs/<experiment name>`` of
    ``experiment`` (the build stage's default); None when there is none or the config cannot be read (the stage
    itself then reports that)."""
    run = arguments.get("run")
    if isinstance(run, Path):
        return run
    out = arguments.get("out")
    if isinstance(out, Path):
        return out
    experiment = arguments.get("experiment")
    if isinstance(experiment, Path):
        try:
            from harness.config import load_experiment

            return Path("runs") / load_experiment(experiment).experiment.name
        except Exception:  # noqa: BLE001  (a broken config is the stage's error to report, not this helper's)
            return None
    return None
