"""The project's user-facing error types, gathered for the CLI.

Every one of them carries a single-line message that names the thing at fault and the fix; the CLI prints
that line instead of a traceback.
"""

from __future__ import annotations


class HarnessError(RuntimeError):
    """A problem in orchestration (build, collect, attack stage, report) that the user can fix."""


def user_errors() -> tuple[type[BaseException], ...]:
    """All exception types that are reported as one line (imported lazily to keep packages independent)."""
    from compleak.rundir import ContractError
    from devices.errors import DeviceError
    from harness.config import ConfigError

    return (HarnessError, ContractError, ConfigError, DeviceError)
