"""The runner server (``compleak_runner.py --serve``) and its host end, on this host and over a real sshd."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sshd_fixtures import SshServer
from test_local import record_for
from test_runner import make_tflite_models

from devices.errors import DeviceError
from devices.local import LocalDevice
from devices.ondevice import compleak_runner as cr
from devices.runners.python import PythonRunner
from devices.runners.server import RunnerServer, RunnerServerPool
from devices.uri import connect


@pytest.fixture(scope="module")
def tfl(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_tflite_models(tmp_path_factory.mktemp("served"))


def test_one_server_answers_several_models_and_chunks(tfl: dict, tmp_path: Path) -> None:
    dev = LocalDevice()
    dev.base_dir = str(tmp_path / "base")
    with RunnerServerPool(dev) as pool:
        server = pool.get([sys.executable], preload=["ai_edge_litert"])
        for name in ("float", "int8", "float"):
            rec = record_for(tfl[name])
            runner = PythonRunner([sys.executable], "ai_edge_litert", "2.3.0", batch_size=7, pool=pool)
            with runner.session(dev, tfl[name], rec) as infer:
                first, prov = infer(tfl["x"][:40])
                second, _ = infer(tfl["x"][40:])
            assert pool.get([sys.executable]) is server  # the same process all along
            expect = cr.load_model(str(tfl[name])).predict(tfl["x"])
            np.testing.assert_allclose(np.concatenate([first, second]), expect, atol=1e-6)
            assert prov["batch_sizes"] == [7] * 5 + [5] and prov["transfer"].startswith("runner server")
            models = list(Path(server.workspace).glob("model-*"))
            assert len(models) == 1  # loading the next model deleted the previous file
        assert server.hello and server.hello["protocol"] == cr.PROTOCOL
        ws, proc = server.workspace, server.process
        assert Path(ws).is_dir() and Path(ws).parent == Path(dev.workspace_base())
    assert not Path(ws).exists() and proc.exit_status() == 0  # closed: the process ended, its directory is gone


def test_a_failing_artifact_leaves_the_server_serving(tfl: dict, tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_text("this is not an onnx model\n")
    dev = LocalDevice()
    with RunnerServerPool(dev) as pool:
        rec = record_for(tfl["float"], aid="broken.onnx").model_copy(update={"format": "onnx"})
        with pytest.raises(DeviceError) as exc:
            with PythonRunner([sys.executable], "onnxruntime", "1", pool=pool).session(dev, bad, rec):
                pass
        msg = str(exc.value)
        assert "\n" not in msg and msg.startswith("local: broken.onnx on onnxruntime 1: ") and "a text file" in msg
        server = pool.get([sys.executable])
        assert server.alive
        # wrong input shape: a one-line error, the payload is skipped and the server stays in sync
        runner = PythonRunner([sys.executable], "ai_edge_litert", "2.3.0", pool=pool)
        with runner.session(dev, tfl["float"], record_for(tfl["float"])) as infer:
            with pytest.raises(DeviceError, match=r"has shape \[-1, 8, 8, 1\] but queries have shape \[.*9, 9, 1\]"):
                infer(np.zeros((10, 9, 9, 1), np.float32))
            values, _ = infer(tfl["x"])
        np.testing.assert_allclose(values, cr.load_model(str(tfl["float"])).predict(tfl["x"]), atol=1e-6)
        assert pool.get([sys.executable]) is server


def test_a_crashed_server_is_one_line_and_replaced(tfl: dict) -> None:
    dev = LocalDevice()
    rec = record_for(tfl["float"])
    with RunnerServerPool(dev) as pool:
        runner = PythonRunner([sys.executable], "ai_edge_litert", "2.3.0", pool=pool)
        with pytest.raises(DeviceError) as exc:
            with runner.session(dev, tfl["float"], rec) as infer:
                server = pool.get([sys.executable])
                os.kill(server.process.pid, signal.SIGSEGV)  # what a crashing runtime does
                time.sleep(0.2)
                infer(tfl["x"])
        msg = str(exc.value)
        assert "\n" not in msg and msg.startswith("local: float.tflite on ai_edge_litert 2.3.0: ")
        assert "segmentation fault" in msg
        replacement = pool.get([sys.executable])  # the next artifact gets a fresh runner
        assert replacement is not server and replacement.alive
        with runner.session(dev, tfl["float"], rec) as infer:
            assert infer(tfl["x"])[0].shape == (64, 5)


def _fake_runner(path: Path, protocol: int) -> Path:
    """A runner that says hello with ``protocol`` and then never answers (hung, or from another release)."""
    path.write_text(
        "import sys, json, time\n"
        f"body = json.dumps({{'ok': True, 'hello': 'compleak-runner', 'protocol': {protocol}}}).encode()\n"
        "sys.stdout.buffer.write(len(body).to_bytes(4, 'big') + body); sys.stdout.flush(); time.sleep(600)\n"
    )
    return path


def test_request_deadline_kills_a_hung_runner(tmp_path: Path) -> None:
    dev = LocalDevice()
    with RunnerServer(dev, [sys.executable], runner=_fake_runner(tmp_path / "hung.py", cr.PROTOCOL)) as server:
        t0 = time.monotonic()
        with pytest.raises(DeviceError, match="gave no answer within 1s during receiving") as exc:
            server.infer(np.zeros((3, 8, 8, 1), np.float32), batch_size=2, timeout_s=1.0)
        assert time.monotonic() - t0 < 10 and "\n" not in str(exc.value)
        assert not server.alive  # killed at the deadline


def test_protocol_version_mismatch_is_refused(tmp_path: Path) -> None:
    with RunnerServer(LocalDevice(), [sys.executable], runner=_fake_runner(tmp_path / "old.py", 0)) as server:
        with pytest.raises(DeviceError, match="speaks protocol 0, this host 1.*reinstall"):
            server.ready()


@pytest.mark.ssh
def test_served_over_ssh_equals_local(sshd_server: SshServer, tfl: dict) -> None:
    rec = record_for(tfl["int8"])
    local = cr.load_model(str(tfl["int8"])).predict(tfl["x"])
    with connect(sshd_server.uri, identity=sshd_server.identity, known_hosts=sshd_server.known_hosts) as dev:
        props = dev.properties()
        python = props.extra["python_cmd"]
        with RunnerServerPool(dev) as pool:
            runner = PythonRunner(python, "ai_edge_litert", props.runtimes["ai_edge_litert"], batch_size=9, pool=pool)
            with runner.session(dev, tfl["int8"], rec) as infer:
                values, prov = infer(tfl["x"])
            ws = pool.get(python).workspace
        np.testing.assert_allclose(values, local, atol=1e-6)
        assert prov["device_python"] == props.python
        assert dev.run(["test", "-e", ws], timeout=30).returncode == 1  # the job directory is gone


@pytest.mark.ssh
def test_hung_runner_over_ssh_is_abandoned_at_the_deadline(sshd_server: SshServer, tmp_path: Path) -> None:
    with connect(sshd_server.uri, identity=sshd_server.identity, known_hosts=sshd_server.known_hosts) as dev:
        hung = _fake_runner(tmp_path / "hung.py", cr.PROTOCOL)
        with RunnerServer(dev, [sys.executable], runner=hung) as server:
            t0 = time.monotonic()
            with pytest.raises(DeviceError, match="'compleak_runner.py' gave no answer within 1s") as exc:
                server.infer(np.zeros((3, 8, 8, 1), np.float32), batch_size=2, timeout_s=1.0)
            assert time.monotonic() - t0 < 10 and "\n" not in str(exc.value)
            assert not server.alive
        assert dev.run(["true"], timeout=30).ok  # the connection itself is still usable
