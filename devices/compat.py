"""TF-Lite compatibility: which builtin op versions an artifact uses, and whether a device runtime can run them.

A TF-Lite file records, per builtin operator, the op *version* the converter emitted. An older runtime refuses
op versions newer than it knows (e.g. TF 2.21 dynamic-range quantization emits FULLY_CONNECTED v12, which
tflite-runtime 2.14 rejects at load time). :func:`check_tflite` compares the file against the device runtime up
front and raises :class:`~devices.errors.IncompatibleArtifact` naming the op, both versions and the fix.

The (op, version) -> minimum runtime table below is taken from TensorFlow's
``tensorflow/compiler/mlir/lite/tools/versioning/runtime_version.cc`` (``FindMinimumRuntimeVersionForOp``) for the
ops that image classifiers use. An op or version missing from the table is not judged here: the runner tries it
and turns the runtime's refusal into a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devices.errors import DeviceError, IncompatibleArtifact


def _v(*versions: str) -> dict[int, str]:
    """Minimum runtime for op versions 1..len(versions)."""
    return {i + 1: v for i, v in enumerate(versions)}


# op name -> {op version: minimum TF-Lite runtime version}
MIN_RUNTIME: dict[str, dict[int, str]] = {
    "ADD": _v("1.5.0", "1.14.0", "2.4.0", "2.6.0", "2.13.0"),
    "AVERAGE_POOL_2D": _v("1.5.0", "1.14.0", "2.3.0"),
    "BATCH_MATMUL": _v("2.3.0", "2.3.0", "2.4.0", "2.5.0"),
    "CAST": _v("1.5.0", "2.7.0", "2.8.0", "2.9.0", "2.12.0", "2.15.0"),
    "CONCATENATION": _v("1.5.0", "1.14.0", "2.3.0", "2.14.0"),
    "CONV_2D": _v("1.5.0", "1.14.0", "1.14.0", "2.3.0", "2.4.0", "2.9.0", "2.11.0", "2.15.0"),
    "DEPTHWISE_CONV_2D": _v("1.5.0", "1.12.0", "1.14.0", "2.2.0", "2.3.0", "2.3.0", "2.11.0"),
    "DEQUANTIZE": _v("1.13.1", "1.14.0", "1.15.0", "2.2.0", "2.7.0", "2.18.0"),
    "DIV": _v("1.6.0", "2.3.0"),
    "EXPAND_DIMS": _v("1.10.0"),
    "FULLY_CONNECTED": _v(
        "1.5.0", "1.10.0", "1.14.0", "1.14.0", "2.0.0", "2.1.0", "2.3.0", "2.3.0", "2.3.0",
        "2.11.0", "2.15.0", "2.17.0", "2.18.0",
    ),
    "GATHER": _v("1.6.0", "1.14.0", "1.15.0", "2.4.0", "2.5.0", "2.13.0", "2.15.0"),
    "HARD_SWISH": _v("1.15.0"),
    "LEAKY_RELU": _v("1.13.1", "2.3.0"),
    "LOGISTIC": _v("1.14.0", "1.14.0", "2.3.0"),
    "LOG_SOFTMAX": _v("1.14.0", "1.14.0"),
    "MAXIMUM": _v("1.14.0", "1.14.0", "2.3.0", "2.3.0"),
    "MAX_POOL_2D": _v("1.5.0", "1.14.0", "2.3.0"),
    "MEAN": _v("1.6.0", "1.14.0", "2.4.0"),
    "MINIMUM": _v("1.14.0", "1.14.0", "2.3.0", "2.3.0"),
    "MUL": _v("1.5.0", "1.14.0", "1.15.0", "2.3.0", "2.6.0", "2.11.0", "2.13.0"),
    "PACK": _v("1.11.0", "1.14.0", "2.3.0", "2.13.0"),
    "PAD": _v("1.5.0", "1.14.0", "2.4.0", "2.6.0"),
    "PADV2": _v("1.9.0", "1.14.0", "2.4.0", "2.6.0"),
    "QUANTIZE": _v("1.14.0", "1.15.0", "2.7.0"),
    "RELU": _v("1.5.0", "2.1.0", "2.5.0"),
    "RELU6": _v("1.5.0", "1.14.0", "2.5.0"),
    "RESHAPE": _v("1.5.0"),
    "RESIZE_BILINEAR": _v("1.7.0", "1.14.0", "2.2.0", "2.5.0"),
    "SHAPE": _v("1.10.0"),
    "SLICE": _v("1.14.0", "1.14.0", "1.14.0", "2.4.0", "2.5.0", "2.14.0"),
    "SOFTMAX": _v("1.5.0", "1.14.0", "2.3.0"),
    "SQUEEZE": _v("1.6.0", "2.5.0"),
    "STRIDED_SLICE": _v("1.6.0", "1.14.0", "2.1.0", "2.2.0", "2.5.0", "2.6.0", "2.14.0", "2.14.0"),
    "SUB": _v("1.6.0", "1.14.0", "2.3.0", "2.4.0", "2.4.0"),
    "SUM": _v("1.10.0", "1.15.0"),
    "TANH": _v("1.14.0", "1.14.0", "2.3.0"),
    "TRANSPOSE": _v("1.6.0", "1.14.0", "1.15.0", "2.3.0", "2.4.0", "2.12.0"),
    "TRANSPOSE_CONV": _v("1.9.0", "2.2.0", "2.3.0", "2.13.0", "2.15.0"),
}

# LiteRT (ai-edge-litert) releases and the TF-Lite op set they carry (conservative: the TF release they track).
_LITERT_TRACKS = ((2, 0, "2.20.0"), (1, 2, "2.19.0"), (1, 0, "2.18.0"))


def parse_version(text: str) -> tuple[int, ...]:
    """``"2.14.0"`` -> ``(2, 14, 0)``; trailing non-numeric parts (``rc1``, ``+cpu``) are dropped."""
    parts: list[int] = []
    for piece in str(text).split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if digits != piece:
            break
    return tuple(parts)


def tflite_equivalent(runtime: str, version: str) -> str | None:
    """The TF-Lite op-set version a runtime release implements, or None when unknown."""
    v = parse_version(version)
    if not v:
        return None
    if runtime in ("tflite_runtime", "tensorflow"):
        return ".".join(map(str, v))
    if runtime == "ai_edge_litert":
        for major, minor, tf in _LITERT_TRACKS:
            if v[:2] >= (major, minor):
                return tf
    return None


def _schema() -> Any:
    try:
        from ai_edge_litert import schema_py_generated as schema  # type: ignore[import-not-found]
    except ImportError:
        try:
            from tensorflow.lite.python import schema_py_generated as schema  # type: ignore[import-not-found]
        except ImportError:
            raise DeviceError(
                "reading TF-Lite op versions needs the TF-Lite schema module; pip install ai-edge-litert on this host"
            ) from None
    return schema


def tflite_op_versions(path: Path | str) -> dict[str, int]:
    """Max version per operator in a ``.tflite`` file: ``{"FULLY_CONNECTED": 12, "CONV_2D": 3, ...}``.

    Custom ops appear as ``"CUSTOM:<name>"``. Raises :class:`DeviceError` for a file that is not TF-Lite.
    """
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as exc:
        raise DeviceError(f"{path}: cannot read ({exc.strerror})") from None
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise DeviceError(f"{path}: not a TF-Lite flatbuffer (no TFL3 identifier); check the artifact or rebuild it")
    schema = _schema()
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}
    out: dict[str, int] = {}
    try:
        model = schema.Model.GetRootAsModel(buf, 0)
        for i in range(model.OperatorCodesLength()):
            oc = model.OperatorCodes(i)
            code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
            if code == schema.BuiltinOperator.CUSTOM:
                custom = oc.CustomCode()
                name = "CUSTOM:" + (custom.decode() if isinstance(custom, bytes) else str(custom))
            else:
                name = names.get(code, f"BUILTIN_{code}")
            out[name] = max(out.get(name, 0), int(oc.Version()))
    except Exception as exc:  # a truncated flatbuffer raises struct/index errors deep inside the generated code
        raise DeviceError(f"{path}: damaged TF-Lite file ({exc.__class__.__name__}); rebuild the artifact") from None
    return out


@dataclass(frozen=True)
class OpIssue:
    """One operator version the runtime cannot run."""

    op: str
    version: int
    needs: str  # minimum TF-Lite runtime version


def incompatible_ops(op_versions: dict[str, int], runtime_tflite_version: str) -> list[OpIssue]:
    """Ops whose version needs a newer TF-Lite than ``runtime_tflite_version`` (unknown ops are skipped)."""
    have = parse_version(runtime_tflite_version)
    issues = []
    for op, version in sorted(op_versions.items()):
        needs = MIN_RUNTIME.get(op, {}).get(version)
        if needs and parse_version(needs) > have:
            issues.append(OpIssue(op, version, needs))
    return issues


def check_tflite(path: Path | str, runtime: str, runtime_version: str, device_id: str = "device") -> list[str]:
    """Raise :class:`IncompatibleArtifact` if the device runtime cannot run the file's op versions.

    Returns notes about what could not be judged (unknown runtime or ops), for provenance.
    """
    equivalent = tflite_equivalent(runtime, runtime_version)
    if equivalent is None:
        return [f"compatibility not checked: unknown TF-Lite level of {runtime} {runtime_version}"]
    ops = tflite_op_versions(path)
    issues = incompatible_ops(ops, equivalent)
    if issues:
        first = issues[0]
        more = f" (and {len(issues) - 1} more op(s))" if len(issues) > 1 else ""
        level = f"{runtime} {runtime_version}" + (f" (TF-Lite {equivalent})" if runtime == "ai_edge_litert" else "")
        pin = ".".join(map(str, parse_version(equivalent)[:2])) + ".0"
        raise IncompatibleArtifact(
            f"{Path(path).name}: op {first.op} version {first.version} needs TF-Lite >= {first.needs}, but {device_id} "
            f"runs {level}{more}; rebuild with `compleak build ... --container toolchain-tf:{pin}` "
            f"or upgrade the device runtime to >= {first.needs}"
        )
    unknown = [f"{op} v{v}" for op, v in sorted(ops.items()) if v not in MIN_RUNTIME.get(op, {})]
    return [f"op versions not in the compatibility table (tried at run time): {', '.join(unknown)}"] if unknown else []
