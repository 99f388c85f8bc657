"""The audit's collect fan-out: one collect unit per device, run by the execution layer.

Each non-host device's collect is a Ray actor (key ``collect <device id>``, 0 CPUs, pinned by the device's Ray
resource: a phone farm's USB hub host), started during the build (:func:`prestart_collect_actors`) and reused by
every seed's collect; the host (``local``) collects the reference (shadow) outputs as a 1-CPU task. Serially
(``--no-ray``) the devices are visited one after another. See docs/scale.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from devices.spec import DeviceSpec, as_spec
from harness.config import Experiment
from harness.errors import HarnessError, esc
from harness.execution import ExecEvents, Executor, Unit
from rundir import RunDir

#: ``--device URI@ray:NAME``: the device's collect actor runs on a Ray node offering custom resource NAME
RESOURCE_SUFFIX = "@ray:"
HOST = "local"


@dataclass(frozen=True)
class AuditDevice:
    """One device of an audit: its :class:`~devices.spec.DeviceSpec`, and the Ray custom resource its collect actor
    is pinned to (``URI@ray:NAME`` or ``[[audit.devices]] resource``; None: anywhere)."""

    spec: DeviceSpec
    resource: str | None = None

    @property
    def device_id(self) -> str:
        return self.spec.device_id

    @property
    def uri(self) -> str:
        return self.spec.uri


def audit_devices(exp: Experiment, cli_devices: Sequence[str | DeviceSpec],
                  defaults: DeviceSpec | None = None) -> list[AuditDevice]:
    """``local`` first, then the config's ``[audit] devices``, then ``--device`` URIs; duplicates (by device id)
    dropped. ``defaults`` holds the command line's device options (``uri`` unused): they fill in what a config
    entry leaves unset, and a ``--device`` given as a plain URI takes them all."""
    base = defaults or DeviceSpec(HOST)
    out = [AuditDevice(base.replace(uri=HOST))]
    seen = {HOST}

    def add(device: AuditDevice) -> None:
        if device.device_id not in seen:
            seen.add(device.device_id)
            out.append(device)

    for e in exp.audit.devices:
        add(AuditDevice(base.replace(
            uri=e.uri,
            identity=Path(e.identity).expanduser() if e.identity else base.identity,
            known_hosts=Path(e.known_hosts).expanduser() if e.known_hosts else base.known_hosts,
            trust_new_host=e.trust_new_host or base.trust_new_host,
            binaries=Path(e.binaries).expanduser() if e.binaries else None,
            password_env=e.password_env,
        ), e.resource))
    for given in cli_devices:
        if isinstance(given, DeviceSpec):
            add(AuditDevice(given))
            continue
        uri, resource = split_resource(given)
        add(AuditDevice(base.replace(uri=uri), resource))
    return out


def split_resource(given: str) -> tuple[str, str | None]:
    """``URI@ray:NAME`` -> (URI, NAME): the device's collect actor runs on a Ray node offering custom resource
    NAME (a phone farm's USB hub host). A plain URI -> (URI, None)."""
    from devices.uri import mask_uri  # error messages are printed literally (no esc), passwords masked

    if RESOURCE_SUFFIX not in given:
        return given, None
    uri, name = given.rsplit(RESOURCE_SUFFIX, 1)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise HarnessError(
            f"--device {mask_uri(given[:120])}: '{mask_uri(name[:40])}' is not a Ray resource name; use letters, "
            "digits, '_', '.', '-' (e.g. ssh://pi@board.lan@ray:hub-a)"
        )
    return uri, name


def _collect_unit(run: str, device: DeviceSpec, artifacts: list[str] | None, batch_size: int,
                  console: Console | None = None) -> tuple[str, int]:
    """One collect unit: ``collect_run`` on one device (a Ray actor, or in-process); returns (device id, count)."""
    from harness.collect.stage import collect_run

    written = collect_run(run, device, artifacts=artifacts, batch_size=batch_size,
                          console=console or Console(quiet=True))
    return device.device_id, len(written)


def _warm_collect() -> None:
    """A collect actor's warm-up, run while the build still goes on: import what a device collect uses (the
    collect stage, the device drivers and runners, paramiko), so the collect itself starts at once."""
    import devices.adb  # noqa: F401
    import devices.runners.choose  # noqa: F401
    import devices.ssh  # noqa: F401
    import harness.collect.stage  # noqa: F401
    import harness.data  # noqa: F401


def device_collect_unit(device: AuditDevice, args: tuple[Any, ...] = (), local: dict[str, Any] | None = None) -> Unit:
    """A device's collect unit: a Ray actor (key ``collect <device id>``, 0 CPUs, pinned by the device's
    resource) running :func:`_collect_unit` with ``args``; the same key for every run, so an audit's seeds reuse
    the device's actor and :meth:`Executor.prestart` can start it during the build (``args`` are then unused)."""
    return Unit(f"collect {device.device_id}", _collect_unit, args, num_cpus=0.0,
                resources={device.resource: 1.0} if device.resource else {}, actor=True, warm=_warm_collect,
                local=local or {})  # fmt: skip


def prestart_collect_actors(executor: Executor, devices: Sequence[AuditDevice]) -> None:
    """Have ``executor`` start every non-host device's collect actor as soon as it starts (during the build), so
    the actors' process start and imports overlap the build instead of delaying the collect."""
    executor.prestart([device_collect_unit(d) for d in devices if d.device_id != HOST])


def collect_units(run: Path, devices: Sequence[AuditDevice], shadows_on_devices: bool, batch_size: int,
                  console: Console) -> list[Unit]:
    """The collect units of an audit that have work left (:func:`harness.collect.stage.collect_pending`): one per
    device, as a Ray actor pinned by the device's resource, and the host (``local``) as a CPU task. The reference
    (shadow) artifacts run only on the host unless ``shadows_on_devices``; the other devices run only the target
    artifacts (the attack stage takes the shadows' outputs from the host). A unit run in this process prints its
    progress to ``console``."""
    from harness.collect.plan import collect_pending

    run = Path(run).resolve()  # a worker's working directory is not the driver's
    records = RunDir(run).load_manifest().artifacts
    targets = [r.id for r in records if r.role == "target"]
    local = {"console": console}
    units: list[Unit] = []
    for d in devices:
        host = d.device_id == HOST
        ids = None if host or shadows_on_devices else targets
        if not collect_pending(run, d.device_id, ids):
            console.print(f"[green]all artifacts already collected on {esc(d.device_id)}[/]")
            continue
        args = (str(run), d.spec, ids, batch_size)
        if host:
            units.append(Unit(f"collect {d.device_id}", _collect_unit, args, num_cpus=1.0, local=local))
        else:
            units.append(device_collect_unit(d, args, local))
    return units


class _Collected(ExecEvents):
    def __init__(self, console: Console) -> None:
        self.console = console
        self.done: dict[str, int] = {}

    def finished(self, unit: Unit, result: Any) -> None:
        device_id, n = result
        self.done[device_id] = self.done.get(device_id, 0) + n
        self.console.print(f"  collected {n} artifact(s): {esc(unit.key)}", highlight=False)


def collect_devices(run: Path, devices: Sequence[AuditDevice | DeviceSpec | str], executor: Executor,
                    console: Console, shadows_on_devices: bool = False, batch_size: int = 512) -> dict[str, int]:
    """Collect on every device at once (one actor per device; the host's reference outputs on CPU workers);
    returns {device id: artifacts collected}. Serially (``--no-ray``) the devices are visited one after another."""
    devs = [d if isinstance(d, AuditDevice) else AuditDevice(as_spec(d)) for d in devices]
    events = _Collected(console)
    for _ in executor.run(collect_units(run, devs, shadows_on_devices, batch_size, console), events):
        pass
    return events.done
