"""experiment.seeds: one complete run per seed, the report across seeds, and bit-identical reruns.

``test_rerun_is_bit_identical`` audits a tiny config from scratch into two directories, once with seeds [3, 4] and
once with seeds [3] (digits, TF-Lite and ExecuTorch artifacts, SAMIA perturbed queries on), and compares seed 3's
artifact sha256s, outputs files and attack result rows: same config + seed must give the same bytes (torch
deterministic algorithms, TF op determinism, fixed thread counts:
harness.build.tf_pipeline / harness.build.torch_train).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from test_report import make_synthetic_run

from devices.spec import DeviceSpec
from harness.audit import _run_audit, seed_config
from harness.collect.fanout import AuditDevice
from harness.config import load_experiment
from harness.report.stage import write_report
from rundir import RunDir

SEEDS = [3, 4]
TOML = f"""
# two seeds of a tiny audit (tests/test_seeds.py)
[experiment]
name = "seeds-test"
seed = 0
seeds = {SEEDS}

[data]
dataset = "digits"

[splits]
target_in = 100
target_out = 100
shadow_in = 100
shadow_out = 100
n_shadows = 1
holdout_fraction = 0.1

[model]
arch = "cnn-small"

[train]
epochs = 1
batch_size = 32
lr = 0.003
threads = 1

[compress]
finetune_epochs = 1
finetune_lr = 0.0005
representative_samples = 50
tf = ["original", "int8"]
torch = ["original", "prune-0.8"]

[export]
frameworks = ["tf", "torch"]
torch_formats = ["pte"]

[attack]
families = ["NR", "SR"]
baselines = ["rmia"]
bootstrap = 20
samia_perturbations = 2
"""


def quiet() -> Console:
    return Console(quiet=True)


def test_seed_config_sets_the_seed_and_drops_the_list() -> None:
    raw = tomllib.loads(seed_config(TOML.encode(), 4).decode())
    assert raw["experiment"]["seed"] == 4 and "seeds" not in raw["experiment"]
    full = tomllib.loads(TOML)
    del full["experiment"]["seeds"], full["experiment"]["seed"], raw["experiment"]["seed"]
    assert raw == full  # nothing else changes
    assert seed_config(TOML.encode(), 4) == seed_config(TOML.encode(), 4)  # same bytes: build cache keys hold


def _add_audit_fields(rd: RunDir, shift: float) -> None:
    """Give every result row an eps_lower_bound and per_class figure (as compleak.metrics writes them)."""
    for dev in ("local", "ssh://tester@127.0.0.1:2222"):
        path = rd.results(dev)
        rows = json.loads(path.read_text())
        for k, r in enumerate(rows):
            r["eps_lower_bound"] = {"eps": 0.1 * k + shift, "level": 0.95}
            r["per_class"] = {"auc": {"0": 0.6 + shift, "3": 0.7 + shift}, "most_vulnerable": [3, 0], "n_classes": 2}
        path.write_text(json.dumps(rows))


def test_report_across_seeds_shows_mean_sd_and_per_seed_cis(tmp_path: Path) -> None:
    root = tmp_path / "run"
    for k, seed in enumerate(SEEDS):
        rd = make_synthetic_run(root / "seeds" / str(seed), n=60, seed=seed)
        _add_audit_fields(rd, 0.01 * k)
        write_report(rd.root, console=quiet())  # the audit writes each seed's own report first
    (root / "seeds" / "not-a-seed").mkdir()  # ignored: not a decimal seed
    (root / "experiment.toml").write_text(TOML)
    console = Console(record=True, width=200)
    index = write_report(root, console=console)
    summary = json.loads((root / "report" / "summary.json").read_text())
    assert summary["seeds"] == SEEDS and [p["seed"] for p in summary["per_seed"]] == SEEDS
    per_seed = {s: {(r["family"], r["method"], json.dumps(r["variant"])): r
                    for r in json.loads(RunDir(root / "seeds" / str(s)).results("local").read_text())}
                for s in SEEDS}
    e = next(e for e in summary["across_seeds"] if e["device"] == "local" and e["variant"] == "prune-0.6"
             and e["method"] == "posterior-lr")
    aucs = [per_seed[s][("NR", "posterior-lr", '"prune-0.6"')]["auc"] for s in SEEDS]
    assert e["n_seeds"] == 2 and [p["auc"] for p in e["per_seed"]] == aucs
    assert e["auc_mean"] == pytest.approx(np.mean(aucs)) and e["auc_sd"] == pytest.approx(np.std(aucs, ddof=1))
    assert e["per_seed"][0]["auc_ci"] == per_seed[SEEDS[0]][("NR", "posterior-lr", '"prune-0.6"')]["auc_ci"]
    assert e["eps_sd"] is not None and e["eps_mean"] is not None
    assert summary["worst"]["auc_mean"] == max(x["auc_mean"] for x in summary["across_seeds"])
    best = {(b["variant"], b["device"]) for b in summary["best_per_target"]}
    assert ("original", "local") in best and len(best) == len(summary["best_per_target"])
    assert summary["threat_model"]["summary"].startswith("black-box")  # from the seeds' threat_model.json
    page = index.read_text()
    assert "±" in page and "AUC per seed [95% CI]" in page and "seeds/3/report/index.html" in page
    assert "<script>" not in page and "http://" not in page
    text = console.export_text()
    assert "leakage across seeds 3, 4" in text and "±" in text and "threat model" in text


def test_single_run_report_shows_eps_per_class_and_threat_model(tmp_path: Path) -> None:
    rd = make_synthetic_run(tmp_path / "run", n=60)
    _add_audit_fields(rd, 0.0)
    console = Console(record=True, width=200)
    page = write_report(rd.root, console=console).read_text()
    summary = json.loads((rd.root / "report" / "summary.json").read_text())
    assert all(p["eps_lower_bound"] is not None and p["per_class"] for p in summary["best_per_target"])
    assert summary["worst"]["eps_lower_bound"] is not None
    assert summary["threat_model"]["summary"].startswith("black-box")
    assert "Per-class vulnerability" in page and "most vulnerable classes" in page and "ε ≥" in page
    assert "ε ≥" in console.export_text()


@pytest.mark.slow
def test_rerun_is_bit_identical(tmp_path: Path) -> None:
    runs = [tmp_path / "a", tmp_path / "b"]
    for out, seeds in zip(runs, (SEEDS, SEEDS[:1])):  # b: the first seed only (a third build, not a fourth)
        cfg = tmp_path / f"{out.name}.toml"
        cfg.write_text(TOML.replace(f"seeds = {SEEDS}", f"seeds = {seeds}"))
        # the audit's own orchestration, with a patient runner start: the shared test machine is often loaded
        local = AuditDevice(DeviceSpec("local", start_timeout=600.0))
        _run_audit(cfg, load_experiment(cfg), [local], out, None, quiet())
    a, b = (RunDir(r) for r in runs)
    shas: dict[int, dict[str, str]] = {}
    for seed in SEEDS[:1]:
        sa, sb = RunDir(a.root / "seeds" / str(seed)), RunDir(b.root / "seeds" / str(seed))
        assert tomllib.loads(sa.experiment.read_text())["experiment"]["seed"] == seed
        assert sa.experiment.read_bytes() == sb.experiment.read_bytes()
        assert sa.splits.read_bytes() == sb.splits.read_bytes()
        ma, mb = sa.load_manifest(), sb.load_manifest()
        shas[seed] = {x.id: x.sha256 for x in ma.artifacts}
        assert shas[seed] == {x.id: x.sha256 for x in mb.artifacts}, f"seed {seed}: artifacts differ on a rerun"
        assert {x.id: x.host_accuracy for x in ma.artifacts} == {x.id: x.host_accuracy for x in mb.artifacts}
        for npz in sorted(sa.outputs_dir("local").glob("*.npz")):
            with np.load(npz) as za, np.load(sb.outputs_dir("local") / npz.name) as zb:
                assert set(za.files) == set(zb.files)
                for k in za.files:
                    assert np.array_equal(za[k], zb[k]), f"seed {seed}: {npz.name}[{k}] differs on a rerun"
        assert any(p.name.endswith(".perturbed.npz") for p in sa.outputs_dir("local").iterdir())
        rows_a = json.loads(sa.results("local").read_text())
        rows_b = json.loads(sb.results("local").read_text())
        assert rows_a and rows_a == rows_b, f"seed {seed}: result rows differ on a rerun"
    seed4 = RunDir(a.root / "seeds" / str(SEEDS[1])).load_manifest()
    assert shas[SEEDS[0]] != {x.id: x.sha256 for x in seed4.artifacts}  # the seeds really differ
    summary = json.loads((a.root / "report" / "summary.json").read_text())
    assert summary["seeds"] == SEEDS and all(e["n_seeds"] == 2 for e in summary["best_per_target"])
