"""One device and everything needed to reach and use it, as one value: :class:`DeviceSpec`.

The CLI or the config parses a device's options once into a spec; the spec travels whole (to collect, to the
audit's fan-out, to ``devices probe``), and :meth:`DeviceSpec.connect` opens it. The URI is parsed once, here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from devices.base import Device
from devices.errors import DeviceError
from devices.uri import DeviceURI, connect, parse_device_uri

#: values of ``--runner``: ``auto`` (the device's Python where it has a usable one, else a native runner), or one
#: forced (docs/native.md)
RUNNER_KINDS = ("auto", "python", "native")
#: seconds a device's runner may take to start (interpreter and runtime imports; ``--start-timeout``)
DEFAULT_START_TIMEOUT_S = 30.0
MAX_START_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class DeviceSpec:
    """A device URI and its options.

    Attributes:
        uri: ``local``, ``ssh://user@host:port``, ``adb://SERIAL`` or ``emulator://AVD`` (checked on construction).
        identity / known_hosts / trust_new_host: ssh key, known_hosts file, and whether an unknown host key is
            accepted and recorded (first contact only; a changed key is always refused).
        password_env: name of an environment variable holding an ssh password (never the password itself).
        binaries: folder with Android's ``benchmark_model`` / ``executor_runner`` (adb devices).
        workspace: base folder for job workspaces on the device (default ``~/.cache/compleak`` or a private /tmp).
        start_timeout: seconds the device's runner may take to start, in (0, 3600].
        runner: ``auto`` | ``python`` | ``native`` (:data:`RUNNER_KINDS`).
        bundle: a native runner bundle folder instead of the one ``compleak runners build`` made.
    """

    uri: str
    identity: Path | None = None
    known_hosts: Path | None = None
    trust_new_host: bool = False
    password_env: str | None = None
    binaries: Path | None = None
    workspace: str | None = None
    start_timeout: float = DEFAULT_START_TIMEOUT_S
    runner: str = "auto"
    bundle: Path | None = None
    #: the URI, parsed (set on construction)
    parsed: DeviceURI = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parsed", parse_device_uri(self.uri))
        if not 0 < self.start_timeout <= MAX_START_TIMEOUT_S:
            raise DeviceError(f"--start-timeout must be in (0, {MAX_START_TIMEOUT_S:g}] seconds, got "
                              f"{self.start_timeout}")
        if self.runner not in RUNNER_KINDS:
            raise DeviceError(f"--runner {str(self.runner)[:40]!r}: not a runner; use one of {', '.join(RUNNER_KINDS)}")

    @property
    def device_id(self) -> str:
        """The canonical id (``outputs/<device>/`` is named after it): ``ssh://pi@board:22``, ``local``."""
        return self.parsed.canonical

    def replace(self, **changes: object) -> "DeviceSpec":
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def connect(self, log: Callable[[str], None] | None = None, timeout: float = 30.0) -> Device:
        """Open the device (``log``: where connection notices go, e.g. a recorded host key)."""
        return connect(self.parsed, identity=self.identity, known_hosts=self.known_hosts,
                       trust_new_host=self.trust_new_host, password_env=self.password_env, binaries=self.binaries,
                       timeout=timeout, workspace=self.workspace, log=log)


def as_spec(device: DeviceSpec | str) -> DeviceSpec:
    """``device`` as a spec: a URI string becomes a spec with default options."""
    return device if isinstance(device, DeviceSpec) else DeviceSpec(str(device))
