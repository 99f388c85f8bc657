"""Artifact files as the framework builders produce them: the record they return, ids, and build cache keys."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


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
