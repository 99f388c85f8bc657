"""The name rule and the path rule: every identifier that becomes a file name, and every path read from a run file,
passes here (untrusted input; see docs/architecture.md, "Untrusted run directories")."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from rundir.errors import UnsafePathError

NAME_MAX = 160  # characters; leaves room for suffixes such as ".npz" within a 255-byte file name
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@=-]*")
NAME_HELP = (
    "use letters, digits and . _ + @ = - only, starting with a letter or digit, without '..', "
    f"at most {NAME_MAX} characters"
)


def name_problem(value: object) -> str | None:
    """Why ``value`` cannot be used as a file or folder name, or None when it can."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value:
        return "must not be empty"
    if len(value) > NAME_MAX:
        return f"is {len(value)} characters long"
    if not _NAME.fullmatch(value) or ".." in value:
        return "contains characters or a '..' that are not allowed in a name"
    return None


def check_name(value: object, what: str, source: object) -> str:
    """The one rule for every identifier that becomes a file or folder name (artifact id, device folder,
    experiment name): ``[A-Za-z0-9][A-Za-z0-9._+@=-]*``, no ``..``, at most :data:`NAME_MAX` characters.

    Raises :class:`ContractError` ``"<source>: <what> '<value>' ...; <fix>"``; returns ``value``.
    """
    why = name_problem(value)
    if why is not None:
        raise UnsafePathError(f"{source}: {what} {str(value)[:80]!r} {why}; {NAME_HELP}")
    return value  # type: ignore[return-value]


def relpath_problem(rel: object, under: str | None = None) -> str | None:
    """Why ``rel`` is not a plain relative POSIX path (inside ``under``/ when given), or None when it is."""
    if not isinstance(rel, str) or not rel:
        return "must be a non-empty relative path"
    if "\\" in rel or "\x00" in rel or rel.startswith("/") or re.match(r"^[A-Za-z]:", rel):
        return "must be a relative path with '/' separators"
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "must not contain empty, '.' or '..' components"
    if under is not None and (parts[0] != under or len(parts) < 2):
        return f"must lie under {under}/"
    return None


def inside_run(root: Path, rel: str, what: str, source: object, under: str | None = None) -> Path:
    """``root / rel`` after checking that it stays inside the run ``root``: the one check for every path read from a
    run file.

    ``rel`` must be relative, ``/``-separated, without ``.``/``..`` components, and its resolved location
    (following any symlink already on disk) must lie under ``root`` (under ``root/under`` when given).
    Raises :class:`UnsafePathError` ``"<source>: <what> '<rel>' ..."``.
    """
    root = Path(root)
    why = relpath_problem(rel, under)
    if why is None:
        resolved = root.resolve()
        base = resolved / under if under else resolved
        if not (root / rel).resolve().is_relative_to(base):
            why = f"resolves outside {base} (through a symbolic link)"
    if why is not None:
        raise UnsafePathError(
            f"{source}: {what} {str(rel)[:120]!r} {why}; a run may only refer to files inside itself"
        )
    return root / rel


def device_dirname(device_id: str) -> str:
    """File-system name for a device URI: ``ssh://pi@host:22`` -> ``ssh_pi@host_22``; ``local`` -> ``local``.

    Always a valid :func:`check_name` (never ``.``, ``..``, a path or an option-like ``-x``): runs of other
    characters become ``_``, runs of dots become one dot, the ends are trimmed, a long name is cut and given a hash.
    """
    name = re.sub(r"[^A-Za-z0-9@._-]+", "_", str(device_id).replace("://", "_"))
    name = re.sub(r"\.{2,}", ".", name)
    name = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", name) or "device"
    if len(name) > NAME_MAX:
        name = f"{name[: NAME_MAX - 17]}_{hashlib.sha256(str(device_id).encode()).hexdigest()[:16]}"
    return check_name(name, "device folder", device_id)
