"""Where units of work run: in this process (serial), on an embedded local Ray, or on a Ray cluster by address.

Execution is a layer, not a stage. A stage (build, collect, ...) describes its units of work as :class:`Unit`
records -- a module-level function plus its arguments and the resources one run needs -- hands them to an
:class:`Executor` and consumes the results as they finish. The stage stays the one writer of its run-directory
files (``manifest.json``, outputs); units write only their own files, atomically. A stage hears how its units
run through :class:`ExecEvents` and never asks which executor it has; what only makes sense in this process (a
console, a progress callback) travels in ``Unit.local``, which an executor passes only where the unit runs here.

Executors (:func:`make_executor`):

- :class:`SerialExecutor` (``--no-ray``): units run one after another in this process, in the order given.
  Identical results; the path for debugging.
- :class:`RayExecutor`: embedded local Ray by default (this machine's cores, nothing to start by hand, Ray's own
  logs copied into ``RUN/logs/ray/`` when it stops, nothing printed on the terminal), or an existing cluster when
  ``--ray-address ADDR`` or ``RAY_ADDRESS`` is given (every node needs compleak-harness installed and the run
  directory on a shared file system at the same path). ``--workers N`` caps how many units run at once.

- :mod:`harness.execution.units`: :class:`Unit`, :class:`ExecEvents`, the :class:`Executor` protocol,
  :class:`ExecOptions`, :func:`unit_cpus`
- :mod:`harness.execution.serial`: :class:`SerialExecutor`
- :mod:`harness.execution.ray_executor`: :class:`RayExecutor` (the only module that imports Ray)
"""

from __future__ import annotations

from pathlib import Path

from harness.execution.ray_executor import RayExecutor, describe
from harness.execution.serial import SerialExecutor
from harness.execution.units import (
    MAX_RETRIES,
    RAY_ADDRESS_ENV,
    UNIT_CPUS_ENV,
    ExecEvents,
    ExecOptions,
    Executor,
    Unit,
    unit_cpus,
)


def make_executor(options: ExecOptions | None, run_dir: Path | None = None) -> Executor:
    """The executor ``options`` ask for (None: serial). ``run_dir`` receives Ray's logs (``logs/ray/``)."""
    options = options or ExecOptions(serial=True)
    if options.serial:
        return SerialExecutor(options)
    return RayExecutor(options, run_dir)


__all__ = [
    "MAX_RETRIES", "RAY_ADDRESS_ENV", "UNIT_CPUS_ENV", "ExecEvents", "ExecOptions", "Executor", "RayExecutor",
    "SerialExecutor", "Unit", "describe", "make_executor", "unit_cpus",
]
