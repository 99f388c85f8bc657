"""TF-Lite op-version compatibility check, on real .tflite files converted here with TF 2.21."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_runner import make_tflite_models

from devices.compat import (
    MIN_RUNTIME,
    check_tflite,
    incompatible_ops,
    parse_version,
    tflite_equivalent,
    tflite_op_versions,
)
from devices.errors import DeviceError, IncompatibleArtifact
from devices.ondevice import compleak_runner as cr


@pytest.fixture(scope="module")
def tfl(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_tflite_models(tmp_path_factory.mktemp("compat"))


def test_op_versions_read_from_flatbuffer(tfl: dict) -> None:
    plain = tflite_op_versions(tfl["float"])
    assert {"CONV_2D", "MAX_POOL_2D", "FULLY_CONNECTED", "RESHAPE"} <= set(plain)
    assert all(isinstance(v, int) and v >= 1 for v in plain.values())
    int8 = tflite_op_versions(tfl["int8"])
    assert int8["CONV_2D"] > plain["CONV_2D"]  # int8 kernels are newer op versions


def test_dynamic_range_fully_connected_v12_refused_on_tflite_runtime_214(tfl: dict) -> None:
    """The known real case: TF 2.21 dynamic-range quantization -> FULLY_CONNECTED v12; tflite-runtime 2.14 refuses."""
    ops = tflite_op_versions(tfl["dynamic"])
    assert ops["FULLY_CONNECTED"] == 12
    with pytest.raises(IncompatibleArtifact) as exc:
        check_tflite(tfl["dynamic"], "tflite_runtime", "2.14.0", "ssh://pi@board:22")
    msg = str(exc.value)
    assert "\n" not in msg
    for part in ("FULLY_CONNECTED version 12", "2.17.0", "tflite_runtime 2.14.0", "ssh://pi@board:22",
                 "--container toolchain-tf:2.14.0", "upgrade"):
        assert part in msg, part
    # the same file is fine for a runtime that knows v12, and for the LiteRT release installed here
    assert check_tflite(tfl["dynamic"], "tflite_runtime", "2.17.1", "d") == []
    assert check_tflite(tfl["dynamic"], "ai_edge_litert", "2.3.0", "d") == []
    # and it really runs on that runtime (the check is not stricter than reality)
    assert cr.load_model(tfl["dynamic"]).predict(tfl["x"]).shape == (64, 5)


def test_float_and_int8_models_pass_on_214(tfl: dict) -> None:
    assert check_tflite(tfl["float"], "tflite_runtime", "2.14.0") == []
    assert check_tflite(tfl["int8"], "tflite_runtime", "2.14.0") == []


def test_table_and_versions() -> None:
    assert MIN_RUNTIME["FULLY_CONNECTED"][12] == "2.17.0" and MIN_RUNTIME["CONV_2D"][1] == "1.5.0"
    assert parse_version("2.14.0rc1") == (2, 14, 0) and parse_version("2.13.0+cpu") == (2, 13, 0)
    assert tflite_equivalent("tensorflow", "2.21.0") == "2.21.0"
    assert tflite_equivalent("onnxruntime", "1.2") is None
    assert [i.op for i in incompatible_ops({"ADD": 5, "MUL": 1, "RESHAPE": 1}, "2.12.0")] == ["ADD"]


def test_unknown_ops_and_runtimes_fall_back_to_trying(tfl: dict) -> None:
    notes = check_tflite(tfl["float"], "some_runtime", "9.9", "d")
    assert notes and "not checked" in notes[0]
    assert incompatible_ops({"FULLY_CONNECTED": 99, "CUSTOM:MyOp": 1}, "2.14.0") == []


def test_not_a_tflite_file_is_one_line(tmp_path: Path, tfl: dict) -> None:
    text = tmp_path / "x.tflite"
    text.write_text("not a flatbuffer\n")
    with pytest.raises(DeviceError, match="not a TF-Lite flatbuffer"):
        tflite_op_versions(text)
    truncated = tmp_path / "t.tflite"
    truncated.write_bytes(Path(tfl["float"]).read_bytes()[:200])
    with pytest.raises(DeviceError, match="damaged TF-Lite file"):
        tflite_op_versions(truncated)
