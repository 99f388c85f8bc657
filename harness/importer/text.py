"""What an import reads from the user's own text files and how its one-line messages quote it."""

from __future__ import annotations

import codecs
from pathlib import Path

from harness.errors import HarnessError

MAX_TEXT_BYTES = 256 * 2**20  # a membership or preprocessing file larger than this is refused (reads are bounded)


def shown(text: str, limit: int = 40) -> str:
    """A value from a user's file as a message may show it: one line, control characters escaped, bounded."""
    out = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])
    return out + ("…" if len(text) > limit else "")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its class name when it has none), at most 300 characters."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:300]


def read_text(path: Path, what: str) -> str:
    """``path`` as text: UTF-8 (a byte-order mark is dropped) or UTF-16 with a BOM; bounded; one-line errors."""
    try:
        size = path.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise HarnessError(f"{path}: {size} bytes is too large for {what} (limit {MAX_TEXT_BYTES} bytes)")
        raw = path.read_bytes()
    except OSError as exc:
        raise HarnessError(f"{path}: cannot read {what} ({exc.strerror})") from None
    try:
        if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return raw.decode("utf-16")
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HarnessError(
            f"{path}: not UTF-8 text (undecodable byte at offset {exc.start}); save {what} as UTF-8"
        ) from None


def require_utf8(what: str, value: object) -> None:
    """Refuse a path that is not valid UTF-8 (bytes the file system encoding cannot decode): the run records paths
    as text in experiment.toml, manifest.json and threat_model.json. Any other non-ASCII path is supported."""
    if value is None:
        return
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise HarnessError(
            f"{shown(text, 200)}: {what} path is not valid UTF-8; the run records it as text, so rename it "
            f"(or link it from a UTF-8 path) and retry"
        ) from None
