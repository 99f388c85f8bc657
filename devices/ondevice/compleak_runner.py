#!/usr/bin/env python3
"""compleak on-device runner: run one model artifact on a whole batch of queries, in one process.

This single file is copied to the device and executed there, and is importable on the host. It needs only the
Python standard library, NumPy and whichever inference runtime the device has:

- TF-Lite ``.tflite``: ``tflite_runtime``, ``ai_edge_litert`` or ``tensorflow.lite``
- ONNX ``.onnx``: ``onnxruntime``
- ExecuTorch ``.pte``: ``executorch.runtime``
- PyTorch Mobile ``.ptl``: ``torch`` (lite interpreter)

Command line::

    python3 compleak_runner.py --model M --inputs in.npz --out out.npz [--threads N] [--batch-size B]
    python3 compleak_runner.py --serve [--preload ai_edge_litert,onnxruntime]   # framed requests on stdin
    python3 compleak_runner.py --probe          # JSON: python, numpy and runtime versions found
    python3 compleak_runner.py --describe M     # JSON: format, inputs and outputs of the artifact

``in.npz`` holds ``x``: float32 [N, H, W, C] (NHWC, preprocessed). ``out.npz`` holds ``values`` float32 [N, C]
(outputs dequantized to float), ``batch_seconds`` float64 [B] (wall seconds per invocation batch),
``batch_sizes`` int64 [B] and ``meta`` (a JSON string: runtime name/version, delegate, threads, batch size).
With ``--serve`` one process answers a whole collection: requests on stdin, replies on stdout (runtime libraries
that print to stdout are redirected to stderr), queries inferred batch by batch while the rest is still in transit;
see :func:`serve`. Protocol: docs/native.md, "Runner protocol". Errors are printed as one line ``error: ...`` on
stderr with exit status 3.

On the host: ``detect_format(path)``, ``describe(path)``, ``load_model(path).predict(x)``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import zipfile
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Sequence

try:  # on the host the error is the devices package's DeviceError, so the CLI prints it as one line
    from devices.errors import DeviceError as _ErrorBase
except ImportError:  # on a device: stand-alone
    _ErrorBase = RuntimeError  # type: ignore[misc,assignment]


class RunnerError(_ErrorBase):  # type: ignore[misc,valid-type]
    """An artifact or input problem, with a one-line message naming the file and the fix."""


FORMATS = ("tflite", "onnx", "pte", "ptl")
TFLITE_RUNTIMES = ("tflite_runtime", "ai_edge_litert", "tensorflow")
RUNTIMES_BY_FORMAT = {
    "tflite": TFLITE_RUNTIMES,
    "onnx": ("onnxruntime",),
    "pte": ("executorch",),
    "ptl": ("torch",),
}
_DISTRIBUTIONS = {
    "tflite_runtime": "tflite-runtime",
    "ai_edge_litert": "ai-edge-litert",
    "tensorflow": "tensorflow",
    "onnxruntime": "onnxruntime",
    "executorch": "executorch",
    "torch": "torch",
}
_RUNTIME_MODULES = {
    "tflite_runtime": "tflite_runtime.interpreter",
    "ai_edge_litert": "ai_edge_litert.interpreter",
    "tensorflow": "tensorflow",
    "onnxruntime": "onnxruntime",
    "executorch": "executorch.runtime",
    "torch": "torch",
}


# --------------------------------------------------------------------------- format detection


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while pos < len(buf) and shift < 64:
        b = buf[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return value, pos
        shift += 7
    raise ValueError("truncated varint")


def _looks_like_onnx(head: bytes) -> bool:
    """ONNX ModelProto: a protobuf starting with ir_version (field 1, varint) followed by known fields."""
    if len(head) < 4 or head[0] != 0x08:
        return False
    try:
        ir_version, pos = _read_varint(head, 1)
        if not 1 <= ir_version <= 64 or pos >= len(head):
            return False
        tag, _ = _read_varint(head, pos)
    except ValueError:
        return False
    field_no, wire = tag >> 3, tag & 7
    # ModelProto fields: producer_name(2) producer_version(3) domain(4) model_version(5 varint) doc_string(6)
    # graph(7) opset_import(8) metadata_props(14) training_info(20) functions(25)
    return (field_no in (2, 3, 4, 6, 7, 8, 14, 20, 25) and wire == 2) or (field_no == 5 and wire == 0)


def detect_format(path: str) -> str:
    """The artifact format from the file's content: ``tflite`` | ``onnx`` | ``pte`` | ``ptl``.

    TF-Lite is a flatbuffer with file identifier ``TFL3`` at offset 4; ExecuTorch a flatbuffer with ``ET..``
    at offset 4; PyTorch Mobile a zip archive holding ``bytecode.pkl``; ONNX a protobuf ``ModelProto``.
    Raises :class:`RunnerError` for anything else (truncated, text, unknown).
    """
    path = str(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise RunnerError(f"{path}: cannot read model file ({exc.strerror})") from None
    if len(head) >= 8 and head[4:8] == b"TFL3":
        return "tflite"
    if len(head) >= 8 and head[4:6] == b"ET" and head[6:8].isdigit():
        return "pte"
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile:
            raise RunnerError(
                f"{path}: a damaged zip archive, not a loadable PyTorch Mobile model; re-export it"
            ) from None
        if any(n.endswith(("bytecode.pkl", "constants.pkl")) for n in names):
            return "ptl"
        raise RunnerError(f"{path}: a zip archive without bytecode.pkl; not a PyTorch Mobile (.ptl) model")
    if _looks_like_onnx(head):
        return "onnx"
    kind = "an empty file" if not head else ("a text file" if _is_text(head) else "an unknown binary file")
    raise RunnerError(
        f"{path}: {kind}, not a TF-Lite, ONNX, ExecuTorch or PyTorch Mobile model; "
        "check the artifact path or rebuild it"
    )


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c >= 32 or c in (9, 10, 13) for c in head)


# --------------------------------------------------------------------------- runtime discovery


def _version_of(name: str) -> str | None:
    """Installed version of runtime ``name`` without importing it (fast), or None if absent."""
    import importlib.util

    top = _RUNTIME_MODULES[name].split(".")[0]
    try:
        if importlib.util.find_spec(top) is None:
            return None
    except (ImportError, ValueError):
        return None
    if name == "executorch":
        try:
            if importlib.util.find_spec("executorch.runtime") is None:
                return None
        except (ImportError, ValueError):
            return None
    try:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(_DISTRIBUTIONS[name])
        except PackageNotFoundError:
            if name == "tensorflow":
                for dist in ("tensorflow-cpu", "tensorflow-aarch64", "tf-nightly"):
                    try:
                        return version(dist)
                    except PackageNotFoundError:
                        continue
    except ImportError:
        pass
    return "unknown"


def _numpy_version() -> str | None:
    """NumPy's version without importing it, or None when this Python has none."""
    import importlib.util

    try:
        if importlib.util.find_spec("numpy") is None:
            return None
        from importlib.metadata import version

        return version("numpy")
    except Exception:  # noqa: BLE001 - a vendored NumPy without metadata still imports
        return "unknown"


def probe() -> dict[str, Any]:
    """Python, NumPy, machine and every runtime this Python can import (name -> version or None).

    Uses package metadata only (imports nothing heavy), so a device probe costs one interpreter start.
    """
    return {
        "python": platform.python_version(),
        "numpy": _numpy_version(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "runtimes": {name: _version_of(name) for name in _DISTRIBUTIONS},
    }


def pick_runtime(fmt: str, runtime: str | None = None) -> str:
    """The runtime that will execute format ``fmt`` here (``runtime`` forces one)."""
    candidates = RUNTIMES_BY_FORMAT[fmt]
    if runtime:
        if runtime not in candidates:
            raise RunnerError(f"runtime '{runtime}' cannot run {fmt} models; use one of {', '.join(candidates)}")
        if _version_of(runtime) is None:
            raise RunnerError(f"runtime '{runtime}' is not installed here; pip install {_DISTRIBUTIONS[runtime]}")
        return runtime
    for name in candidates:
        if _version_of(name) is not None:
            return name
    raise RunnerError(
        f"no runtime for {fmt} models on this machine (looked for {', '.join(candidates)}); "
        f"install one, e.g. pip install {_DISTRIBUTIONS[candidates[0]]}"
    )


# ``--probe`` is answered before NumPy is imported (about 0.1 s of every device probe): the code above this line
# uses the standard library only.
if __name__ == "__main__" and sys.argv[1:] == ["--probe"]:
    print(json.dumps(probe()))
    sys.exit(0)

import numpy as np  # noqa: E402

# --------------------------------------------------------------------------- helpers


def _np_dtype_name(dtype: Any) -> str:
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype)


def _spec(name: str, shape: list[int], dtype: str, scale: float | None = None, zp: int | None = None) -> dict[str, Any]:
    if scale is not None and not scale:
        scale, zp = None, None
    return {"name": name, "shape": [int(s) for s in shape], "dtype": dtype, "scale": scale, "zero_point": zp}


def channels_first(shape: list[int], x_shape: tuple[int, ...] | None = None, layout: str = "auto") -> bool:
    """Whether a model input of ``shape`` takes NCHW while queries are NHWC (``x_shape``, [N, H, W, C])."""
    if layout in ("NCHW", "NHWC"):
        return layout == "NCHW"
    if len(shape) != 4:
        return False
    if x_shape is not None and len(x_shape) == 4:
        h, w, c = x_shape[1:]
        nchw, nhwc = [c, h, w], [h, w, c]
        dims = list(shape[1:])
        fits = lambda want: all(d < 0 or d == e for d, e in zip(dims, want))  # noqa: E731
        if fits(nhwc) and not fits(nchw):
            return False
        if fits(nchw) and not fits(nhwc):
            return True
    return shape[1] in (1, 3) and shape[-1] not in (1, 3)


def _quantize(x: np.ndarray, dtype: np.dtype, scale: float, zp: int) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zp), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, scale: float | None, zp: int | None) -> np.ndarray:
    if scale and np.issubdtype(y.dtype, np.integer):
        return ((y.astype(np.float32) - np.float32(zp or 0)) * np.float32(scale)).astype(np.float32)
    return y.astype(np.float32, copy=False)


def _flatten_out(y: np.ndarray, n: int) -> np.ndarray:
    return np.asarray(y).reshape(n, -1)


def preprocess_uint8(raw: np.ndarray, scale: float, mean: Sequence[float] | np.ndarray | None = None,
                     std: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Model inputs float32 [n, H, W, C] from raw pixels uint8 [n, H, W, C] (NHWC) by an affine preprocessing.

    Exactly the host's ``[data.preprocess]`` arithmetic (``harness.data.query_inputs`` without a resize), step by
    step, each step rounded to float32 (IEEE-754 round to nearest even, no fused multiply-add):
    ``x = float32(raw)``; ``x = x * float32(scale)``; then, when given, ``x = x - float32(mean[c])`` and
    ``x = x / float32(std[c])`` per channel ``c`` (``mean`` / ``std`` hold 1 value for every channel, or C). So the
    result is bit-identical to the float32 queries the host would have sent.
    """
    x = np.asarray(raw, dtype=np.uint8).astype(np.float32)
    x *= np.float32(scale)
    if mean is not None:
        x -= np.asarray(mean, dtype=np.float32)
    if std is not None:
        x /= np.asarray(std, dtype=np.float32)
    return x


# --------------------------------------------------------------------------- models


class Model:
    """A loaded artifact. ``predict(x)`` maps float32 [N, H, W, C] to float32 [N, C].

    Attributes after each predict: ``batch_seconds`` (wall seconds per invocation) and ``batch_sizes``.
    """

    format = ""
    runtime = ""
    runtime_version = ""
    delegate = "cpu"

    def __init__(self, path: str, threads: int | None = None, layout: str = "auto") -> None:
        self.path = path
        self.threads = threads
        self.layout = layout
        self.batch_seconds: list[float] = []
        self.batch_sizes: list[int] = []

    def inputs(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def outputs(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _invoke(self, xb: np.ndarray) -> np.ndarray:
        """Run one batch already in the model's layout and dtype; return the first output [n, ...]."""
        raise NotImplementedError

    def max_batch(self) -> int | None:
        """Largest batch one invocation takes (None: any)."""
        return None

    def batch_step(self, batch_size: int) -> int:
        """Examples per invocation: ``batch_size`` capped by what the model takes."""
        cap = self.max_batch()
        return max(1, min(batch_size, cap) if cap else batch_size)

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Outputs float32 [N, C] for queries ``x`` float32 [N, H, W, C] (NHWC)."""
        x = np.asarray(x, dtype=np.float32)
        step = self.batch_step(batch_size)
        return self.predict_batches(x[start : start + step] for start in range(0, len(x), step))

    def predict_batches(self, batches: Iterable[np.ndarray]) -> np.ndarray:
        """Outputs float32 [N, C] for a stream of query batches, each float32 [n, H, W, C] (NHWC).

        Each batch is one invocation (callers size them with :meth:`batch_step`); batches are consumed as they
        arrive, so inputs still in transit overlap with inference.
        """
        spec = self.inputs()[0]
        out_spec = self.outputs()[0]
        expect = spec["shape"][1:]
        self.batch_seconds, self.batch_sizes = [], []
        parts = []
        for xb in batches:
            xb = np.asarray(xb, dtype=np.float32)
            if xb.ndim == len(spec["shape"]) and channels_first(spec["shape"], xb.shape, self.layout):
                xb = np.ascontiguousarray(xb.transpose(0, 3, 1, 2))
            if len(expect) != xb.ndim - 1 or any(e > 0 and e != g for e, g in zip(expect, xb.shape[1:])):
                raise RunnerError(
                    f"{self.path}: model input '{spec['name']}' has shape {spec['shape']} but queries have shape "
                    f"{list(xb.shape)}; check the preprocessing (resize/layout) of the run"
                )
            if spec["dtype"] in ("int8", "uint8", "int16") and spec["scale"]:
                xb = _quantize(xb, np.dtype(spec["dtype"]), spec["scale"], spec["zero_point"] or 0)
            t0 = time.perf_counter()
            y = self._invoke(xb)
            self.batch_seconds.append(time.perf_counter() - t0)
            self.batch_sizes.append(len(xb))
            parts.append(_dequantize(_flatten_out(y, len(xb)), out_spec["scale"], out_spec["zero_point"]))
        if not parts:
            return np.zeros((0, int(np.prod([d for d in out_spec["shape"][1:] if d > 0]) or 0)), np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def info(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "runtime": self.runtime,
            "runtime_version": self.runtime_version,
            "delegate": self.delegate,
            "threads": self.threads,
        }


class TFLiteModel(Model):
    format = "tflite"
    delegate = "cpu (runtime default delegates, e.g. XNNPACK)"

    def __init__(self, path: str, threads: int | None = None, layout: str = "auto", runtime: str | None = None) -> None:
        super().__init__(path, threads, layout)
        self.runtime = pick_runtime("tflite", runtime)
        self.runtime_version = _version_of(self.runtime) or "unknown"
        if self.runtime == "tflite_runtime":
            from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]
        elif self.runtime == "ai_edge_litert":
            from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-not-found]
        else:
            import tensorflow as tf  # type: ignore[import-not-found]

            Interpreter = tf.lite.Interpreter  # noqa: N806
        try:
            self.interp = Interpreter(model_path=path, num_threads=threads)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise RunnerError(
                f"{path}: {self.runtime} {self.runtime_version} cannot load this TF-Lite model: {_one_line(exc)}"
            ) from None
        self._in = self.interp.get_input_details()[0]
        self._out = self.interp.get_output_details()[0]
        self._batch: int | None = int(self._in["shape"][0])
        self._resizable = True

    def _details(self, details: list[dict[str, Any]]) -> list[dict[str, Any]]:
        specs = []
        for d in details:
            sig = d.get("shape_signature")
            shape = [int(s) for s in (sig if sig is not None and len(sig) else d["shape"])]
            scale, zp = d.get("quantization", (0.0, 0))
            specs.append(_spec(d["name"], shape, _np_dtype_name(d["dtype"]), float(scale), int(zp)))
        return specs

    def inputs(self) -> list[dict[str, Any]]:
        return self._details(self.interp.get_input_details())

    def outputs(self) -> list[dict[str, Any]]:
        return self._details(self.interp.get_output_details())

    def max_batch(self) -> int | None:
        return None if self._resizable else 1

    def _invoke(self, xb: np.ndarray) -> np.ndarray:
        n = len(xb)
        if n != self._batch:
            if self._resizable:
                try:
                    self.interp.resize_tensor_input(self._in["index"], [n, *xb.shape[1:]], strict=False)
                    self.interp.allocate_tensors()
                    self._batch = n
                    # a model whose batch is baked in (a reshape to a fixed size) accepts the resize but keeps its
                    # output rows: it runs one query at a time
                    out_rows = self.interp.get_output_details()[0]["shape"]
                    self._resizable = len(out_rows) > 0 and int(out_rows[0]) == n
                except (ValueError, RuntimeError):
                    self._resizable = False
                    self._batch = None  # the input may be resized already although the allocation failed
            if not self._resizable:
                if self._batch != 1:
                    self.interp.resize_tensor_input(self._in["index"], [1, *xb.shape[1:]], strict=False)
                    self.interp.allocate_tensors()
                    self._batch = 1
                return np.concatenate([self._invoke(xb[i : i + 1]) for i in range(n)])
        self.interp.set_tensor(self._in["index"], xb.astype(self._in["dtype"], copy=False))
        try:
            self.interp.invoke()
        except (ValueError, RuntimeError) as exc:
            raise RunnerError(f"{self.path}: {self.runtime} invoke failed: {_one_line(exc)}") from None
        return self.interp.get_tensor(self._out["index"])


class OnnxModel(Model):
    format = "onnx"

    _TYPES = {
        "tensor(float)": "float32",
        "tensor(float16)": "float16",
        "tensor(double)": "float64",
        "tensor(int8)": "int8",
        "tensor(uint8)": "uint8",
        "tensor(int64)": "int64",
        "tensor(int32)": "int32",
    }

    def __init__(self, path: str, threads: int | None = None, layout: str = "auto", runtime: str | None = None) -> None:
        super().__init__(path, threads, layout)
        self.runtime = pick_runtime("onnx", runtime)
        self.runtime_version = _version_of(self.runtime) or "unknown"
        import onnxruntime as ort  # type: ignore[import-not-found]

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise RunnerError(
                f"{path}: onnxruntime {self.runtime_version} cannot load this model: {_one_line(exc)}"
            ) from None
        self.delegate = "CPUExecutionProvider"
        self._in_name = self.sess.get_inputs()[0].name
        declared = self.sess.get_modelmeta().custom_metadata_map.get("compleak.input_layout")
        if self.layout == "auto" and declared in ("NHWC", "NCHW"):
            self.layout = declared  # the exporter's own statement (metadata_props)

    def _specs(self, items: list[Any]) -> list[dict[str, Any]]:
        return [
            _spec(i.name, [d if isinstance(d, int) else -1 for d in i.shape], self._TYPES.get(i.type, i.type))
            for i in items
        ]

    def inputs(self) -> list[dict[str, Any]]:
        return self._specs(self.sess.get_inputs())

    def outputs(self) -> list[dict[str, Any]]:
        return self._specs(self.sess.get_outputs())

    def max_batch(self) -> int | None:
        b = self.inputs()[0]["shape"][0]
        return b if b > 0 else None

    def _invoke(self, xb: np.ndarray) -> np.ndarray:
        b = self.max_batch()
        if b and len(xb) < b:  # fixed batch dimension: pad the last batch, drop the padding after
            pad = np.zeros((b - len(xb), *xb.shape[1:]), xb.dtype)
            return self._invoke(np.concatenate([xb, pad]))[: len(xb)]
        try:
            return self.sess.run(None, {self._in_name: xb})[0]
        except Exception as exc:
            raise RunnerError(f"{self.path}: onnxruntime run failed: {_one_line(exc)}") from None


class ExecuTorchModel(Model):
    format = "pte"

    def __init__(self, path: str, threads: int | None = None, layout: str = "auto", runtime: str | None = None) -> None:
        super().__init__(path, threads, layout)
        self.runtime = pick_runtime("pte", runtime)
        self.runtime_version = _version_of(self.runtime) or "unknown"
        import torch  # type: ignore[import-not-found]
        from executorch.runtime import Runtime  # type: ignore[import-not-found]

        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        try:
            self.program = Runtime.get().load_program(path)
            self.method = self.program.load_method("forward")
        except Exception as exc:
            raise RunnerError(
                f"{path}: executorch {self.runtime_version} cannot load this program: {_one_line(exc)}"
            ) from None
        self.meta = self.method.metadata

    # c10::ScalarType codes, as MethodMeta's TensorInfo.dtype() reports them
    _SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32",
                     7: "float64", 11: "bool", 15: "bfloat16"}

    @classmethod
    def _dtype(cls, t: Any) -> str:
        try:
            return cls._SCALAR_TYPES.get(int(t), str(t))
        except (TypeError, ValueError):
            name = str(t).split(".")[-1].lower()
            return {"float": "float32", "half": "float16", "double": "float64", "char": "int8", "byte": "uint8",
                    "long": "int64", "int": "int32"}.get(name, name)

    def inputs(self) -> list[dict[str, Any]]:
        metas = [self.meta.input_tensor_meta(i) for i in range(self.meta.num_inputs())]
        return [_spec(f"input_{i}", list(m.sizes()), self._dtype(m.dtype())) for i, m in enumerate(metas)]

    def outputs(self) -> list[dict[str, Any]]:
        metas = [self.meta.output_tensor_meta(i) for i in range(self.meta.num_outputs())]
        return [_spec(f"output_{i}", list(m.sizes()), self._dtype(m.dtype())) for i, m in enumerate(metas)]

    def max_batch(self) -> int | None:
        return self.inputs()[0]["shape"][0] or 1

    def _invoke(self, xb: np.ndarray) -> np.ndarray:
        b = self.max_batch() or 1
        if len(xb) < b:
            pad = np.zeros((b - len(xb), *xb.shape[1:]), xb.dtype)
            return self._invoke(np.concatenate([xb, pad]))[: len(xb)]
        try:
            out = self.method.execute([self._torch.from_numpy(np.ascontiguousarray(xb))])
        except Exception as exc:
            raise RunnerError(f"{self.path}: executorch execute failed: {_one_line(exc)}") from None
        return out[0].detach().numpy()


class TorchLiteModel(Model):
    format = "ptl"

    def __init__(self, path: str, threads: int | None = None, layout: str = "auto", runtime: str | None = None) -> None:
        super().__init__(path, threads, layout)
        self.runtime = pick_runtime("ptl", runtime)
        self.runtime_version = _version_of(self.runtime) or "unknown"
        import torch  # type: ignore[import-not-found]
        from torch.jit.mobile import _load_for_lite_interpreter  # type: ignore[import-not-found]

        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        try:
            self.module = _load_for_lite_interpreter(path)
        except Exception as exc:
            raise RunnerError(
                f"{path}: torch {self.runtime_version} lite interpreter cannot load it: {_one_line(exc)}"
            ) from None
        self._meta = _ptl_extra(path)
        self._loop = False
        declared = (self._meta.get("inputs") or [{}])[0].get("layout")
        if self.layout == "auto" and declared in ("NHWC", "NCHW"):
            self.layout = declared  # the exporter's own statement (compleak.json extra file)

    def inputs(self) -> list[dict[str, Any]]:
        specs = self._meta.get("inputs")
        if specs:
            return [_spec(s.get("name", f"input_{i}"), s.get("shape", []), s.get("dtype", "float32"))
                    for i, s in enumerate(specs)]
        # no recorded signature: a 4-D float image input of unknown size, channels-first (torch convention)
        return [_spec("input_0", [-1, -1, -1, -1], "float32")]

    def outputs(self) -> list[dict[str, Any]]:
        specs = self._meta.get("outputs")
        if specs:
            return [_spec(s.get("name", f"output_{i}"), s.get("shape", []), s.get("dtype", "float32"))
                    for i, s in enumerate(specs)]
        return [_spec("output_0", [-1, -1], "float32")]

    def predict_batches(self, batches: Iterable[np.ndarray]) -> np.ndarray:
        if self.layout == "auto" and not self._meta.get("inputs"):
            self.layout = "NCHW"  # torch artifacts take NCHW
        return super().predict_batches(batches)

    def _invoke(self, xb: np.ndarray) -> np.ndarray:
        t = self._torch.from_numpy(np.ascontiguousarray(xb))
        with self._torch.no_grad():
            if not self._loop:
                try:
                    return self.module(t).detach().numpy()
                except Exception:
                    if len(xb) == 1:
                        raise RunnerError(
                            f"{self.path}: the lite interpreter failed on one example; check the input shape"
                        ) from None
                    self._loop = True  # traced with a fixed batch: fall back to one example at a time
            try:
                return np.concatenate([self.module(t[i : i + 1]).detach().numpy() for i in range(len(xb))])
            except Exception as exc:
                raise RunnerError(f"{self.path}: the lite interpreter failed: {_one_line(exc)}") from None


def _ptl_extra(path: str) -> dict[str, Any]:
    """Signature recorded by the exporter in the archive's ``extra/*.json`` (best effort; {} when absent)."""
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if "/extra/" in name and name.endswith(".json"):
                    data = json.loads(zf.read(name))
                    if isinstance(data, dict) and ("inputs" in data or "outputs" in data):
                        return data
    except (zipfile.BadZipFile, OSError, ValueError):
        pass
    return {}


_MODELS: dict[str, Callable[..., Model]] = {
    "tflite": TFLiteModel,
    "onnx": OnnxModel,
    "pte": ExecuTorchModel,
    "ptl": TorchLiteModel,
}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else (text or exc.__class__.__name__)


def load_model(path: str, runtime: str | None = None, threads: int | None = None, layout: str = "auto") -> Model:
    """Load the artifact at ``path`` with the best runtime available here (``runtime`` forces one)."""
    fmt = detect_format(path)
    return _MODELS[fmt](str(path), threads=threads, layout=layout, runtime=runtime)


def describe(path: str, runtime: str | None = None) -> dict[str, Any]:
    """``{"format", "inputs", "outputs", "runtime"}`` of an artifact; tensors as TensorSpec-like dicts."""
    model = load_model(path, runtime=runtime)
    ins = model.inputs()
    for spec in ins:
        layout = "NCHW" if model.format == "ptl" else model.layout
        spec["layout"] = "NCHW" if channels_first(spec["shape"], layout=layout) else "NHWC"
    return {"format": model.format, "inputs": ins, "outputs": model.outputs(), "runtime": model.info()}


# --------------------------------------------------------------------------- command line


def run_file(model_path: str, inputs: str, out: str, threads: int | None, batch_size: int, runtime: str | None,
             layout: str) -> dict[str, Any]:
    """Load ``inputs`` (npz with ``x``), predict, write ``out`` (npz); return the meta dict."""
    t_start = time.time()
    try:
        with np.load(inputs, allow_pickle=False) as z:
            if "x" not in z.files:
                raise RunnerError(f"{inputs}: input archive has no array 'x'")
            x = z["x"]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise RunnerError(f"{inputs}: unreadable input archive ({_one_line(exc)})") from None
    t_load = time.perf_counter()
    model = load_model(model_path, runtime=runtime, threads=threads, layout=layout)
    load_seconds = time.perf_counter() - t_load
    values = model.predict(x, batch_size=batch_size)
    meta = _answer_meta(model, model_path, values, x.shape, batch_size, load_seconds, t_start)
    tmp = out + ".part.npz"
    np.savez(
        tmp,
        values=values,
        batch_seconds=np.asarray(model.batch_seconds, np.float64),
        batch_sizes=np.asarray(model.batch_sizes, np.int64),
        meta=np.asarray(json.dumps(meta)),
    )
    os.replace(tmp, out)
    return meta


def _answer_meta(model: Model, model_path: str, values: np.ndarray, shape: Sequence[int], batch_size: int,
                 load_seconds: float, t_start: float) -> dict[str, Any]:
    """Provenance of one answered query batch; raises RunnerError when the runtime produced NaN/Inf."""
    if not np.all(np.isfinite(values)):
        bad = int((~np.isfinite(values)).any(axis=1).sum())
        raise RunnerError(f"{model_path}: the runtime produced NaN/Inf outputs for {bad} queries")
    meta = dict(model.info())
    meta.update(
        batch_size=batch_size,
        n=int(shape[0]),
        load_seconds=load_seconds,
        invoke_seconds=float(sum(model.batch_seconds)),
        started=t_start,
        finished=time.time(),
        python=platform.python_version(),
        numpy=np.__version__,
        machine=platform.machine(),
        input_layout="NCHW" if channels_first(model.inputs()[0]["shape"], tuple(shape), model.layout) else "NHWC",
    )
    return meta


# --------------------------------------------------------------------------- server mode
# Protocol: docs/native.md, "Runner protocol".

#: version of the ``--serve`` protocol; the host refuses a runner that speaks another
PROTOCOL = 1

#: ``python -c BOOTSTRAP --serve ...`` runs this file without it being on the device's disk: stdin starts with the
#: source's length in bytes on one line and then the source; what follows on stdin is the protocol
BOOTSTRAP = (
    "import sys;f=sys.stdin.buffer;n=int(f.readline());g={'__name__':'compleak_runner'};"
    "exec(compile(f.read(n),'compleak_runner.py','exec'),g);sys.exit(g['main'](sys.argv[1:]))"
)


#: largest request header the runner reads (bytes of JSON)
MAX_REQUEST_HEADER = 1 << 20
#: requests this runner answers, advertised in its hello as ``"ops"``; a host sends ``dataset`` and an infer by rows
#: only to a runner that lists ``dataset`` (the base ops ``load``, ``infer`` with float32 rows and ``exit`` are
#: protocol 1 itself)
OPS = ("load", "infer", "dataset", "exit")
#: largest query dataset (uint8 payload bytes) the runner accepts; advertised in the hello as ``max_dataset_bytes``
MAX_DATASET_BYTES = 1 << 30
#: most rows one infer-by-rows request may name (its payload is 4 bytes per row)
MAX_INFER_ROWS = 1 << 24


def read_message(f: BinaryIO) -> dict[str, Any] | None:
    """One message header: 4-byte big-endian length, then that many bytes of JSON. None at a clean end of stream.

    A message may be followed by a payload of ``header["bytes"]`` raw bytes, which the caller reads.
    """
    head = _read_exact(f, 4, allow_eof=True)
    if head is None:
        return None
    size = int.from_bytes(head, "big")
    if not 0 < size <= MAX_REQUEST_HEADER:
        raise RunnerError(f"protocol error: a {size}-byte message header (out of sync?)")
    try:
        header = json.loads(_read_exact(f, size).decode("utf-8"))  # type: ignore[union-attr]
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RunnerError("protocol error: a message header that is not JSON (out of sync?)") from None
    if not isinstance(header, dict):
        raise RunnerError(f"protocol error: a JSON {type(header).__name__} header instead of an object")
    nbytes = header.get("bytes", 0)
    if nbytes is not None and (type(nbytes) is not int or nbytes < 0):
        raise RunnerError(f"protocol error: 'bytes' is {nbytes!r:.60}, not a byte count")
    return header


def frame(header: dict[str, Any]) -> bytes:
    """``header`` as a framed message (length + JSON), to be followed by ``header.get("bytes", 0)`` payload bytes."""
    body = json.dumps(header).encode("utf-8")
    return len(body).to_bytes(4, "big") + body


def _read_exact(f: BinaryIO, n: int, allow_eof: bool = False) -> bytes | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = f.readinto(view[got:])  # type: ignore[attr-defined]
        if not k:
            if allow_eof and got == 0:
                return None
            raise RunnerError(f"protocol error: the stream ended {got} bytes into a {n}-byte read")
        got += k
    return bytes(buf)


def _payload_batches(f: BinaryIO, shape: Sequence[int], step: int, consumed: list[int]) -> Iterator[np.ndarray]:
    """Rows of a float32 C-order payload of ``shape`` [N, H, W, C] in batches of ``step``, read as they arrive.

    ``consumed[0]`` counts payload bytes read, so a failed request can skip the rest and stay in sync.
    """
    n, row = int(shape[0]), tuple(int(d) for d in shape[1:])
    for start in range(0, n, step):
        xb = np.empty((min(step, n - start), *row), np.float32)
        view = memoryview(xb).cast("B")
        got = 0
        while got < len(view):
            k = f.readinto(view[got:])  # type: ignore[attr-defined]
            if not k:
                raise RunnerError(f"protocol error: the query payload ended after {consumed[0] + got} bytes")
            got += k
        consumed[0] += got
        yield xb


def _skip(f: BinaryIO, n: int) -> None:
    while n > 0:
        chunk = f.read(min(n, 1 << 20))
        if not chunk:
            return
        n -= len(chunk)


def _number(value: Any, what: str) -> float:
    """A finite JSON number (not a boolean) as a float, else a protocol error naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(float(value)):
        raise RunnerError(f"protocol error: dataset preprocess {what} is {value!r:.60}, not a finite number")
    return float(value)


class HeldDataset:
    """The query dataset a ``dataset`` request left on the device: ``x`` uint8 [N, H, W, C] (NHWC) and the affine
    preprocessing (:func:`preprocess_uint8`) that makes rows of it model inputs. The runner holds at most one."""

    def __init__(self, key: str, x: np.ndarray, preprocess: Any) -> None:
        if not isinstance(preprocess, dict):
            raise RunnerError(f"protocol error: dataset 'preprocess' is {preprocess!r:.60}, not an object")
        channels = int(x.shape[3])
        self.key = key
        self.x = x
        self.scale = np.float32(_number(preprocess.get("scale"), "scale"))
        self.mean = self._per_channel(preprocess.get("mean"), "mean", channels)
        self.std = self._per_channel(preprocess.get("std"), "std", channels)

    @staticmethod
    def _per_channel(value: Any, what: str, channels: int) -> np.ndarray | None:
        if value is None:
            return None
        if not isinstance(value, list) or len(value) not in (1, channels):
            raise RunnerError(f"protocol error: dataset preprocess {what} must be null or a list of 1 (every "
                              f"channel) or C = {channels} numbers, got {value!r:.60}")
        return np.asarray([_number(v, what) for v in value], dtype=np.float32)

    def inputs(self, rows: np.ndarray) -> np.ndarray:
        """Model inputs float32 [len(rows), H, W, C] of dataset ``rows`` (int array, each in [0, N))."""
        return preprocess_uint8(self.x[rows], self.scale, self.mean, self.std)


def _read_dataset(f: BinaryIO, req: dict[str, Any], nbytes: int, consumed: list[int]) -> HeldDataset:
    """The query dataset of a ``dataset`` request: header checked, ``nbytes`` payload bytes read while they are
    hashed, sha256 compared with the request's ``key``. ``consumed[0]`` counts payload bytes read."""
    key = req.get("key")
    if not (isinstance(key, str) and len(key) == 64 and all(c in "0123456789abcdef" for c in key)):
        raise RunnerError(f"protocol error: dataset key {key!r:.60} is not a sha256 (64 lowercase hex digits)")
    shape = req.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and all(type(d) is int and d >= 0 for d in shape)):
        raise RunnerError(f"protocol error: dataset shape {shape!r:.60} is not [N, H, W, C]")
    if req.get("dtype") != "uint8":
        raise RunnerError(f"protocol error: dataset dtype {req.get('dtype')!r:.30}; only uint8 is supported")
    size = shape[0] * shape[1] * shape[2] * shape[3]
    if nbytes != size:
        raise RunnerError(f"protocol error: {nbytes} payload bytes for a uint8 dataset of shape {shape}")
    if size > MAX_DATASET_BYTES:
        raise RunnerError(f"a {size}-byte query dataset is over this runner's limit of {MAX_DATASET_BYTES} bytes; "
                          f"send float32 queries instead")
    HeldDataset(key, np.empty((0, *shape[1:]), np.uint8), req.get("preprocess"))  # checked before the read
    x = np.empty(size, np.uint8)
    import hashlib

    digest = hashlib.sha256()
    view = memoryview(x)
    got = 0
    while got < size:
        k = f.readinto(view[got : min(size, got + (1 << 20))])  # type: ignore[attr-defined]
        if not k:
            raise RunnerError(f"protocol error: the dataset payload ended after {got} of {size} bytes")
        digest.update(view[got : got + k])
        got += k
        consumed[0] += k
    if digest.hexdigest() != key:
        raise RunnerError(f"the query dataset's sha256 is {digest.hexdigest()[:16]}..., its key says {key[:16]}...: "
                          f"corrupted in transit; rerun collect")
    return HeldDataset(key, x.reshape(shape), req["preprocess"])


def _read_rows(f: BinaryIO, req: dict[str, Any], nbytes: int, dataset: HeldDataset | None,
               consumed: list[int]) -> np.ndarray:
    """Row numbers int64 [M] of an infer-by-rows request (payload: M uint32 little-endian), each checked against
    the loaded ``dataset``, whose sha256 must be the request's ``dataset``."""
    key = req.get("dataset")
    if dataset is None or key != dataset.key:
        held = f"dataset {dataset.key[:16]}..." if dataset is not None else "no dataset"
        raise RunnerError(f"protocol error: infer names dataset {str(key)[:16]!r}... but the runner holds {held}; "
                          f"send it with a dataset request first")
    m = req.get("rows")
    if type(m) is not int or not 0 <= m <= MAX_INFER_ROWS or nbytes != 4 * m:
        raise RunnerError(f"protocol error: infer by rows needs 'rows' in [0, {MAX_INFER_ROWS}] and 4 payload bytes "
                          f"per row; got rows {m!r:.30} and {nbytes} bytes")
    rows = np.frombuffer(_read_exact(f, nbytes), "<u4").astype(np.int64) if m else np.zeros(0, np.int64)
    consumed[0] += nbytes
    if m and int(rows.max()) >= len(dataset.x):
        raise RunnerError(f"protocol error: row {int(rows.max())} named, the dataset has {len(dataset.x)} rows")
    return rows


def _remove_in(path: str, workspace: str | None) -> None:
    """Delete the file ``path`` only when it lies directly in ``workspace`` (never anything else)."""
    if workspace and os.path.dirname(os.path.realpath(path)) == os.path.realpath(workspace):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


class _Serving:
    """What :func:`serve` keeps between requests: ``stdin`` (payloads are read from it), the loaded model, its file
    and load time, and the held query dataset (at most one)."""

    def __init__(self, stdin: BinaryIO) -> None:
        self.stdin = stdin
        self.model: Model | None = None
        self.model_path = ""
        self.load_seconds = 0.0
        self.dataset: HeldDataset | None = None


def _serve_load(st: _Serving, req: dict[str, Any], payload: int,
                consumed: list[int]) -> tuple[dict[str, Any], bytes]:
    """``load``: replaces the loaded model; its file goes too when it lies in the given workspace."""
    st.model = None
    if st.model_path and req.get("remove_previous"):
        _remove_in(st.model_path, req.get("workspace"))
    t0 = time.perf_counter()
    st.model_path = str(req["model"])
    st.model = load_model(st.model_path, runtime=req.get("runtime"), threads=req.get("threads"),
                          layout=req.get("layout") or "auto")
    st.load_seconds = time.perf_counter() - t0
    return {"ok": True, "info": st.model.info(), "load_seconds": st.load_seconds}, b""


def _serve_dataset(st: _Serving, req: dict[str, Any], payload: int,
                   consumed: list[int]) -> tuple[dict[str, Any], bytes]:
    """``dataset``: at most one held, so the old one goes before the new one is read."""
    st.dataset = None
    st.dataset = _read_dataset(st.stdin, req, payload, consumed)
    return {"ok": True, "key": st.dataset.key, "rows": len(st.dataset.x)}, b""


def _serve_infer(st: _Serving, req: dict[str, Any], payload: int,
                 consumed: list[int]) -> tuple[dict[str, Any], bytes]:
    """``infer``: float32 rows on the payload, or rows of the held dataset (``dataset``), inferred batch by batch."""
    model = st.model
    if model is None:
        raise RunnerError("protocol error: infer before load")
    t_start = time.time()
    batch_size = int(req.get("batch_size") or 256)
    step = model.batch_step(batch_size)
    if req.get("dataset") is not None:  # queries named by rows of the held dataset
        rows = _read_rows(st.stdin, req, payload, st.dataset, consumed)
        held = st.dataset
        assert held is not None
        shape = [len(rows), *held.x.shape[1:]]
        batches: Iterable[np.ndarray] = (held.inputs(rows[s : s + step]) for s in range(0, len(rows), step))
    else:
        shape = [int(d) for d in req["shape"]]
        if len(shape) != 4 or min(shape) < 0 or payload != 4 * int(np.prod(shape, dtype=np.int64)):
            raise RunnerError(f"protocol error: {payload} payload bytes for float32 {shape}")
        batches = _payload_batches(st.stdin, shape, step, consumed)
    values = model.predict_batches(batches)
    meta = _answer_meta(model, st.model_path, values, shape, batch_size, st.load_seconds, t_start)
    out = np.ascontiguousarray(values, dtype=np.float32).tobytes()
    return {"ok": True, "shape": list(values.shape), "bytes": len(out), "meta": meta,
            "batch_seconds": list(model.batch_seconds), "batch_sizes": list(model.batch_sizes)}, out


def _serve_exit(st: _Serving, req: dict[str, Any], payload: int, consumed: list[int]) -> None:
    """``exit``: no reply; :func:`serve` returns 0 (as at the end of stdin)."""


#: the request handlers of :func:`serve`, one per op of :data:`OPS`: (state, header, payload size, [payload bytes
#: read so far]) -> (reply header, reply payload), or None to stop serving
_HANDLERS: dict[str, Callable[[_Serving, dict[str, Any], int, list[int]], tuple[dict[str, Any], bytes] | None]] = {
    "load": _serve_load,
    "infer": _serve_infer,
    "dataset": _serve_dataset,
    "exit": _serve_exit,
}


def _answer(st: _Serving, req: dict[str, Any], payload: int,
            consumed: list[int]) -> tuple[dict[str, Any], bytes] | None:
    """Request ``req`` answered by its op's handler: None for ``exit``; a refused request is ``ok: false`` with a
    one-line error (the caller skips the rest of its payload)."""
    op = req.get("op")
    handler = _HANDLERS.get(op) if isinstance(op, str) else None
    try:
        if handler is None:
            raise RunnerError(f"protocol error: unknown request {op!r}")
        return handler(st, req, payload, consumed)
    except RunnerError as exc:
        return {"ok": False, "error": str(exc)}, b""
    except MemoryError:
        return {"ok": False, "error": "out of memory holding the query dataset; send float32 queries instead"
                if op == "dataset" else f"out of memory running {st.model_path}; lower --batch-size"}, b""
    except (KeyError, TypeError, ValueError, OSError) as exc:
        return {"ok": False, "error": f"{op}: {_one_line(exc)}"}, b""


def _preload(names: Sequence[str]) -> None:
    """Import the given runtimes (or, for a format, the runtime :func:`load_model` would pick for it) before the
    hello, so the first load does not pay for it; a missing or broken runtime reports itself at load instead."""
    for name in names:
        try:
            name = pick_runtime(name) if name in RUNTIMES_BY_FORMAT else name
            if name in _RUNTIME_MODULES and _version_of(name):
                __import__(_RUNTIME_MODULES[name])
        except Exception:  # noqa: BLE001 - a missing or broken runtime reports itself at load, with its own message
            pass


def serve(stdin: BinaryIO, stdout: BinaryIO, preload: Sequence[str] = ()) -> int:
    """Answer framed requests on ``stdin`` until it ends or ``exit`` (``--serve``); one process for a whole
    collection. Returns the exit status: 0, or 3 after a request header that is not framed JSON.

    Protocol: docs/native.md, "Runner protocol" (framing, hello, each op's request and reply, limits, errors).
    The hello goes out once the ``preload`` runtimes (or formats) are imported; each op is one handler of
    :data:`_HANDLERS`.
    """
    _preload(preload)
    stdout.write(frame({"ok": True, "hello": "compleak-runner", "protocol": PROTOCOL,
                        "python": platform.python_version(), "numpy": np.__version__,
                        "machine": platform.machine(), "executable": sys.executable,
                        "ops": list(OPS), "max_dataset_bytes": MAX_DATASET_BYTES}))
    stdout.flush()
    st = _Serving(stdin)
    while True:
        try:
            req = read_message(stdin)
        except RunnerError as exc:  # out of step with the host: say so once and stop
            stdout.write(frame({"ok": False, "error": str(exc)}))
            stdout.flush()
            return 3
        if req is None:
            return 0
        payload, consumed = int(req.get("bytes") or 0), [0]
        answer = _answer(st, req, payload, consumed)
        if answer is None:  # exit
            return 0
        if payload > consumed[0]:
            _skip(stdin, payload - consumed[0])  # a failed request: drop the rest of its payload, stay in sync
        reply, out = answer
        stdout.write(frame(reply) + out)
        stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="compleak_runner.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="artifact file (.tflite, .onnx, .pte, .ptl; detected from content)")
    ap.add_argument("--inputs", help="npz with x: float32 [N, H, W, C]")
    ap.add_argument("--out", help="npz to write: values float32 [N, C], batch_seconds, batch_sizes, meta")
    ap.add_argument("--threads", type=int, default=None, help="runtime threads (default: the runtime's)")
    ap.add_argument("--batch-size", type=int, default=256, help="examples per invocation")
    ap.add_argument("--runtime", default=None, help="force a runtime: " + ", ".join(_DISTRIBUTIONS))
    ap.add_argument("--layout", default="auto", choices=("auto", "NHWC", "NCHW"), help="model input layout")
    ap.add_argument("--serve", action="store_true", help="answer framed load/infer requests on stdin (see serve())")
    ap.add_argument("--preload", default="",
                    help="with --serve: runtimes (or formats) to import before the hello, comma-separated")
    ap.add_argument("--probe", action="store_true", help="print JSON of Python, NumPy and runtimes, then exit")
    ap.add_argument("--describe", metavar="MODEL", help="print JSON of the artifact's inputs and outputs, then exit")
    args = ap.parse_args(argv)
    try:
        if args.probe:
            print(json.dumps(probe()))
            return 0
        if args.serve:  # the protocol owns the real stdout; native libraries printing to fd 1 go to stderr
            sys.stdout.flush()
            proto_out = os.fdopen(os.dup(1), "wb")
            os.dup2(2, 1)
            return serve(sys.stdin.buffer, proto_out, [r for r in (args.preload or "").split(",") if r])
        if args.describe:
            print(json.dumps(describe(args.describe, runtime=args.runtime)))
            return 0
        if not (args.model and args.inputs and args.out):
            ap.error("--model, --inputs and --out are required (or --probe / --describe)")
        if args.batch_size < 1:
            raise RunnerError(f"--batch-size must be >= 1, got {args.batch_size}")
        meta = run_file(args.model, args.inputs, args.out, args.threads, args.batch_size, args.runtime, args.layout)
        print(json.dumps(meta))
        return 0
    except RunnerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except MemoryError:
        print(f"error: out of memory running {args.model}; lower --batch-size", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
