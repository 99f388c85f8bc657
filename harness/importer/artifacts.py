"""Artifact files an import is given: what each says about itself (format, tensor specs, quantization, read from
its content), whether the query inputs fit it and the host runtime runs it, and its manifest record."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from harness.build.artifacts import artifact_id
from harness.config import Preprocess, parse_variant
from harness.errors import HarnessError
from harness.importer.args import ArtifactArg
from harness.importer.text import first_line
from rundir import ArtifactRecord, TensorSpec, sha256_file

FRAMEWORK = "external"  # framework field of every artifact in an imported run (targets and their shadows alike)
TF_FORMATS = ("tflite",)
TORCH_FORMATS = ("pte", "ptl", "onnx")
QUANT_DTYPES = ("int8", "uint8", "int16")


@dataclass
class Inspected:
    """What an artifact file says about itself, read from its content."""

    path: Path
    format: str
    sha256: str
    bytes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    n_classes: int
    runtime: dict[str, Any]
    output_kind: str = "logits"
    host_accuracy: dict[str, float | None] = field(default_factory=dict)


def _naming(path: Path, fallback: str, exc: BaseException) -> str:
    """The runtime's own one-line message when it already names ``path``, else ``path: fallback``."""
    line = first_line(exc)
    return line if line.startswith(str(path)) else f"{path}: {fallback}"


def _runner():
    try:
        from devices.ondevice import compleak_runner
    except ImportError as exc:  # the devices colleague's module is missing or broken
        raise HarnessError(f"devices/ondevice/compleak_runner.py cannot be imported ({first_line(exc)})") from None
    return compleak_runner


def describe_artifact(path: Path) -> Inspected:
    """Hash ``path``, detect its format from content and read its tensor specs; one-line error if unreadable.

    Raises :class:`HarnessError` naming the file for: missing/empty files, content that is no known model format,
    files the format's reader refuses (truncated, corrupt), more than one input, outputs that are not [N, C].
    """
    runner = _runner()
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"{path}: artifact file not found")
    size = path.stat().st_size
    if size == 0:
        raise HarnessError(f"{path}: empty file; re-copy the artifact")
    try:
        fmt = runner.detect_format(str(path))
    except Exception as exc:
        raise HarnessError(_naming(path, f"not a model artifact ({first_line(exc)})", exc)) from None
    if fmt not in TF_FORMATS + TORCH_FORMATS:
        raise HarnessError(f"{path}: content is not TF-Lite, ONNX, ExecuTorch or PyTorch Mobile (detected {fmt!r})")
    try:
        desc = runner.describe(str(path))
    except Exception as exc:
        raise HarnessError(
            _naming(path, f"unreadable {fmt} file ({first_line(exc)})", exc)
            + "; it may be truncated or corrupt, re-export or re-copy it"
        ) from None
    try:
        inputs = [TensorSpec.model_validate(t) for t in desc["inputs"]]
        outputs = [TensorSpec.model_validate(t) for t in desc["outputs"]]
    except (KeyError, TypeError, ValidationError) as exc:
        raise HarnessError(f"{path}: tensor details could not be read ({first_line(exc)})") from None
    if len(inputs) != 1:
        raise HarnessError(f"{path}: has {len(inputs)} inputs; only single-input image classifiers can be audited")
    if not outputs or len(outputs[0].shape) != 2 or outputs[0].shape[-1] < 2:
        shape = outputs[0].shape if outputs else None
        raise HarnessError(f"{path}: first output has shape {shape}; expected class scores [N, C] with C >= 2")
    return Inspected(
        path=path,
        format=fmt,
        sha256=sha256_file(path),
        bytes=size,
        inputs=inputs,
        outputs=outputs,
        n_classes=int(outputs[0].shape[-1]),
        runtime=dict(desc.get("runtime") or {}),
    )


def _shape_hint(want: list[int], declared: str | None, h: int, w: int, c: int) -> str:
    """What to change when inputs of [N, h, w, c] (NHWC) do not fit an artifact input of ``[N, *want]``."""
    if len(want) != 3:
        return ""
    chw = declared == "NCHW" or (declared is None and want[0] in (1, 3) and want[2] not in (1, 3))
    mc, mh, mw = (want[0], want[1], want[2]) if chw else (want[2], want[0], want[1])
    if (mh, mw) != (h, w) and mh > 0 and mw > 0:
        return f"; set resize = [{mh}, {mw}] in the preprocessing TOML"
    if mc != c and mc > 0:
        return f"; the data has {c} channel(s), the model takes {mc}"
    if declared:
        return f"; the file takes {'NHWC' if declared == 'NCHW' else 'NCHW'}, set layout accordingly"
    return ""


def check_input_shape(
    art: Inspected, sample: np.ndarray, pre: Preprocess, layout_explicit: bool, preprocess_file: Path | None
) -> str:
    """Check that query inputs (float32 NHWC ``sample`` [M, H, W, C]) fill the artifact's single input.

    Returns the layout the artifact takes (``NHWC`` or ``NCHW``; stated in the preprocessing file, or inferred
    from the file's input shape when not stated). Raises :class:`HarnessError` naming both files otherwise.
    """
    spec = art.inputs[0]
    want = list(spec.shape[1:])
    h, w, c = sample.shape[1:]
    nhwc, nchw = [h, w, c], [c, h, w]

    def fits(shape: list[int]) -> bool:
        return len(want) == 3 and all(a in (-1, b) for a, b in zip(want, shape))

    declared = pre.layout if layout_explicit else None
    if declared is None and fits(nhwc) and fits(nchw):  # ambiguous (e.g. dynamic dims): what the file says
        return "NCHW" if getattr(spec, "layout", None) == "NCHW" else "NHWC"
    if declared == "NCHW" and fits(nchw):
        return "NCHW"
    if declared in (None, "NHWC") and fits(nhwc):
        return "NHWC"
    if declared is None and fits(nchw):
        return "NCHW"
    src = str(preprocess_file) if preprocess_file else "the default preprocessing"
    raise HarnessError(
        f"{art.path}: expects input {spec.shape}{' (' + declared + ')' if declared else ''} but {src} makes inputs "
        f"of shape [N, {h}, {w}, {c}] (NHWC){_shape_hint(want, declared, h, w, c)}"
    )


def probe_artifact(art: Inspected, x: np.ndarray, y: np.ndarray, n_members: int, layout: str = "auto") -> None:
    """Run ``art`` on the host on float32 NHWC ``x`` [M, H, W, C] (first ``n_members`` rows are members, labels
    ``y`` int64 [M]); set its output kind (probabilities when every row is non-negative and sums to 1) and host
    accuracy. Raises :class:`HarnessError` naming the file when the runtime cannot execute it."""
    runner = _runner()
    try:
        model = runner.load_model(str(art.path), layout=layout)
        out = np.asarray(model.predict(x.astype(np.float32)), dtype=np.float32)
    except Exception as exc:
        raise HarnessError(f"{art.path}: the host runtime cannot run it ({first_line(exc)})") from None
    if out.ndim != 2 or out.shape[0] != len(x):
        raise HarnessError(
            f"{art.path}: produced outputs of shape {list(out.shape)} for {len(x)} inputs; expected [N, C]"
        )
    if not np.isfinite(out).all():
        raise HarnessError(
            f"{art.path}: produced NaN or Inf on valid inputs; check the preprocessing (scale, mean, std)"
        )
    probs = bool((out >= -1e-6).all() and np.allclose(out.sum(axis=1), 1.0, atol=0.05))
    art.output_kind = "probs" if probs else "logits"
    pred = out.argmax(axis=1)
    acc = lambda sl: float((pred[sl] == y[sl]).mean()) if len(pred[sl]) else None  # noqa: E731
    art.host_accuracy = {"train": acc(slice(0, n_members)), "test": acc(slice(n_members, None))}


def default_variant(art: Inspected, taken: set[str], arg: ArtifactArg) -> str:
    """The variant of an unlabelled artifact: ``int8`` for quantized input, else ``original`` while not taken."""
    if art.inputs[0].dtype in QUANT_DTYPES:
        return "int8"
    if "original" not in taken:
        return "original"
    raise HarnessError(
        f"{arg.path}: say which compression it carries: {arg.option} {arg.path}:VARIANT "
        f"(original, prune-0.8, cluster-8, dynamic-int8, int8, fp16, ...)"
    )


def _quantization(art: Inspected) -> dict[str, Any]:
    """Quantization parameters read from the file: I/O dtypes, scales and zero points."""
    q: dict[str, Any] = {}
    for kind, t in (("input", art.inputs[0]), ("output", art.outputs[0])):
        q[f"{kind}_dtype"] = t.dtype
        if t.scale is not None:
            q[f"{kind}_scale"], q[f"{kind}_zero_point"] = t.scale, t.zero_point
    return q


def record(
    art: Inspected,
    variant: str,
    shadow: int | None,
    layout: str,
    compression: dict[str, Any],
    toolchain: dict[str, Any],
    **extra: Any,
) -> ArtifactRecord:
    """The manifest record of an inspected artifact: a target (``shadow`` None) or shadow ``shadow``'s."""
    role = "target" if shadow is None else "shadow"
    tag = "target" if role == "target" else f"shadow{shadow}"
    aid = artifact_id(FRAMEWORK, tag, variant, art.format)
    inputs = [t.model_copy(update={"layout": layout}) if i == 0 else t for i, t in enumerate(art.inputs)]
    return ArtifactRecord(
        id=aid,
        role=role,  # type: ignore[arg-type]
        shadow=shadow,
        variant=variant,
        framework=FRAMEWORK,
        format=art.format,  # type: ignore[arg-type]
        path=f"artifacts/{aid}",
        sha256=art.sha256,
        bytes=art.bytes,
        inputs=inputs,
        outputs=art.outputs,
        output_kind=art.output_kind,  # type: ignore[arg-type]
        compression=compression,
        host_accuracy=art.host_accuracy,
        toolchain=toolchain,
        **extra,
    )


def declared_record(art: Inspected, variant: str, shadow: int | None, layout: str) -> ArtifactRecord:
    """The record of a file the user supplied, with the compression its variant label declares."""
    return record(
        art, variant, shadow, layout,
        compression={"steps": parse_variant(variant), "declared_by": "user", "quantization": _quantization(art)},
        toolchain={"built_by": "external", "host_runtime": art.runtime},
        source_path=str(art.path.resolve()),
    )  # fmt: skip


def io_differences(targets: list[ArtifactRecord], shadows: list[ArtifactRecord]) -> list[str]:
    """Where a shadow's input/output dtypes differ from its target variant's (e.g. int8 I/O versus float I/O)."""
    out: list[str] = []
    for sh in shadows:
        t = next((a for a in targets if a.variant == sh.variant and a.format == sh.format), None)
        if t is None:
            continue
        for kind, a, b in (("input", t.inputs[0], sh.inputs[0]), ("output", t.outputs[0], sh.outputs[0])):
            if a.dtype != b.dtype:
                out.append(f"{sh.id}: {kind} is {b.dtype} but target {t.id} has {a.dtype} {kind}")
    return out
