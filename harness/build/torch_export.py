"""Export on the build's torch path: which formats a variant is written to (:func:`plan_formats`), the writers of
``.pte`` (ExecuTorch, XNNPACK-delegated: fp32, PT2E static int8, PT2E dynamic int8), ``.ptl`` (lite interpreter)
and ``.onnx`` (fp32, onnxruntime dynamic int8), and :func:`write_format`, which picks the writer of one
(variant, format) and says what it did for the manifest record.

Every file takes float32 NCHW input ``[batch, C, H, W]`` and returns float32 logits ``[batch, n_classes]``; the batch
dimension is dynamic (``.pte``: 1..PTE_MAX_BATCH).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.build.torch_compress import pt2e_int8, quantize_dynamic_linear
from harness.build.torch_train import nchw, warnings_to_log
from harness.config import Experiment, parse_variant
from harness.data import OwnerData
from harness.errors import HarnessError
from rundir import atomic_path, atomic_write_bytes

PTE_MAX_BATCH = 256  # upper bound of the dynamic batch dimension in .pte files (sizes the memory plan)
_EXAMPLE_BATCH = 32  # export example batch; with a batch of 1 or 2 the XNNPACK lowering records a wrong batch bound
_ONNX_PROPS = {"compleak.input_layout": "NCHW", "compleak.output_kind": "logits"}  # metadata_props of every .onnx


def toolchain_versions() -> dict[str, str]:
    """Versions of the libraries that shape a torch artifact ("not installed" for an absent one)."""
    out = {}
    for pkg in ("torch", "executorch", "torchao", "onnx", "onnxruntime", "onnxscript", "scikit-learn"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def plan_formats(variant: str, formats: list[str]) -> tuple[list[str], dict[str, str]]:
    """Which of ``formats`` a variant is exported to, and why each of the others is not."""
    steps = parse_variant(variant)
    quant = steps[-1] if steps[-1] in ("int8", "dynamic-int8", "fp16", "qat-int8") else None
    if quant in ("fp16", "qat-int8"):
        return [], {f: f"'{quant}' exists only on the TF path" for f in formats}
    allowed = {None: ("pte", "ptl", "onnx"), "int8": ("pte",), "dynamic-int8": ("pte", "ptl", "onnx")}[quant]
    why = {"int8": "static int8 (PT2E, XNNPACK quantizer) is exported only as ExecuTorch .pte"}
    built = [f for f in formats if f in allowed]
    skipped = {f: why.get(str(quant), f"unknown format '{f}'") for f in formats if f not in allowed}
    return built, skipped


# =========================================================================== writers


def _batch_dim() -> dict[int, Any]:
    return {0: torch.export.Dim("batch", min=1, max=PTE_MAX_BATCH)}


def _check_pte_bound(buffer: bytes, path: Path) -> None:
    """Refuse a .pte whose recorded batch bound is not PTE_MAX_BATCH (it would reject ordinary batch sizes)."""
    from executorch.runtime import Runtime

    sizes = list(Runtime.get().load_program(buffer).metadata("forward").input_tensor_meta(0).sizes())
    if sizes[0] != PTE_MAX_BATCH:
        raise HarnessError(
            f"{path.name}: ExecuTorch lowering recorded batch bound {sizes[0]} instead of {PTE_MAX_BATCH}; "
            f"report this toolchain bug"
        )


def _lower_pte(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export ``module`` with a dynamic batch 1..PTE_MAX_BATCH, delegate every supported op to XNNPACK, check the
    recorded batch bound and write the ExecuTorch program to ``path`` (atomically)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    ep = torch.export.export(module, (example,), dynamic_shapes=(_batch_dim(),))
    prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    _check_pte_bound(prog.buffer, path)
    atomic_write_bytes(path, prog.buffer)


def export_pte_fp32(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """ExecuTorch program with every supported op delegated to XNNPACK (fp32), dynamic batch 1..PTE_MAX_BATCH."""
    _lower_pte(model.eval(), example, path)


def export_pte_int8(model: nn.Module, example: torch.Tensor, calibration: torch.Tensor, path: Path) -> int:
    """PT2E static int8 (XNNPACK quantizer, per-channel symmetric weights) calibrated on ``calibration``
    (float32 NCHW, the owner's training data), lowered to XNNPACK. Returns the number of calibration examples."""
    _lower_pte(pt2e_int8(model, example, (_batch_dim(),), calibration), example, path)
    return len(calibration)


def export_pte_dynamic_int8(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """PT2E dynamic int8 of every Linear (XNNPACK quantizer, ``get_symmetric_quantization_config(
    is_per_channel=True, is_dynamic=True)``: per-channel symmetric int8 weights, activations quantized per batch at
    run time), lowered to XNNPACK; dynamic batch 1..PTE_MAX_BATCH. No calibration (nothing static to observe)."""
    _lower_pte(pt2e_int8(model, example, (_batch_dim(),)), example, path)


@contextlib.contextmanager
def _fresh_compilation_unit() -> Iterator[torch._C.CompilationUnit]:
    """Trace into a compilation unit of its own: TorchScript names the class of every traced module in the
    process-wide unit and mangles a name already there (``conv/___torch_mangle_57``), so without this the names
    in a ``.ptl`` -- and its bytes -- would depend on what the process traced before (a serial build's second
    owner, a reused Ray worker)."""
    import torch.jit._state as jit_state

    previous = jit_state._python_cu
    jit_state._python_cu = unit = torch._C.CompilationUnit()
    try:
        yield unit
    finally:
        jit_state._python_cu = previous


#: records of a TorchScript archive that a ``.ptl`` does not keep: the source ranges of the traced code (the
#: absolute paths of this checkout's and torch's Python files; optional for ``torch.jit.load``, never read by the
#: lite interpreter). The archive's serialization id is not copied either: the writer computes its own from the
#: records it writes.
_PTL_DROPPED = (".debug_pkl",)
_PTL_SERIALIZATION_ID = ".data/serialization_id"


def portable_ptl(data: bytes) -> bytes:
    """The lite-interpreter archive ``data`` rewritten by torch's own archive writer (64-byte aligned records)
    under the fixed root folder ``archive/``, without the records that name where it was built
    (:data:`_PTL_DROPPED`): the same model gives the same bytes in any folder, process and checkout."""
    reader = torch._C.PyTorchFileReader(io.BytesIO(data))
    out = io.BytesIO()
    writer = torch._C.PyTorchFileWriter(out)
    for name in reader.get_all_records():
        if name.endswith(_PTL_DROPPED) or name == _PTL_SERIALIZATION_ID:
            continue
        record = reader.get_record(name)
        writer.write_record(name, record, len(record))
    writer.write_end_of_file()
    return out.getvalue()


def export_ptl(model: nn.Module, example: torch.Tensor, path: Path, io_spec: dict[str, Any]) -> None:
    """Traced TorchScript saved for the lite interpreter, with ``compleak.json`` (I/O spec) as an extra file;
    traced in a compilation unit of its own and written through :func:`portable_ptl` (atomically), so its bytes
    depend on the model only."""
    with warnings_to_log("TorchScript .ptl export"), _fresh_compilation_unit() as unit:
        traced = torch.jit.trace(model.eval(), example, _compilation_unit=unit)
        data = traced._save_to_buffer_for_lite_interpreter(_extra_files={"compleak.json": json.dumps(io_spec)})
    atomic_write_bytes(path, portable_ptl(data))


#: ONNX node metadata the torch exporter fills with the Python call stack (absolute source paths and line numbers)
_ONNX_STACK_TRACE = "stack_trace"


def strip_source_locations(proto: Any) -> Any:
    """Remove from every node of ``proto`` (its graph, nested graphs and functions) the metadata and doc strings
    that hold the exporting code's call stack (``pkg.torch.onnx.stack_trace``: absolute paths of this checkout and
    of torch), so the file does not depend on where it was built. Returns ``proto``, changed in place."""

    def graphs(graph: Any) -> Iterator[Any]:
        yield graph
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    yield from graphs(attr.g)
                for g in attr.graphs:
                    yield from graphs(g)

    nodes = [n for g in graphs(proto.graph) for n in g.node] + [n for f in proto.functions for n in f.node]
    for node in nodes:
        keep = [(p.key, p.value) for p in node.metadata_props if not p.key.endswith(_ONNX_STACK_TRACE)]
        if len(keep) != len(node.metadata_props):
            del node.metadata_props[:]
            for key, value in keep:
                node.metadata_props.add(key=key, value=value)
        node.doc_string = ""
    return proto


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """fp32 ONNX via the torch.export-based exporter, dynamic batch, input ``input`` (NCHW), output ``logits``.

    Models with BatchNorm are exported without the exporter's graph optimization, which would fold BatchNorm into
    the preceding conv and so rescale (un-share) clustered or quantized weights per channel; the file keeps the
    model's own weights and onnxruntime fuses Conv+BatchNorm when it loads the session.
    """
    import onnx

    # the exporter logs one warning per torchvision op it cannot register (torchvision is not a dependency)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            model.eval(),
            (example,),
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            optimize=not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()),
            verbose=False,
        )
    proto = strip_source_locations(prog.model_proto)
    onnx.helper.set_model_props(proto, _ONNX_PROPS)
    onnx.checker.check_model(proto)
    atomic_write_bytes(path, proto.SerializeToString())


def quantize_onnx_dynamic(fp32_path: Path, path: Path) -> list[str]:
    """onnxruntime dynamic int8 quantization of the Linear layers (Gemm/MatMul; int8 weights, activations
    quantized at run time) of ``fp32_path``. Returns the names of the quantized weight initializers."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_path(path, keep_suffix=True) as tmp:
        quantize_dynamic(str(fp32_path), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
        proto = strip_source_locations(onnx.load(str(tmp)))
        onnx.helper.set_model_props(proto, _ONNX_PROPS)
        onnx.save(proto, str(tmp))
    return sorted(i.name for i in proto.graph.initializer if i.name.endswith("_quantized"))


# =========================================================================== one (variant, format)


@dataclass
class ExportInputs:
    """What every export of one owner shares.

    example: float32 NCHW [_EXAMPLE_BATCH, C, H, W] from the owner's training data (the exporters' example input);
    io_spec: the I/O description a ``.ptl`` carries; scratch: folder of intermediate files (the fp32 ONNX that a
    dynamic-int8 ``.onnx`` is quantized from), named after ``tag``.
    """

    exp: Experiment
    owner: OwnerData
    tag: str
    example: torch.Tensor
    io_spec: dict[str, Any]
    scratch: Path

    @classmethod
    def of(
        cls, exp: Experiment, owner: OwnerData, tag: str, input_shape: tuple[int, int, int], scratch: Path
    ) -> ExportInputs:
        """The inputs for ``owner`` whose model input is ``input_shape`` (C, H, W)."""
        c, h, w = input_shape
        io_spec = {
            "inputs": [{"name": "input", "shape": [-1, c, h, w], "dtype": "float32", "layout": "NCHW"}],
            "outputs": [{"name": "logits", "shape": [-1, owner.n_classes], "dtype": "float32"}],
            "output_kind": "logits",
        }
        example = nchw(owner.x_train[np.arange(_EXAMPLE_BATCH) % len(owner.x_train)])
        return cls(exp, owner, tag, example, io_spec, scratch)


def _write_int8(model: nn.Module, path: Path, inputs: ExportInputs) -> dict[str, Any]:
    """Static int8 ``.pte`` calibrated on ``compress.representative_samples`` of the owner's training data."""
    x = inputs.owner.x_train
    n = min(inputs.exp.compress.representative_samples, len(x))
    pick = np.random.default_rng(inputs.owner.seed).choice(len(x), n, replace=False)
    export_pte_int8(model, inputs.example, nchw(x[np.sort(pick)]), path)
    return {
        "quantization": "int8",
        "quantizer": "PT2E XNNPACKQuantizer, per-channel symmetric int8 weights, static int8 activations",
        "calibration_samples": n,
        "calibration_data": "owner training data",
    }


def _write_dynamic_int8(model: nn.Module, fmt: str, path: Path, inputs: ExportInputs, variant: str) -> dict[str, Any]:
    """Dynamic int8 as ``.pte`` (PT2E), ``.ptl`` (eager torch.ao) or ``.onnx`` (onnxruntime, from the fp32 export)."""
    if fmt == "pte":
        export_pte_dynamic_int8(model, inputs.example, path)
        return {
            "quantization": "dynamic-int8",
            "quantizer": "PT2E (torchao prepare_pt2e/convert_pt2e) XNNPACKQuantizer dynamic config, Linear layers, "
            "per-channel symmetric int8 weights, int8 activations at run time",
            "delegate": "XnnpackPartitioner (dynamic int8)",
        }
    if fmt == "ptl":
        export_ptl(quantize_dynamic_linear(model), inputs.example, path, inputs.io_spec)
        return {
            "quantization": "dynamic-int8",
            "quantizer": "torch.ao quantize_dynamic (eager; the lite interpreter has no PT2E path), Linear layers, "
            "qint8 weights",
        }
    fp32 = inputs.scratch / f"{inputs.tag}-{variant}-fp32.onnx"
    export_onnx(model, inputs.example, fp32)
    qnames = quantize_onnx_dynamic(fp32, path)
    fp32.unlink(missing_ok=True)
    return {
        "quantization": "dynamic-int8",
        "quantizer": "onnxruntime quantize_dynamic, MatMul/Gemm, QInt8 weights",
        "quantized_weights": qnames,
    }


def write_format(model: nn.Module, variant: str, fmt: str, path: Path, inputs: ExportInputs) -> dict[str, Any]:
    """Write the fp32 ``model`` behind ``variant`` as ``fmt`` (pte | ptl | onnx) to ``path``, quantized when the
    variant ends in ``int8`` / ``dynamic-int8``; returns what the export adds to the artifact's compression record.
    Third-party deprecation warnings go to the log."""
    quant = parse_variant(variant)[-1]
    with warnings_to_log(f"torch export {path.name}"):  # deprecations: log only
        if quant == "int8":
            notes = _write_int8(model, path, inputs)
        elif quant == "dynamic-int8":
            notes = _write_dynamic_int8(model, fmt, path, inputs, variant)
        elif fmt == "pte":
            export_pte_fp32(model, inputs.example, path)
            notes = {"delegate": "XnnpackPartitioner (fp32)"}
        elif fmt == "ptl":
            export_ptl(model, inputs.example, path, inputs.io_spec)
            notes = {}
        else:
            export_onnx(model, inputs.example, path)
            notes = {}
    if fmt == "pte":
        notes["max_batch"] = PTE_MAX_BATCH
    return notes
