"""The native runner (issue 14): ``compleak-runner`` built from devices/native/ against the installed wheels.

The bundle builds; on ``local`` it gives the same outputs as the Python runner for every ``.tflite`` and ``.pte``
of the tiny run (bit-identical); its provenance says what ran; garbage on its stdin gets one-line errors and never
a crash. The bundle is built once into the tool's cache (``compleak runners build`` reuses it while the sources and
wheels are unchanged).
"""

from __future__ import annotations

import hashlib
import os
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from rundir import RunDir
from devices.errors import DeviceError
from devices.local import LocalDevice
from devices.native.bundle import BINARY, BundleError, build_bundle, find_bundle, read_bundle_manifest
from devices.runners.native import NativeRunner, NativeRunnerServer
from devices.ondevice import compleak_runner as cr
from devices.runners.server import RunnerServerPool
from devices.runners.python import PythonRunner

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
