"""`compleak export` and the DataFrame API (`compleak.load_results`, `compleak.load_scores`) over real run directories.

``attacked_run`` (tests/results_fixtures.py) went through the real attack stage, so it has ε bounds, per-class
figures and ``scores.npz``; every exported value is compared with the run's own files read directly.

The hostile-input cases (marked ``hostile``) go through the shared check (``hostile_fixtures.check``): exit 2, one
``error:`` line, no traceback, the run and a sentinel folder beside it byte-identical.
"""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hostile_fixtures import TreeState, check, cli, copy_run, make_site
from test_report import DEVICE, make_synthetic_run

import compleak
from rundir import ContractError

ROOT = Path(__file__).resolve().parents[1]
DEVICE_DIR = "ssh_tester@127.0.0.1_2222"


def _raw(run: Path) -> list[tuple[str, dict]]:
    out = []
    for res in sorted((run / "attacks").glob("*/results.json")):
        out += [(res.parent.name, r) for r in json.loads(res.read_text())]
    return out


def _key(device: str, family: str, method: str, variant: object) -> tuple[str, str, str, str]:
    v = "+".join(variant) if isinstance(variant, list) else str(variant)
    return (device, family, method, v)


def _same(a: object, b: object) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return a == pytest.approx(b, abs=1e-12)


def test_load_results_flattens_every_row(attacked_run: Path) -> None:
    df = compleak.load_results(attacked_run)
    raw = _raw(attacked_run)
    assert len(df) == len(raw) > 40
    assert list(df.columns[:8]) == ["device", "family", "method", "variant", "artifact_id", "framework", "format",
                                    "shadow_device"]  # fmt: skip
    for col in ("auc", "auc_lo", "auc_hi", "balanced_accuracy", "eps", "tpr@0.001", "tpr@0.01", "resolvable@0.01",
                "eps_bound.tpr_lo", "per_class", "score_key"):  # fmt: skip
        assert col in df.columns, col
    assert "roc" not in df.columns and "seed" not in df.columns
    assert set(df.device) == {"local", DEVICE}
    by_key = {_key(r["device"], r["family"], r["method"], r["variant"]): r for r in df.to_dict("records")}
    ids = {"local": "local", DEVICE_DIR: DEVICE}
    for d, r in raw:
        got = by_key[_key(ids[d], r["family"], r["method"], r["variant"])]
        assert _same(got["auc"], r["auc"]) and _same(got["auc_lo"], r["auc_ci"][0])
        assert _same(got["auc_hi"], r["auc_ci"][1])
        assert _same(got["eps"], r["eps_lower_bound"]) and _same(got["balanced_accuracy"], r["balanced_accuracy"])
        assert not got["resolvable@0.01"]  # 60 non-members
        assert json.loads(got["per_class"]) == r["per_class"]


def test_load_scores_match_the_npz_and_the_rows(attacked_run: Path) -> None:
    df = compleak.load_scores(attacked_run, DEVICE)
    with np.load(attacked_run / "attacks" / DEVICE_DIR / "scores.npz") as z:
        assert df.example_id.tolist() == z["index"].tolist() and df.member.tolist() == z["y"].astype(bool).tolist()
        assert df.label.tolist() == z["labels"].tolist()
        keys = [k for k in z.files if k not in ("index", "y", "labels")]
        for k in keys:
            assert np.array_equal(df[k].to_numpy(), z[k])
    assert list(df.columns[:3]) == ["example_id", "member", "label"] and set(df.columns[3:]) == set(keys)
    # every result row's score_key names a score column, and its AUC is recomputed from that column
    from sklearn.metrics import roc_auc_score

    rows = json.loads((attacked_run / "attacks" / DEVICE_DIR / "results.json").read_text())
    assert {r["score_key"] for r in rows} == set(keys)
    for r in rows[:10]:
        assert roc_auc_score(df.member, df[r["score_key"]]) == pytest.approx(r["auc"], abs=1e-9)
    assert compleak.load_scores(attacked_run, DEVICE_DIR).equals(df)  # the folder name works too


@pytest.mark.hostile
def test_load_scores_errors_are_one_line_contract_errors(attacked_run: Path, tmp_path: Path) -> None:
    run = copy_run(attacked_run, tmp_path / "run")
    site = make_site(run)
    check(lambda: compleak.load_scores(run, "adb://x"), "no per-example scores for device adb://x",
          "devices with scores: local, ssh_tester", "rerun 'compleak attack", site=site)
    with pytest.raises(ContractError):  # the type the API's callers catch
        compleak.load_scores(run, "adb://x")
    npz = run / "attacks" / "local" / "scores.npz"
    npz.write_bytes(b"not a zip")
    check(lambda: compleak.load_scores(run, "local"), "not a readable .npz file", site=site)
    with np.load(attacked_run / "attacks" / "local" / "scores.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["NR|x|y"] = np.zeros(3)
    np.savez(npz, **arrays)
    check(lambda: compleak.load_scores(run, "local"), "array 'NR|x|y' has shape (3,), expected (120,)", site=site)
    arrays["NR|x|y"] = np.array(["a"] * 120)
    np.savez(npz, **arrays)
    check(lambda: compleak.load_scores(run, "local"), "expected numbers", site=site)
    (tmp_path / "empty").mkdir()
    check(lambda: compleak.load_results(tmp_path / "empty"), "no attack results yet",
          site=make_site(tmp_path / "empty"))


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
def test_export_formats_round_trip(attacked_run: Path, tmp_path: Path, fmt: str) -> None:
    run = copy_run(attacked_run, tmp_path / "run")
    res = cli(["export", str(run), "--format", fmt])
    assert res.exit_code == 0, res.output
    out = run / "report" / f"results.{fmt}"
    assert out.is_file() and str(out) in res.output.replace("\n", "")
    want = compleak.load_results(run)
    read = {"csv": pd.read_csv, "parquet": pd.read_parquet, "json": lambda p: pd.DataFrame(json.loads(p.read_text()))}
    got = read[fmt](out)
    assert list(got.columns) == list(want.columns) and len(got) == len(want)
    for col in ("auc", "auc_lo", "auc_hi", "eps", "balanced_accuracy"):
        assert np.allclose(got[col].astype(float), want[col].astype(float), equal_nan=True), col
    assert got["method"].tolist() == want["method"].tolist()
    assert got["tpr@0.01"].isna().all()  # not resolvable with 60 non-members: empty, never a number
    if fmt == "json":
        assert json.loads(out.read_text())[0]["tpr@0.01"] is None


def test_export_scores_and_stdout(attacked_run: Path, tmp_path: Path) -> None:
    run = copy_run(attacked_run, tmp_path / "run")
    res = cli(["export", str(run), "--scores", "--format", "parquet", "--out", str(tmp_path / "s.parquet")])
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(tmp_path / "s.parquet")
    assert list(df.columns[:4]) == ["device", "example_id", "member", "label"]
    assert df.groupby("device").size().to_dict() == {"local": 120, DEVICE: 120}
    dev = df[df.device == DEVICE].drop(columns="device").reset_index(drop=True)
    assert np.allclose(dev.drop(columns=["member"]).to_numpy(float),
                       compleak.load_scores(run, DEVICE)[dev.columns].drop(columns=["member"]).to_numpy(float))
    with TreeState(run):
        out = cli(["export", str(run), "--format", "csv", "--out", "-"])
    assert out.exit_code == 0
    lines = out.output.strip().splitlines()
    assert lines[0].startswith("device,family,method,variant,") and len(lines) == 1 + len(_raw(run))


@pytest.mark.hostile
def test_export_keeps_mixed_type_fields_as_text(synthetic_dir: Path, tmp_path: Path) -> None:
    run = copy_run(synthetic_dir, tmp_path / "run")
    res = run / "attacks" / "local" / "results.json"
    rows = json.loads(res.read_text())
    rows[0]["note"], rows[1]["note"] = 3, "three"  # a hand-edited results.json: one column, two types
    rows[2]["nested"] = {"a": [1, 2]}
    res.write_text(json.dumps(rows))
    check(["export", str(run), "--format", "parquet"], site=make_site(run), status=0, errors=0, writes=("report",),
          why="mixed-type fields are data, not a refusal: export writes them as text (into report/ only)")
    df = pd.read_parquet(run / "report" / "results.parquet")
    assert df.note.tolist()[:2] == ["3", "three"] and json.loads(df.nested[2]) == {"a": [1, 2]}
    assert df.variant[df.family == "MR"].tolist() == ["prune-0.6+prune-0.8+cluster-4"] * 2  # local, device


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export") / "run"
    root.mkdir()
    make_synthetic_run(root, n=60)
    return root


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--format", "xlsx"], ["--format 'xlsx'", "csv, parquet, json"]),
        (["--format", "parquet", "--out", "-"], ["standard output", "--out FILE.parquet"]),
        (["--scores"], ["no per-example scores", "compleak attack"]),
    ],
)
@pytest.mark.hostile
def test_export_refuses_bad_input(synthetic_dir: Path, tmp_path: Path, args: list[str], expect: list[str]) -> None:
    site = make_site(copy_run(synthetic_dir, tmp_path / "run"), also=[tmp_path])
    check(["export", str(site.run), *args], *expect, site=site)


@pytest.mark.hostile
def test_export_refuses_a_folder_as_out_and_a_missing_run(synthetic_dir: Path, tmp_path: Path) -> None:
    site = make_site(copy_run(synthetic_dir, tmp_path / "run"), also=[tmp_path])
    check(["export", str(site.run), "--out", str(tmp_path)], "is a folder", "results.csv", site=site)
    check(["export", str(tmp_path / "nope")], "no such run directory",
          site=make_site(tmp_path / "nope", site.sentinel, also=[tmp_path]))


@pytest.mark.hostile
def test_export_does_not_follow_a_planted_report_link(synthetic_dir: Path, tmp_path: Path) -> None:
    site = make_site(copy_run(synthetic_dir, tmp_path / "run"))
    (site.run / "report").symlink_to(site.sentinel)  # the link leads to the sentinel: nothing may land there
    check(["export", str(site.run)], "report", "symbolic link", "--out FILE", site=site)


def test_seeds_get_a_seed_column(tmp_path: Path) -> None:
    for seed in (3, 4):
        (tmp_path / "seeds" / str(seed)).mkdir(parents=True)
        make_synthetic_run(tmp_path / "seeds" / str(seed), n=60, seed=seed, variants=["original", "int8"])
    df = compleak.load_results(tmp_path)
    assert df.columns[1] == "seed" and sorted(df.seed.unique().tolist()) == [3, 4]
    assert len(df) == sum(len(_raw(tmp_path / "seeds" / str(s))) for s in (3, 4))


def test_results_module_does_not_import_the_harness(attacked_run: Path) -> None:
    code = ("import sys, compleak; df = compleak.load_results(sys.argv[1]); s = compleak.load_scores(sys.argv[1]);"
            "bad = [m for m in sys.modules if m == 'harness' or m.startswith(('harness.', 'devices'))];"
            "assert not bad, bad; print(len(df), len(s))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code, str(attacked_run)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(len(_raw(attacked_run))), "120"]


@pytest.mark.hostile
@pytest.mark.parametrize("name", ["manifest.json", "attacks/local/results.json", "splits.npz"])
def test_export_never_replaces_the_runs_own_files(synthetic_dir: Path, tmp_path: Path, name: str) -> None:
    run = copy_run(synthetic_dir, tmp_path / "run")
    target = run / name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("{}")
    check(["export", str(run), "--out", str(target)], "inside the run", "exports", site=make_site(run))


def test_export_into_run_exports_and_outside_is_allowed(synthetic_dir: Path, tmp_path: Path) -> None:
    run = copy_run(synthetic_dir, tmp_path / "run")
    for out in (run / "exports" / "r.csv", tmp_path / "elsewhere.csv"):
        res = cli(["export", str(run), "--out", str(out)])
        assert res.exit_code == 0 and out.is_file(), res.output


@pytest.mark.hostile
def test_export_refuses_devices_fifos_and_links(synthetic_dir: Path, tmp_path: Path) -> None:
    run = copy_run(synthetic_dir, tmp_path / "run")
    special = tmp_path / "special"
    special.mkdir()
    fifo = special / "pipe"
    os.mkfifo(fifo)
    link = special / "link.csv"
    link.symlink_to(tmp_path / "nowhere.csv")
    site = make_site(run, also=[tmp_path])  # the shared check never opens the FIFO (it records its mode only)
    check(["export", str(run), "--out", "/dev/null"], "/dev/null", "character device", site=site)
    check(["export", str(run), "--out", str(fifo)], "FIFO", site=site)
    check(["export", str(run), "--out", str(link)], "symbolic link", site=site)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert link.is_symlink() and not (tmp_path / "nowhere.csv").exists()


@pytest.mark.hostile
def test_csv_cells_a_spreadsheet_would_run_are_neutralised(synthetic_dir: Path, tmp_path: Path) -> None:
    run = copy_run(synthetic_dir, tmp_path / "run")
    res = run / "attacks" / "local" / "results.json"
    rows = json.loads(res.read_text())
    hostile = ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tx", "line\rbreak", "two\nlines"]
    for row, text in zip(rows, hostile):
        row["note"] = text
    res.write_text(json.dumps(rows))
    out = tmp_path / "r.csv"
    check(["export", str(run), "--out", str(out)], site=make_site(run), status=0, errors=0,
          why="formula-like cells are data, not a refusal: export writes them neutralised (outside the run)")
    raw = out.read_bytes()
    assert raw.count(b"\r\n") == len(_raw(run)) + 1  # RFC 4180 rows; the CR and LF inside cells are quoted
    got = pd.read_csv(out)["note"].tolist()[: len(hostile)]
    assert got == [f"'{t}" if t[0] in "=+-@\t" else t for t in hostile]
    assert pd.read_csv(out)["auc"].dtype == float  # numbers stay numbers


def test_exports_follow_the_umask(synthetic_dir: Path, tmp_path: Path) -> None:
    run = copy_run(synthetic_dir, tmp_path / "run")
    old = os.umask(0o077)
    try:
        assert cli(["export", str(run), "--out", str(tmp_path / "private.csv")]).exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private.csv").stat().st_mode) == 0o600
