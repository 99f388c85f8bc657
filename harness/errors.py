"""The project's user-facing error types, gathered for the CLI, and the helpers that keep console output safe.

Every one of them carries a single-line message that names the thing at fault and the fix; the CLI prints
that line instead of a traceback.

Any string that came from a user, a run directory or a device (paths, artifact ids, experiment names, device ids,
host names, error texts) is interpolated into rich console output through :func:`esc`, so that ``[bold]`` or
``[/]`` in it is printed literally instead of being read as markup (or crashing with ``MarkupError``).
"""

from __future__ import annotations

from typing import Any, Callable


class HarnessError(RuntimeError):
    """A problem in orchestration (build, collect, attack stage, report) that the user can fix."""


class Terminated(BaseException):
    """SIGTERM arrived: raised in the main thread so that every ``with`` block closes (executors stop Ray, locks
    are released) and finished work stays on disk; the CLI prints one line and exits 143."""


def on_sigterm(signum: int, frame: object) -> None:
    """The SIGTERM handler the CLI installs: raise :class:`Terminated` in the main thread, once (a second SIGTERM
    during the clean-up is ignored, so the clean-up finishes)."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def user_errors() -> tuple[type[BaseException], ...]:
    """All exception types that are reported as one line (imported lazily to keep packages independent)."""
    from devices.errors import DeviceError
    from harness.config import ConfigError
    from rundir import ContractError

    return (HarnessError, ContractError, ConfigError, DeviceError)


def esc(value: object) -> str:
    """``str(value)`` with rich markup escaped: use for EVERY user/device/run-file string put into a rich
    ``console.print`` f-string, a progress description, a status text or a table cell."""
    from rich.markup import escape

    return escape(str(value))


def literal_log(console: Any) -> Callable[[str], None]:
    """A ``log`` callable (as ``devices.uri.connect`` takes) that prints messages literally: no markup, no
    highlighting, whatever host names or paths they contain."""

    def log(message: str) -> None:
        console.print(str(message), markup=False, highlight=False, soft_wrap=True)

    return log


def cli_exits() -> tuple[type[BaseException], ...]:
    """The CLI framework's own usage errors and deliberate exits (they print themselves), for any Typer version:
    recent Typer vendors click as ``typer._click`` and has its own ``Exit``/``Abort``; older Typer re-exports the
    ``click`` package's. (A separately installed ``click`` is not what Typer raises, so never import it for this.)"""
    import importlib

    import typer

    return (importlib.import_module(typer.BadParameter.__module__).ClickException, typer.Exit, typer.Abort)
