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


_USER_NAME = re.compile(r"^[A-Za-z0-9._\-$+~\[\]]+$")  # what an error may show of a URI's user part
_BAD_USER = re.compile(r"[\s/\\:@\x00-\x1f\x7f]")  # never in a (decoded) ssh user name
_URI_IN_TEXT = re.compile(r"[A-Za-z][\w+.\-]*://[^\s'\"`<>()]*@")  # "scheme://user part@" in free text


def _printable(text: str) -> str:
    """``text`` with control characters (newlines, escapes) shown as ``\\xNN``: an error stays one line."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _split_userinfo(text: str) -> tuple[str, str | None, str]:
    """(before, userinfo, after) of a URI-like ``text``: ``userinfo`` is everything between ``://`` (or the start
    when there is none) and the LAST ``@``, so a password holding ``@``, ``/``, ``:`` or ``%``-escapes stays inside
    it; None when there is no ``@``."""
    at = text.rfind("@")
    if at < 0:
        return text, None, ""
    start = text.find("://")
    start = start + 3 if 0 <= start < at else 0
    return text[:start], text[start:at], text[at:]


def mask_uri(uri: str) -> str:
    """``uri`` as it may be shown in any message or log line: a password is replaced by ``***``, whatever it contains.

    Everything between ``://`` and the last ``@`` is the user part; what follows its first ``:`` is a password and is
    masked; a user part that is not a plain user name is masked whole. Works on unparsable text too (no ``://``:
    from the start), and shows control characters as ``\\xNN``. Examples: ``ssh://pi:s/e@c:r@t@h:22`` ->
    ``ssh://pi:***@h:22``; ``ssh://a%2Fb@h`` -> ``ssh://***@h``.
    """
    before, userinfo, after = _split_userinfo(str(uri))
    if userinfo is None:
        return _printable(before)
    user, colon, _ = userinfo.partition(":")
    if not _USER_NAME.match(user):
        shown = "***"
    else:
        shown = f"{user}:***" if colon else user
    return _printable(f"{before}{shown}{after}")


def uri_secret(uri: str) -> str | None:
    """The password part of ``uri`` (raw, as typed) or None: lets a caller scrub it from text it did not write."""
    _, userinfo, _ = _split_userinfo(str(uri))
    if userinfo is None or ":" not in userinfo:
        return None
    return userinfo.partition(":")[2] or None


def mask_secrets(text: str, *uris: str) -> str:
    """``text`` with every ``scheme://user:password@`` token masked (see :func:`mask_uri`) and every password of
    ``uris`` (those with a ``://``; raw and %-decoded, when at least 3 characters) replaced by ``***``: the last line
    of defence before a message is printed."""
    out = str(text)
    for uri in (u for u in uris if "://" in str(u)):
        secret = uri_secret(uri)
        for s in {secret, unquote(secret)} if secret else ():
            if len(s) >= 3:
                out = out.replace(s, "***")
    return _URI_IN_TEXT.sub(lambda m: mask_uri(m.group(0)), out)


def parse_device_uri(uri: str) -> DeviceURI:
    """Parse a device id; raise :class:`DeviceError` (one line, with the accepted forms) when malformed.

    Messages show the URI through :func:`mask_uri` only, so a password never appears, whatever it contains. The
    ssh user part ends at the LAST ``@`` (a ``@`` inside ``?python=`` must be written ``%40``).
    """
    text = (uri or "").strip()
    uri = mask_uri(text)  # the only form of the URI any message below shows
    if text in ("local", "local://"):
        return DeviceURI("local")
    if "://" not in text:
        raise DeviceError(f"'{uri}' is not a device URI; use {URI_HELP}")
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme == "ssh":
        _, userinfo, after = _split_userinfo(text)
        if userinfo is not None and ":" in userinfo:
            raise DeviceError(
                f"'{uri}': never put a password in a device URI; name an environment variable in the config"
            )
        hostpart = after[1:] if userinfo is not None else rest
        user = unquote(userinfo) if userinfo else None
        if userinfo is not None and (not user or _BAD_USER.search(user)):
            raise DeviceError(f"'{uri}': bad user name; use ssh://[user@]host[:port]")
        try:
            parts = urlsplit("ssh://" + hostpart)  # the user part is gone: no message below can show it
            port = parts.port
        except ValueError as exc:
            raise DeviceError(f"'{uri}': bad ssh URI ({_printable(str(exc))}); use ssh://[user@]host[:port]") from None
        if not parts.hostname:
            raise DeviceError(f"'{uri}': no host name; use ssh://[user@]host[:port]")
        if parts.path not in ("", "/") or parts.fragment:
            raise DeviceError(f"'{uri}': unexpected path; use ssh://[user@]host[:port][?python=PATH]")
        query = parse_qs(parts.query, keep_blank_values=True)
        if set(query) - {"python"} or any(len(v) != 1 or not v[0] for v in query.values()):
            raise DeviceError(f"'{uri}': the only URI option is ?python=PATH (the device's Python interpreter)")
        return DeviceURI(
            "ssh", host=parts.hostname, port=port or 22, user=user or getpass.getuser(),
            python=query.get("python", [None])[0],
        )
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
    if not re.fullmatch(r"[a-z][a-z0-9+.\-]*", scheme):
        raise DeviceError(f"'{uri}' is not a device URI; use {URI_HELP}")
    raise DeviceError(f"'{uri}': unknown device scheme '{scheme}'; use {URI_HELP}")


def connect(
    uri: str | DeviceURI,
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
        uri: a device URI, or one already parsed (:class:`DeviceURI`).
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
    parsed = uri if isinstance(uri, DeviceURI) else parse_device_uri(uri)
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
