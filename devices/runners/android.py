"""Native runners for Android devices without Python: TF-Lite's ``benchmark_model`` and ExecuTorch's
``executor_runner``.

Both are the official command-line tools of their runtimes. Neither reads NumPy files, so the query batch is
written in the binary's own input format, and its output file is parsed back:

* ``benchmark_model`` (tensorflow/lite/tools/benchmark): ``--graph=M --input_layer=NAME
  --input_layer_shape=B,H,W,C --input_layer_value_files=NAME:FILE --output_filepath=OUT``. The value file is the
  raw tensor bytes (B*H*W*C elements of the input's dtype, C order, little-endian); ``--input_layer_shape``
  resizes the input to the batch. After the run ``OUT`` holds the raw bytes of every output tensor, concatenated
  in the interpreter's output order. ``--num_runs=1 --warmup_runs=0 --min_secs=0 --warmup_min_secs=0`` make it
  invoke exactly once per batch.
* ``executor_runner`` (executorch/examples/portable/executor_runner): ``--model_path=M --inputs=FILE
  --output_file=BASE``. Input files are the raw tensor bytes at the program's planned input shape; output ``i``
  is written raw to ``BASE-i.bin``. A ``.pte`` has a fixed batch, so one execution per batch of that size.

Per query batch the runner: pads the last chunk to the batch size, writes ONE input file (all chunks back to
back), pushes it, pushes ONE shell script and runs it inside the workspace (``cd WS && sh run.sh``; the script
names files relative to it); the script cuts the chunks with ``dd``, runs the binary once per chunk and
concatenates the outputs into ONE file, which is pulled and parsed into float32 [M, C] (int8/uint8 outputs
dequantized with the artifact's scale and zero point).

Binaries are found (per ABI, the device's preferred ABI first) in the ``binaries`` folder given by the user —
``<binaries>/<abi>/<name>`` or ``<binaries>/<name>`` — or in the cache ``<cache>/android/<abi>/<name>`` with
``<cache>`` = ``$COMPLEAK_CACHE_DIR`` or ``~/.cache/compleak``. ``docker/android-runner`` builds them.
"""

from __future__ import annotations

import re
import shlex
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from devices.base import Device, DeviceProperties
from devices.errors import DeviceError, NoRunnerError
from devices.known_devices import cache_dir
from devices.ondevice.compleak_runner import channels_first
from devices.runners.base import Infer, Runner, utc_now
from rundir import ArtifactRecord, TensorSpec, sha256_file

GET_BINARIES = ("build them with the android-runner image (docker/android-runner, see docs/android.md) and pass "
                "its output folder with --binaries, or copy them to {cache}/<abi>/")


def binary_cache_dir() -> Path:
    """``<cache>/android``: where ``<abi>/benchmark_model`` and ``<abi>/executor_runner`` are looked up."""
    return cache_dir() / "android"


def find_binary(name: str, abis: list[str], binaries: Path | str | None = None) -> tuple[Path, str]:
    """The host path of binary ``name`` for the first ABI in ``abis`` that has one, and that ABI.

    Looks in ``binaries/<abi>/name``, ``binaries/name`` (a folder for one ABI), then the cache
    ``<cache>/android/<abi>/name``. Raises a one-line :class:`DeviceError` saying where it looked and how to get it.
    """
    if not abis:
        raise DeviceError(f"cannot choose a {name} binary: the device reports no ABI (ro.product.cpu.abilist)")
    searched: list[Path] = []
    for abi in abis:
        candidates = []
        if binaries:
            candidates += [Path(binaries) / abi / name]
        candidates += [binary_cache_dir() / abi / name]
        for cand in candidates:
            searched.append(cand)
            if cand.is_file():
                return cand, abi
    if binaries and (Path(binaries) / name).is_file():  # a folder for exactly one ABI: trust the user's choice
        return Path(binaries) / name, abis[0]
    if binaries:
        searched.insert(0, Path(binaries) / name)
    shown = ", ".join(str(p) for p in searched[:3]) + (" ..." if len(searched) > 3 else "")
    raise DeviceError(f"no {name} for {'/'.join(abis)} (looked in {shown}): "
                      + GET_BINARIES.format(cache=binary_cache_dir()))


def _elements(shape: list[int]) -> int:
    return int(np.prod([d for d in shape[1:]], dtype=np.int64)) if len(shape) > 1 else 1


def encode_input(x: np.ndarray, spec: TensorSpec) -> bytes:
    """Raw little-endian tensor bytes of ``x`` in ``spec``'s dtype (int8/uint8 quantized with its scale/zero point).

    Args:
        x: float32 array already in the model's layout, e.g. [B, H, W, C].
    """
    dtype = np.dtype(spec.dtype).newbyteorder("<")
    if np.issubdtype(dtype, np.integer):
        if not spec.scale:
            raise DeviceError(f"input {spec.name}: integer input without a quantization scale; cannot encode floats")
        info = np.iinfo(dtype)
        q = np.clip(np.round(x / spec.scale + (spec.zero_point or 0)), info.min, info.max)
        return np.ascontiguousarray(q.astype(dtype)).tobytes()
    return np.ascontiguousarray(x.astype(dtype)).tobytes()


def decode_output(raw: bytes, spec: TensorSpec, rows: int, source: str) -> np.ndarray:
    """Raw output tensor bytes -> float32 [rows, C] (dequantized with ``spec``'s scale and zero point)."""
    dtype = np.dtype(spec.dtype).newbyteorder("<")
    per_row = _elements(spec.shape)
    want = rows * per_row * dtype.itemsize
    if len(raw) != want:
        raise DeviceError(f"{source}: {len(raw)} bytes of output, expected {want} ({rows} x {per_row} {spec.dtype}); "
                          f"the binary does not match the artifact or crashed mid-write")
    y = np.frombuffer(raw, dtype=dtype).reshape(rows, per_row)
    if np.issubdtype(dtype, np.integer) and spec.scale:
        return ((y.astype(np.float32) - np.float32(spec.zero_point or 0)) * np.float32(spec.scale)).astype(np.float32)
    return y.astype(np.float32)


class BinaryRunner(Runner):
    """Shared flow of the native runners: push binary + model once, then one input file, script and output file
    per query batch."""

    name = "binary"
    binary_name = ""
    runtime = ""

    def __init__(self, binary: Path, abi: str, batch_size: int = 256, threads: int | None = None,
                 timeout_s: float = 600.0, per_query_timeout_s: float = 0.05) -> None:
        self.binary = Path(binary)
        self.abi = abi
        self.batch_size = int(batch_size)
        self.threads = threads
        self.timeout_s = timeout_s
        self.per_query_timeout_s = per_query_timeout_s
        self.binary_sha256 = sha256_file(self.binary)

    def describe(self) -> dict[str, Any]:
        return {"runner": self.name, "runtime": self.runtime, "runtime_version": f"sha256:{self.binary_sha256[:16]}",
                "binary": str(self.binary), "abi": self.abi}

    # ------------------------------------------------------------------ per format

    def chunk_size(self, artifact: ArtifactRecord) -> int:
        """Queries per binary invocation: a dynamic batch dimension (-1) is resized to ``batch_size``; a fixed one
        (e.g. an ExecuTorch program's planned batch) is kept."""
        n = artifact.inputs[0].shape[0] if artifact.inputs[0].shape else -1
        return self.batch_size if n is None or n <= 0 else n

    def prepare(self, x: np.ndarray, artifact: ArtifactRecord) -> np.ndarray:
        """NHWC float32 queries -> the model's input layout."""
        return x

    def command(self, remote_binary: str, remote_model: str, artifact: ArtifactRecord, model_shape: list[int],
                chunk_file: str, out_base: str) -> tuple[list[str], str]:
        """argv for one chunk and the path of the output file it writes."""
        raise NotImplementedError

    def output_specs(self, artifact: ArtifactRecord) -> list[TensorSpec]:
        """The output tensors the binary writes into its output file, in order."""
        return artifact.outputs[:1]

    @staticmethod
    def parse_times(log: str) -> list[float]:
        """Seconds per invocation, from the binary's log."""
        return []

    # ------------------------------------------------------------------ the flow

    def build_inputs(self, x: np.ndarray, artifact: ArtifactRecord) -> tuple[bytes, int, int, list[int]]:
        """The input file for queries ``x`` float32 [M, H, W, C]: every chunk's raw tensor bytes back to back.

        Returns (bytes, number of chunks, chunk batch size B, the model input shape [B, ...] per invocation).
        The last chunk is padded with zero rows, whose outputs :meth:`parse_outputs` drops.
        """
        b = self.chunk_size(artifact)
        n_chunks = max(1, -(-len(x) // b))
        xm = self.prepare(np.asarray(x, dtype=np.float32), artifact)
        if n_chunks * b > len(x):
            xm = np.concatenate([xm, np.zeros((n_chunks * b - len(x), *xm.shape[1:]), np.float32)])
        return encode_input(xm, artifact.inputs[0]), n_chunks, b, [b, *xm.shape[1:]]

    def parse_outputs(self, raw: bytes, artifact: ArtifactRecord, m: int, source: str) -> np.ndarray:
        """The concatenated output file of all chunks -> float32 [m, C] (first output, dequantized)."""
        b = self.chunk_size(artifact)
        n_chunks = max(1, -(-m // b))
        specs = self.output_specs(artifact)
        per_chunk = [b * _elements(s.shape) * np.dtype(s.dtype).itemsize for s in specs]
        stride = sum(per_chunk)
        if len(raw) != n_chunks * stride:
            raise DeviceError(f"{source}: {self.binary_name} wrote {len(raw)} bytes of outputs, expected "
                              f"{n_chunks * stride} for {n_chunks} batches of {b}; the binary does not match the "
                              f"artifact's outputs")
        first = b"".join(raw[i * stride: i * stride + per_chunk[0]] for i in range(n_chunks))
        return decode_output(first, specs[0], n_chunks * b, source)[:m]

    def script(self, artifact: ArtifactRecord, model_shape: list[int], n_chunks: int, chunk_bytes: int) -> str:
        """The device shell script that runs every chunk, run from inside the workspace (paths relative to it,
        every one quoted). Exits 3 with the tail of the binary's log on failure."""
        q = shlex.quote
        lines = ["set -u", "rm -f out.bin"]
        for i in range(n_chunks):
            argv, out = self.command(f"./{self.binary_name}", f"model.{artifact.format}", artifact, model_shape,
                                     "chunk.bin", f"out_{i}")
            lines += [
                f"dd if=in.bin of=chunk.bin bs={chunk_bytes} skip={i} count=1 2>/dev/null || "
                f"{{ echo 'error: cannot cut input chunk {i} with dd' >&2; exit 3; }}",
                f"{shlex.join(argv)} > run.log 2>&1 || {{ tail -n 5 run.log >&2; exit 3; }}",
                f"[ -s {q(out)} ] || {{ tail -n 5 run.log >&2; echo 'error: {self.binary_name} wrote no output "
                f"for chunk {i}' >&2; exit 3; }}",
                f"cat {q(out)} >> out.bin && rm -f {q(out)}",
                "cat run.log",
            ]
        return "\n".join(lines) + "\n"

    @contextmanager
    def session(self, device: Device, artifact_file: Path, artifact: ArtifactRecord) -> Iterator[Infer]:
        with tempfile.TemporaryDirectory(prefix="compleak-bin-") as tmp, device.workspace() as ws:
            t0 = time.perf_counter()
            remote_binary = f"{ws}/{self.binary_name}"  # the script refers to both relative to the workspace
            remote_model = f"{ws}/model.{artifact.format}"
            device.put(self.binary, remote_binary)
            device.run(["chmod", "755", remote_binary], timeout=60).check(device.id, f"chmod {self.binary_name}")
            device.put(Path(artifact_file), remote_model)
            upload_s = [time.perf_counter() - t0]

            def infer(inputs: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
                values, prov = self._infer(device, artifact, Path(tmp), ws, remote_binary, remote_model, inputs,
                                           upload_s[0])
                upload_s[0] = 0.0
                return values, prov

            yield infer

    def _infer(self, device: Device, artifact: ArtifactRecord, tmp: Path, ws: str, remote_binary: str,
               remote_model: str, inputs: np.ndarray, upload_model_s: float) -> tuple[np.ndarray, dict[str, Any]]:
        x = np.asarray(inputs, dtype=np.float32)
        if x.ndim != 4:
            raise DeviceError(f"{artifact.id}: query inputs must be float32 [M, H, W, C], got shape {list(x.shape)}")
        if not artifact.inputs or not artifact.outputs:
            raise DeviceError(f"{artifact.id}: the manifest lists no input/output tensors; rebuild or re-import it")
        started = utc_now()
        t0 = time.perf_counter()
        m = len(x)
        blob, n_chunks, b, model_shape = self.build_inputs(x, artifact)
        local_in, local_script, local_out = tmp / "in.bin", tmp / "run.sh", tmp / "out.bin"
        local_in.write_bytes(blob)
        local_script.write_text(self.script(artifact, model_shape, n_chunks, len(blob) // n_chunks))
        device.put(local_in, f"{ws}/in.bin")
        device.put(local_script, f"{ws}/run.sh")
        t_up = time.perf_counter() - t0
        res = device.run(["sh", "-c", f"cd {shlex.quote(ws)} && exec sh run.sh"],
                         timeout=self.timeout_s + self.per_query_timeout_s * m)
        if not res.ok:
            raise DeviceError(f"{device.id}: {artifact.id} on {self.binary_name} ({self.abi}): "
                              f"{res.last_error_line()}")
        t1 = time.perf_counter()
        device.get(f"{ws}/out.bin", local_out)
        t_down = time.perf_counter() - t1
        values = self.parse_outputs(local_out.read_bytes(), artifact, m, f"{device.id}:{ws}/out.bin")
        times = self.parse_times(res.text)
        prov = {
            **self.describe(),
            "delegate": None,
            "threads": self.threads,
            "batch_size": b,
            "batch_seconds": times,
            "batch_sizes": [b] * n_chunks,
            "upload_seconds": upload_model_s + t_up,
            "download_seconds": t_down,
            "command_seconds": res.seconds,
            "wall_seconds": time.perf_counter() - t0 + upload_model_s,
            "input_layout": "NCHW" if list(model_shape[1:]) != list(x.shape[1:]) else "NHWC",
            "started": started,
            "finished": utc_now(),
        }
        return values, prov


class BenchmarkModelRunner(BinaryRunner):
    """TF-Lite ``.tflite`` through the official ``benchmark_model`` tool; the batch is one resized invocation."""

    name = "benchmark_model"
    binary_name = "benchmark_model"
    runtime = "tflite-benchmark_model"

    @staticmethod
    def layer_name(spec: TensorSpec) -> str:
        """The input name for ``--input_layer``: benchmark_model matches inputs by position, not by name, so
        ``,`` and ``:`` (its list separators; ``::`` escaping exists only in recent versions) become ``_``."""
        return re.sub(r"[,:\s]", "_", spec.name) or "input"

    def command(self, remote_binary: str, remote_model: str, artifact: ArtifactRecord, model_shape: list[int],
                chunk_file: str, out_base: str) -> tuple[list[str], str]:
        for path in (chunk_file, remote_model, out_base):
            if "," in path:
                raise DeviceError(f"benchmark_model cannot take a path with ',' in it: {path}; use another --workspace")
        name = self.layer_name(artifact.inputs[0])
        out = f"{out_base}.bin"
        argv = [
            remote_binary,
            f"--graph={remote_model}",
            f"--input_layer={name}",
            f"--input_layer_shape={','.join(str(d) for d in model_shape)}",
            f"--input_layer_value_files={name}:{chunk_file.replace(':', '::')}",
            f"--output_filepath={out}",
            "--num_runs=1", "--warmup_runs=0", "--min_secs=0", "--warmup_min_secs=0",
        ]
        if self.threads:
            argv.append(f"--num_threads={self.threads}")
        return argv, out

    def output_specs(self, artifact: ArtifactRecord) -> list[TensorSpec]:
        return list(artifact.outputs)  # benchmark_model writes every output tensor

    @staticmethod
    def parse_times(log: str) -> list[float]:
        """``Inference timings in us: Init: ..., First inference: F, ...`` -> [F seconds] per run."""
        return [float(m.group(1)) / 1e6 for m in re.finditer(r"First inference:\s*([0-9.]+)", log)]


class ExecutorRunner(BinaryRunner):
    """ExecuTorch ``.pte`` through ``executor_runner``; one execution per batch of the program's planned size."""

    name = "executor_runner"
    binary_name = "executor_runner"
    runtime = "executorch-executor_runner"

    def prepare(self, x: np.ndarray, artifact: ArtifactRecord) -> np.ndarray:
        spec = artifact.inputs[0]
        layout = str(getattr(spec, "layout", None) or "auto")
        if channels_first(list(spec.shape), x.shape, layout if layout in ("NCHW", "NHWC") else "auto"):
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return x

    def command(self, remote_binary: str, remote_model: str, artifact: ArtifactRecord, model_shape: list[int],
                chunk_file: str, out_base: str) -> tuple[list[str], str]:
        if "," in chunk_file:
            raise DeviceError(f"executor_runner cannot take an input path with ',' in it: {chunk_file}")
        argv = [remote_binary, f"--model_path={remote_model}", f"--inputs={chunk_file}", f"--output_file={out_base}"]
        if artifact.inputs[0].shape and artifact.inputs[0].shape[0] <= 0:  # dynamic batch: resize below the bound
            argv.append(f"--input_shapes={'x'.join(str(d) for d in model_shape)}")
        if self.threads:
            argv.append(f"--cpu_threads={self.threads}")
        return argv, f"{out_base}-0.bin"

    @staticmethod
    def parse_times(log: str) -> list[float]:
        """``Model executed successfully 1 time(s) in T ms.`` -> [T seconds] per run."""
        pattern = r"executed successfully \d+ time\(s\) in ([0-9.]+) ms"
        return [float(m.group(1)) / 1e3 for m in re.finditer(pattern, log)]


def choose_android_runner(device: Device, artifact: ArtifactRecord, binaries: Path | str | None,
                          props: DeviceProperties, batch_size: int = 256, threads: int | None = None) -> Runner:
    """The native runner for ``artifact`` on an Android device without a usable Python, by the device's ABIs."""
    abis = list(props.extra.get("abilist") or ([props.android_abi] if props.android_abi else []))
    binaries = binaries or getattr(device, "binaries", None)
    if artifact.format == "tflite":
        path, abi = find_binary("benchmark_model", abis, binaries)
        return BenchmarkModelRunner(path, abi, batch_size=batch_size, threads=threads)
    if artifact.format == "pte":
        path, abi = find_binary("executor_runner", abis, binaries)
        return ExecutorRunner(path, abi, batch_size=batch_size, threads=threads)
    runtime = "onnxruntime" if artifact.format == "onnx" else "torch"
    raise NoRunnerError(f"{device.id}: {artifact.format} artifact {artifact.id} needs Python on the device (e.g. "
                        f"Termux with numpy and {runtime}); there is no native runner for {artifact.format}")
