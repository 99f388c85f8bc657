"""The TF / TF-Lite path: every .tflite of the tiny run, read and executed as a file.

Tolerances (stated here and in docs/configuration.md):
- float32 artifacts (original, prune-S, cluster-K): TF-Lite logits equal the Keras model's within
  atol 1e-4 + rtol 1e-4 (different kernels reorder float sums; nothing else differs) and argmax agrees 100%.
- fp16 weights: argmax agreement >= 98%, logits within 5e-2 absolute.
- int8 (full-integer, dynamic-range, QAT, prune+int8): argmax agreement >= 98% with the Keras model it came from.
Sparsity and cluster counts are read from the weight tensors stored in the .tflite, not from any Keras object.
"""

from __future__ import annotations

import numpy as np
import pytest

from rundir import RunDir

pytestmark = pytest.mark.slow

FP32 = ("original", "prune-0.8", "cluster-8")
INT8 = ("int8", "dynamic-int8", "qat-int8", "prune-0.8+int8")


def _owner_inputs(run: RunDir, role: str, shadow: int | None) -> tuple[np.ndarray, np.ndarray]:
    from harness.config import load_experiment
    from harness.data import load_dataset, query_inputs

    exp = load_experiment(run.experiment)
    ds = load_dataset(exp.data.dataset)
    ids = run.load_splits().query_ids(role, shadow)
    return query_inputs(ds, exp.data.preprocess, ids), ds.y[ids]


def _weights(path) -> list[tuple[str, np.ndarray]]:
    """Constant weight tensors (rank >= 2, i.e. conv/dense kernels) stored in a .tflite file."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    inputs = {d["index"] for d in it.get_input_details()}
    out = []
    for d in it.get_tensor_details():
        name = d["name"]
        if d["index"] in inputs or len(d["shape"]) < 2 or not any(k in name for k in ("Conv2D", "MatMul")):
            continue
        if "Relu" in name or "BiasAdd" in name or name.count(";") > 0:  # activations / fused op outputs
            continue
        try:
            out.append((name, it.get_tensor(d["index"])))
        except ValueError:
            continue
    return out


def test_every_tflite_matches_its_keras_model(tiny_run):
    from devices.ondevice.compleak_runner import detect_format, load_model
    from harness.build.tf_pipeline import load_keras

    run = RunDir(tiny_run)
    manifest = run.load_manifest()
    tf_recs = [a for a in manifest.artifacts if a.framework == "tf"]
    assert {a.variant for a in tf_recs} == set(FP32 + INT8 + ("fp16",))
    assert {a.role for a in tf_recs} == {"target", "shadow"}
    cache: dict = {}
    for rec in tf_recs:
        path = run.artifact_path(rec)
        assert detect_format(str(path)) == "tflite"
        key = (rec.role, rec.shadow)
        if key not in cache:
            cache[key] = _owner_inputs(run, rec.role, rec.shadow)
        x, y = cache[key]
        got = load_model(str(path)).predict(x)
        keras_model = load_keras(run.artifacts_dir / rec.compression["keras_model"])
        want = keras_model.predict(x, verbose=0, batch_size=256)
        assert got.shape == want.shape == (len(x), 10)
        agree = float(np.mean(got.argmax(1) == want.argmax(1)))
        if rec.variant in FP32:
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4, err_msg=rec.id)
            assert agree == 1.0, rec.id
        elif rec.variant == "fp16":
            np.testing.assert_allclose(got, want, atol=5e-2, err_msg=rec.id)
            assert agree >= 0.98, rec.id
        else:
            assert agree >= 0.98, f"{rec.id}: argmax agreement {agree:.3f} < 0.98"
        # host accuracy in the manifest is the artifact's own accuracy on the owner's members / non-members
        n_in = len(run.load_splits().members(rec.role, rec.shadow))
        assert rec.host_accuracy["train"] == pytest.approx(float(np.mean(got[:n_in].argmax(1) == y[:n_in])), abs=1e-6)
        assert rec.host_accuracy["test"] == pytest.approx(float(np.mean(got[n_in:].argmax(1) == y[n_in:])), abs=1e-6)


def test_pruned_tflite_has_configured_sparsity(tiny_run):
    run = RunDir(tiny_run)
    for rec in run.load_manifest().artifacts:
        if rec.framework != "tf" or not rec.variant.startswith("prune-"):
            continue
        weights = _weights(run.artifact_path(rec))
        assert len(weights) == 4, [n for n, _ in weights]  # conv1, conv2, fc1, logits kernels
        for name, w in weights:
            zeros = float(np.mean(w == 0))
            assert zeros >= 0.8 - 0.005, f"{rec.id} {name}: sparsity {zeros:.3f} < 0.8"
    # the unpruned original is dense, so the check above can fail
    original = run.load_manifest().by_id("tf-target-original.tflite")
    assert all(np.mean(w == 0) < 0.05 for _, w in _weights(run.artifact_path(original)))


def test_clustered_tflite_has_at_most_k_values_per_tensor(tiny_run):
    run = RunDir(tiny_run)
    recs = [a for a in run.load_manifest().artifacts if a.framework == "tf" and a.variant == "cluster-8"]
    assert len(recs) == 2
    for rec in recs:
        weights = _weights(run.artifact_path(rec))
        assert len(weights) == 4
        for name, w in weights:
            assert len(np.unique(w)) <= 8, f"{rec.id} {name}: {len(np.unique(w))} unique values > 8"
    original = run.load_manifest().by_id("tf-target-original.tflite")
    assert all(len(np.unique(w)) > 8 for _, w in _weights(run.artifact_path(original)))


def test_manifest_records_tensor_specs_quantization_and_op_versions(tiny_run):
    run = RunDir(tiny_run)
    m = run.load_manifest()
    for rec in (a for a in m.artifacts if a.framework == "tf"):
        assert rec.inputs[0].shape == [-1, 8, 8, 1] and rec.inputs[0].dtype == "float32"
        assert rec.inputs[0].layout == "NHWC"
        assert rec.outputs[0].shape == [-1, 10]
        ops = rec.toolchain["tflite_op_versions"]
        assert "CONV_2D" in ops and "FULLY_CONNECTED" in ops
        assert rec.toolchain["tensorflow"] and rec.toolchain["tensorflow_model_optimization"]
        assert rec.toolchain["host_runtime"]["name"]
        assert len(rec.build_key) == 64
    full = m.by_id("tf-target-int8.tflite")
    assert "QUANTIZE" in full.toolchain["tflite_op_versions"] and full.compression["representative_samples"] == 100
    assert full.compression["quantization"] == "int8" and full.compression["io"] == "float32"
    fp32 = m.by_id("tf-target-original.tflite")
    assert "QUANTIZE" not in fp32.toolchain["tflite_op_versions"]
    assert fp32.bytes > 2.5 * full.bytes  # int8 weights are a quarter of the float ones


def test_zoo_topologies():
    from harness.build.tf_pipeline import build_model

    m = build_model("cnn-small", (28, 28, 1), 10)
    assert [layer.__class__.__name__ for layer in m.layers] == [
        "InputLayer", "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense"
    ]  # fmt: skip
    assert m.count_params() == 320 + 18496 + (7 * 7 * 64 * 128 + 128) + 1290
    r = build_model("resnet18", (32, 32, 3), 10)
    assert r.count_params() == pytest.approx(11.18e6, rel=0.01)  # CIFAR ResNet-18 incl. BN statistics
    assert r.layers[1].strides == (1, 1) and not any("MaxPool" in layer.__class__.__name__ for layer in r.layers)
    v = build_model("vgg16-bn", (32, 32, 3), 10)
    assert sum(layer.__class__.__name__ == "Conv2D" for layer in v.layers) == 13
    assert sum(layer.__class__.__name__ == "BatchNormalization" for layer in v.layers) == 13
    mb = build_model("mobilenetv2", (32, 32, 3), 100)
    assert mb.layers[1].strides == (1, 1) and mb.output_shape == (None, 100)
    assert sum(layer.__class__.__name__ == "DepthwiseConv2D" for layer in mb.layers) == 17
    for model in (r, v, mb):
        assert tuple(model(np.zeros((2, 32, 32, 3), np.float32)).shape) == (2, model.output_shape[-1])
    assert build_model("vgg16-bn", (28, 28, 1), 10).output_shape == (None, 10)  # 'same' pooling: 28 -> 1
    with pytest.raises(Exception, match="allowed"):
        build_model("lenet", (28, 28, 1), 10)


def test_rerun_builds_from_the_model_cache_without_training(tiny_run, tmp_path, monkeypatch):
    """A fresh process finds the trained, fine-tuned and QAT models by content hash and converts them again."""
    import shutil

    import harness.build.tf_pipeline as tb
    from devices.ondevice.compleak_runner import load_model
    from harness.config import load_experiment
    from harness.data import load_dataset, owner_data

    run = RunDir(tiny_run)
    exp = load_experiment(run.experiment)
    ds = load_dataset(exp.data.dataset)
    owner = owner_data(ds, run.load_splits(), exp.data.preprocess, "target", None, exp.splits.holdout_fraction,
                       exp.owner_seed("target", None))  # fmt: skip
    shutil.copytree(run.artifacts_dir / tb.CACHE_DIR, tmp_path / tb.CACHE_DIR)

    def no_training(*a, **k):
        raise AssertionError("trained although a cached model exists")

    monkeypatch.setattr(tb, "train_model", no_training)
    monkeypatch.setattr(tb, "apply_step", no_training)
    variants = ["original", "cluster-8", "qat-int8", "prune-0.8+int8"]
    built = tb.build_variants(exp, owner, variants, tmp_path, "target")
    assert [b.variant for b in built] == variants
    x, _ = _owner_inputs(run, "target", None)
    for b in built:
        ref = run.artifacts_dir / b.path.name
        np.testing.assert_allclose(load_model(str(b.path)).predict(x), load_model(str(ref)).predict(x), atol=1e-5)
