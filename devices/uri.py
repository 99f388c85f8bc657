"""Device URIs (``local``, ``ssh://user@host:port``, ``adb://SERIAL``, ``emulator://AVD``) and :func:`connect`."""

from __future__ import annotations

import getpass
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, unquote, urlsplit

from devices.base import Device
from devices.errors import DeviceError

URI_HELP = "local, ssh://[user@]host[:port][?python=PATH], adb://SERIAL or emulator://AVD_NAME"
_SERIAL = re.compile(r"^[A-Za-z0-9._:\-\[\]]+$")
_AVD = re.compile(r"^[A-Za-z0-9._\-]+$")


@dataclass(frozen=True)
class DeviceURI:
    """A parsed device id.

    Attributes:
        scheme: ``local`` | ``ssh`` | ``adb`` | ``emulator``.
        host / port / user: for ssh (port defaults to 22, user to the local user name).
        serial: for adb (as ``adb devices`` prints it, e.g. ``emulator-5554`` or ``127.0.0.1:5555``).
        avd: for emulator, the AVD name.
        python: for ssh, the device's Python to run the runner with (``?python=/opt/venv/bin/python3``);
            default ``python3`` on the login PATH. Not part of the device id.
    """

    scheme: str
    host: str | None = None
    port: int | None = None
    user: str | None = None
    serial: str | None = None
    avd: str | None = None
    python: str | None = None

    @property
    def canonical(self) -> str:
        """The normalised URI used as the device id (``ssh://pi@board:22``)."""
        if self.scheme == "local":
            return "local"
        if self.scheme == "ssh":
            host = f"[{self.host}]" if self.host and ":" in self.host else self.host
            return f"ssh://{self.user}@{host}:{self.port}"
        if self.scheme == "adb":
            return f"adb://{self.serial}"
        return f"emulator://{self.avd}"

    def __str__(self) -> str:
        return self.canonical


def parse_device_uri(uri: str) -> DeviceURI:
    """Parse a device id; raise :class:`DeviceError` (one line, with the accepted forms) when malformed."""
    text = (uri or "").strip()
    uri = re.sub(r"^(\w+://[^/@:]*):[^@/]*@", r"\1:***@", text)  # never echo a password
    if text in ("local", "local://"):
        return DeviceURI("local")
    if "://" not in text:
        raise DeviceError(f"'{uri}' is not a device URI; use {URI_HELP}")
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme == "ssh":
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise DeviceError(f"'{uri}': bad ssh URI ({exc}); use ssh://[user@]host[:port]") from None
        if not parts.hostname:
            raise DeviceError(f"'{uri}': no host name; use ssh://[user@]host[:port]")
        if parts.path not in ("", "/") or parts.fragment:
            raise DeviceError(f"'{uri}': unexpected path; use ssh://[user@]host[:port][?python=PATH]")
        query = parse_qs(parts.query, keep_blank_values=True)
        if set(query) - {"python"} or any(len(v) != 1 or not v[0] for v in query.values()):
            raise DeviceError(f"'{uri}': the only URI option is ?python=PATH (the device's Python interpreter)")
        if parts.password:
            raise DeviceError(
                f"'{uri}': never put a password in a device URI; name an environment variable in the config"
            )
        user = unquote(parts.username) if parts.username else getpass.getuser()
        return DeviceURI("ssh", host=parts.hostname, port=port or 22, user=user, python=query.get("python", [None])[0])
    if scheme == "adb":
        serial = rest.rstrip("/")
        if not serial or not _SERIAL.match(serial):
            raise DeviceError(f"'{uri}': bad adb serial; use adb://SERIAL as printed by `adb devices`")
        return DeviceURI("adb", serial=serial)
    if scheme == "emulator":
        avd = rest.rstrip("/")
        if not avd or not _AVD.match(avd):
            raise DeviceError(f"'{uri}': bad AVD name; use emulator://AVD_NAME (see `emulator -list-avds`)")
        return DeviceURI("emulator", avd=avd)
    if scheme == "local":
        raise DeviceError(f"'{uri}': the local device takes no address; use local")
    raise DeviceError(f"'{uri}': unknown device scheme '{scheme}'; use {URI_HELP}")


def connect(
    uri: str,
    *,
    identity: Path | str | None = None,
    known_hosts: Path | str | None = None,
    trust_new_host: bool = False,
    password: str | None = None,
    password_env: str | None = None,
    binaries: Path | str | None = None,
    timeout: float = 30.0,
    workspace: str | None = None,
    python: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Device:
    """Open the device named by ``uri``.

    Args:
        identity: ssh private key (default: the user's keys and agent).
        known_hosts: ssh known_hosts file (default ``~/.ssh/known_hosts``); host keys are always verified.
        trust_new_host: accept an unknown ssh host key AND record it in ``known_hosts`` (reported via ``log``).
        password / password_env: ssh password, or the name of the environment variable holding it.
        binaries: folder with ``benchmark_model`` / ``executor_runner`` for adb devices.
        timeout: seconds to keep retrying the connection.
        workspace: base directory for job workspaces on the device (default ``~/.cache/compleak`` etc.).
        python: the device's Python interpreter for the runner (ssh/local; overrides ``?python=`` in the URI).
        log: where notices go (default: stderr).
    """
    parsed = parse_device_uri(uri)
    if parsed.scheme == "local":
        from devices.local import LocalDevice

        dev: Device = LocalDevice()
        if python:
            dev.python = python
    elif parsed.scheme == "ssh":
        from devices.ssh import SshDevice

        if identity is None and known_hosts is None:  # a device this tool started (`devices up`): its own keys
            from devices.known_devices import edge_credentials

            identity, known_hosts = edge_credentials(parsed.canonical) or (None, None)
        if password is None and password_env:
            password = os.environ.get(password_env)
            if password is None:
                raise DeviceError(f"{parsed.canonical}: environment variable {password_env} (ssh password) is not set")
        dev = SshDevice(
            host=parsed.host or "",
            port=parsed.port or 22,
            user=parsed.user or getpass.getuser(),
            identity=identity,
            known_hosts=known_hosts,
            trust_new_host=trust_new_host,
            password=password,
            timeout=timeout,
            log=log,
        )
        dev.python = python or parsed.python
    elif parsed.scheme == "adb":
        from devices.adb import AdbDevice

        dev = AdbDevice(parsed.serial or "", binaries=binaries, timeout=timeout)
    else:
        from devices.emulator import EmulatorDevice

        dev = EmulatorDevice(parsed.avd or "", binaries=binaries, timeout=timeout)
    if workspace:
        dev.base_dir = workspace
    return dev
