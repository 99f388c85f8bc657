"""What the execution layer runs and how a stage hears about it: :class:`Unit`, :class:`ExecEvents`, the
:class:`Executor` protocol, :class:`ExecOptions` (``--no-ray`` / ``--ray-address`` / ``--workers``) and
:func:`unit_cpus`."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from harness.errors import HarnessError

#: environment variable a unit reads for the number of CPUs it was given (set by the Ray executor in the worker)
UNIT_CPUS_ENV = "COMPLEAK_UNIT_CPUS"


#: how often Ray retries a unit whose worker process died (user errors are never retried)
MAX_RETRIES = 3


RAY_ADDRESS_ENV = "RAY_ADDRESS"


@dataclass(frozen=True)
class Unit:
    """One unit of work of a stage.

    ``fn`` must be a module-level function (it is pickled by reference and imported on the worker); ``args`` and
    ``kwargs`` must be picklable. ``num_cpus``/``num_gpus`` are what one run needs (Ray asks for at most the largest
    node's CPUs); ``num_gpus="auto"`` asks for one GPU when the cluster has any. They decide where and beside what
    the unit runs, never what it computes: whatever a unit's result depends on (a build unit's threads, op
    determinism, seeds) travels in its arguments and is applied by the unit itself, the same serially, on an
    embedded Ray and on a cluster worker (docs/scale.md, "Results independent of where they ran"). ``resources``
    are Ray custom resources the unit must run where they exist (a phone farm's USB hub host: ``{"hub-a": 1}``).
    ``actor`` runs the unit in its own Ray actor (a long-lived process that keeps a device connection) instead of a
    task; ``warm`` (actors only) is a module-level function without arguments that :meth:`Executor.prestart` runs
    in the new actor ahead of the unit (imports, say), so the actor's start-up overlaps other work. Actor units
    with the same ``key`` share one actor.
    """

    key: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    num_cpus: float = 1.0
    num_gpus: float | Literal["auto"] = 0.0
    resources: dict[str, float] = field(default_factory=dict)
    actor: bool = False
    warm: Callable[[], Any] | None = None
    #: keyword arguments passed only where the unit runs in this process (a console, a progress callback, a dataset
    #: already in memory): things not worth or not possible to send to a worker. The executor decides; the unit
    #: computes the same result without them.
    local: dict[str, Any] = field(default_factory=dict)


class ExecEvents:
    """What a stage hears while the executor runs its units: Ray Tune's callbacks, in small. The executor calls
    these; a stage overrides what it shows (progress bars, one line per finished unit) and never asks which
    executor it has."""

    def started(self, units: Sequence[Unit], where: str) -> None:
        """``units`` are about to run; ``where`` says how, for the terminal ("serially in this process", "on
        embedded local Ray (2 CPUs, 0 GPUs)")."""

    def finished(self, unit: Unit, result: Any) -> None:
        """``unit`` finished with ``result`` (before :meth:`Executor.run` yields it)."""


NO_EVENTS = ExecEvents()


class Executor(Protocol):
    """Runs units; see the module docstring."""

    name: str

    def run(self, units: Sequence[Unit], events: ExecEvents | None = None) -> Iterator[tuple[Unit, Any]]:
        """Yield ``(unit, result)`` as units finish (any order under Ray, the given order serially), telling
        ``events`` when they start and as each finishes.

        A unit's user error is re-raised here as the original exception; remaining units are cancelled."""
        ...

    def prestart(self, units: Sequence[Unit]) -> None:
        """Start the actors of ``units`` (those with ``actor``) as soon as the executor starts -- now if it has --
        and run their ``warm`` function, so a later :meth:`run` of units with the same keys finds them ready.
        Nothing starts because of this alone; the serial executor ignores it."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> "Executor": ...

    def __exit__(self, *exc: object) -> None: ...


@dataclass
class ExecOptions:
    """How to execute: ``serial`` (``--no-ray``) or ``ray`` (embedded unless an address is given)."""

    serial: bool = False
    address: str | None = None  # --ray-address; RAY_ADDRESS when None
    workers: int | None = None  # --workers: at most this many units at once

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise HarnessError(f"--workers must be >= 1 (got {self.workers})")
        if self.serial and self.address:
            raise HarnessError("--no-ray and --ray-address exclude each other; give one of them")
        if not self.serial and not self.cluster_address:
            from harness.execution.ray_guard import check_auth_environment

            check_auth_environment()  # before any work: an embedded Ray always authenticates

    @property
    def cluster_address(self) -> str | None:
        return self.address or os.environ.get(RAY_ADDRESS_ENV) or None


def unit_cpus() -> int:
    """CPUs this unit may use: the Ray task's allocation when running under Ray, else this machine's cores
    (the CPUs this process may run on)."""
    raw = os.environ.get(UNIT_CPUS_ENV, "")
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
