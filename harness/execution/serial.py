"""The serial executor (``--no-ray``): units run one after another in this process, in the order given, with
their in-process-only keyword arguments (``Unit.local``). Identical results; the path for debugging."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from harness.execution.units import NO_EVENTS, ExecEvents, ExecOptions, Unit

#: what :meth:`ExecEvents.started` is told
WHERE = "serially in this process"


class SerialExecutor:
    """Units run one after another in this process, in the given order."""

    name = "serial"

    def __init__(self, options: ExecOptions | None = None) -> None:
        self.options = options or ExecOptions(serial=True)

    def run(self, units: Sequence[Unit], events: ExecEvents | None = None) -> Iterator[tuple[Unit, Any]]:
        events = events or NO_EVENTS
        if units:
            events.started(units, WHERE)
        for u in units:
            result = u.fn(*u.args, **u.kwargs, **u.local)
            events.finished(u, result)
            yield u, result

    def prestart(self, units: Sequence[Unit]) -> None:
        pass  # everything runs in this process, which has imported what it needs by the time it runs a unit

    def close(self) -> None:
        pass

    def __enter__(self) -> "SerialExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
