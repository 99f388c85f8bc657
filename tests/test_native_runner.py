"""The native runner (issue 14): ``compleak-runner`` built from devices/native/ against the installed wheels.

The bundle builds; on ``local`` it gives the same outputs as the Python runner for every ``.tflite`` and ``.pte``
of the tiny run (bit-identical); its provenance says what ran; garbage on its stdin gets one-line errors and never
a crash. The bundle is built once into the tool's cache (``compleak runners build`` reuses it while the sources and
wheels are unchanged).

Hostile input (issue 26): corrupt models (a truncated or byte-flipped ``.tflite``, a ``.pte`` of random bytes or
truncated), a request header nested 100,000 deep, a ``.tflite`` whose batch cannot be resized, a model that fails
while running and a tampered bundle each get one error line naming the problem (in server mode and through
``compleak collect --runner native``), and the runner keeps serving the next request.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hostile_fixtures import TreeState, cli, cli_refuses, copy_run

from devices.errors import DeviceError
from devices.local import LocalDevice
from devices.native.bundle import (
    BINARY,
    RUNTIME_OF_FORMAT,
    SOURCE_DIR,
    BundleError,
    build_bundle,
    find_bundle,
    launch_argv,
    read_bundle_manifest,
)
from devices.ondevice import compleak_runner as cr
from devices.runners.native import NativeRunner, NativeRunnerServer
from devices.runners.python import PythonRunner
from devices.runners.server import RunnerRefusal, RunnerServerPool
from rundir import RunDir

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None,
                                reason="needs cmake and a C++ compiler (scripts/setup.sh --test installs them)")


@pytest.fixture(scope="module")
def bundle() -> Path:
    return build_bundle(jobs=2)


def _frame(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return len(body).to_bytes(4, "big") + body


def _replies(data: bytes) -> list[dict]:
    """The framed messages in ``data`` (headers only; a payload follows a header that has ``bytes``)."""
    out, pos = [], 0
    while pos + 4 <= len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        header = json.loads(data[pos + 4:pos + 4 + n])
        out.append(header)
        pos += 4 + n + int(header.get("bytes") or 0)
    assert pos == len(data), "trailing bytes after the last message"
    return out


def _talk(bundle: Path, stdin: bytes) -> tuple[int, list[dict], str]:
    res = subprocess.run([str(bundle / BINARY), "--serve"], input=stdin, capture_output=True, timeout=120)
    return res.returncode, _replies(res.stdout), res.stderr.decode(errors="replace")


def test_bundle_is_self_contained(bundle: Path) -> None:
    manifest = read_bundle_manifest(bundle)
    assert manifest["arch"] in ("amd64", "arm64") and manifest["protocol"] == cr.PROTOCOL
    assert set(manifest["formats"]) == {"tflite", "pte"}
    assert manifest["runtimes"]["executorch"] and manifest["runtimes"]["litert"]
    assert {"bin/compleak-runner", "lib/libLiteRt.so", "lib/libcompleak_executorch.so",
            "lib/libexecutorch.so"} <= set(manifest["files"])
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((bundle / rel).read_bytes()).hexdigest() == digest, rel
    assert find_bundle(manifest["arch"]) == bundle  # found again without building
    dynamic = subprocess.run(["readelf", "-d", str(bundle / BINARY)], capture_output=True, text=True).stdout
    assert "$ORIGIN/../lib" in dynamic and "libexecutorch" not in dynamic  # runtimes are dlopen'd from lib/
    with tarfile.open(bundle.parent / f"compleak-runner-linux-{manifest['arch']}.tar.gz") as tar:
        assert "compleak-runner/bin/compleak-runner" in tar.getnames()
    # a copy elsewhere runs: nothing points back at the wheels (the binary finds lib/ beside it)
    probe = json.loads(subprocess.run([str(bundle / BINARY), "--probe"], capture_output=True, text=True,
                                      env={"PATH": "/usr/bin:/bin"}, timeout=60).stdout)
    assert probe["runner"] == "native" and probe["errors"] == {}
    assert probe["runtimes"] == manifest["runtimes"] and sorted(probe["formats"]) == ["pte", "tflite"]
    # as a device starts it: through the bundled loader, told where its files are (/proc/self/exe names the loader)
    assert manifest["loader"] == "bundled" and manifest["loader_file"] in manifest["files"]
    via = subprocess.run([*launch_argv(str(bundle), manifest), "--probe"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert json.loads(via.stdout) == probe, via.stderr


def test_native_and_python_runners_agree_on_every_format(bundle: Path, tiny_run: Path, tmp_path: Path) -> None:
    rd = RunDir(tiny_run)
    records = [r for r in rd.load_manifest().artifacts if r.format in ("tflite", "pte")]
    assert {r.format for r in records} == {"tflite", "pte"}
    assert any(r.format == "tflite" and "int8" in r.variant for r in records)  # quantized ones too
    x = np.random.default_rng(3).random((70, *records[0].inputs[0].shape[1:]), dtype=np.float32)
    dev = LocalDevice()
    dev.base_dir = str(tmp_path / "base")
    with RunnerServerPool(dev) as pool, RunnerServerPool(dev) as py_pool:  # one process each for all artifacts
        for rec in records:
            path = rd.root / rec.path
            with NativeRunner(bundle, rec.format, batch_size=16, threads=1, pool=pool).session(dev, path, rec) as infer:
                first, prov = infer(x[:50])
                second, prov2 = infer(x[50:])
            native = np.concatenate([first, second])
            runtime = "ai_edge_litert" if rec.format == "tflite" else "executorch"
            py = PythonRunner([sys.executable], runtime, "x", batch_size=16, threads=1, pool=py_pool)
            with py.session(dev, path, rec) as infer:
                python, _ = infer(x)
            assert native.dtype == np.float32 and native.shape == python.shape == (70, 10)
            assert np.array_equal(native, python), f"{rec.id}: max |diff| {np.abs(native - python).max()}"
            assert prov["runner"] == "native" and prov["runtime"] == ("litert" if rec.format == "tflite"
                                                                      else "executorch")
            assert prov["runtime_version"] == read_bundle_manifest(bundle)["runtimes"][prov["runtime"]]
            assert prov["delegate"] and prov["threads"] == 1 and prov["load_seconds"] > 0
            assert prov["invoke_seconds"] > 0 and prov["batch_sizes"] == [16, 16, 16, 2]
            assert prov["device_python"] is None and prov["native_runner_version"]
            assert prov2["batch_sizes"] == [16, 4] and prov2["load_seconds"] == 0.0
        servers = {id(s) for s in pool._servers.values()}
        assert len(servers) == 1  # one native process answered every artifact


def test_garbage_gets_one_line_errors_and_no_crash(bundle: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"\x08\x07\x12\x04test")
    requests = b"".join([
        _frame({"op": "infer", "shape": [1, 2, 2, 1], "bytes": 16}) + b"\0" * 16,  # before any load
        _frame({"op": "fly"}),
        _frame({"op": "load", "model": str(text)}),
        _frame({"op": "load", "model": str(onnx)}),
        _frame({"op": "load", "model": str(tmp_path / "missing.pte")}),
        _frame({"op": "load"}),
        _frame({"op": "load", "model": str(text), "threads": "many"}),
        _frame({"op": "infer", "shape": "big", "bytes": 8}) + b"\1" * 8,  # refused, payload skipped: in step
        _frame([1, 2, 3]),  # not an object: out of step, the runner says so and stops
        _frame({"op": "fly"}),  # never read
    ])
    rc, replies, stderr = _talk(bundle, requests)
    assert rc == 3, stderr
    hello, *answers = replies
    assert hello["hello"] == "compleak-runner" and hello["runner"] == "native"
    assert hello["ops"] == ["load", "infer", "dataset", "exit"] and hello["protocol"] == cr.PROTOCOL
    assert [a["ok"] for a in answers] == [False] * 9
    errors = [a["error"] for a in answers]
    assert all("\n" not in e and len(e) <= 300 for e in errors)
    assert "infer before load" in errors[0] and "unknown request" in errors[1]
    assert "not a TF-Lite or ExecuTorch model" in errors[2] and "--runner python" in errors[3]
    assert "cannot read model file" in errors[4] and "names no model" in errors[5] and "not an integer" in errors[6]
    assert "infer before load" in errors[7] and "header instead of an object" in errors[8]
    for junk in (b"\xff\xff\xff\xff" + b"x" * 64, b"\0\0\0\x05{{{{{", b"\0\0", _frame("[" * 100_000),
                 _frame({"op": "infer", "bytes": -1}), b"\0\0\0\x1a" + b'{"op":"load","model":"\xff"}'):
        rc, replies, stderr = _talk(bundle, junk)
        assert rc in (0, 3), (junk[:20], rc, stderr[-300:])  # an exit status, never a signal
        assert replies[0]["hello"] == "compleak-runner"
        assert all(not r["ok"] and "\n" not in r["error"] for r in replies[1:])


def test_nan_outputs_and_bad_shapes_are_refused(bundle: Path, tiny_run: Path, tmp_path: Path) -> None:
    rd = RunDir(tiny_run)
    rec = next(r for r in rd.load_manifest().artifacts if r.format == "tflite" and r.variant == "original")
    x = np.full((3, 8, 8, 1), np.nan, np.float32)
    dev = LocalDevice()
    dev.base_dir = str(tmp_path / "base")
    with NativeRunner(bundle, "tflite").session(dev, rd.root / rec.path, rec) as infer:
        with pytest.raises(DeviceError, match="NaN/Inf outputs for 3 queries"):
            infer(x)
        with pytest.raises(DeviceError, match=r"has shape \[-1, 8, 8, 1\] but queries have shape \[3, 9, 9, 1\]"):
            infer(np.zeros((3, 9, 9, 1), np.float32))
        values, _ = infer(np.zeros((2, 8, 8, 1), np.float32))  # still serving
        assert values.shape == (2, 10)


def test_a_bundle_without_a_runtime_says_which_and_how_to_fix(bundle: Path, tmp_path: Path, tiny_run: Path) -> None:
    partial = tmp_path / "bundle"
    shutil.copytree(bundle, partial)
    (partial / "lib" / "libcompleak_executorch.so").unlink()
    pte = next(p for p in (tiny_run / "artifacts").glob("*.pte"))
    rc, replies, _ = _talk(partial, _frame({"op": "exit"}))  # a listed file gone: refused at start, named
    assert rc == 3 and len(replies) == 1 and "lib/libcompleak_executorch.so cannot be read" in replies[0]["error"]
    manifest = json.loads((partial / "manifest.json").read_text())  # a bundle built without the executorch wheel
    del manifest["files"]["lib/libcompleak_executorch.so"]
    (partial / "manifest.json").write_text(json.dumps(manifest))
    rc, replies, _ = _talk(partial, _frame({"op": "load", "model": str(pte)}) + _frame({"op": "exit"}))
    assert rc == 0 and replies[0]["formats"] == ["tflite"] and replies[0]["runtimes"]["executorch"] is None
    assert "ExecuTorch runtime is not available here" in replies[1]["error"]
    assert "pip install executorch" in replies[1]["error"]
    with pytest.raises(BundleError, match="not a compleak-runner bundle"):
        NativeRunnerServer(LocalDevice(), tmp_path)


def test_dataset_rows_give_the_float32_outputs(bundle: Path, tiny_run: Path, tmp_path: Path) -> None:
    from devices.runners.server import DatasetRows, DeviceDataset, RunnerRefusal

    rd = RunDir(tiny_run)
    recs = [r for r in rd.load_manifest().artifacts if r.variant in ("original", "int8") and r.role == "target"
            and r.format in ("tflite", "pte")]
    raw = np.random.default_rng(5).integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    ds = DeviceDataset(raw, scale=1 / 255, mean=(0.1307,), std=(0.3081,))
    rows = np.array([3, 0, 39, 7, 7, 12], np.int64)
    dev = LocalDevice()
    dev.base_dir = str(tmp_path / "base")
    with NativeRunnerServer(dev, bundle) as server:
        server.ready()
        assert server.supports("dataset") and server.max_dataset_bytes == 1 << 30
        assert server.send_dataset(ds, 60) == raw.nbytes and server.send_dataset(ds, 60) == 0  # held: not resent
        for rec in recs:
            server.load(rd.root / rec.path, rec.format, "litert" if rec.format == "tflite" else "executorch")
            by_rows, reply = server.infer_rows(DatasetRows(ds, rows), 4, 60)
            as_float, _ = server.infer(ds.inputs(rows), 4, 60)
            assert np.array_equal(by_rows, as_float), rec.id
            assert reply["batch_sizes"] == [4, 2] and reply["meta"]["runner"] == "native"
        bad = DeviceDataset(raw[:2], scale=1.0)
        object.__setattr__(bad, "key", "0" * 64)  # a key that is not the payload's sha256
        with pytest.raises(RunnerRefusal, match="corrupted in transit"):
            server.send_dataset(bad, 60)
        with pytest.raises(DeviceError, match="does not hold"):  # the refused one replaced the held one
            server.infer_rows(DatasetRows(ds, rows), 4, 60)


def test_collect_runner_option_native_equals_python(bundle: Path, tiny_run: Path, tmp_path: Path) -> None:
    """``compleak collect --runner native`` on local: every query answered by compleak-runner, outputs equal to
    ``--runner python``'s bit for bit; a bad ``--runner`` is one line before anything runs."""
    from hostile_fixtures import assert_one_line_error, cli, copy_run

    records = RunDir(tiny_run).load_manifest().artifacts
    ids = [next(r.id for r in records if r.format == f and r.role == "target") for f in ("tflite", "pte")]
    ids.append(next(r.id for r in records if r.format == "tflite" and r.variant == "int8" and r.role == "target"))
    outs = {}
    for kind in ("native", "python"):
        run = copy_run(tiny_run, tmp_path / kind)
        shutil.rmtree(run / "outputs", ignore_errors=True)
        res = cli(["collect", str(run), "--artifacts", ",".join(ids), "--runner", kind, "--bundle", str(bundle),
                   "--perturbations", "0"])
        assert res.exit_code == 0, res.output
        rd = RunDir(run)
        for aid in ids:
            prov = json.loads(rd.output_provenance("local", aid).read_text())
            assert prov["runner"] == kind, prov
        outs[kind] = {aid: rd.load_outputs("local", aid) for aid in ids}
    for aid in ids:
        a, b = outs["native"][aid], outs["python"][aid]
        assert np.array_equal(a.index, b.index) and np.array_equal(a.values, b.values), aid
    bad = cli(["collect", str(tmp_path / "native"), "--runner", "nativ"])
    assert_one_line_error(bad, "--runner", "auto, python, native")


def test_old_bundles_are_pruned_but_current_and_builds_in_progress_stay(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A build keeps the KEEP_BUNDLES newest bundles per architecture (several venvs may share one cache); the one
    current.json names and a half-built folder of a running build are never removed."""
    from devices.native.bundle import BUNDLE_NAME, prune_bundles, runners_cache

    monkeypatch.setenv("COMPLEAK_CACHE_DIR", str(tmp_path / "cache"))
    base = runners_cache() / "arm64"
    keys = [f"{i:016x}" for i in range(5)]  # keys[0] oldest
    for i, key in enumerate(keys):
        manifest = base / key / BUNDLE_NAME / "manifest.json"
        manifest.parent.mkdir(parents=True)
        manifest.write_text("{}")
        os.utime(manifest, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
        (base / f"build-{key}.log").write_text("log")
    (base / "current.json").write_text(json.dumps({"key": keys[0]}))  # the oldest is still the current one
    (base / ".build-0123456789abcdef-x").mkdir()  # a build in progress
    (base / "not-a-key").mkdir()
    removed = prune_bundles("arm64", keep=3)
    assert removed == [base / keys[1]]
    left = sorted(p.name for p in base.iterdir())
    assert left == sorted([".build-0123456789abcdef-x", "not-a-key", "current.json", keys[0], keys[2], keys[3],
                           keys[4], *(f"build-{k}.log" for k in (keys[0], keys[2], keys[3], keys[4]))])
    assert prune_bundles("arm64", keep=3) == [] and prune_bundles("amd64") == []  # nothing more; no such folder


# --------------------------------------------------------------------------- hostile input (issue 26)


X = np.random.default_rng(7).random((3, 8, 8, 1), dtype=np.float32)


def _raw_frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def _flip_tensor_table(data: bytes) -> bytes:
    """16 bytes inverted in the middle of the model's tables: over subgraph 0's tensors[5] (found with the wheel's
    own schema module), so its vtable offset points nowhere (this crashed LiteRT before the verifier)."""
    from ai_edge_litert import schema_py_generated as schema

    at = schema.Model.GetRootAs(data, 0).Subgraphs(0).Tensors(5)._tab.Pos
    out = bytearray(data)
    for i in range(at, at + 16):
        out[i] ^= 0xFF
    return bytes(out)


def _random_program(data: bytes) -> bytes:
    """A real .pte's 8-byte header (so the runner sees an ExecuTorch program) followed by random bytes."""
    return data[:8] + np.random.default_rng(11).bytes(len(data) - 8)


#: case: (artifact of the tiny run it is made from and replaces, how, what the one error line says)
HOSTILE_MODELS: dict[str, tuple[str, Callable[[bytes], bytes], str]] = {
    "truncated-tflite": ("tf-target-original.tflite", lambda d: d[: len(d) // 2], "not a valid TF-Lite model"),
    "byte-flipped-tflite": ("tf-target-original.tflite", _flip_tensor_table, "not a valid TF-Lite model"),
    "random-bytes-pte": ("torch-target-original.pte", _random_program, "not a valid ExecuTorch program"),
    "truncated-pte": ("torch-target-original.pte", lambda d: d[: len(d) // 2], "not a valid ExecuTorch program"),
}


def _plant(run: Path, aid: str, data: bytes) -> None:
    """Make ``data`` the artifact ``aid`` of ``run``, its sha256 and size recorded (a run built with it)."""
    (run / "artifacts" / aid).write_bytes(data)
    manifest = json.loads((run / "manifest.json").read_text())
    for art in manifest["artifacts"]:
        if art["id"] == aid:
            art["sha256"], art["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (run / "manifest.json").write_text(json.dumps(manifest))


def _server(tmp_path: Path, bundle: Path) -> NativeRunnerServer:
    dev = LocalDevice()
    dev.base_dir = str(tmp_path / "base")
    return NativeRunnerServer(dev, bundle)


def _collect(run: Path, aid: str, bundle: Path, runner: str = "native") -> list[str]:
    return ["collect", str(run), "--artifacts", aid, "--runner", runner, "--bundle", str(bundle),
            "--perturbations", "0"]


@pytest.mark.parametrize("case", list(HOSTILE_MODELS))
def test_corrupt_models_are_refused_in_one_line_and_the_runner_keeps_serving(bundle: Path, tiny_run: Path,
                                                                             tmp_path: Path, case: str) -> None:
    """Verified before the runtime sees them (TF-Lite flatbuffer verifier; ExecuTorch InternalConsistency): one
    error line naming the file, no model left loaded, and the same process serves the next model."""
    aid, make, expect = HOSTILE_MODELS[case]
    rd = RunDir(tiny_run)
    rec, good = rd.load_manifest().by_id(aid), rd.load_manifest().by_id("tf-target-int8.tflite")
    bad = tmp_path / f"bad.{rec.format}"
    bad.write_bytes(make((rd.root / rec.path).read_bytes()))
    with _server(tmp_path, bundle) as server:
        proc = server.ready()
        with pytest.raises(RunnerRefusal) as exc:
            server.load(bad, rec.format, RUNTIME_OF_FORMAT[rec.format])
        msg = str(exc.value)
        assert "\n" not in msg and expect in msg and "model-1." in msg and "truncated or corrupt" in msg, msg
        with pytest.raises(RunnerRefusal, match=r"infer before load \(no model loaded\)"):
            server.infer(X, 4, 60)
        server.load(rd.root / good.path, "tflite", "litert")
        values, reply = server.infer(X, 4, 60)
        assert values.shape == (3, 10) and reply["batch_sizes"] == [3]
        assert server.alive and server.process is proc  # one process throughout: nothing crashed


@pytest.mark.parametrize("case", list(HOSTILE_MODELS))
def test_corrupt_models_through_collect_are_one_error_line(bundle: Path, tiny_run: Path, tmp_path: Path,
                                                           case: str) -> None:
    aid, make, expect = HOSTILE_MODELS[case]
    run = copy_run(tiny_run, tmp_path / "run")
    _plant(run, aid, make((tiny_run / "artifacts" / aid).read_bytes()))
    with TreeState(run):  # nothing stored, nothing half-written
        cli_refuses(_collect(run, aid, bundle), aid, expect, "truncated or corrupt")


def test_a_header_nested_100000_deep_is_refused_in_step(bundle: Path, tiny_run: Path, tmp_path: Path) -> None:
    """Depth is bounded while parsing (32 levels): the header is refused in one line, its payload skipped, and the
    next requests are served; a manifest.json nested as deep is refused by the host and by the runner."""
    deep = b'{"op": "load", "model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    deep_op = b'{"op": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # the op itself: quoted in "unknown request"
    deep_with_payload = b'{"op": "infer", "bytes": 16, "x": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}"
    good = tiny_run / "artifacts" / "tf-target-int8.tflite"
    requests = b"".join([
        _raw_frame(deep), _raw_frame(deep_op), _raw_frame(deep_with_payload) + b"\1" * 16,
        _frame({"op": "load", "model": str(good)}),
        _frame({"op": "infer", "shape": [3, 8, 8, 1], "bytes": X.nbytes}) + X.tobytes(),
        _frame({"op": "exit"}),
    ])
    rc, replies, stderr = _talk(bundle, requests)
    assert rc == 0, stderr[-500:]
    hello, *answers = replies
    assert [a["ok"] for a in answers] == [False, False, False, True, True]
    for a in answers[:3]:
        assert a["error"] == "protocol error: a request header nested deeper than 32 levels"
    assert answers[4]["shape"] == [3, 10]
    # through the CLI: the deep JSON the host hands the runner is the bundle's manifest.json
    deep_bundle = tmp_path / "deep-bundle"
    shutil.copytree(bundle, deep_bundle)
    (deep_bundle / "manifest.json").write_bytes(b'{"files": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    run = copy_run(tiny_run, tmp_path / "run")
    with TreeState(run):
        cli_refuses(_collect(run, "tf-target-original.tflite", deep_bundle), str(deep_bundle),
                    "not a compleak-runner bundle")
    rc, replies, _ = _talk(deep_bundle, _frame({"op": "exit"}))
    assert rc == 3 and len(replies) == 1 and "manifest.json is not a bundle manifest" in replies[0]["error"]


_TF_MODELS = r'''
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf
out = sys.argv[1]
rng = np.random.default_rng(0)

class FixedBatch(tf.Module):  # what Keras 3 makes of Flatten in a model with a batch of 1: a Reshape to [1, 256]
    def __init__(self):
        self.k = tf.constant(rng.normal(size=(3, 3, 1, 4)).astype(np.float32))
        self.w = tf.constant((rng.normal(size=(256, 10)) * 0.1).astype(np.float32))
    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 1], tf.float32)])
    def __call__(self, x):
        return tf.matmul(tf.reshape(tf.nn.relu(tf.nn.conv2d(x, self.k, 1, "SAME")), [1, 256]), self.w)
f = FixedBatch()
conv = tf.lite.TFLiteConverter.from_concrete_functions([f.__call__.get_concrete_function()], f)
open(os.path.join(out, "fixed-batch.tflite"), "wb").write(conv.convert())

class Gather(tf.Module):  # row x[:, 4, 4, 0] * 100 of a 4-row table: runs on zeros, fails on most images
    def __init__(self):
        self.table = tf.constant(np.arange(40, dtype=np.float32).reshape(4, 10))
    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32)])
    def __call__(self, x):
        return tf.gather(self.table, tf.cast(x[:, 4, 4, 0] * 100.0, tf.int32))
g = Gather()
conv = tf.lite.TFLiteConverter.from_concrete_functions([g.__call__.get_concrete_function()], g)
open(os.path.join(out, "gather.tflite"), "wb").write(conv.convert())
'''


@pytest.fixture(scope="module")
def tf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two .tflite models (8x8x1 in, 10 out) built with TensorFlow in a subprocess: ``fixed-batch`` (a batch of 1
    and a Reshape to [1, 256], as Keras 3 converts Flatten in such a model: its input resizes, its Reshape does not;
    written as a tf.Module so it does not depend on the Keras version) and ``gather`` (runs on zeros, fails with an
    out-of-range index on most digits)."""
    pytest.importorskip("tensorflow")
    out = tmp_path_factory.mktemp("tf_models")
    res = subprocess.run([sys.executable, "-c", _TF_MODELS, str(out)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    return {name: out / f"{name}.tflite" for name in ("fixed-batch", "gather")}


def test_a_tflite_whose_batch_cannot_be_resized_runs_one_query_at_a_time(bundle: Path, tf_models: dict[str, Path],
                                                                         tiny_run: Path, tmp_path: Path) -> None:
    """Its input takes a batch of 8 but its output stays [1, 10]: the runner sees the output not following the
    batch before running it and runs one query at a time (outputs bit-identical to LiteRT's interpreter fed one
    query at a time), and the next infer is served (it used to answer "LiteRT produced 10 output values for 8
    queries" and crash on the next infer)."""
    from ai_edge_litert.interpreter import Interpreter

    path, aid = tf_models["fixed-batch"], "tf-target-original.tflite"
    x = np.random.default_rng(3).random((20, 8, 8, 1), dtype=np.float32)
    with _server(tmp_path, bundle) as server:
        proc = server.ready()
        server.load(path, "tflite", "litert")
        first, _ = server.infer(x, 8, 60)
        second, reply = server.infer(x, 8, 60)
        assert server.alive and server.process is proc
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    one_by_one = []
    for row in x:
        interp.set_tensor(interp.get_input_details()[0]["index"], row[None])
        interp.invoke()
        one_by_one.append(interp.get_tensor(interp.get_output_details()[0]["index"]).copy())
    assert np.array_equal(first, np.concatenate(one_by_one)) and np.array_equal(second, first)
    assert reply["batch_sizes"] == [1] * 20
    # through the CLI: collected, every query answered one at a time
    run = copy_run(tiny_run, tmp_path / "run")
    shutil.rmtree(run / "outputs", ignore_errors=True)
    _plant(run, aid, path.read_bytes())
    res = cli(_collect(run, aid, bundle))
    assert res.exit_code == 0, res.output
    rd = RunDir(run)
    values = rd.load_outputs("local", aid).values
    prov = json.loads(rd.output_provenance("local", aid).read_text())
    assert values.shape == (600, 10) and np.isfinite(values).all() and prov["runner"] == "native"
    # the Python runner too: the resize is accepted but the output keeps one row, so it falls back to one query at a
    # time (it used to fail with "Cannot set tensor: Dimension mismatch")
    from devices.ondevice.compleak_runner import load_model

    assert np.array_equal(load_model(str(path), "ai_edge_litert").predict(x, batch_size=8), first)


def test_a_model_that_fails_while_running_is_dropped_and_the_runner_keeps_serving(
        bundle: Path, tf_models: dict[str, Path], tiny_run: Path, tmp_path: Path) -> None:
    """The runtime fails mid-infer (an out-of-range gather index): one error line, the model is dropped, the next
    infer gets "no model loaded" (never a model in an unknown state), and the same process loads the next one."""
    path, good = tf_models["gather"], tiny_run / "artifacts" / "tf-target-int8.tflite"
    zeros = np.zeros((4, 8, 8, 1), np.float32)
    bad = zeros.copy()
    bad[1, 4, 4, 0] = 0.9  # row 90 of 4
    with _server(tmp_path, bundle) as server:
        proc = server.ready()
        server.load(path, "tflite", "litert", key="gather")
        values, _ = server.infer(zeros, 4, 60)
        assert values.shape == (4, 10)
        with pytest.raises(RunnerRefusal) as exc:
            server.infer(bad, 4, 60)
        msg = str(exc.value)
        assert "\n" not in msg and "LiteRT invoke failed" in msg and "the model was dropped" in msg, msg
        with pytest.raises(RunnerRefusal, match="no model loaded: the last one was dropped after it failed"):
            server.infer(zeros, 4, 60)
        assert "reused" not in server.load(path, "tflite", "litert", key="gather")  # sent again, not assumed held
        server.load(good, "tflite", "litert")
        values, _ = server.infer(zeros, 4, 60)
        assert values.shape == (4, 10) and server.alive and server.process is proc
    run = copy_run(tiny_run, tmp_path / "run")
    _plant(run, "tf-target-original.tflite", path.read_bytes())
    with TreeState(run):
        cli_refuses(_collect(run, "tf-target-original.tflite", bundle), "tf-target-original.tflite",
                    "LiteRT invoke failed", "the model was dropped")


def _tampered(bundle: Path, dest: Path, rel: str) -> Path:
    """A copy of ``bundle`` with one byte of ``rel`` changed (in the binary: a character of its .comment section,
    so it still runs and can refuse itself)."""
    shutil.copytree(bundle, dest)
    data = bytearray((dest / rel).read_bytes())
    at = data.index(b"GCC: ") + 5 if rel == BINARY else len(data) // 2
    data[at] ^= 0x01
    (dest / rel).write_bytes(bytes(data))
    return dest


@pytest.mark.parametrize("rel", ["lib/libLiteRt.so", "lib/libexecutorch.so", BINARY])
def test_a_tampered_bundle_is_refused_at_push_and_at_start(bundle: Path, tiny_run: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, rel: str) -> None:
    """The manifest's sha256 list is checked by the host before it pushes anything and by the runner itself before
    its hello (so a file damaged on the way or on the device is refused there): one line naming the file."""
    bad = _tampered(bundle, tmp_path / "bundle", rel)
    with _server(tmp_path, bad) as server:  # at push
        with pytest.raises(BundleError) as exc:
            server.ready()
    msg = str(exc.value)
    assert "\n" not in msg and f"{rel} does not match its sha256 in manifest.json" in msg, msg
    rc, replies, _ = _talk(bad, _frame({"op": "exit"}))  # at start, run in place
    assert rc == 3 and len(replies) == 1 and not replies[0]["ok"]
    assert f"{rel} does not match its sha256 in manifest.json" in replies[0]["error"]
    run = copy_run(tiny_run, tmp_path / "run")
    with TreeState(run):
        cli_refuses(_collect(run, "tf-target-original.tflite", bad), rel, "sha256", "compleak runners build")
    # at start on the device: a file changed after the host's check (skipped here) is refused by the runner there
    monkeypatch.setattr("devices.runners.native.check_bundle_files", lambda *_: None)
    with _server(tmp_path, bad) as server:
        with pytest.raises(BundleError, match="the native runner refused to start") as exc:
            server.ready()
    assert "\n" not in str(exc.value) and rel in str(exc.value)
    with TreeState(run):
        cli_refuses(_collect(run, "tf-target-original.tflite", bad), "refused to start", rel, "sha256")


def test_a_file_the_manifest_does_not_list_is_refused_at_start(bundle: Path, tmp_path: Path) -> None:
    extra = tmp_path / "bundle"
    shutil.copytree(bundle, extra)
    (extra / "lib" / "libextra.so").write_bytes(b"\x7fELF")  # beside the runtimes: the loader could pick it up
    rc, replies, _ = _talk(extra, _frame({"op": "exit"}))
    assert rc == 3 and "lib/libextra.so is not listed in manifest.json" in replies[0]["error"]


def test_the_tflite_schema_table_is_the_installed_wheels() -> None:
    """src/tflite_schema.inc (the verifier's TF-Lite schema) is generated from the installed ai-edge-litert wheel's
    schema: rerun devices/native/cmake/gen_tflite_schema.py after upgrading the wheel."""
    pytest.importorskip("ai_edge_litert")
    spec = importlib.util.spec_from_file_location("gen_tflite_schema", SOURCE_DIR / "cmake" / "gen_tflite_schema.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)  # type: ignore[union-attr]
    assert gen.generate(gen.wheel_schema()) == (SOURCE_DIR / "src" / "tflite_schema.inc").read_text()
