"""The attack stage on a synthetic run directory written with compleak.rundir, through attack_run and the CLI."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from compleak.rundir import ArtifactRecord, Manifest, OutputBatch, RunDir, load_results
from compleak.synthetic import VariantSpec as V
from compleak.synthetic import make_splits, synthetic_outputs
from harness.attack_stage import attack_run
from harness.cli import app

# (framework, format, variant) of every target artifact; each gets one shadow artifact of the same kind
ARTIFACTS = [
    ("tf", "tflite", "original"),
    ("tf", "tflite", "prune-0.8"),
    ("tf", "tflite", "int8"),
    ("torch", "pte", "original"),
    ("torch", "pte", "prune-0.8"),
    ("torch", "onnx", "prune-0.8"),  # no onnx original: SR pairs it with the pte original
]
SPECS = {"original": V(1.0, 0.0), "prune-0.8": V(2.0, 0.0), "int8": V(1.5, 0.0)}


def _record(fw: str, fmt: str, variant: str, role: str) -> ArtifactRecord:
    tag = "target" if role == "target" else "shadow0"
    spec = {"name": "x", "shape": [-1, 10], "dtype": "float32"}
    aid = f"{fw}-{tag}-{variant}.{fmt}"
    return ArtifactRecord.model_validate(
        {"id": aid, "role": role, "shadow": None if role == "target" else 0, "variant": variant, "framework": fw,
         "format": fmt, "path": f"artifacts/{aid}", "sha256": "0" * 64, "bytes": 1, "inputs": [spec], "outputs": [spec]}
    )


def _write_outputs(rd: RunDir, device: str, art: ArtifactRecord, batch: OutputBatch) -> None:
    batch.save(rd.output_npz(device, art.id))
    rd.output_provenance(device, art.id).write_text(json.dumps({"device": {"id": device}, "sha256": art.sha256}))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    rd = RunDir(root)
    splits = make_splits((60, 60), (90, 90), n_shadows=1, seed=0)
    splits.save(rd.splits)
    (root / "experiment.toml").write_text('[attack]\nbootstrap = 10\nbaselines = ["lira"]\n')
    manifest = Manifest()
    outputs = {fw: synthetic_outputs(splits, SPECS, seed=i) for i, fw in enumerate(("tf", "torch"))}
    for fw, fmt, variant in ARTIFACTS:
        t, s = outputs[fw]
        tgt, sh = _record(fw, fmt, variant, "target"), _record(fw, fmt, variant, "shadow")
        manifest.upsert(tgt)
        manifest.upsert(sh)
        jitter = 0.01 if fmt == "onnx" else 0.0  # another runtime: almost the same outputs
        _write_outputs(rd, "local", tgt, OutputBatch(t[variant].index, t[variant].values + jitter, "logits"))
        _write_outputs(rd, "local", sh, s[variant][0])
    manifest.save(rd.manifest)
    return root


@pytest.fixture
def run(base_run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(base_run, dst)
    return dst


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def test_attack_run_groups_artifacts_and_writes_results(base_run: Path) -> None:
    out = attack_run(base_run, device=None, families=None, console=_quiet())
    assert list(out) == ["local"]
    rows = load_results(RunDir(base_run).results("local"))
    assert [r.model_dump() for r in rows] == [r.model_dump() for r in out["local"]]
    key = {(r.family, r.method, r.model_extra["artifact_id"]) for r in rows if r.family != "MR"}
    for fw, fmt, variant in ARTIFACTS:  # NR and LiRA on every collected artifact
        aid = f"{fw}-target-{variant}.{fmt}"
        assert ("NR", "posterior-label-rf", aid) in key and ("baseline", "lira-offline", aid) in key
    assert not any(r.method == "rmia-offline" for r in rows)  # config: baselines = ["lira"]
    sr = {r.model_extra["artifact_id"]: r.model_extra["original_artifact_id"] for r in rows if r.family == "SR"}
    assert sr == {
        "tf-target-prune-0.8.tflite": "tf-target-original.tflite",
        "tf-target-int8.tflite": "tf-target-original.tflite",
        "torch-target-prune-0.8.pte": "torch-target-original.pte",
        "torch-target-prune-0.8.onnx": "torch-target-original.pte",
    }
    mr = [r for r in rows if r.family == "MR"]
    assert {r.method for r in mr} == {"mr-fusion", "mr-no-original"}  # only tf has two compressed variants
    assert all(r.variant == ["prune-0.8", "int8"] and r.model_extra["framework"] == "tf" for r in mr)
    assert mr[0].model_extra["artifact_id"] == ["tf-target-prune-0.8.tflite", "tf-target-int8.tflite"]
    for r in rows:
        assert r.model_extra["device"] == "local" and r.model_extra["shadow_device"] == "local"
        assert r.n_members == 60 and r.n_nonmembers == 60
        assert r.tpr_at_fpr["0.001"] is None and r.model_extra["fpr_resolvable"]["0.001"] is False
        assert r.model_extra["n_bootstrap"] == 10
    raw = json.loads(RunDir(base_run).results("local").read_text())
    assert set(raw[0]) >= {"family", "method", "variant", "auc", "balanced_accuracy", "tpr_at_fpr", "auc_ci",
                           "n_members", "n_nonmembers", "framework", "format", "artifact_id"}


def test_cli_attack_prints_a_table_and_respects_families(run: Path) -> None:
    res = CliRunner().invoke(app, ["attack", str(run), "--families", "NR"])
    assert res.exit_code == 0, res.output
    assert "membership leakage on local" in res.output and "posterior-lr" in res.output
    rows = load_results(RunDir(run).results("local"))
    assert {r.family for r in rows} == {"NR", "baseline"}


def test_shadow_outputs_fall_back_to_the_host(run: Path) -> None:
    rd = RunDir(run)
    dev = "ssh://pi@board:22"
    for fw, fmt, variant in ARTIFACTS[:3]:  # only the tf targets were run on the board
        aid = f"{fw}-target-{variant}.{fmt}"
        b = rd.load_outputs("local", aid)
        _write_outputs(rd, dev, _record(fw, fmt, variant, "target"), OutputBatch(b.index, b.values * 1.01, "logits"))
    out = attack_run(run, device=dev, families=["NR", "SR"], console=_quiet())
    rows = out[dev]
    assert (run / "attacks" / "ssh_pi@board_22" / "results.json").is_file()
    assert {r.model_extra["framework"] for r in rows} == {"tf"}
    assert all(r.model_extra["shadow_device"] == "local" and r.model_extra["device"] == dev for r in rows)


def _cli_error(run: Path, *args: str) -> str:
    res = CliRunner().invoke(app, ["attack", str(run), *args])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    return lines[0]


def test_missing_shadow_outputs_name_the_file(run: Path) -> None:
    path = RunDir(run).output_npz("local", "tf-shadow0-int8.tflite")
    path.unlink()
    msg = _cli_error(run)
    assert str(path) in msg and "shadow outputs of tf-shadow0-int8.tflite" in msg and "compleak collect" in msg


def test_nan_outputs_name_the_file(run: Path) -> None:
    rd = RunDir(run)
    b = rd.load_outputs("local", "torch-target-prune-0.8.pte")
    v = b.values.copy()
    v[0, 0] = np.nan
    np.savez(rd.output_npz("local", "torch-target-prune-0.8.pte"), index=b.index, logits=v)
    msg = _cli_error(run)
    assert str(rd.output_npz("local", "torch-target-prune-0.8.pte")) in msg and "NaN" in msg


def test_wrong_class_count_names_the_file(run: Path) -> None:
    rd = RunDir(run)
    path = rd.output_npz("local", "tf-target-int8.tflite")
    b = rd.load_outputs("local", "tf-target-int8.tflite")
    np.savez(path, index=b.index, logits=b.values[:, :8])
    msg = _cli_error(run)
    assert str(path) in msg and "8 classes" in msg


def test_index_label_mismatch_names_the_file(run: Path) -> None:
    rd = RunDir(run)
    path = rd.output_npz("local", "tf-shadow0-original.tflite")
    b = rd.load_outputs("local", "tf-shadow0-original.tflite")
    np.savez(path, index=np.r_[b.index, [99_999]], logits=np.vstack([b.values, b.values[:1]]))
    msg = _cli_error(run)
    assert str(path) in msg and "outside" in msg


def test_overlapping_splits_name_the_file(run: Path) -> None:
    rd = RunDir(run)
    z = dict(np.load(rd.splits))
    z["shadow_in_0"] = np.r_[z["shadow_in_0"], z["target_in"][:2]]
    z["shadow_in"] = z["shadow_in_0"]
    np.savez(rd.splits, **z)
    msg = _cli_error(run)
    assert str(rd.splits) in msg and "overlaps the target split" in msg


def test_bad_device_family_and_run_dir(run: Path, tmp_path: Path) -> None:
    assert "nothing collected for device 'adb://X1'" in _cli_error(run, "--device", "adb://X1")
    assert "unknown attack families ['XR']" in _cli_error(run, "--families", "NR,XR")
    assert "run directory not found" in _cli_error(tmp_path / "nope")
