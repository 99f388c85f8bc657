"""The attack stage on a synthetic run directory written with rundir, through attack_run and the CLI."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from compleak.synthetic import VariantSpec as V
from compleak.synthetic import make_splits, synthetic_outputs
from harness.attack.stage import FitCache, attack_rows, attack_run, load_scores, scores_path
from harness.cli.main import app
from rundir import ArtifactRecord, Manifest, OutputBatch, RunDir, load_results

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
    shutil.rmtree(dst / "attacks", ignore_errors=True)  # a run never attacked (the first test attacks base_run)
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
        assert ("NR", "posterior-label-rf", aid) in key and ("NR", "sorted-posterior-label-rf", aid) in key
        assert ("baseline", "lira-offline-per-class", aid) in key  # shadows not queried on the candidates
    assert not any(r.method.startswith("rmia") for r in rows)  # config: baselines = ["lira"]
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
                           "n_members", "n_nonmembers", "framework", "format", "artifact_id", "eps_lower_bound",
                           "per_class", "score_key"}
    # per-example scores beside the results: one array per row, in the order of the candidates
    sc = load_scores(scores_path(RunDir(base_run), "local"))
    splits = RunDir(base_run).load_splits()
    assert np.array_equal(sc["index"], splits.candidates) and sc["y"].tolist() == [1] * 60 + [0] * 60
    assert set(sc) == {"index", "y", "labels"} | {r.model_extra["score_key"] for r in rows}
    assert len({r.model_extra["score_key"] for r in rows}) == len(rows)
    for r in rows:
        assert roc_auc_score(sc["y"], sc[r.model_extra["score_key"]]) == pytest.approx(r.auc)


def test_fit_once_score_every_device(run: Path) -> None:
    rd = RunDir(run)
    dev = "ssh://pi@board:22"
    for fw, fmt, variant in ARTIFACTS:  # every target also on the board, slightly different outputs
        aid = f"{fw}-target-{variant}.{fmt}"
        b = rd.load_outputs("local", aid)
        _write_outputs(rd, dev, _record(fw, fmt, variant, "target"), OutputBatch(b.index, b.values * 1.01, "logits"))
    fits = FitCache()
    out = attack_run(run, device=None, families=["NR", "SR"], console=_quiet(), fits=fits)
    assert set(out) == {"local", dev}
    # the board has no shadow outputs: both devices use the host's shadows, so every group is fitted once
    n_groups = fits.fitted
    assert n_groups == len(fits) == 3  # tf primary set, torch primary set, torch onnx prune-0.8 (+ pte original)
    assert len(out["local"]) == len(out[dev])
    # scoring the same fits again (the compare stage's host-shadow case) fits nothing new and gives the same rows
    rows, _ = attack_rows(run, dev, shadow_device="local", families=["NR", "SR"], fits=fits)
    assert fits.fitted == n_groups
    assert [r.model_dump() for r in rows] == [r.model_dump() for r in out[dev]]
    fresh, _ = attack_rows(run, dev, shadow_device="local", families=["NR", "SR"])  # fit-and-score from scratch
    assert [r.model_dump() for r in fresh] == [r.model_dump() for r in rows]
    assert (run / "attacks" / "ssh_pi@board_22" / "scores.npz").is_file()


def test_fits_as_ray_tasks_give_the_same_rows_and_scores(run: Path, tmp_path: Path) -> None:
    """With a Ray executor (embedded, 2 workers) every attack group is fitted in a Ray task: the rows and the
    per-example scores equal the in-process fits bit for bit."""
    from harness.execution import ExecOptions, RayExecutor

    other = tmp_path / "ray-run"
    shutil.copytree(run, other)
    serial = attack_run(run, families=["NR", "SR", "MR"], console=_quiet())
    fits = FitCache()
    with RayExecutor(ExecOptions(workers=2), tmp_path) as ex:
        on_ray = attack_run(other, families=["NR", "SR", "MR"], console=_quiet(), fits=fits, executor=ex)
        assert ex.mode == "embedded"
    assert fits.fitted == 3  # each group once, on a worker
    assert [r.model_dump() for r in on_ray["local"]] == [r.model_dump() for r in serial["local"]]
    a, b = load_scores(scores_path(RunDir(run), "local")), load_scores(scores_path(RunDir(other), "local"))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


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


def _write_perturbed(rd: RunDir, device: str, aid: str, seed: int) -> None:
    b = rd.load_outputs(device, aid)
    noise = np.random.default_rng(seed).normal(0.0, 0.05, size=(len(b.index), 4, b.values.shape[1]))
    np.savez(rd.outputs_dir(device) / f"{aid}.perturbed.npz", index=b.index,
             logits=(b.values[:, None, :] + noise).astype(np.float32), epsilon=np.float64(0.05))


def test_samia_from_perturbed_outputs_and_a_corrupt_perturbed_file(run: Path) -> None:
    rd = RunDir(run)
    tf = [a for a in ARTIFACTS if a[0] == "tf"]
    for i, (fw, fmt, variant) in enumerate(tf):  # the collect stage perturbs targets and reference 0
        _write_perturbed(rd, "local", f"{fw}-target-{variant}.{fmt}", i)
        _write_perturbed(rd, "local", f"{fw}-shadow0-{variant}.{fmt}", 10 + i)
    out = attack_run(run, device="local", families=["NR"], console=_quiet())
    samia = {r.model_extra["artifact_id"] for r in out["local"] if r.method == "samia"}
    assert samia == {f"tf-target-{v}.tflite" for _, _, v in tf}  # torch has no perturbed outputs: no row
    bad = rd.outputs_dir("local") / "tf-shadow0-int8.tflite.perturbed.npz"
    bad.write_bytes(b"not a zip file")
    msg = _cli_error(run, "--families", "NR")
    assert str(bad) in msg and "re-collect" in msg


# --------------------------------------------------------------------------- results are never lost (issue 22)


def _rows_by_key(run: Path) -> dict[str, dict]:
    return {r["score_key"]: r for r in json.loads(RunDir(run).results("local").read_text())}


def test_unchanged_inputs_skip_and_a_subset_merges(run: Path) -> None:
    attack_run(run, families=None, console=_quiet())
    rd = RunDir(run)
    before, stamp = _rows_by_key(run), rd.results("local").stat().st_mtime_ns
    assert {r["family"] for r in before.values()} == {"NR", "SR", "MR", "baseline"}
    again = CliRunner().invoke(app, ["attack", str(run), "--families", "NR"])
    assert again.exit_code == 0, again.output
    assert "attack local: up to date" in again.output and "--force recomputes" in again.output
    assert rd.results("local").stat().st_mtime_ns == stamp  # nothing rewritten
    forced = CliRunner().invoke(app, ["attack", str(run), "--families", "NR", "--force"])
    assert forced.exit_code == 0, forced.output
    assert "rows of MR, SR kept" in " ".join(forced.output.split())
    after = _rows_by_key(run)
    assert after.keys() == before.keys()  # NR and the baselines recomputed, SR and MR kept: no row lost
    for key, row in before.items():
        assert after[key]["auc"] == row["auc"], key
    scores = load_scores(scores_path(rd, "local"))
    assert set(after) <= set(scores)
    assert json.loads((rd.attacks_dir("local") / "state.json").read_text())["families"] == ["NR", "SR", "MR"]


def test_a_subset_over_rows_of_other_inputs_is_refused_and_changes_nothing(run: Path) -> None:
    attack_run(run, families=None, console=_quiet())
    rd = RunDir(run)
    files = {p: p.read_bytes() for p in rd.attacks_dir("local").iterdir()}
    out = rd.output_npz("local", "tf-target-int8.tflite")
    out.write_bytes(out.read_bytes())  # the same bytes, a new modification time: the inputs count as changed
    msg = _cli_error(run, "--families", "NR")
    assert str(rd.results("local")) in msg and "SR, MR rows were computed from other inputs" in msg
    assert "compleak attack" in msg and "--force" in msg
    assert {p: p.read_bytes() for p in rd.attacks_dir("local").iterdir()} == files  # the run is as it was
    (rd.attacks_dir("local") / "state.json").unlink()  # rows from before state.json existed
    assert "predate attacks/<device>/state.json" in _cli_error(run, "--families", "SR")
    forced = CliRunner().invoke(app, ["attack", str(run), "--families", "NR", "--force"])  # replace, and say so
    assert forced.exit_code == 0 and "SR, MR rows of other inputs replaced (--force)" in " ".join(forced.output.split())
    assert {r["family"] for r in _rows_by_key(run).values()} == {"NR", "baseline"}
    res = CliRunner().invoke(app, ["attack", str(run)])  # every family: nothing to drop
    assert res.exit_code == 0, res.output
    assert {r["family"] for r in _rows_by_key(run).values()} == {"NR", "SR", "MR", "baseline"}


def test_a_family_the_config_no_longer_lists_is_replaced_with_a_note(run: Path) -> None:
    attack_run(run, families=None, console=_quiet())
    exp = RunDir(run).experiment
    exp.write_text(exp.read_text() + 'families = ["NR"]\n')
    res = CliRunner().invoke(app, ["attack", str(run)])
    assert res.exit_code == 0, res.output
    assert "rows replaced: the run's [attack] families are now NR" in res.output
    assert {r["family"] for r in _rows_by_key(run).values()} == {"NR", "baseline"}
