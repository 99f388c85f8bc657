"""Artifact files as the framework builders produce them: the record they return, ids and hashing."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class BuiltArtifact:
    """One file written by a framework builder (``harness.tf_build`` / ``harness.torch_build``).

    variant: label such as ``prune-0.8`` or ``prune-0.8+int8``; format: tflite | pte | ptl | onnx;
    compression: what was applied ({"steps": [...], "sparsity": 0.8, "clusters": 8, "quantization": "int8", ...});
    toolchain: library versions used; output_kind: ``logits`` or ``probs``.
    """

    variant: str
    format: str
    path: Path
    compression: dict[str, Any] = field(default_factory=dict)
    toolchain: dict[str, Any] = field(default_factory=dict)
    output_kind: str = "logits"


def artifact_id(framework: str, tag: str, variant: str, fmt: str) -> str:
    """The manifest id of an artifact: ``{framework}-{tag}-{variant}.{format}``, e.g. ``tf-target-prune-0.8.tflite``."""
    return f"{framework}-{tag}-{variant}.{fmt}"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's content, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
