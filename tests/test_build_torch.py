"""The PyTorch build path end to end on scikit-learn digits (8x8x1, 10 classes) with ``cnn-small``.

One build of one variant of each kind (original, prune, cluster, int8, dynamic-int8, prune+int8) into every torch
format; every artifact is then loaded in its own host runtime (executorch.runtime, the lite interpreter,
onnxruntime) and compared with the torch model. Sparsity and cluster counts are read from the artifact files.
Tolerances: fp32 artifacts max |logit difference| <= 1e-4; quantized artifacts argmax agreement >= 98%.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("executorch")

from harness.build import torch_pipeline as tb  # noqa: E402
from harness.build.torch_export import PTE_MAX_BATCH  # noqa: E402
from harness.build.torch_zoo import build_model  # noqa: E402
from harness.config import Experiment  # noqa: E402
from harness.data import OwnerData  # noqa: E402
from harness.errors import HarnessError  # noqa: E402

pytestmark = pytest.mark.slow

VARIANTS = ["original", "prune-0.5", "cluster-4", "int8", "dynamic-int8", "prune-0.5+int8"]
EXPECTED = {
    "original": {"pte", "ptl", "onnx"},
    "prune-0.5": {"pte", "ptl", "onnx"},
    "cluster-4": {"pte", "ptl", "onnx"},
    "int8": {"pte"},
    "dynamic-int8": {"pte", "ptl", "onnx"},
    "prune-0.5+int8": {"pte"},
}
FP32_TOL = 1e-4
QUANT_AGREEMENT = 0.98


def _digits_owner() -> OwnerData:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]  # NHWC [N, 8, 8, 1]
    y = d.target.astype(np.int64)
    p = np.random.default_rng(0).permutation(len(x))
    tr, ho, te = p[:800], p[800:900], p[900:1300]
    return OwnerData(x[tr], y[tr], x[ho], y[ho], x[te], y[te], n_classes=10, seed=0)


def _experiment() -> Experiment:
    return Experiment.model_validate(
        {
            "model": {"arch": "cnn-small"},
            "train": {"epochs": 8, "batch_size": 64, "early_stopping_patience": 3},
            "compress": {"finetune_epochs": 1, "finetune_lr": 5e-4, "torch": VARIANTS},
        }
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("torch-artifacts")
    exp, owner = _experiment(), _digits_owner()
    messages: list[str] = []
    arts = tb.build_variants(exp, owner, VARIANTS, out, "target", progress=messages.append)
    return exp, owner, out, arts, messages


def _run(path: Path, fmt: str, x_nchw: np.ndarray) -> np.ndarray:
    """Outputs of an artifact in its host runtime, float32 [N, C]."""
    if fmt == "onnx":
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x_nchw})[0]
    if fmt == "ptl":
        from torch.jit.mobile import _load_for_lite_interpreter

        m = _load_for_lite_interpreter(str(path))
        return m(torch.from_numpy(x_nchw)).detach().numpy()
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")
    chunks = [method.execute([torch.from_numpy(x_nchw[i : i + 200])])[0].numpy() for i in range(0, len(x_nchw), 200)]
    return np.concatenate(chunks)


def _nchw(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 3, 1, 2).copy()  # a fresh C-order copy: standard strides even when C == 1


def _onnx_weights(path: Path) -> dict[str, np.ndarray]:
    """Float weight initializers feeding Conv/Gemm/MatMul nodes, read from the ONNX file."""
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    names = {n.input[1] for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in inits}
    return {n: inits[n] for n in names if inits[n].ndim >= 2 and inits[n].dtype == np.float32}


def _ptl_weights(path: Path) -> dict[str, np.ndarray]:
    """Conv/Linear weight tensors (ndim >= 2) read from the .ptl file with torch.jit.load."""
    m = torch.jit.load(str(path))
    return {k: v.detach().numpy() for k, v in m.named_parameters() if k.endswith("weight") and v.dim() >= 2}


def test_builds_exactly_the_documented_formats(built) -> None:
    exp, owner, out, arts, messages = built
    got: dict[str, set[str]] = {}
    for a in arts:
        got.setdefault(a.variant, set()).add(a.format)
        assert a.path == out / f"torch-target-{a.variant}.{a.format}"
        assert a.path.is_file() and a.path.stat().st_size > 0
        assert a.output_kind == "logits"
        assert {"torch", "executorch", "torchao", "onnx", "onnxruntime"} <= set(a.toolchain)
        assert a.compression["steps"] == a.variant.split("+")
    assert got == EXPECTED
    # the impossible combinations are reported, not silently dropped
    assert any("int8: no .onnx" in m for m in messages)
    assert not any("dynamic-int8: no ." in m for m in messages)


def test_every_artifact_matches_the_torch_model_in_its_host_runtime(built) -> None:
    exp, owner, out, arts, _ = built
    x = _nchw(owner.x_test)
    for a in arts:
        ref = tb.trained_model(exp, owner, out, "target", a.variant)(torch.from_numpy(x)).detach().numpy()
        got = _run(a.path, a.format, x)
        assert got.shape == ref.shape == (len(x), 10), a.path.name
        assert got.dtype == np.float32
        if a.compression.get("quantization"):
            agreement = float(np.mean(got.argmax(1) == ref.argmax(1)))
            assert agreement >= QUANT_AGREEMENT, f"{a.path.name}: argmax agreement {agreement:.3f}"
            assert not np.allclose(got, ref, atol=FP32_TOL), f"{a.path.name} is not quantized at all"
        else:
            diff = float(np.abs(got - ref).max())
            assert diff <= FP32_TOL, f"{a.path.name}: max |diff| {diff}"
    # the model learned something, so agreement above is meaningful
    acc = float(np.mean(_run(out / "torch-target-original.onnx", "onnx", x).argmax(1) == owner.y_test))
    assert acc > 0.8


def test_pruned_artifacts_have_the_configured_sparsity(built) -> None:
    exp, owner, out, arts, _ = built
    for weights in (
        _onnx_weights(out / "torch-target-prune-0.5.onnx"),
        _ptl_weights(out / "torch-target-prune-0.5.ptl"),
    ):
        assert len(weights) == 4  # 2 conv + 2 linear
        zeros = sum(int((w == 0).sum()) for w in weights.values())
        total = sum(w.size for w in weights.values())
        assert abs(zeros / total - 0.5) < 1e-3
    # the unpruned original is dense, read the same way
    dense = _onnx_weights(out / "torch-target-original.onnx")
    assert sum(int((w == 0).sum()) for w in dense.values()) / sum(w.size for w in dense.values()) < 0.01


def test_clustered_artifacts_have_at_most_k_values_per_weight_tensor(built) -> None:
    exp, owner, out, arts, _ = built
    for weights in (
        _onnx_weights(out / "torch-target-cluster-4.onnx"),
        _ptl_weights(out / "torch-target-cluster-4.ptl"),
    ):
        assert len(weights) == 4
        for name, w in weights.items():
            assert 2 <= len(np.unique(w)) <= 4, f"{name}: {len(np.unique(w))} unique values"
    assert all(len(np.unique(w)) > 4 for w in _onnx_weights(out / "torch-target-original.onnx").values())


def test_dynamic_int8_onnx_holds_int8_linear_weights(built) -> None:
    exp, owner, out, arts, _ = built
    g = onnx.load(str(out / "torch-target-dynamic-int8.onnx")).graph
    int8 = [i for i in g.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    assert len(int8) == 2  # both Linear layers
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in g.node)
    # .ptl of the same variant holds quantized linear ops
    ptl = out / "torch-target-dynamic-int8.ptl"
    with zipfile.ZipFile(ptl) as z:
        code = "".join(z.read(n).decode(errors="ignore") for n in z.namelist() if n.endswith(".py"))
        meta = json.loads(next(z.read(n) for n in z.namelist() if n.endswith("extra/compleak.json")))
    assert "quantized" in code
    assert meta["inputs"][0]["layout"] == "NCHW" and meta["inputs"][0]["shape"] == [-1, 1, 8, 8]


def test_dynamic_int8_pte_comes_from_pt2e_and_no_deprecation_escapes(tmp_path: Path) -> None:
    """The dynamic-int8 .pte is quantized by torchao PT2E (XNNPACK quantizer, dynamic config) and runs dynamic
    int8 kernels; the eager torch.ao path (still needed for .ptl) and the exporters warn only into the log."""
    import logging
    import warnings

    exp = _experiment().model_copy(update={"train": _experiment().train.model_copy(update={"epochs": 1})})
    owner = _digits_owner()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger(tb.__name__).addHandler(handler)
    old_level = logging.getLogger(tb.__name__).level
    logging.getLogger(tb.__name__).setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            arts = tb.build_variants(exp, owner, ["dynamic-int8"], tmp_path, "target")
    finally:
        logging.getLogger(tb.__name__).removeHandler(handler)
        logging.getLogger(tb.__name__).setLevel(old_level)
    escaped = [f"{w.category.__name__}: {w.message}" for w in caught
               if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning))]
    assert not escaped, escaped[:3]
    logged = " ".join(r.getMessage() for r in records)
    assert "torch.ao.quantization is deprecated" in logged  # caught and logged, not lost
    by_fmt = {a.format: a for a in arts}
    assert set(by_fmt) == {"pte", "ptl", "onnx"}
    pte = by_fmt["pte"]
    assert pte.compression["quantization"] == "dynamic-int8"
    assert "PT2E" in pte.compression["quantizer"] and "dynamic" in pte.compression["quantizer"]
    assert "torch.ao" in by_fmt["ptl"].compression["quantizer"]
    # the program is quantized (outputs differ from the fp32 model's; the fp32 .pte matches it within FP32_TOL in
    # test_every_artifact_matches_the_torch_model_in_its_host_runtime) and keeps its predictions
    x = _nchw(owner.x_test)
    ref = tb.trained_model(exp, owner, tmp_path, "target", "dynamic-int8")(torch.from_numpy(x)).detach().numpy()
    got = _run(pte.path, "pte", x)
    assert not np.allclose(got, ref, atol=FP32_TOL)
    assert float(np.mean(got.argmax(1) == ref.argmax(1))) >= QUANT_AGREEMENT


def test_files_state_nchw_layout(built) -> None:
    exp, owner, out, arts, _ = built
    m = onnx.load(str(out / "torch-target-original.onnx"))
    assert {p.key: p.value for p in m.metadata_props}["compleak.input_layout"] == "NCHW"
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [1, 8, 8] and dims[0].dim_param  # dynamic batch
    from executorch.runtime import Runtime

    prog = Runtime.get().load_program(str(out / "torch-target-original.pte"))
    assert list(prog.metadata("forward").input_tensor_meta(0).sizes()) == [PTE_MAX_BATCH, 1, 8, 8]
    method = prog.load_method("forward")
    for n in (1, 3, PTE_MAX_BATCH):  # any batch up to the recorded bound
        assert tuple(method.execute([torch.zeros(n, 1, 8, 8)])[0].shape) == (n, 10)


def test_rerun_reuses_the_cached_model(built, monkeypatch: pytest.MonkeyPatch) -> None:
    exp, owner, out, arts, _ = built
    caches = sorted((out / tb.CACHE_DIR).glob("target-*.pt"))
    assert {p.name.split("-")[1] for p in caches} >= {"original", "prune", "cluster"}
    mtimes = {p: p.stat().st_mtime_ns for p in caches}

    def no_training(*a, **k):
        raise AssertionError("retrained although the cache is valid")

    monkeypatch.setattr(tb, "train_model", no_training)
    again = tb.build_variants(exp, owner, ["original", "prune-0.5"], out, "target", formats=["onnx"])
    assert [(a.variant, a.format) for a in again] == [("original", "onnx"), ("prune-0.5", "onnx")]
    assert {p: p.stat().st_mtime_ns for p in caches} == mtimes


def test_changed_training_config_retrains(built, tmp_path: Path) -> None:
    exp, owner, out, arts, _ = built
    changed = exp.model_copy(update={"train": exp.train.model_copy(update={"epochs": 1})})
    calls: list[int] = []
    real = tb.train_model

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    tb_train, tb.train_model = tb.train_model, counting
    try:
        tb.build_variants(changed, owner, ["original"], out, "shadow0", formats=["onnx"])
        tb.build_variants(changed, owner, ["original"], out, "shadow0", formats=["onnx"])
    finally:
        tb.train_model = tb_train
    assert len(calls) == 1  # trained once for the new key, reused on the second call


def test_corrupt_cache_is_retrained_not_fatal(tmp_path: Path) -> None:
    exp = _experiment().model_copy(update={"train": _experiment().train.model_copy(update={"epochs": 1})})
    owner = _digits_owner()
    tb.build_variants(exp, owner, ["original"], tmp_path, "target", formats=["onnx"])
    (cache,) = (tmp_path / tb.CACHE_DIR).glob("target-original-*.pt")
    cache.write_bytes(b"not a torch file")
    (art,) = tb.build_variants(exp, owner, ["original"], tmp_path, "target", formats=["onnx"])
    assert art.path.is_file()
    assert cache.stat().st_size > 1000


def test_bad_input_gives_one_line_errors(tmp_path: Path) -> None:
    exp, owner = _experiment(), _digits_owner()
    with pytest.raises(HarnessError, match="not a torch format"):
        tb.build_variants(exp, owner, ["original"], tmp_path, "target", formats=["tflite"])
    with pytest.raises(HarnessError, match="only on the TF path"):
        tb.build_variants(exp, owner, ["fp16"], tmp_path, "target")
    flat = OwnerData(owner.x_train.reshape(len(owner.x_train), -1), owner.y_train, owner.x_holdout, owner.y_holdout,
                     owner.x_test, owner.y_test, 10, 0)  # fmt: skip
    with pytest.raises(HarnessError, match="4-D NHWC") as info:
        tb.build_variants(exp, flat, ["original"], tmp_path, "target")
    assert "\n" not in str(info.value)
    assert not os.listdir(tmp_path)  # nothing half-written


def test_zoo_shapes_match_the_keras_topology() -> None:
    for arch in ("cnn-small", "resnet18", "vgg16-bn", "mobilenetv2"):
        m = build_model(arch, (3, 32, 32), 10).eval()
        assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    small = build_model("cnn-small", (1, 28, 28), 10)
    assert [type(l).__name__ for l in small.modules() if isinstance(l, (torch.nn.Conv2d, torch.nn.Linear))] == [
        "Conv2d", "Conv2d", "Linear", "Linear"
    ]  # fmt: skip
    assert small.classifier[1].in_features == 64 * 7 * 7
    vgg = build_model("vgg16-bn", (1, 28, 28), 10).eval()  # 'same' pooling: 28 -> 14 -> 7 -> 4 -> 2 -> 1
    assert vgg.fc.in_features == 512 and vgg(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert sum(isinstance(l, torch.nn.Conv2d) for l in vgg.modules()) == 13
    resnet = build_model("resnet18", (3, 32, 32), 10)
    assert resnet.stem[0].stride == (1, 1) and resnet.stem[0].kernel_size == (3, 3)
    assert sum(p.numel() for p in resnet.parameters()) == pytest.approx(11.17e6, rel=0.01)
