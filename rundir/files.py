"""Files of a run: content digests, atomic writes, and reads of ``.npz`` / JSON files that refuse pickles and name
the file in every error."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from pydantic import ValidationError

from rundir.errors import ContractError, UnsafePathError


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's content, read in 1 MiB chunks: the key every stage uses for an artifact."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def inputs_fingerprint(paths: list[Path], root: Path) -> str:
    """Cheap identity of a stage's input files below ``root`` (path relative to it, size, mtime in ns; sha256 hex),
    so finished work whose inputs did not change is not redone, also in a copy of the run (``cp -a``, ``copytree``
    keep modification times). A missing file counts as such."""
    h = hashlib.sha256()
    for p in sorted(paths):
        st = p.stat() if p.is_file() else None
        name = p.relative_to(root) if p.is_relative_to(root) else p
        h.update(f"{name}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
    return h.hexdigest()


@contextmanager
def atomic_path(path: Path | str, mode: int | None = None, *, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temp path in ``path``'s folder (hidden name, same file system); on normal exit fsync it and
    ``os.replace`` it onto ``path`` (chmod to ``mode`` first when given); on an exception remove the temp file
    and re-raise.

    The folder is created when missing. The temp file exists (empty) when the block starts, created like any new
    file (0666 less the umask) unless ``mode`` is given; write it by name (``open(tmp, "wb")``, a saver given
    ``str(tmp)``). The temp name is ``.<name>.<random>.tmp``; ``keep_suffix=True`` makes it end with ``path``'s
    suffix (``.<name>.<random>.tmp.h5``) for savers that pick the format from the file name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = f".tmp{path.suffix}" if keep_suffix else ".tmp"
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
        try:  # O_EXCL: never an existing file or a planted symlink; mode 0o600 until the block is done if asked
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if mode is not None else 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Serialise ``obj`` as indented JSON and write it atomically."""
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` to ``path`` atomically, so a crash never leaves a half-written file."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_npz(path: Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise ContractError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError ...
        raise ContractError(f"{path}: not a readable .npz file ({exc.__class__.__name__}: {exc})") from None


#: the largest JSON file of a run read (bytes) and its deepest nesting: run files are untrusted, and Python's parser
#: recurses; the deepest file a stage writes (a result row's per-class table) is far shallower
MAX_JSON_BYTES = 256 << 20
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


def json_depth(data: bytes) -> int:
    """The deepest nesting of ``[`` / ``{`` in JSON text ``data`` (brackets inside strings do not count)."""
    a = np.frombuffer(_JSON_STRING.sub(b'""', data), np.uint8)
    step = (a == 91).astype(np.int32) + (a == 123) - (a == 93) - (a == 125)  # [ { ] }
    return int(step.cumsum(dtype=np.int32).max(initial=0))


def parse_json(data: bytes, source: object, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse untrusted JSON ``data`` (from ``source``, for the message) after checking its nesting depth; one-line
    :class:`ContractError` for malformed or too deeply nested text."""
    depth = json_depth(data)
    if depth > max_depth:
        raise ContractError(f"{source}: JSON nested {depth} levels deep (at most {max_depth}); the file is not one "
                            "this tool writes: restore or re-create it")
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise ContractError(f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ContractError(f"{source}: unreadable JSON ({type(exc).__name__})") from None


def read_bounded(path: Path, max_bytes: int, what: str = "file") -> bytes:
    """At most ``max_bytes`` of the regular file ``path`` (a larger file, a missing one or anything but a regular
    file is a one-line :class:`ContractError`)."""
    path = Path(path)
    if not path.is_file():
        raise ContractError(f"{path}: file not found")
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise ContractError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    if len(data) > max_bytes:
        raise ContractError(f"{path}: {what} larger than {max_bytes >> 20} MiB; the file is not one this tool writes")
    return data


def load_json(path: Path, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A run's JSON file, read bounded (size and nesting depth) and parsed; one-line :class:`ContractError` naming the
    file for a missing, oversized, too deeply nested or malformed one. The one way a stage reads a run's JSON."""
    return parse_json(read_bounded(path, max_bytes, "JSON file"), path, max_depth)


def contract_error(exc: ValidationError, prefix: str) -> ContractError:
    """One-line :class:`ContractError` (:class:`UnsafePathError` when a name/path check failed) for ``exc``."""
    unsafe = any(isinstance((e.get("ctx") or {}).get("error"), UnsafePathError) for e in exc.errors())
    return (UnsafePathError if unsafe else ContractError)(f"{prefix}: {first_error(exc)}")


def first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg
