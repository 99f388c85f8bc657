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
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.execution import units
from harness.execution.ray_guard import EmbeddedRayGuard, check_auth_environment, copy_logs, refresh_ray_config
from harness.execution.serial import WHERE
from harness.execution.units import NO_EVENTS, ExecEvents, ExecOptions, Executor, Unit, unit_cpus
from rundir import RunDir


@dataclass
class _UserFailure:
    """A user error raised inside a unit, carried back to the driver to be re-raised as itself."""

    error: BaseException


def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], cpus: float) -> Any:
    """Body of every Ray task / actor call: run the unit with its CPU allocation; user errors come back as values
    (so Ray does not wrap them, and ``retry_exceptions`` stays off for them)."""
    from harness.errors import user_errors

    os.environ[units.UNIT_CPUS_ENV] = str(max(1, int(cpus)))
    try:
        return fn(*args, **kwargs)
    except user_errors() as exc:
        return _UserFailure(exc)


#: seconds ``--ray-address`` may take to answer and accept this driver (COMPLEAK_RAY_JOIN_TIMEOUT overrides)
JOIN_TIMEOUT_S = 60.0


def _join_failed(address: str, why: str) -> HarnessError:
    return HarnessError(f"cannot join the Ray cluster at {address[:120]}: {why}; check `ray status --address ADDR` on "
                        "the head node, or pass --no-ray")


def join_timeout() -> float:
    """Seconds a join may take: ``COMPLEAK_RAY_JOIN_TIMEOUT`` when it is a positive number, else
    :data:`JOIN_TIMEOUT_S`."""
    raw = os.environ.get("COMPLEAK_RAY_JOIN_TIMEOUT", "")
    return float(raw) if raw.replace(".", "", 1).isdigit() and float(raw) > 0 else JOIN_TIMEOUT_S


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail in one line when nothing accepts a TCP connection at a ``host:port`` (or ``ray://host:port``) cluster
    address; other forms (``auto``) are left to Ray."""
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not (sep and port.isdigit() and host):
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise _join_failed(address, f"nothing answers at {host}:{port} ({exc.strerror or type(exc).__name__})"
                           ) from None


def join_cluster(ray: Any, address: str, timeout_s: float | None = None) -> None:
    """``ray.init(address)``, bounded: a ``host:port`` that nothing answers fails at once, and a join that does not
    finish within ``timeout_s`` seconds (:data:`JOIN_TIMEOUT_S`) fails in one line; Ctrl-C works meanwhile (the
    join runs on a daemon thread while this one waits)."""
    timeout_s = join_timeout() if timeout_s is None else timeout_s
    check_reachable(address, min(10.0, timeout_s))
    refresh_ray_config()  # a Ray imported earlier in this process read RAY_AUTH_* then: read them now
    outcome: dict[str, BaseException] = {}

    def init() -> None:
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False)
        except BaseException as exc:  # noqa: BLE001  (reported in the waiting thread)
            outcome["error"] = exc

    joining = threading.Thread(target=init, name="compleak-ray-join", daemon=True)
    joining.start()
    deadline = time.monotonic() + timeout_s
    while joining.is_alive():
        joining.join(0.2)  # Ctrl-C (KeyboardInterrupt) lands here
        if joining.is_alive() and time.monotonic() > deadline:
            raise _join_failed(address, f"no Ray head answered within {timeout_s:g} s (COMPLEAK_RAY_JOIN_TIMEOUT)")
    exc = outcome.get("error")
    if exc is not None:
        raise _join_failed(address, _why(exc))


def _why(exc: BaseException) -> str:
    """One line for a failed ``ray.init``: a refused token is named with its fix (Ray hides it in the cause chain
    behind "Failed to connect"); anything else is the error's first line."""
    chain, seen = exc, 0
    while chain is not None and seen < 8:
        if "InvalidAuthToken" in str(chain) or "Unauthenticated" in str(chain):
            return ("the cluster refused this driver's authentication token (set RAY_AUTH_MODE=token and "
                    "RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH, to the token `ray get-auth-token` prints on the head)")
        chain, seen = chain.__cause__ or chain.__context__, seen + 1
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return first[:300]


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
        self._guard: EmbeddedRayGuard | None = None
        self._started = False
        self._ray: Any = None
        self.mode = "cluster" if options.cluster_address else "embedded"
        self._actors: dict[str, Any] = {}  # unit key -> its live actor
        self._prestart: list[Unit] = []  # actor units to start as soon as Ray starts
        self._warming: list[Any] = []  # object refs of the warm-up calls
        if self.mode == "embedded":
            check_auth_environment()  # before any work: an embedded Ray always authenticates

    def start(self) -> None:
        """Start the embedded instance or join the cluster (once). ``ray.init`` replaces the SIGTERM handler with
        one that exits at once; the caller's handler (the CLI's clean stop) is put back."""
        if self._ray is not None:
            return
        main = threading.current_thread() is threading.main_thread()
        handler = signal.getsignal(signal.SIGTERM) if main else None
        try:
            self._start()
        finally:
            if main and handler is not None:
                signal.signal(signal.SIGTERM, handler)

    def _start(self) -> None:
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
            join_cluster(ray, address)
            self._started = True
        else:
            self.mode = "embedded"
            self._start_embedded(ray)
            self._started = True
        self._remote_call = ray.remote(_call)
        self._remote_actor = ray.remote(_UnitActor)
        self._ray = ray
        if self._prestart:
            units, self._prestart = self._prestart, []
            self.prestart(units)

    def _start_embedded(self, ray: Any) -> None:
        """An embedded instance confined to this user and this machine (:mod:`harness.execution.ray_guard`:
        loopback only, token authentication, a private folder, a watchdog); its logs are copied into RUN/logs/ray/
        at close."""
        guard = EmbeddedRayGuard()
        guard.start()  # refuses an environment without authentication, in one line
        env_addr = os.environ.pop(units.RAY_ADDRESS_ENV, None)  # empty string only: cluster_address was None
        try:
            ray.init(
                address="local",
                num_cpus=unit_cpus(),
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
                _node_ip_address="127.0.0.1",
                _temp_dir=str(guard.temp_dir),
            )
        except Exception as exc:  # noqa: BLE001  (Ray raises many types when it cannot start)
            guard.close()
            raise HarnessError(
                f"could not start an embedded Ray instance ({exc.__class__.__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); pass --no-ray to run serially"
            ) from None
        finally:
            if env_addr is not None:
                os.environ[units.RAY_ADDRESS_ENV] = env_addr
        self._guard = guard

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
        opts: dict[str, Any] = {"num_cpus": self._cpus(unit), "num_gpus": self._gpus(unit)}
        if unit.resources:
            opts["resources"] = dict(unit.resources)
        return opts

    def _actor(self, unit: Unit) -> Any:
        return self._remote_actor.options(
            **self._options(unit), max_restarts=units.MAX_RETRIES, max_task_retries=units.MAX_RETRIES
        ).remote(unit.num_cpus)

    # ----------------------------------------------------------------- resources

    def cluster_gpus(self) -> float:
        """GPUs in the cluster (0 on this machine when it has none)."""
        self.start()
        return float(self._ray.cluster_resources().get("GPU", 0.0))

    def _cpus(self, unit: Unit) -> float:
        """CPUs to ask for: the unit's ``num_cpus``, but at most the largest node's (a unit asking for more could
        never be scheduled). What the unit computes does not change: its thread count comes from its own
        arguments (a build unit's ``[build] threads``), not from this allocation."""
        if unit.num_cpus <= 1:
            return unit.num_cpus
        most = max((float(n.get("Resources", {}).get("CPU", 0.0)) for n in self._ray.nodes() if n.get("Alive")),
                   default=0.0)  # fmt: skip
        return min(unit.num_cpus, most) if most >= 1 else unit.num_cpus

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
        opts = self._options(unit)
        call = self._remote_call.options(**opts, max_retries=units.MAX_RETRIES, retry_exceptions=False)
        ref = call.remote(unit.fn, unit.args, unit.kwargs, opts["num_cpus"])
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
                        f"unit {unit.key}: its Ray worker died {units.MAX_RETRIES + 1} times "
                        f"({exc.__class__.__name__}); finished work is kept, rerun to resume"
                    ) from None
                if isinstance(result, _UserFailure):
                    raise result.error
                events.finished(unit, result)
                yield unit, result
        finally:
            stopping = not isinstance(sys.exc_info()[1], (Exception, GeneratorExit, type(None)))
            for ref, (unit, actor) in pending.items():  # stopped early: a unit's error, or the caller's
                if stopping:  # SIGTERM / Ctrl-C: the process is ending, close() stops Ray with everything in it (a
                    break     # forced cancel racing a task's completion can abort Ray's core worker)
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
        guard, self._guard = self._guard, None
        if guard is not None:
            self._keep_logs(guard)
            guard.close()  # the watchdog stops what is left and removes the private folder

    def _keep_logs(self, guard: EmbeddedRayGuard) -> None:
        """Copy the embedded instance's logs into RUN/logs/ray/<session>/ (regular files only, never through a
        link, bounded: :func:`~harness.execution.ray_guard.copy_logs`; best effort, never fails the run)."""
        if self.run_dir is None or guard.root is None:
            return
        for session in sorted(guard.temp_dir.glob("session_2*")):
            logs = session / "logs"
            if logs.is_dir() and not logs.is_symlink() and not session.is_symlink():
                try:
                    copy_logs(logs, RunDir(self.run_dir).ray_logs_dir / session.name)
                except OSError:
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
