"""The single-file on-device runner against real runtimes: LiteRT, onnxruntime, ExecuTorch, the torch lite
interpreter. Models are tiny and made here (Keras -> TF-Lite; torch -> .onnx/.ptl/.pte)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from devices.errors import DeviceError
from devices.ondevice import compleak_runner as cr
from devices.ondevice import runner_path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def make_tflite_models(out: Path) -> dict[str, Path | np.ndarray]:
    """A tiny Keras CNN on 8x8x1 as float, dynamic-range and full-int8 .tflite, plus queries and Keras outputs.

    Returns paths ``float``/``dynamic``/``int8`` and arrays ``x`` float32 [64, 8, 8, 1], ``keras`` float32 [64, 5].
    """
    import tensorflow as tf

    out.mkdir(parents=True, exist_ok=True)
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential(
        [
            tf.keras.Input((8, 8, 1)),
            tf.keras.layers.Conv2D(8, 3, activation="relu"),
            tf.keras.layers.MaxPooling2D(),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(32, activation="relu"),  # >= 1024 weights: dynamic-range quantizes it
            tf.keras.layers.Dense(5),
        ]
    )
    x = np.random.default_rng(0).random((64, 8, 8, 1), dtype=np.float32)

    def convert(optimize: bool = False, int8: bool = False) -> bytes:
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if optimize:
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if int8:
            conv.representative_dataset = lambda: ([x[i : i + 1]] for i in range(32))
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
        return conv.convert()

    paths = {"float": out / "float.tflite", "dynamic": out / "dynamic.tflite", "int8": out / "int8.tflite"}
    paths["float"].write_bytes(convert())
    paths["dynamic"].write_bytes(convert(optimize=True))
    paths["int8"].write_bytes(convert(optimize=True, int8=True))
    return {**paths, "x": x, "keras": model.predict(x, verbose=0).astype(np.float32)}


@pytest.fixture(scope="module")
def tfl(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_tflite_models(tmp_path_factory.mktemp("tflite"))


@pytest.fixture(scope="module")
def torch_models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny torch CNN (NCHW) exported as .ptl, .onnx (dynamic batch) and .pte (fixed batch 4)."""
    import torch

    warnings.filterwarnings("ignore")
    out = tmp_path_factory.mktemp("torch")
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5)
    ).eval()
    x = torch.rand(4, 1, 8, 8)
    torch.jit.trace(m, x)._save_for_lite_interpreter(str(out / "m.ptl"))
    torch.onnx.export(m, (x,), str(out / "m.onnx"), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False)
    from executorch.exir import to_edge

    (out / "m.pte").write_bytes(to_edge(torch.export.export(m, (x,))).to_executorch().buffer)
    xq = torch.rand(10, 1, 8, 8)
    with torch.no_grad():
        ref = m(xq).numpy()
    return {"dir": out, "x_nhwc": xq.permute(0, 2, 3, 1).numpy().copy(), "ref": ref}


# --------------------------------------------------------------------------- format detection


def test_detect_format_from_content(tfl: dict, torch_models: dict, tmp_path: Path) -> None:
    assert cr.detect_format(tfl["float"]) == "tflite"
    for fmt in ("onnx", "ptl", "pte"):
        renamed = tmp_path / f"model-{fmt}.bin"  # content decides, not the extension
        renamed.write_bytes((torch_models["dir"] / f"m.{fmt}").read_bytes())
        assert cr.detect_format(renamed) == fmt


@pytest.mark.parametrize(
    "content, words",
    [(b"hello, I am a text file\n", "a text file"), (b"", "an empty file"), (b"\x00\x9f\x13" * 20, "unknown binary")],
)
def test_detect_format_rejects_non_models(tmp_path: Path, content: bytes, words: str) -> None:
    bad = tmp_path / "model.tflite"
    bad.write_bytes(content)
    with pytest.raises(DeviceError, match=words) as exc:
        cr.detect_format(bad)
    assert "\n" not in str(exc.value) and "model.tflite" in str(exc.value)


# --------------------------------------------------------------------------- describe / predict


def test_tflite_float_matches_keras_batched_and_looped(tfl: dict) -> None:
    desc = cr.describe(tfl["float"])
    assert desc["format"] == "tflite"
    assert desc["inputs"][0]["shape"] == [-1, 8, 8, 1] and desc["inputs"][0]["layout"] == "NHWC"
    assert desc["outputs"][0]["shape"] == [-1, 5]
    model = cr.load_model(tfl["float"])
    y = model.predict(tfl["x"], batch_size=24)  # 24 + 24 + 16: resized between batches
    assert model.batch_sizes == [24, 24, 16] and len(model.batch_seconds) == 3
    np.testing.assert_allclose(y, tfl["keras"], atol=1e-5)


def test_tflite_int8_quantizes_inputs_and_dequantizes_outputs(tfl: dict) -> None:
    desc = cr.describe(tfl["int8"])
    inp, out = desc["inputs"][0], desc["outputs"][0]
    assert inp["dtype"] == "int8" and out["dtype"] == "int8" and inp["scale"] and out["scale"]
    y = cr.load_model(tfl["int8"]).predict(tfl["x"])
    assert y.dtype == np.float32
    # independent check: drive the interpreter by hand with the artifact's own quantization parameters
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(tfl["int8"]))
    d, o = it.get_input_details()[0], it.get_output_details()[0]
    it.resize_tensor_input(d["index"], [len(tfl["x"]), 8, 8, 1])
    it.allocate_tensors()
    (s_in, z_in), (s_out, z_out) = d["quantization"], o["quantization"]
    it.set_tensor(d["index"], np.clip(np.round(tfl["x"] / s_in + z_in), -128, 127).astype(np.int8))
    it.invoke()
    manual = (it.get_tensor(o["index"]).astype(np.float32) - z_out) * s_out
    np.testing.assert_allclose(y, manual, atol=1e-6)
    assert np.abs(y - tfl["keras"]).max() < 0.25  # quantized, but the same model


@pytest.mark.parametrize("fmt", ["onnx", "ptl", "pte"])
def test_torch_formats_transpose_nhwc_queries(torch_models: dict, fmt: str) -> None:
    path = torch_models["dir"] / f"m.{fmt}"
    desc = cr.describe(path)
    assert desc["inputs"][0]["layout"] == "NCHW"
    model = cr.load_model(path)
    y = model.predict(torch_models["x_nhwc"], batch_size=3)
    np.testing.assert_allclose(y, torch_models["ref"], atol=1e-5)
    if fmt == "pte":  # fixed batch of 4: the last batch of 10 is padded and trimmed
        assert desc["inputs"][0]["shape"][0] == 4 and model.batch_sizes == [3, 3, 3, 1]


def test_wrong_query_shape_is_one_line(tfl: dict) -> None:
    with pytest.raises(DeviceError, match=r"shape \[-1, 8, 8, 1\].*preprocessing") as exc:
        cr.load_model(tfl["float"]).predict(np.zeros((2, 9, 9, 1), np.float32))
    assert "\n" not in str(exc.value)


# --------------------------------------------------------------------------- command line (as on a device)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # run the file by path from a foreign directory with a clean path: exactly as it runs on a device
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, str(runner_path()), *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_runs_batch_and_writes_outputs_timings_runtime(tfl: dict, tmp_path: Path) -> None:
    np.savez(tmp_path / "in.npz", x=tfl["x"])
    res = _cli("--model", str(tfl["float"]), "--inputs", "in.npz", "--out", "out.npz", "--batch-size", "32",
               "--threads", "1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    with np.load(tmp_path / "out.npz", allow_pickle=False) as z:
        np.testing.assert_allclose(z["values"], tfl["keras"], atol=1e-5)
        assert z["batch_sizes"].tolist() == [32, 32] and len(z["batch_seconds"]) == 2
        meta = json.loads(str(z["meta"]))
    assert meta["runtime"] == "ai_edge_litert" and meta["runtime_version"] and meta["threads"] == 1
    assert meta["n"] == 64 and meta["batch_size"] == 32


def test_cli_probe_lists_runtimes(tmp_path: Path) -> None:
    res = _cli("--probe", cwd=tmp_path)
    probe = json.loads(res.stdout)
    assert probe["python"] == ".".join(map(str, sys.version_info[:3]))
    assert probe["runtimes"]["ai_edge_litert"] and probe["runtimes"]["onnxruntime"]
    assert probe["runtimes"]["tflite_runtime"] is None  # not installed here: reported as absent, not guessed


@pytest.mark.parametrize("kind", ["truncated", "text"])
def test_cli_bad_tflite_is_one_line_error(tfl: dict, tmp_path: Path, kind: str) -> None:
    bad = tmp_path / "model.tflite"
    data = Path(tfl["float"]).read_bytes()
    bad.write_bytes(data[: len(data) // 3] if kind == "truncated" else b"not a model at all\n")
    np.savez(tmp_path / "in.npz", x=tfl["x"])
    res = _cli("--model", str(bad), "--inputs", "in.npz", "--out", "out.npz", cwd=tmp_path)
    assert res.returncode == 3
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "model.tflite" in lines[0] and "Traceback" not in res.stderr
    assert ("text file" in lines[0]) if kind == "text" else ("cannot load" in lines[0])
    assert not (tmp_path / "out.npz").exists()
