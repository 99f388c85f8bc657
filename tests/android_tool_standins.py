#!/usr/bin/env python3
"""Stand-ins for TF-Lite's ``benchmark_model`` and ExecuTorch's ``executor_runner``, for the ADB tests.

The real tools are Android executables that cannot be built or fetched on the machines that run the tests. These
stand-ins honour the parts of the real tools' interfaces the harness relies on, as documented in
tensorflow/lite/tools/benchmark (README and benchmark_tflite_model.cc) and
executorch/examples/portable/executor_runner/executor_runner.cpp:

* ``benchmark_model --graph=M --input_layer=N --input_layer_shape=B,H,W,C --input_layer_value_files=N:FILE
  --output_filepath=OUT [--num_runs= --warmup_runs= --min_secs= --warmup_min_secs= --num_threads=]``: the value
  file must hold exactly the resized input tensor's bytes; after the run OUT holds every output tensor's raw bytes
  back to back; the log has the ``Inference timings in us: ...`` line. Unknown flags are an error.
* ``executor_runner --model_path=M --inputs=FILE[,FILE] --output_file=BASE [--cpu_threads= --input_shapes=]``:
  input files are the inputs' raw bytes; output i is written raw to ``BASE-i.bin``; the log has
  ``Model executed successfully 1 time(s) in T ms.``.

They execute the model with the host's own TF-Lite interpreter (``ai_edge_litert``) and ExecuTorch runtime
(``executorch.runtime``), so they prove the harness's device-side flow (push, chmod, batches cut with ``dd``, one
run per batch, outputs concatenated, pulled and parsed), NOT compatibility with the real binaries.

The tool is chosen by the name it is invoked under (a copy named ``benchmark_model`` or ``executor_runner``).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np


def _flags(argv: list[str], known: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise SystemExit(f"ERROR: Unconsumed cmdline flags: {arg}")
        key, value = arg[2:].split("=", 1)
        if key not in known:
            raise SystemExit(f"ERROR: Unconsumed cmdline flags: {arg}")
        out[key] = value
    return out


def benchmark_model(argv: list[str]) -> int:
    f = _flags(argv, {"graph", "input_layer", "input_layer_shape", "input_layer_value_files", "output_filepath",
                      "num_runs", "warmup_runs", "min_secs", "warmup_min_secs", "num_threads"})
    from ai_edge_litert.interpreter import Interpreter

    t0 = time.perf_counter()
    threads = int(f.get("num_threads", "-1"))  # -1: the platform default, as in benchmark_model
    interp = Interpreter(model_path=f["graph"], num_threads=threads if threads > 0 else None)
    names = f.get("input_layer", "").split(",") if f.get("input_layer") else []
    shapes = [[int(d) for d in s.split(",")] for s in f.get("input_layer_shape", "").split(":")] if names else []
    files = {}
    for item in filter(None, f.get("input_layer_value_files", "").split(",")):
        name, _, path = item.replace("::", "\0").partition(":")
        files[name.replace("\0", ":")] = path.replace("\0", ":")
    details = interp.get_input_details()
    if len(names) != len(details):
        raise SystemExit(f"ERROR: --input_layer names {len(names)} inputs but the model has {len(details)}")
    for d, shape in zip(details, shapes):  # inputs are matched by position, not by name
        interp.resize_tensor_input(d["index"], shape)
    interp.allocate_tensors()
    init_us = (time.perf_counter() - t0) * 1e6
    for name, d in zip(names, interp.get_input_details()):
        if name not in files:
            raise SystemExit(f"ERROR: no value file for input {name} (random inputs are not supported here)")
        raw = open(files[name], "rb").read()
        want = int(np.prod(d["shape"])) * np.dtype(d["dtype"]).itemsize
        if len(raw) != want:
            raise SystemExit(f"ERROR: The number of bytes of the input file ({len(raw)}) doesn't match the size of "
                             f"the input tensor ({want})")
        interp.set_tensor(d["index"], np.frombuffer(raw, d["dtype"]).reshape(d["shape"]))
    runs = max(1, int(f.get("num_runs", "50"))) + int(f.get("warmup_runs", "1"))
    t1 = time.perf_counter()
    for _ in range(runs):
        interp.invoke()
    first_us = (time.perf_counter() - t1) * 1e6 / runs
    print(f"INFO: Inference timings in us: Init: {init_us:.0f}, First inference: {first_us:.0f}, "
          f"Warmup (avg): {first_us:.0f}, Inference (avg): {first_us:.1f}")
    if f.get("output_filepath"):
        with open(f["output_filepath"], "wb") as fh:
            for d in interp.get_output_details():
                fh.write(interp.get_tensor(d["index"]).tobytes())
    return 0


def executor_runner(argv: list[str]) -> int:
    f = _flags(argv, {"model_path", "inputs", "output_file", "cpu_threads", "input_shapes", "num_executions"})
    import torch
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(f.get("model_path", "model.pte")).load_method("forward")
    meta = method.metadata
    tensors = []
    for i, path in enumerate(filter(None, f.get("inputs", "").split(","))):
        info = meta.input_tensor_meta(i)
        dtype = {6: torch.float32, 1: torch.int8, 0: torch.uint8}[int(info.dtype())]
        raw = bytearray(open(path, "rb").read())
        shape = list(info.sizes())
        want = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
        if len(raw) != want:
            raise SystemExit(f"E executor_runner: input {i}: file has {len(raw)} bytes, tensor needs {want}")
        tensors.append(torch.frombuffer(raw, dtype=dtype).reshape(shape))
    t0 = time.perf_counter()
    outputs = method.execute(tensors)
    print(f"I executor_runner.cpp] Model executed successfully 1 time(s) in {(time.perf_counter() - t0) * 1e3:.3f} ms.")
    if f.get("output_file"):
        for i, out in enumerate(outputs):
            with open(f"{f['output_file']}-{i}.bin", "wb") as fh:
                fh.write(out.contiguous().numpy().tobytes())
    return 0


def main() -> int:
    tool = os.path.basename(sys.argv[0])
    if tool == "benchmark_model":
        return benchmark_model(sys.argv[1:])
    if tool == "executor_runner":
        return executor_runner(sys.argv[1:])
    raise SystemExit(f"invoke this file as benchmark_model or executor_runner, not {tool}")


if __name__ == "__main__":
    sys.exit(main())
