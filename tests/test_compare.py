"""Host versus device: divergence numbers on constructed outputs (checked by hand), leakage deltas, the compare
file of a run, and the auditor's case of an attack trained on host shadows and applied to device targets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from harness.compare import compare_device, compare_run, divergence_arrays, leakage_deltas, output_divergence
from harness.errors import HarnessError
from rundir import ArtifactRecord, OutputBatch, ResultRow, RunDir, load_results


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_divergence_hand_checked_logits() -> None:
    host = np.array([[0, 0], [1, 2], [3, 1]], np.float32)
    dev = np.array([[0, 0], [1, 2.5], [1, 3]], np.float32)
    d = divergence_arrays(host, dev, "logits")
    # |diff| = [[0,0],[0,.5],[2,2]]
    assert d["n"] == 3
    assert d["max_abs_diff"] == pytest.approx(2.0)
    assert d["mean_abs_diff"] == pytest.approx(4.5 / 6)
    # argmax: host [0, 1, 0], device [0, 1, 1]
    assert d["argmax_flips"] == 1 and d["argmax_flip_rate"] == pytest.approx(1 / 3)
    # row 0 is identical; values identical: row 0 (2) + row 1 first (1) = 3 of 6
    assert d["frac_bit_identical"] == pytest.approx(1 / 3)
    assert d["frac_values_bit_identical"] == pytest.approx(0.5)
    # KL(host || device) per row: row1 p=(1-s(1), s(1)), q=(1-s(1.5), s(1.5)); row2 p=(s(2), 1-s(2)), q mirrored
    p1, q1 = _sig(1.0), _sig(1.5)
    kl1 = (1 - p1) * math.log((1 - p1) / (1 - q1)) + p1 * math.log(p1 / q1)
    kl2 = (2 * _sig(2.0) - 1) * 2.0  # (p - (1-p)) * log(p / (1-p)) with log-odds 2
    assert kl1 == pytest.approx(0.0226223, abs=1e-6) and kl2 == pytest.approx(1.523188, abs=1e-6)
    assert d["kl_mean"] == pytest.approx((0 + kl1 + kl2) / 3, rel=1e-9)
    assert d["kl_max"] == pytest.approx(kl2, rel=1e-9)


def test_divergence_probs_and_identical() -> None:
    host = np.array([[0.5, 0.5], [0.9, 0.1]], np.float32)
    dev = np.array([[0.25, 0.75], [0.9, 0.1]], np.float32)
    d = divergence_arrays(host, dev, "probs")
    assert d["kl_mean"] == pytest.approx((0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75)) / 2, rel=1e-6)
    assert d["argmax_flips"] == 1  # row 0: tie -> class 0 on host, class 1 on device
    same = divergence_arrays(host, host.copy(), "probs")
    assert same["max_abs_diff"] == 0 and same["kl_max"] == 0 and same["frac_bit_identical"] == 1.0
    # -0.0 and 0.0 are equal numbers but not the same bits
    z = divergence_arrays(np.array([[0.0, 1.0]], np.float32), np.array([[-0.0, 1.0]], np.float32), "logits")
    assert z["max_abs_diff"] == 0 and z["frac_bit_identical"] == 0 and z["frac_values_bit_identical"] == 0.5
    with pytest.raises(HarnessError, match="shape"):
        divergence_arrays(host, dev[:1], "probs")


def test_output_divergence_aligns_by_example_id() -> None:
    art = ArtifactRecord(
        id="a.tflite",
        role="target",
        variant="int8",
        framework="tf",
        format="tflite",
        path="artifacts/a.tflite",
        sha256="0" * 64,
        bytes=1,
        inputs=[],
        outputs=[],
    )
    host = OutputBatch(np.array([3, 1, 2]), np.array([[1, 0], [0, 1], [5, 5]], np.float32))
    dev = OutputBatch(np.array([1, 3, 9]), np.array([[0, 1], [1, 0], [7, 7]], np.float32))  # same rows, reordered
    d = output_divergence(host, dev, art)
    assert d.n == 2 and d.max_abs_diff == 0 and d.frac_bit_identical == 1.0 and d.variant == "int8"
    with pytest.raises(HarnessError, match="re-collect"):
        output_divergence(host, OutputBatch(dev.index, dev.values, "probs"), art)


def _row(family: str, method: str, variant, auc: float, tpr01: float | None, **extra) -> ResultRow:
    return ResultRow(
        family=family,
        method=method,
        variant=variant,
        auc=auc,
        balanced_accuracy=0.6,
        tpr_at_fpr={"0.001": None, "0.01": tpr01},
        auc_ci=[auc - 0.02, auc + 0.02],
        n_members=500,
        n_nonmembers=500,
        **extra,
    )


def test_leakage_deltas_match_rows() -> None:
    host = [
        _row("NR", "posterior-lr", "int8", 0.60, 0.02, artifact_id="tf-target-int8.tflite"),
        _row("NR", "posterior-lr", "int8", 0.70, 0.03, artifact_id="torch-target-int8.pte"),
        _row("MR", "mr-no-original", ["int8", "prune-0.8"], 0.75, 0.05),
    ]
    dev = [
        _row("NR", "posterior-lr", "int8", 0.65, 0.04, artifact_id="tf-target-int8.tflite"),
        _row("MR", "mr-no-original", ["int8", "prune-0.8"], 0.71, None),
        _row("SR", "sr2-lr", "int8", 0.9, 0.1),
    ]  # no host counterpart: no delta
    d = leakage_deltas(host, dev)
    assert len(d) == 2
    nr = next(x for x in d if x["family"] == "NR")
    assert nr["artifact_id"] == "tf-target-int8.tflite"
    assert nr["delta_auc"] == pytest.approx(0.05) and nr["delta_tpr_at_fpr"]["0.01"] == pytest.approx(0.02)
    assert nr["delta_tpr_at_fpr"]["0.001"] is None
    mr = next(x for x in d if x["family"] == "MR")
    assert mr["delta_auc"] == pytest.approx(-0.04) and mr["delta_tpr_at_fpr"]["0.01"] is None


def test_compare_device_file_and_resume(tmp_path: Path) -> None:
    from test_report import DEVICE, FAST_ATTACKS, make_synthetic_run

    make_synthetic_run(tmp_path, n=60, variants=["original", "prune-0.8", "int8"], extra_toml=FAST_ATTACKS)
    console = Console(record=True)
    out = compare_device(tmp_path, DEVICE, console=console)
    assert out == tmp_path / "compare" / "ssh_tester@127.0.0.1_2222.json"
    c = json.loads(out.read_text())
    assert c["device"] == DEVICE and c["host"] == "local"
    assert len(c["artifacts"]) == 6  # 3 targets + 3 shadows, each on both devices
    for a in c["artifacts"]:
        assert 0 < a["max_abs_diff"] < 0.01 and 0 < a["frac_bit_identical"] < 1
    # every device row has a host counterpart except the MR row, whose method name differs on the device
    assert len(c["leakage_deltas"]) == len(json.loads(RunDir(tmp_path).results(DEVICE).read_text())) - 1
    mtime = out.stat().st_mtime_ns
    compare_device(tmp_path, DEVICE, console=console)  # nothing changed: not redone
    assert out.stat().st_mtime_ns == mtime and "up to date" in console.export_text()
    assert compare_run(tmp_path, console=Console(quiet=True)) == [out]
    with pytest.raises(HarnessError, match="no outputs for adb://nope"):
        compare_device(tmp_path, "adb://nope", console=console)
    with pytest.raises(HarnessError, match="must not be 'local'"):
        compare_device(tmp_path, "local", console=console)


def test_host_shadows_applied_to_device_targets(tmp_path: Path) -> None:
    """The device's TARGET outputs equal the host's but its SHADOW outputs are corrupted: an attack trained on host
    shadows and applied to device targets must then reproduce the host's own results exactly, while the device's own
    attacks (trained on its corrupted shadows) differ."""
    from test_report import DEVICE, FAST_ATTACKS, make_synthetic_run

    from harness.attack.stage import attack_run

    rd = make_synthetic_run(tmp_path, n=80, variants=["original", "prune-0.8", "int8"], extra_toml=FAST_ATTACKS)
    rng = np.random.default_rng(5)
    for a in rd.load_manifest().artifacts:
        host = rd.load_outputs("local", a.id)
        values = host.values if a.role == "target" else rng.permutation(host.values)  # shadows: labels scrambled
        OutputBatch(host.index, values.copy()).save(rd.output_npz(DEVICE, a.id))
    quiet = Console(quiet=True)
    host_rows = attack_run(tmp_path, device="local", console=quiet)["local"]
    dev_rows = attack_run(tmp_path, device=DEVICE, console=quiet)[DEVICE]
    out = compare_device(tmp_path, DEVICE, console=quiet)
    transfer = json.loads(out.read_text())["host_shadow_device_target"]
    assert len(transfer) == len(host_rows) > 10
    assert all(t["shadow_device"] == "local" and t["device"] == DEVICE for t in transfer)
    assert {t["family"] for t in transfer} >= {"NR", "SR", "MR", "baseline"}
    key = lambda r: (r["family"], r["method"], str(r["variant"]), str(r["artifact_id"]))
    host = {key(r.model_dump()): r.auc for r in host_rows}
    own = {key(r.model_dump()): r.auc for r in dev_rows}
    for t in transfer:
        assert t["auc"] == pytest.approx(host[key(t)], abs=1e-12)
        assert t["auc_device_shadows"] == pytest.approx(own[key(t)], abs=1e-12)
    assert any(abs(t["delta_auc_vs_device_shadows"]) > 0.01 for t in transfer)
    assert not any((tmp_path / "compare").glob(".host-shadow-*"))  # the temporary view is gone
    # the run's own results are untouched: the host-shadow attack ran on a view of the run
    assert [r.auc for r in load_results(rd.results(DEVICE))] == [r.auc for r in dev_rows]
