"""Android over ADB: the REAL adb client and server against the protocol-level adbd stand-in.

The adb server runs on a private port with its own HOME (so its RSA key and device list are this test's own)
and is killed in teardown. The device is :mod:`tests.adbd_standin` (no Android image can be fetched here).
Also: the benchmark_model / executor_runner file formats and command lines, and the emulator's error paths.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    from rundir import ArtifactRecord

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adbd_standin import AdbdStandin  # noqa: E402
from sshd_fixtures import free_port  # noqa: E402

from devices.adb import AdbDevice, parse_getprop  # noqa: E402
from devices.errors import DeviceError, UnreachableDevice  # noqa: E402

ADB = shutil.which("adb")
pytestmark = [pytest.mark.timeout(300)]
adb = pytest.mark.adb  # needs the adb client (the fixtures skip without it)


class AdbServer:
    """A private adb server (own port, own HOME and key) for one test module."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.env = dict(os.environ, HOME=str(home), ANDROID_ADB_SERVER_PORT=str(self.port))
        self.env.pop("ADB_SERVER_SOCKET", None)

    def adb(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ADB, *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def connect(self, serial: str, want: str = "device", deadline: float = 20.0) -> str:
        """``adb connect`` and wait until ``adb get-state`` reports ``want`` (or the deadline passes)."""
        self.adb("connect", serial)
        end = time.monotonic() + deadline
        state = ""
        while time.monotonic() < end:
            cp = self.adb("-s", serial, "get-state", timeout=10)
            state = cp.stdout.strip() or cp.stderr.strip()
            if want in state:
                return state
            time.sleep(0.2)
        return state


@pytest.fixture(scope="module")
def adb_server(tmp_path_factory):
    if ADB is None:
        pytest.skip("the adb client is not installed (apt install adb)")
    server = AdbServer(tmp_path_factory.mktemp("adbhome"))
    cp = server.adb("start-server")
    assert cp.returncode == 0, cp.stderr
    with pytest.MonkeyPatch.context() as mp:  # AdbDevice's adb client calls go to this server
        mp.setenv("ANDROID_ADB_SERVER_PORT", str(server.port))
        mp.delenv("ADB_SERVER_SOCKET", raising=False)
        yield server
    server.adb("kill-server")


@pytest.fixture(scope="module")
def phone(adb_server, tmp_path_factory):
    """A connected stand-in phone: (daemon, serial)."""
    daemon = AdbdStandin(tmp_path_factory.mktemp("phone"), {"ro.product.model": "Pixel Standin"}).start()
    assert adb_server.connect(daemon.serial) == "device"
    yield daemon
    adb_server.adb("disconnect", daemon.serial)
    daemon.stop()


@pytest.fixture(scope="module")
def dev(phone):
    return AdbDevice(phone.serial, timeout=30)


# ------------------------------------------------------------------------------------------ transport


@adb
def test_probe_reads_getprop_and_python(dev, phone):
    props = dev.properties()
    assert props.id == f"adb://{phone.serial}"
    assert props.android_api == 34
    assert props.android_abi == "arm64-v8a"
    assert props.soc == "CompLeak SM-STANDIN"
    assert props.model == "compleak-tests Pixel Standin"
    assert props.os == "Android 14"
    assert props.extra["abilist"] == ["arm64-v8a", "armeabi-v7a", "armeabi"]
    assert props.workspace_base == "/data/local/tmp/compleak"
    assert props.free_bytes and props.free_bytes > 0
    # the stand-in's python3 is this interpreter: the on-device runner's probe reports it and its runtimes
    assert props.python == ".".join(map(str, sys.version_info[:3]))
    assert props.numpy == np.__version__
    assert props.runtimes, props.extra


def test_parse_getprop_handles_odd_lines():
    text = "[a.b]: [1]\n[empty]: []\nnot a prop\n[with space]: [x y]\n"
    assert parse_getprop(text) == {"a.b": "1", "empty": "", "with space": "x y"}


@adb
def test_run_returns_exit_code_stdout_stderr_and_stdin(dev):
    res = dev.run(["sh", "-c", "printf out; echo err >&2; exit 7"], timeout=30)
    assert (res.returncode, res.stdout, res.stderr) == (7, b"out", b"err\n")
    payload = bytes(range(256)) * 50 + b"\n__compleak_rc_fake=0\n"
    res = dev.run(["cat"], timeout=30, stdin=payload)
    assert res.ok and res.stdout == payload
    assert dev.run(["false"], timeout=30).returncode == 1


@adb
def test_run_timeout_is_one_line_error(dev, phone):
    with pytest.raises(DeviceError, match=r"timed out after 1 s") as exc:
        dev.run(["sleep", "30"], timeout=1, stdin=b"")
    assert "\n" not in str(exc.value)
    scratch = [p.name for p in phone.sandbox.host_dir("/data/local/tmp").iterdir() if p.name.startswith(".compleak-")]
    assert scratch == [], "the abandoned command's scratch files are removed"


@adb
def test_put_get_round_trip_with_spaces_and_quotes(dev, adb_server, tmp_path):
    data = np.random.default_rng(0).bytes(700_000)  # several sync DATA chunks and adb payloads
    src = tmp_path / "in put.bin"
    src.write_bytes(data)
    with dev.workspace() as ws:
        remote = f"{ws}/dir with space/it's \"quoted\" $HOME.bin"
        assert dev.run(["mkdir", "-p", remote.rsplit("/", 1)[0]], timeout=30).ok
        dev.put(src, remote)
        res = dev.run(["sh", "-c", 'wc -c < "$1"', "sh", remote], timeout=30)
        assert res.ok and int(res.text) == len(data)
        back = tmp_path / "back" / "it's here.bin"
        dev.get(remote, back)
        assert back.read_bytes() == data
        with pytest.raises(DeviceError, match="adb pull"):
            dev.get(f"{ws}/missing file", tmp_path / "x")
        with pytest.raises(DeviceError, match="permission denied"):  # the stand-in keeps sync inside its sandbox
            dev.put(src, "/system/bin/evil")
        with pytest.raises(DeviceError, match="does not exist"):
            dev.get(f"{ws}/../../../../../etc/passwd", tmp_path / "passwd")
        cp = adb_server.adb("-s", dev.serial, "pull", f"{ws}/dir with space", str(tmp_path / "tree"))  # sync LIST
        assert cp.returncode == 0, cp.stderr
        assert (tmp_path / "tree" / "it's \"quoted\" $HOME.bin").read_bytes() == data


@adb
def test_workspace_created_under_data_local_tmp_and_removed(dev, phone):
    with dev.workspace() as ws:
        assert ws.startswith("/data/local/tmp/compleak/job.")
        host = phone.sandbox.map_path(ws)
        assert host is not None and host.is_dir()
        assert dev.run(["touch", f"{ws}/file"], timeout=30).ok
    assert not host.exists()
    assert dev.run(["test", "-e", ws], timeout=30).returncode == 1


@adb
def test_unknown_serial_is_one_line_error(adb_server):
    port = free_port()
    with pytest.raises(UnreachableDevice, match=rf"adb connect 127\.0\.0\.1:{port}") as exc:
        AdbDevice(f"127.0.0.1:{port}")
    assert "\n" not in str(exc.value)
    with pytest.raises(UnreachableDevice, match="no device 'R58NOSUCH'"):
        AdbDevice("R58NOSUCH")


@adb
def test_missing_adb_client_is_one_line_error(phone, tmp_path):
    with pytest.raises(DeviceError, match="adb client not found.*apt install adb"):
        AdbDevice(phone.serial, adb_path=tmp_path / "no-adb")


@adb
def test_unauthorized_then_accepted_then_offline(adb_server, tmp_path):
    """A phone that demands RSA auth: unknown host key -> 'unauthorized'; accepting the key -> usable."""
    daemon = AdbdStandin(tmp_path / "locked_phone", require_auth=True).start()
    try:
        assert "unauthorized" in adb_server.connect(daemon.serial, want="unauthorized")
        with pytest.raises(DeviceError, match="unauthorized: accept the 'Allow USB debugging") as exc:
            AdbDevice(daemon.serial)
        assert "\n" not in str(exc.value)
        offered = daemon.sandbox.pending_keys.read_text()
        assert offered.strip(), "the adb server offered its public key"
        daemon.sandbox.adb_keys.write_text(offered)  # the user taps "Allow"
        adb_server.adb("disconnect", daemon.serial)
        assert adb_server.connect(daemon.serial) == "device"
        assert AdbDevice(daemon.serial).run(["echo", "ok"], timeout=30).text == "ok\n"
        daemon.stop()  # the phone goes away: the adb server marks it offline
        with pytest.raises(UnreachableDevice, match="offline|no device") as exc:
            end = time.monotonic() + 20
            while time.monotonic() < end:
                AdbDevice(daemon.serial, timeout=10)
                time.sleep(0.3)
        assert "\n" not in str(exc.value)
    finally:
        daemon.stop()
        adb_server.adb("disconnect", daemon.serial)


# ------------------------------------------------------------------------------------------ artifacts


def _record(path: Path, artifact_id: str, fmt: str = "tflite") -> "ArtifactRecord":
    """A manifest record for an artifact file, its tensors read by the on-device runner's describe()."""
    import hashlib

    from devices.ondevice.compleak_runner import describe
    from rundir import ArtifactRecord, TensorSpec

    d = describe(str(path))
    return ArtifactRecord(
        id=artifact_id, role="target", variant="original", framework="tf" if fmt == "tflite" else "torch",
        format=fmt, path=path.name,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(), bytes=path.stat().st_size,
        inputs=[TensorSpec(**s) for s in d["inputs"]], outputs=[TensorSpec(**s) for s in d["outputs"]],
    )


@pytest.fixture(scope="module")
def tflite_models(tmp_path_factory):
    """A tiny float32 Keras CNN as TF-Lite, and its full-int8 version (int8 input and output). NHWC [?, 8, 8, 1]."""
    tf = pytest.importorskip("tensorflow")
    out = tmp_path_factory.mktemp("models")
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.Input((8, 8, 1)), tf.keras.layers.Conv2D(4, 3, activation="relu"),
                                 tf.keras.layers.Flatten(), tf.keras.layers.Dense(5)])
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    (out / "float.tflite").write_bytes(conv.convert())
    rng = np.random.default_rng(1)

    def representative():
        for _ in range(16):
            yield [rng.random((1, 8, 8, 1), dtype=np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    (out / "int8.tflite").write_bytes(conv.convert())
    return {name: (out / f"{name}.tflite", _record(out / f"{name}.tflite", f"tf-target-{name}.tflite"))
            for name in ("float", "int8")}


def _queries(n: int, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 8, 8, 1), dtype=np.float32)


@adb
def test_python_runner_over_adb_equals_local_run(dev, tflite_models):
    """The Python runner chosen for the stand-in phone gives exactly the host interpreter's outputs."""
    from devices.ondevice.compleak_runner import load_model
    from devices.runners.choose import choose_runner
    from devices.runners.python import PythonRunner

    path, rec = tflite_models["int8"]
    x = _queries(100)
    runner = choose_runner(dev, rec, batch_size=32)
    assert isinstance(runner, PythonRunner)
    values, prov = runner.run(dev, path, rec, x)
    local = load_model(str(path), runtime=runner.runtime).predict(x, batch_size=32)
    assert values.shape == (100, 5) and values.dtype == np.float32
    np.testing.assert_array_equal(values, local)
    assert prov["runtime"] == runner.runtime and prov["batch_sizes"] == [32, 32, 32, 4]
    assert dev.run(["sh", "-c", "ls /data/local/tmp/compleak | wc -l"], timeout=30).text.strip() == "0"


# ------------------------------------------------------------------------------------------ native runners


def _interpreter_as_benchmark_model(path: Path, blob: bytes, n_chunks: int, model_shape: list[int]) -> bytes:
    """What benchmark_model does with our files, done by the TF-Lite interpreter in-process: per chunk, read the
    value file as the raw input tensor (--input_layer_value_files) at --input_layer_shape, invoke once, and write
    every output tensor's raw bytes back to back (--output_filepath; OutputSaver in benchmark_tflite_model.cc)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], model_shape)
    interp.allocate_tensors()
    step = len(blob) // n_chunks
    out = bytearray()
    for i in range(n_chunks):
        interp.set_tensor(inp["index"], np.frombuffer(blob[i * step:(i + 1) * step], inp["dtype"]).reshape(model_shape))
        interp.invoke()
        for o in interp.get_output_details():
            out += interp.get_tensor(o["index"]).tobytes()
    return bytes(out)


@pytest.fixture
def fake_binaries(tmp_path):
    """A binaries folder laid out as docker/android-runner writes it. The files are never executed here."""
    for abi in ("arm64-v8a", "x86_64"):
        for name in ("benchmark_model", "executor_runner"):
            p = tmp_path / "bins" / abi / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(f"{abi}/{name}".encode())
    return tmp_path / "bins"


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_benchmark_model_input_and_output_files(tflite_models, fake_binaries, kind):
    """Our value file, read as benchmark_model reads it, and its output file, parsed back, give the local outputs
    (int8: quantized inputs, dequantized outputs); the padded last chunk is dropped."""
    from devices.ondevice.compleak_runner import load_model
    from devices.runners.android import BenchmarkModelRunner

    path, rec = tflite_models[kind]
    runner = BenchmarkModelRunner(fake_binaries / "arm64-v8a" / "benchmark_model", "arm64-v8a", batch_size=16)
    x = _queries(37)
    blob, n_chunks, b, shape = runner.build_inputs(x, rec)
    assert (n_chunks, b, shape) == (3, 16, [16, 8, 8, 1])
    assert len(blob) == 3 * 16 * 64 * (1 if kind == "int8" else 4)
    raw = _interpreter_as_benchmark_model(path, blob, n_chunks, shape)
    values = runner.parse_outputs(raw, rec, len(x), "out.bin")
    local = load_model(str(path), runtime="ai_edge_litert").predict(x)
    assert values.shape == (37, 5) and values.dtype == np.float32
    np.testing.assert_array_equal(values, local)
    with pytest.raises(DeviceError, match=r"wrote 10 bytes of outputs, expected"):
        runner.parse_outputs(raw[:10], rec, len(x), "out.bin")


def test_benchmark_model_command_and_script_quote_every_path(tflite_models, fake_binaries):
    import shlex

    from devices.runners.android import BenchmarkModelRunner

    _, rec = tflite_models["float"]
    runner = BenchmarkModelRunner(fake_binaries / "arm64-v8a" / "benchmark_model", "arm64-v8a", batch_size=16,
                                  threads=2)
    name = runner.layer_name(rec.inputs[0])
    assert ":" not in name and name.startswith("serving_default")
    ws = "/data/local/tmp/compleak/job x'y $z"
    argv, out = runner.command(f"{ws}/benchmark_model", f"{ws}/model.tflite", rec, [16, 8, 8, 1], f"{ws}/chunk.bin",
                               f"{ws}/out_1")
    assert argv == [f"{ws}/benchmark_model", f"--graph={ws}/model.tflite", f"--input_layer={name}",
                    "--input_layer_shape=16,8,8,1", f"--input_layer_value_files={name}:{ws}/chunk.bin",
                    f"--output_filepath={ws}/out_1.bin", "--num_runs=1", "--warmup_runs=0", "--min_secs=0",
                    "--warmup_min_secs=0", "--num_threads=2"]
    assert out == f"{ws}/out_1.bin"
    script = runner.script(rec, [16, 8, 8, 1], 2, 4096)
    runs = [ln for ln in script.splitlines() if "--graph=" in ln]
    assert len(runs) == 2
    assert shlex.split(runs[1].split(" > run.log")[0])[:2] == ["./benchmark_model", "--graph=model.tflite"]
    assert "bs=4096 skip=1 count=1" in script and "/data/local/tmp" not in script
    with pytest.raises(DeviceError, match="cannot take a path with ','"):
        runner.command("/b", "/m,x.tflite", rec, [16, 8, 8, 1], "/c.bin", "/o")
    log = (
        "INFO: Inference timings in us: Init: 3436, First inference: 8260, Warmup (avg): 8260, "
        "Inference (avg): 7823.9"
    )
    assert runner.parse_times(log + "\n" + log) == [0.00826, 0.00826]


def test_executor_runner_files_and_command(fake_binaries):
    """executor_runner: NCHW raw float32 input at the program's fixed batch, output BASE-0.bin parsed back."""
    from devices.runners.android import ExecutorRunner
    from rundir import ArtifactRecord, TensorSpec

    rec = ArtifactRecord(id="torch-target-original.pte", role="target", variant="original", framework="torch",
                         format="pte", path="a.pte", sha256="0" * 64, bytes=1,
                         inputs=[TensorSpec(name="x", shape=[4, 1, 8, 8], dtype="float32")],
                         outputs=[TensorSpec(name="y", shape=[4, 3], dtype="float32")])
    runner = ExecutorRunner(fake_binaries / "x86_64" / "executor_runner", "x86_64", batch_size=256)
    x = _queries(6)
    blob, n_chunks, b, shape = runner.build_inputs(x, rec)
    assert (n_chunks, b, shape) == (2, 4, [4, 1, 8, 8])
    nchw = np.frombuffer(blob, "<f4").reshape(8, 1, 8, 8)
    np.testing.assert_array_equal(nchw[:6], x.transpose(0, 3, 1, 2))
    assert not nchw[6:].any()
    y = np.arange(8 * 3, dtype="<f4").reshape(8, 3)
    np.testing.assert_array_equal(runner.parse_outputs(y.tobytes(), rec, 6, "out"), y[:6])
    ws = "/data/local/tmp/compleak/job 1"
    argv, out = runner.command(f"{ws}/executor_runner", f"{ws}/model.pte", rec, shape, f"{ws}/chunk.bin", f"{ws}/out_0")
    assert argv == [f"{ws}/executor_runner", f"--model_path={ws}/model.pte", f"--inputs={ws}/chunk.bin",
                    f"--output_file={ws}/out_0"]
    assert out == f"{ws}/out_0-0.bin"
    assert runner.parse_times("I 00:00:00.1 executor_runner.cpp:1] Model executed successfully 1 time(s) in 2.5 ms.") \
        == [0.0025]


def test_binary_lookup_by_abi_and_missing_binary_error(fake_binaries, tmp_path, monkeypatch):
    from devices.runners.android import binary_cache_dir, find_binary

    monkeypatch.setenv("COMPLEAK_CACHE_DIR", str(tmp_path / "cache"))
    assert find_binary("benchmark_model", ["armeabi-v7a", "arm64-v8a"], fake_binaries) == \
        (fake_binaries / "arm64-v8a" / "benchmark_model", "arm64-v8a")
    assert find_binary("executor_runner", ["x86_64"], fake_binaries / "x86_64")[0] == \
        fake_binaries / "x86_64" / "executor_runner"
    cached = binary_cache_dir() / "armeabi-v7a" / "benchmark_model"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"v7")
    assert find_binary("benchmark_model", ["armeabi-v7a"], None) == (cached, "armeabi-v7a")
    with pytest.raises(DeviceError, match=r"no executor_runner for riscv64 .*docker/android-runner.*--binaries") as exc:
        find_binary("executor_runner", ["riscv64"], fake_binaries)
    assert "\n" not in str(exc.value)


def test_choose_android_runner_by_format(fake_binaries, tflite_models):
    from devices.base import DeviceProperties
    from devices.runners.android import BenchmarkModelRunner, choose_android_runner

    _, rec = tflite_models["float"]
    props = DeviceProperties(id="adb://x", android_api=34, android_abi="arm64-v8a",
                             extra={"abilist": ["arm64-v8a", "armeabi-v7a"]})

    class NoDevice:  # only .id and .binaries are read when choosing
        id = "adb://x"
        binaries = fake_binaries

    runner = choose_android_runner(NoDevice(), rec, None, props)
    assert isinstance(runner, BenchmarkModelRunner) and runner.abi == "arm64-v8a"
    with pytest.raises(DeviceError, match="onnx artifact .* needs Python on the device"):
        choose_android_runner(NoDevice(), rec.model_copy(update={"format": "onnx"}), None, props)


# ------------------------------------------------------------------------------------------ emulator


def test_emulator_command_line_and_missing_emulator(tmp_path, monkeypatch):
    from devices.emulator import EmulatorDevice, emulator_command, free_console_port

    assert emulator_command("/sdk/emulator/emulator", "Pixel_7_API_34", 5556) == [
        "/sdk/emulator/emulator", "-avd", "Pixel_7_API_34", "-no-window", "-no-audio", "-no-boot-anim",
        "-no-snapshot-save", "-port", "5556"]
    port = free_console_port()
    assert port % 2 == 0 and 5554 <= port <= 5682
    monkeypatch.setenv("ANDROID_HOME", str(tmp_path / "sdk"))
    monkeypatch.delenv("ANDROID_SDK_ROOT", raising=False)
    monkeypatch.delenv("ANDROID_EMULATOR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DeviceError, match=r"Android emulator not found .*sdkmanager emulator") as exc:
        EmulatorDevice("Pixel_7_API_34")
    assert "\n" not in str(exc.value)
    with pytest.raises(DeviceError, match="bad AVD name"):
        EmulatorDevice("bad name; rm -rf /")


@adb
def test_connect_uri_reaches_adb_device(phone):
    from devices.uri import connect

    dev = connect(f"adb://{phone.serial}")
    assert dev.id == f"adb://{phone.serial}" and dev.run(["getprop", "ro.build.version.sdk"], timeout=30).text == "34\n"


# ------------------------------------------------------------------------------------------ collect


def _mini_run(run: Path, tflite_models) -> list:
    """A run directory the collect stage accepts: manifest (int8 target, float shadow), splits, queries.npz."""
    import shutil as sh

    from rundir import Manifest, Splits

    (run / "artifacts").mkdir(parents=True)
    recs = []
    for kind, role in (("int8", "target"), ("float", "shadow")):
        path, rec = tflite_models[kind]
        sh.copy(path, run / "artifacts" / path.name)
        recs.append(rec.model_copy(update={"id": f"tf-{role}-{kind}.tflite", "role": role,
                                           "shadow": 0 if role == "shadow" else None,
                                           "path": f"artifacts/{path.name}"}))
    Manifest(artifacts=recs).save(run / "manifest.json")
    n = 48
    labels = np.arange(n, dtype=np.int64) % 5
    ids = np.random.default_rng(3).permutation(n)
    Splits(labels, ids[:12], ids[12:24], [ids[24:36]], [ids[36:48]]).save(run / "splits.npz")
    np.savez(run / "queries.npz", index=np.arange(n, dtype=np.int64), x=_queries(n, seed=4))
    return recs


@adb
def test_collect_over_adb_equals_local(phone, dev, tflite_models, tmp_path):
    """`compleak collect RUN --device adb://SERIAL` with the Python runner on the stand-in phone stores exactly the
    outputs the local device stores, for a target (int8) and a shadow (float) artifact; a rerun redoes nothing."""
    import json

    from rich.console import Console

    from harness.collect.stage import collect_run
    from rundir import RunDir

    run = tmp_path / "run with space"
    recs = _mini_run(run, tflite_models)
    quiet = Console(quiet=True)
    remote = collect_run(run, device=f"adb://{phone.serial}", batch_size=8, console=quiet, chunk_size=16)
    local = collect_run(run, device="local", batch_size=8, console=quiet, chunk_size=16)
    rd = RunDir(run)
    for rec in recs:
        got = rd.load_outputs(f"adb://{phone.serial}", rec.id)
        want = rd.load_outputs("local", rec.id)
        n = len(rd.load_splits().collected_ids(rec.role, rec.shadow))  # 24, plus the 24 target candidates for a shadow
        assert got.values.shape == (n, 5)
        np.testing.assert_array_equal(got.index, want.index)
        np.testing.assert_array_equal(got.values, want.values)
        prov = json.loads(rd.output_provenance(f"adb://{phone.serial}", rec.id).read_text())
        assert prov["device"]["id"] == f"adb://{phone.serial}" and prov["device"]["android_api"] == 34
        assert prov["runner"] == "python" and prov["n_queries"] == n
    assert set(remote) == set(local) == {r.id for r in recs}
    stamp = {p: p.stat().st_mtime_ns for p in rd.outputs_dir(f"adb://{phone.serial}").iterdir()}
    collect_run(run, device=f"adb://{phone.serial}", batch_size=8, console=quiet, chunk_size=16)
    assert {p: p.stat().st_mtime_ns for p in rd.outputs_dir(f"adb://{phone.serial}").iterdir()} == stamp
    assert not list(phone.sandbox.host_dir("/data/local/tmp/compleak").iterdir()), "workspaces removed"


@adb
def test_device_lost_mid_collection_then_rerun_completes(adb_server, tflite_models, tmp_path):
    """The cable is pulled while collecting: one-line DeviceError, finished chunks stay on disk; after the device is
    back, the rerun completes with every row once and equal to the local outputs."""
    import threading

    from rich.console import Console

    from harness.collect.stage import collect_run
    from rundir import RunDir

    run = tmp_path / "run"
    recs = _mini_run(run, tflite_models)
    daemon = AdbdStandin(tmp_path / "phone").start()
    serial = daemon.serial
    quiet = Console(quiet=True)
    try:
        assert adb_server.connect(serial) == "device"
        partial = RunDir(run).outputs_dir(f"adb://{serial}") / ".partial"
        pulled = threading.Event()

        def pull_cable() -> None:
            end = time.monotonic() + 120
            while time.monotonic() < end and not list(partial.glob("*/*/*.npz")):
                time.sleep(0.01)
            daemon.drop_connections()
            pulled.set()

        threading.Thread(target=pull_cable, daemon=True).start()
        with pytest.raises(DeviceError) as exc:
            collect_run(run, device=f"adb://{serial}", batch_size=4, console=quiet, chunk_size=4)
        assert pulled.is_set() and "\n" not in str(exc.value)
        kept = list(partial.glob("*/*/*.npz"))
        assert kept, "finished chunks are kept"
        print("error after the cable was pulled:", exc.value)
        adb_server.adb("disconnect", serial)  # what the error message tells the user to do
        assert adb_server.connect(serial) == "device"
        collect_run(run, device=f"adb://{serial}", batch_size=4, console=quiet, chunk_size=4)
        local = collect_run(run, device="local", batch_size=4, console=quiet, chunk_size=24)
        rd = RunDir(run)
        for rec in recs:
            got, want = rd.load_outputs(f"adb://{serial}", rec.id), rd.load_outputs("local", rec.id)
            np.testing.assert_array_equal(got.index, want.index)  # every id once, in order
            np.testing.assert_array_equal(got.values, want.values)
        assert set(local) == {r.id for r in recs} and not partial.exists()
    finally:
        daemon.stop()
        adb_server.adb("disconnect", serial)


# ------------------------------------------------------------------------------------------ native runner flow

TOOL_STANDINS = Path(__file__).resolve().parent / "android_tool_standins.py"


def _standin_binaries(root: Path) -> Path:
    """A --binaries folder whose arm64-v8a tools are the documented-interface stand-ins of
    tests/android_tool_standins.py (the real Android binaries cannot run here)."""
    for name in ("benchmark_model", "executor_runner"):
        dest = root / "arm64-v8a" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(TOOL_STANDINS, dest)
        dest.chmod(0o755)
    return root


@pytest.fixture(scope="module")
def pte_model(tmp_path_factory):
    """A tiny torch CNN exported to ExecuTorch: NCHW [4, 1, 8, 8] float32 -> [4, 5] (fixed batch of 4)."""
    torch = pytest.importorskip("torch")
    exir = pytest.importorskip("executorch.exir")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 5)).eval()
    program = exir.to_edge_transform_and_lower(torch.export.export(model, (torch.rand(4, 1, 8, 8),))).to_executorch()
    path = tmp_path_factory.mktemp("pte") / "tiny.pte"
    path.write_bytes(program.buffer)
    return path, _record(path, "torch-target-original.pte", fmt="pte")


@adb
def test_benchmark_model_runner_flow_over_adb(dev, tflite_models, tmp_path):
    """The whole benchmark_model flow on the stand-in phone (push, chmod, batches cut with dd, one run per batch,
    outputs concatenated, pulled, dequantized) gives the local outputs; a manifest/binary mismatch is one line."""
    from devices.base import DeviceProperties
    from devices.ondevice.compleak_runner import load_model
    from devices.runners.android import BenchmarkModelRunner, choose_android_runner

    path, rec = tflite_models["int8"]
    props = DeviceProperties(id=dev.id, android_api=34, android_abi=dev.abi, extra={"abilist": dev.abis()})
    runner = choose_android_runner(dev, rec, _standin_binaries(tmp_path / "bins"), props, batch_size=16)
    assert isinstance(runner, BenchmarkModelRunner) and runner.abi == "arm64-v8a"
    x = _queries(37)
    values, prov = runner.run(dev, path, rec, x)
    np.testing.assert_array_equal(values, load_model(str(path), runtime="ai_edge_litert").predict(x))
    assert prov["batch_sizes"] == [16, 16, 16] and len(prov["batch_seconds"]) == 3
    assert prov["runtime"] == "tflite-benchmark_model" and prov["abi"] == "arm64-v8a"
    wrong = rec.model_copy(update={"inputs": [rec.inputs[0].model_copy(update={"dtype": "float32"})]})
    with pytest.raises(DeviceError, match=r"benchmark_model \(arm64-v8a\): .*doesn't match the size") as exc:
        runner.run(dev, path, wrong, x)
    assert "\n" not in str(exc.value)
    assert dev.run(["sh", "-c", "ls /data/local/tmp/compleak | wc -l"], timeout=30).text.strip() == "0"


@adb
@pytest.mark.slow  # exports a torch model, and the stand-in tool starts torch on the "device"
def test_executor_runner_flow_over_adb(dev, pte_model, tmp_path):
    """The executor_runner flow on the stand-in phone: NHWC queries transposed to the program's NCHW, padded to the
    program's fixed batch of 4, output read from BASE-0.bin; equals the local ExecuTorch run."""
    from devices.base import DeviceProperties
    from devices.ondevice.compleak_runner import load_model
    from devices.runners.android import ExecutorRunner, choose_android_runner

    path, rec = pte_model
    props = DeviceProperties(id=dev.id, android_api=34, android_abi=dev.abi, extra={"abilist": dev.abis()})
    runner = choose_android_runner(dev, rec, _standin_binaries(tmp_path / "bins"), props)
    assert isinstance(runner, ExecutorRunner)
    x = _queries(3)  # one run (each run of the stand-in starts a Python with torch), last row padded
    values, prov = runner.run(dev, path, rec, x)
    local = load_model(str(path)).predict(x, batch_size=4)
    np.testing.assert_allclose(values, local, rtol=0, atol=1e-6)
    assert values.shape == (3, 5)
    assert prov["batch_sizes"] == [4] and prov["input_layout"] == "NCHW" and len(prov["batch_seconds"]) == 1


@adb
def test_cli_devices_probe_over_adb(phone, adb_server):
    """`compleak devices probe adb://SERIAL` prints the getprop facts; an unknown serial is one line, exit 2."""
    cli = Path(sys.executable).with_name("compleak")
    env = dict(os.environ, ANDROID_ADB_SERVER_PORT=str(adb_server.port), COLUMNS="200")
    cp = subprocess.run([str(cli), "devices", "probe", f"adb://{phone.serial}"], env=env, capture_output=True,
                        text=True, timeout=120)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    for text in ("Android API level", "34", "arm64-v8a", "CompLeak SM-STANDIN", "Android 14", "Pixel Standin"):
        assert text in cp.stdout
    cp = subprocess.run([str(cli), "devices", "probe", "adb://127.0.0.1:1"], env=env, capture_output=True, text=True,
                        timeout=120)
    assert cp.returncode == 2
    lines = [ln for ln in (cp.stdout + cp.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and "adb connect 127.0.0.1:1" in lines[0], lines
