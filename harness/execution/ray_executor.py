"""The Ray executor: units as Ray tasks (or actors), on an embedded local Ray or on a cluster by address. This is
the only module of the project that imports Ray (docs/scale.md).

Faults: a task whose worker process dies is retried by Ray (``max_retries``; ``retry_exceptions`` is off, so a
user error is never retried); an actor whose process dies is restarted (``max_restarts``) and its call retried.
Together with the stages' resumability (a unit skips what is already on disk) this gives no lost and no
duplicated artifacts or rows. A user error raised inside a unit (``HarnessError``, ``ContractError``,
``ConfigError``, ``DeviceError``) is re-raised in the driver as the same exception, so the CLI prints it as the
same one line.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.execution.serial import WHERE
from harness.execution.units import (
    MAX_RETRIES,
    NO_EVENTS,
    RAY_ADDRESS_ENV,
    UNIT_CPUS_ENV,
    ExecEvents,
    ExecOptions,
    Executor,
    Unit,
    unit_cpus,
)
from rundir import RunDir


@dataclass
class _UserFailure:
    """A user error raised inside a unit, carried back to the driver to be re-raised as itself."""

    error: BaseException


def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], cpus: float) -> Any:
    """Body of every Ray task / actor call: run the unit with its CPU allocation; user errors come back as values
    (so Ray does not wrap them, and ``retry_exceptions`` stays off for them)."""
    from harness.errors import user_errors

    os.environ[UNIT_CPUS_ENV] = str(max(1, int(cpus)))
    try:
        return fn(*args, **kwargs)
    except user_errors() as exc:
        return _UserFailure(exc)


class _UnitActor:
    """A Ray actor running one unit (e.g. collect on one device): one process, pinned by the unit's resources."""

    def __init__(self, cpus: float) -> None:
        self.cpus = cpus

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return _call(fn, args, kwargs, self.cpus)

    def warm(self, fn: Callable[[], Any]) -> bool:
        """Run a unit's warm-up (imports, ...); best effort: a failure here resurfaces in the unit itself."""
        try:
            fn()
        except Exception:  # noqa: BLE001
            return False
        return True


class RayExecutor:
    """Units as Ray tasks (or actors): embedded local Ray, or a cluster by address. See the module docstring.

    Ray starts (or is joined) on the first :meth:`run`, so a stage with nothing to do starts nothing and writes
    nothing (no ``RUN/logs/``). Actors live until :meth:`close`: a unit key that comes back (the same device in
    the next seed's collect) reuses its actor, and :meth:`prestart` starts them ahead of their units."""

    name = "ray"

    def __init__(self, options: ExecOptions, run_dir: Path | None = None) -> None:
        self.options = options
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._temp: Path | None = None
        self._started = False
        self._ray: Any = None
        self.mode = "cluster" if options.cluster_address else "embedded"
        self._actors: dict[str, Any] = {}  # unit key -> its live actor
        self._prestart: list[Unit] = []  # actor units to start as soon as Ray starts
        self._warming: list[Any] = []  # object refs of the warm-up calls

    def start(self) -> None:
        """Start the embedded instance or join the cluster (once)."""
        if self._ray is not None:
            return
        try:
            import ray
        except ImportError:
            raise HarnessError(
                "Ray is not installed: pip install 'ray==2.60.0' (or pass --no-ray to run serially)"
            ) from None
        options = self.options
        address = options.cluster_address
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage-stats prompt, file or upload
        if ray.is_initialized():  # an embedding program (a notebook, a test) started Ray already: use it
            self.mode = "existing"
        elif address:
            self.mode = "cluster"
            try:
                ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR,
                         include_dashboard=False)  # fmt: skip
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise HarnessError(
                    f"cannot join the Ray cluster at {address}: {str(exc).strip().splitlines()[0] if str(exc) else exc}"
                    "; check `ray status --address ADDR` on the head node, or pass --no-ray"
                ) from None
            self._started = True
        else:
            self.mode = "embedded"
            # a private temp dir (short path: Ray's Unix sockets live there), copied into RUN/logs/ray/ at close
            self._temp = Path(tempfile.mkdtemp(prefix="compleak-ray-"))
            env_addr = os.environ.pop(RAY_ADDRESS_ENV, None)  # empty string only: cluster_address was None
            try:
                ray.init(
                    address="local",
                    num_cpus=unit_cpus(),
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.ERROR,
                    _node_ip_address="127.0.0.1",
                    _temp_dir=str(self._temp),
                )
            except Exception as exc:  # noqa: BLE001  (Ray raises many types when it cannot start)
                shutil.rmtree(self._temp, ignore_errors=True)
                raise HarnessError(
                    f"could not start an embedded Ray instance ({exc.__class__.__name__}: "
                    f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); pass --no-ray to run serially"
                ) from None
            finally:
                if env_addr is not None:
                    os.environ[RAY_ADDRESS_ENV] = env_addr
            self._started = True
        self._remote_call = ray.remote(_call)
        self._remote_actor = ray.remote(_UnitActor)
        self._ray = ray
        if self._prestart:
            units, self._prestart = self._prestart, []
            self.prestart(units)

    def prestart(self, units: Sequence[Unit]) -> None:
        """See :meth:`Executor.prestart`. An actor needing a custom resource no node offers is left to :meth:`run`,
        which refuses it in one line."""
        if self._ray is None:
            self._prestart.extend(u for u in units if u.actor)
            return
        for u in units:
            if not u.actor or u.key in self._actors:
                continue
            try:
                self._check_resources(u)
            except HarnessError:
                continue
            actor = self._actor(u)
            self._actors[u.key] = actor
            if u.warm is not None:
                self._warming.append(actor.warm.remote(u.warm))

    @property
    def actors(self) -> dict[str, Any]:
        """The live actors by unit key (a copy)."""
        return dict(self._actors)

    def wait_prestarted(self, timeout: float | None = None) -> int:
        """Block until every prestarted actor has run its warm-up (or ``timeout`` seconds); returns how many are
        ready. For benchmarks and tests: a stage never needs to wait, :meth:`run` queues behind the warm-up."""
        if not self._warming:
            return 0
        ready, _ = self._ray.wait(self._warming, num_returns=len(self._warming), timeout=timeout)
        return len(ready)

    def _options(self, unit: Unit) -> dict[str, Any]:
        """Ray scheduling options of ``unit`` (CPUs, GPUs, custom resources)."""
        opts: dict[str, Any] = {"num_cpus": unit.num_cpus, "num_gpus": self._gpus(unit)}
        if unit.resources:
            opts["resources"] = dict(unit.resources)
        return opts

    def _actor(self, unit: Unit) -> Any:
        return self._remote_actor.options(
            **self._options(unit), max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES
        ).remote(unit.num_cpus)

    # ----------------------------------------------------------------- resources

    def cluster_gpus(self) -> float:
        """GPUs in the cluster (0 on this machine when it has none)."""
        self.start()
        return float(self._ray.cluster_resources().get("GPU", 0.0))

    def _gpus(self, unit: Unit) -> float:
        if unit.num_gpus == "auto":
            return 1.0 if self.cluster_gpus() >= 1 else 0.0
        return float(unit.num_gpus)

    def _check_resources(self, unit: Unit) -> None:
        have = self._ray.cluster_resources()
        for name, amount in unit.resources.items():
            if have.get(name, 0.0) < amount:
                raise HarnessError(
                    f"unit {unit.key} needs Ray resource {name!r} x{amount:g} but no node of the cluster has it; "
                    f"start that node with `ray start --resources '{{\"{name}\": 1}}'`, or drop '@ray:{name}'"
                )

    def _submit(self, unit: Unit) -> tuple[Any, Any]:
        """(object ref of the result, the actor or None). An actor unit runs in the live actor of its key (started
        by :meth:`prestart` or an earlier run), else in a new one that stays for the unit key's next run."""
        self._check_resources(unit)
        if unit.actor:
            actor = self._actors.get(unit.key)
            if actor is None:
                actor = self._actors[unit.key] = self._actor(unit)
            return actor.call.remote(unit.fn, unit.args, unit.kwargs), actor
        ref = self._remote_call.options(**self._options(unit), max_retries=MAX_RETRIES, retry_exceptions=False).remote(
            unit.fn, unit.args, unit.kwargs, unit.num_cpus
        )
        return ref, None

    def _kill_actor(self, key: str) -> None:
        actor = self._actors.pop(key, None)
        if actor is not None:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001  (best effort: it may be gone already)
                pass

    # ----------------------------------------------------------------- running

    def run(self, units: Sequence[Unit], events: ExecEvents | None = None) -> Iterator[tuple[Unit, Any]]:
        events = events or NO_EVENTS
        self.start()
        ray = self._ray
        if units:
            events.started(units, describe(self))
        from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

        # in flight at once: --workers, else as many as the cluster has CPUs (units wait here, not in Ray's queue
        # with their arguments already in the object store); actors (0-CPU device units) all at once
        if self.options.workers:
            limit = self.options.workers
        elif any(u.actor for u in units):
            limit = len(units) or 1
        else:
            limit = max(1, int(ray.cluster_resources().get("CPU", 1)))
        queue = list(units)
        pending: dict[Any, tuple[Unit, Any]] = {}
        try:
            while queue or pending:
                while queue and len(pending) < limit:
                    u = queue.pop(0)
                    ref, actor = self._submit(u)
                    pending[ref] = (u, actor)
                done, _ = ray.wait(list(pending), num_returns=1)
                unit, actor = pending.pop(done[0])
                try:
                    result = ray.get(done[0])
                except RayTaskError as exc:  # an unexpected (non-user) exception: re-raise the original
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, BaseException):
                        raise cause from None
                    raise
                except (WorkerCrashedError, RayActorError) as exc:
                    self._kill_actor(unit.key)
                    raise HarnessError(
                        f"unit {unit.key}: its Ray worker died {MAX_RETRIES + 1} times "
                        f"({exc.__class__.__name__}); finished work is kept, rerun to resume"
                    ) from None
                if isinstance(result, _UserFailure):
                    raise result.error
                events.finished(unit, result)
                yield unit, result
        finally:
            for ref, (unit, actor) in pending.items():  # stopped early: a unit's error, or the caller's
                if actor is not None:
                    self._kill_actor(unit.key)
                    continue
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001  (best effort on the way out)
                    pass

    def close(self) -> None:
        self._prestart = []
        if self._ray is not None:  # our actors go, also from a Ray the embedding program keeps running
            for key in list(self._actors):
                self._kill_actor(key)
            self._warming = []
        if not self._started:
            return
        self._started = False
        if self.mode != "existing":
            self._ray.shutdown()
        if self._temp is not None:
            self._keep_logs()
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None

    def _keep_logs(self) -> None:
        """Copy the embedded instance's logs into RUN/logs/ray/<session>/ (best effort, never fails the run)."""
        if self.run_dir is None or self._temp is None:
            return
        for session in sorted(self._temp.glob("session_2*")):
            logs = session / "logs"
            if logs.is_dir():
                dest = RunDir(self.run_dir).ray_logs_dir / session.name
                try:
                    shutil.copytree(logs, dest, dirs_exist_ok=True, symlinks=False,
                                    ignore=shutil.ignore_patterns("*.sock", "old"))  # fmt: skip
                except (OSError, shutil.Error):
                    pass

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def describe(executor: Executor) -> str:
    """One line for the terminal: how units run (what :meth:`ExecEvents.started` is told)."""
    if isinstance(executor, RayExecutor):
        where = {"embedded": "embedded local Ray", "cluster": "Ray cluster", "existing": "running Ray"}[executor.mode]
        cap = f", at most {executor.options.workers} at once" if executor.options.workers else ""
        executor.start()
        res = executor._ray.cluster_resources()
        return f"on {where} ({res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs{cap})"
    return WHERE
