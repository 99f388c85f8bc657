"""The two errors of the run-directory contract."""

from __future__ import annotations


class ContractError(ValueError):
    """A run-directory file breaks the contract. The message is one line naming the file."""


class UnsafePathError(ContractError):
    """A name or path from a run file or the user that would become a path outside the run (hostile, not merely
    corrupt: stages refuse it instead of repairing around it)."""
