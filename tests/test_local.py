"""The local device: commands, files, confined workspaces, and the Python runner end to end on this host."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from test_runner import make_tflite_models

from devices.errors import DeviceError, IncompatibleArtifact
from devices.local import LocalDevice
from devices.ondevice import compleak_runner as cr
from devices.runners.choose import choose_runner
from devices.runners.python import PythonRunner
from rundir import ArtifactRecord, TensorSpec


def record_for(path: Path, fmt: str = "tflite", aid: str | None = None) -> ArtifactRecord:
    """A manifest record for an artifact file, described by the runner itself."""
    desc = cr.describe(path)
    return ArtifactRecord(
        id=aid or path.name, role="target", variant="original", framework="tf", format=fmt,
        path=f"artifacts/{path.name}",
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(), bytes=path.stat().st_size,
        inputs=[TensorSpec(**t) for t in desc["inputs"]], outputs=[TensorSpec(**t) for t in desc["outputs"]],
    )


@pytest.fixture(scope="module")
def tfl(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_tflite_models(tmp_path_factory.mktemp("local"))


def test_run_put_get_and_workspace_cleanup(tmp_path: Path) -> None:
    dev = LocalDevice()
    dev.base_dir = str(tmp_path / "base dir with 'quotes'")
    res = dev.run(["sh", "-c", "echo out; echo err >&2; exit 4"], timeout=10)
    assert (res.returncode, res.text.strip(), res.stderr.strip()) == (4, "out", b"err")
    assert dev.run(["no-such-binary-xyz"], timeout=10).returncode == 127
    src = tmp_path / "a.bin"
    src.write_bytes(os.urandom(1000))
    with dev.workspace() as ws:
        assert ws.startswith(dev.workspace_base() + "/job.") and os.path.isdir(ws)
        dev.put(src, f"{ws}/a.bin")
        dev.get(f"{ws}/a.bin", tmp_path / "b.bin")
        assert (tmp_path / "b.bin").read_bytes() == src.read_bytes()
    assert not os.path.exists(ws)
    assert os.path.isdir(dev.workspace_base())  # only the job directory is removed


def test_workspace_removal_is_confined(tmp_path: Path) -> None:
    dev = LocalDevice()
    dev.base_dir = str(tmp_path / "base")
    keep = tmp_path / "keep"
    keep.mkdir()
    with pytest.raises(DeviceError, match="refusing to remove"):
        dev.remove_workspace(str(keep), dev.workspace_base())
    with pytest.raises(DeviceError, match="refusing to remove"):
        dev.remove_workspace(dev.workspace_base() + "/job.x/../..", dev.workspace_base())
    assert keep.is_dir()


def test_timeout_is_one_line_device_error() -> None:
    with pytest.raises(DeviceError, match="did not finish within 1s"):
        LocalDevice().run(["sleep", "5"], timeout=1)


def test_properties_report_python_and_runtimes() -> None:
    props = LocalDevice().properties()
    assert props.python == ".".join(map(str, sys.version_info[:3]))
    assert props.runtimes["ai_edge_litert"] and props.runtimes["onnxruntime"] and props.free_bytes > 0
    assert props.arch and props.os


def test_python_runner_on_local_equals_in_process(tfl: dict, tmp_path: Path) -> None:
    dev = LocalDevice()
    dev.base_dir = str(tmp_path / "ws")
    rec = record_for(tfl["int8"])
    runner = choose_runner(dev, rec, batch_size=20)
    assert isinstance(runner, PythonRunner) and runner.runtime == "ai_edge_litert"
    values, prov = runner.run(dev, tfl["int8"], rec, tfl["x"])
    np.testing.assert_array_equal(values, cr.load_model(str(tfl["int8"])).predict(tfl["x"], batch_size=20))
    assert prov["runtime"] == "ai_edge_litert" and prov["batch_sizes"] == [20, 20, 20, 4]
    assert len(prov["batch_seconds"]) == 4 and prov["wall_seconds"] > 0
    assert not any(Path(dev.workspace_base()).glob("job.*"))  # the workspace was removed


def test_incompatible_runtime_is_refused_before_pushing(tfl: dict) -> None:
    dev = LocalDevice()
    rec = record_for(tfl["dynamic"])
    runner = PythonRunner([sys.executable], "tflite_runtime", "2.14.0")
    with pytest.raises(IncompatibleArtifact, match="FULLY_CONNECTED version 12"):
        runner.run(dev, tfl["dynamic"], rec, tfl["x"])


def test_damaged_tflite_is_caught_on_the_host(tfl: dict, tmp_path: Path) -> None:
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(Path(tfl["float"]).read_bytes()[:300])
    with pytest.raises(DeviceError, match="broken.tflite: damaged TF-Lite file") as exc:
        runner = PythonRunner([sys.executable], "ai_edge_litert", "2.3.0")
        runner.run(LocalDevice(), bad, record_for(tfl["float"]), tfl["x"])
    assert "\n" not in str(exc.value)


def test_device_side_failure_becomes_one_line(tfl: dict, tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_text("this is not an onnx model\n")
    rec = record_for(tfl["float"], aid="broken.onnx").model_copy(update={"format": "onnx"})
    with pytest.raises(DeviceError) as exc:
        PythonRunner([sys.executable], "onnxruntime", "1").run(LocalDevice(), bad, rec, tfl["x"])
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("local: broken.onnx on onnxruntime") and "a text file" in msg


def test_no_runtime_for_format_names_the_fix(tfl: dict) -> None:
    dev = LocalDevice()
    props = dev.properties()
    props.runtimes = {}
    with pytest.raises(DeviceError, match="pip install tflite-runtime"):
        choose_runner(dev, record_for(tfl["float"]), props=props)


def test_cli_devices_list_and_probe_local() -> None:
    from typer.testing import CliRunner

    from harness.cli.main import app

    res = CliRunner().invoke(app, ["devices", "list"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "local" in res.output and "this host" in res.output
    res = CliRunner().invoke(app, ["devices", "probe", "local"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for word in ("architecture", "Python", "runtime ai_edge_litert", "runtime onnxruntime", "free space"):
        assert word in res.output, word
    res = CliRunner().invoke(app, ["devices", "probe", "ssh://pi:hunter2@board"], env={"COLUMNS": "200"})
    assert res.exit_code == 2 and "never put a password" in res.output and "hunter2" not in res.output
