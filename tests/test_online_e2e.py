"""Online LiRA and RMIA end to end (issue 25): a real build of K = 4 trained reference models on an overfit tiny
model, the real collect on `local`, the real attack stage; the rows are reproducible bit for bit and leak."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from build_fixtures import digits_toml
from typer.testing import CliRunner

from harness.cli.main import app
from rundir import RunDir
from rundir.results import load_results

K = 4
ONLINE = f"""
[attack]
threat_model = "online"
reference_models = {K}
families = []
baselines = ["lira", "rmia"]
bootstrap = 200
"""


def _cli(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (args, result.output, result.exception)


@pytest.fixture(scope="module")
def online_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("online")
    toml = digits_toml("online", seed=5, n=150, epochs=40, tf=("original", "int8"), torch=(), extra=ONLINE)
    toml = toml.replace("n_shadows = 1\n", "n_shadows = 1\npopulation = 200\n")  # RMIA's z set, a [splits] key
    cfg = root / "online.toml"
    cfg.write_text(toml)
    run = root / "run"
    _cli("build", str(cfg), "--out", str(run), "--no-ray")
    _cli("collect", str(run), "--device", "local")
    _cli("attack", str(run))
    return run


def _rows(run: Path):  # type: ignore[no-untyped-def]
    return {(str(r.variant), r.method): r for r in load_results(RunDir(run).results("local"))}


def test_online_rows_leak_on_an_overfit_model(online_run: Path) -> None:
    threat = json.loads((online_run / "threat_model.json").read_text())
    assert threat["threat_model"] == "online" and threat["reference_models"] == K
    rows = _rows(online_run)
    targets = {t for t, _ in rows}
    assert targets == {"original", "int8"}
    for t in targets:
        for method in ("lira-online", "rmia-online", "lira-offline", "rmia-offline"):
            assert (t, method) in rows, (t, method, sorted(rows))
        for method in ("lira-online", "rmia-online"):
            r = rows[(t, method)]
            assert r.model_extra["n_reference_models"] == K, r.model_extra
            assert r.auc_ci[0] > 0.5, (t, method, r.auc, r.auc_ci)


def test_online_scores_are_reproducible_bit_for_bit(online_run: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    shutil.copytree(online_run, again, symlinks=True)
    shutil.rmtree(RunDir(again).attacks_dir("local"))  # recomputed from the same collected outputs
    _cli("attack", str(again))
    a, b = RunDir(online_run), RunDir(again)
    x, y = np.load(a.scores("local")), np.load(b.scores("local"))
    assert sorted(x.files) == sorted(y.files)
    online = [k for k in x.files if "online" in k]
    assert len(online) == 4, x.files  # lira-online and rmia-online on both targets
    for k in x.files:
        assert x[k].tobytes() == y[k].tobytes(), k
    ra, rb = _rows(online_run), _rows(again)
    for key in ra:
        if "online" in key[1]:
            assert ra[key].auc == rb[key].auc and ra[key].auc_ci == rb[key].auc_ci, key
