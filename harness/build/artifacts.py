"""Artifact files as the framework builders produce them: the record they return, ids, build cache keys, and the
verified build caches both builders keep under the artifacts folder."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from harness.errors import HarnessError
from rundir import ContractError, atomic_write_json, load_json, sha256_file

T = TypeVar("T")


@dataclass
class BuiltArtifact:
    """One file written by a framework builder (``harness.build.tf_pipeline`` / ``harness.build.torch_pipeline``).

    variant: label such as ``prune-0.8`` or ``prune-0.8+int8``; format: tflite | pte | ptl | onnx;
    compression: what was applied ({"steps": [...], "sparsity": 0.8, "clusters": 8, "quantization": "int8", ...});
    toolchain: library versions used; output_kind: ``logits`` or ``probs``; settings: what the bytes depended on
    besides the inputs, as applied in the unit (``[build]`` threads and op determinism, the training device:
    :func:`harness.build.runtime.settings_record`), recorded as the manifest record's ``build``.
    """

    variant: str
    format: str
    path: Path
    compression: dict[str, Any] = field(default_factory=dict)
    toolchain: dict[str, Any] = field(default_factory=dict)
    output_kind: str = "logits"
    settings: dict[str, Any] = field(default_factory=dict)


def artifact_id(framework: str, tag: str, variant: str, fmt: str) -> str:
    """The manifest id of an artifact: ``{framework}-{tag}-{variant}.{format}``, e.g. ``tf-target-prune-0.8.tflite``."""
    return f"{framework}-{tag}-{variant}.{fmt}"


def content_digest(*parts: Any) -> str:
    """sha256 over ``parts`` in order: arrays by dtype, shape and bytes; anything else as sorted JSON.

    The cache key of build steps (trained models, fine-tuned stages, data and splits).
    """
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            a = np.ascontiguousarray(p)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- verified build caches

#: Marks a builder progress message that must stay visible (e.g. a refused cache entry), not just flash by.
NOTICE = "notice:"
CACHE_DIRS = {"tf": "tf-cache", "torch": "torch-cache"}  # each builder's model cache, under its out_dir (artifacts/)
CACHE_RECORD_MAX_BYTES = 64 * 1024  # a cache entry's sidecar JSON is a few hundred bytes; anything larger is foreign


def cache_entry_prefix(framework: str, tag: str) -> str:
    """How the names of one owner's cache entries begin: ``tf-{tag}-`` (TF) or ``{tag}-`` (torch)."""
    return f"tf-{tag}-" if framework == "tf" else f"{tag}-"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (toolchain errors are long multi-line dumps), else its class name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def read_cache_entry(path: Path, read: Callable[[Path], T], say: Callable[[str], None], refused: str) -> T | None:
    """``read(path)``: the builder's verified load of its cache entry at ``path``; None when there is none to use.

    No entry: None. An entry ``read`` refuses (``ValueError`` naming why: tampered, foreign, unreadable) is reported
    through ``say`` in one :data:`NOTICE` line (``{refused.format(name=...)} ({why}); ...``) and None is returned, so
    the caller rebuilds and overwrites it. A folder in place of the entry or its sidecar is a HarnessError.
    """
    for p in (path, cache_record_path(path)):
        if p.is_dir() and not p.is_symlink():
            raise HarnessError(
                f"{p}: a folder where the build cache keeps a file; delete it (or run compleak build --force)"
            )
    if not path.exists() and not path.is_symlink():
        return None
    try:
        return read(path)
    except ValueError as exc:
        say(f"{NOTICE} {refused.format(name=path.name, why=exc)}")
        return None


def cache_record_path(path: Path) -> Path:
    """The sidecar of cache file ``path``: ``path`` + ``.json`` (e.g. ``tf-target-original-KEY.keras.json``)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def write_cache_record(path: Path, key: str, fmt: str, **extra: Any) -> None:
    """Record the sha256 of the cache file ``path`` (just written by the builder) in its sidecar, atomically.

    The sidecar holds ``{"format": fmt, "key": key, "sha256": ..., "bytes": ..., **extra}``; :func:`check_cache_entry`
    accepts the file only while its content, format and cache key still match.
    """

    path = Path(path)
    atomic_write_json(
        cache_record_path(path),
        {"format": fmt, "key": key, "sha256": sha256_file(path), "bytes": path.stat().st_size, **extra},
    )


def check_cache_entry(path: Path, key: str | None, fmt: str) -> tuple[str | None, dict[str, Any]]:
    """Why the cache file ``path`` may not be loaded, or ``(None, sidecar record)`` when it is verified.

    Verified means: ``path`` is a regular file (not a link); its sidecar is a small JSON object written by
    :func:`write_cache_record` with this ``fmt`` and (unless ``key`` is None) this cache ``key``; and the file's
    sha256 equals the recorded one. Nothing in the file is parsed here. The reason is one short phrase.
    """

    path = Path(path)
    side = cache_record_path(path)
    if path.is_symlink() or not path.is_file():
        return "not a regular file", {}
    if side.is_symlink() or not side.is_file():
        return "no digest record (not written by this tool)", {}
    if side.stat().st_size > CACHE_RECORD_MAX_BYTES:
        return "digest record too large", {}
    try:
        rec = load_json(side, CACHE_RECORD_MAX_BYTES)
    except ContractError:
        return "unreadable digest record", {}
    if not isinstance(rec, dict) or rec.get("format") != fmt or not isinstance(rec.get("sha256"), str):
        return f"digest record is not a {fmt} record", {}
    if key is not None and rec.get("key") != key:
        return "recorded for another cache key", {}
    if sha256_file(path) != rec["sha256"]:
        return "content does not match its recorded sha256", {}
    return None, rec
