"""Devices this tool started itself (the emulated edge containers) and the ssh credentials it made for them.

``compleak devices up edge-arm64`` generates a client key and a host key, records the host key in a known_hosts
file it owns, and registers the device here, so that ``devices probe URI`` and ``collect RUN --device URI`` find
the key and verify the host key with no further flags. Host-key checking is never relaxed: the registry only
says *which* known_hosts file holds the key the tool itself generated.

The registry is one JSON file, ``<cache>/devices.json`` with ``<cache>`` = ``$COMPLEAK_CACHE_DIR`` or
``${XDG_CACHE_HOME:-~/.cache}/compleak``: ``{"devices": [{"uri", "name", "identity", "known_hosts", "meta"}]}``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devices.errors import DeviceError
from rundir import atomic_path


def cache_dir() -> Path:
    """The per-user cache folder of the tool (not created here)."""
    if os.environ.get("COMPLEAK_CACHE_DIR"):
        return Path(os.environ["COMPLEAK_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "compleak"


def registry_path() -> Path:
    """Where the registry of started devices lives."""
    return cache_dir() / "devices.json"


@dataclass
class KnownDevice:
    """One device started by this tool.

    uri: canonical device id (``ssh://root@127.0.0.1:PORT``); name: e.g. ``edge-arm64``;
    identity: the client private key; known_hosts: the file holding the device's host key;
    meta: what started it (engine, container, image, arch).
    """

    uri: str
    name: str
    identity: str
    known_hosts: str
    meta: dict[str, Any] = field(default_factory=dict)


def _read(path: Path) -> list[KnownDevice]:
    if not path.is_file():
        return []
    try:
        raw = json.loads(path.read_text())
        return [KnownDevice(**d) for d in raw.get("devices", [])]
    except (OSError, ValueError, TypeError) as exc:
        raise DeviceError(
            f"{path}: unreadable device registry ({exc.__class__.__name__}); "
            f"delete it and run `compleak devices up` again"
        ) from None


def _write(path: Path, devices: list[KnownDevice]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump({"devices": [asdict(d) for d in devices]}, fh, indent=2)
        fh.write("\n")


def known_devices(path: Path | None = None) -> list[KnownDevice]:
    """Every registered device."""
    return _read(path or registry_path())


def register(device: KnownDevice, path: Path | None = None) -> None:
    """Add ``device``, replacing any entry with the same name or URI."""
    path = path or registry_path()
    keep = [d for d in _read(path) if d.name != device.name and d.uri != device.uri]
    _write(path, keep + [device])


def unregister(name: str, path: Path | None = None) -> list[KnownDevice]:
    """Remove the entries named ``name``; returns what was removed."""
    path = path or registry_path()
    devices = _read(path)
    gone = [d for d in devices if d.name == name]
    if gone:
        _write(path, [d for d in devices if d.name != name])
    return gone


def lookup(uri: str, path: Path | None = None) -> KnownDevice | None:
    """The registered device whose canonical URI is ``uri`` (already canonical: ``ssh://user@host:port``)."""
    for d in _read(path or registry_path()):
        if d.uri == uri:
            return d
    return None


def edge_credentials(uri: str, path: Path | None = None) -> tuple[Path, Path] | None:
    """(identity, known_hosts) the tool generated for a device it started, or None if it did not start ``uri``."""
    d = lookup(uri, path)
    if d is None:
        return None
    identity, known_hosts = Path(d.identity), Path(d.known_hosts)
    if not identity.is_file() or not known_hosts.is_file():
        raise DeviceError(
            f"{uri}: its generated key {identity} or known_hosts {known_hosts} is gone; "
            f"run `compleak devices up {d.name}` again"
        )
    return identity, known_hosts
