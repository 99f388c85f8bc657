"""Hostile run directories (issue 11, items 1, 3 and 7): names and paths never leave the run, a refused build or
stage leaves the run byte-identical, bad values are one-line errors.

Every CLI case plants one hostile input in a private copy of the tiny run, then asserts (``hostile_fixtures``):
exit status 2, one ``error:`` line naming the thing, no traceback, the run AND a sentinel ``victim`` folder beside it
byte-identical afterwards.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hostile_fixtures import TreeState, cli, cli_refuses, copy_run

from rundir import ContractError, RunDir, UnsafePathError, check_name, device_dirname

TARGET = "tf-target-original.tflite"


@pytest.fixture
def site(tiny_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(run, victim): a private copy of the tiny run at ``tmp/a/run`` and a sentinel folder ``tmp/victim``."""
    run = copy_run(tiny_run, tmp_path / "a" / "run")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "important.txt").write_text("must survive\n")
    return run, victim


def _edit_manifest(run: Path, artifact: str, **changes: object) -> None:
    m = json.loads((run / "manifest.json").read_text())
    for a in m["artifacts"]:
        if a["id"] == artifact:
            a.update(changes)
    (run / "manifest.json").write_text(json.dumps(m, indent=2))


def _config(run: Path, tmp_path: Path, old: str = "", new: str = "") -> Path:
    """A copy of the run's own experiment.toml (optionally with one text replacement) outside the run."""
    text = (run / "experiment.toml").read_text()
    assert old in text
    cfg = tmp_path / "exp.toml"
    cfg.write_text(text.replace(old, new, 1))
    return cfg


# --------------------------------------------------------------------------- item 1: names and paths


def test_collect_refuses_manifest_id_that_is_a_path(site: tuple[Path, Path]) -> None:
    run, victim = site
    _edit_manifest(run, TARGET, id="../../..")
    with TreeState(run, victim):
        cli_refuses(["collect", str(run), "--artifacts", "../../.."], "manifest.json", "artifact id", "'../../..'")


@pytest.mark.parametrize("wanted", ["../../..", "nope.tflite", "-rf"])
def test_collect_refuses_artifact_ids_not_in_the_manifest(site: tuple[Path, Path], wanted: str) -> None:
    run, victim = site
    with TreeState(run, victim):
        cli_refuses(["collect", str(run), "--artifacts", wanted], "artifact", wanted)


def test_build_never_deletes_a_stale_record_path_outside_the_run(site: tuple[Path, Path], tmp_path: Path) -> None:
    run, victim = site
    m = json.loads((run / "manifest.json").read_text())
    stale = dict(m["artifacts"][0], id="tf-target-gone.tflite", path="../../victim/important.txt")
    m["artifacts"].append(stale)
    (run / "manifest.json").write_text(json.dumps(m))
    cfg = _config(run, tmp_path)
    with TreeState(run, victim):
        cli_refuses(["build", str(cfg), "--out", str(run)], "artifact path", "../../victim/important.txt")
    assert (victim / "important.txt").read_text() == "must survive\n"


@pytest.mark.parametrize("path", ["/etc/passwd", "artifacts/../../../victim/important.txt", "splits.npz", "artifacts"])
def test_collect_refuses_record_paths_outside_artifacts(site: tuple[Path, Path], path: str) -> None:
    run, victim = site
    _edit_manifest(run, TARGET, path=path)
    with TreeState(run, victim):
        cli_refuses(["collect", str(run), "--artifacts", TARGET], "artifact path", path)


def test_collect_refuses_a_sha256_that_is_a_path(site: tuple[Path, Path]) -> None:
    """collect keeps resumable chunks under outputs/<device>/.partial/<id>/<sha256[:16]>/: never free text."""
    run, victim = site
    _edit_manifest(run, TARGET, sha256="../../../../../victim/" + "0" * 42)
    with TreeState(run, victim):
        cli_refuses(["collect", str(run), "--artifacts", TARGET], "sha256", "64 lowercase hex")


@pytest.mark.parametrize("stage", ["collect", "build"])
def test_an_artifact_symlinked_outside_the_run_is_refused(
    site: tuple[Path, Path], tmp_path: Path, stage: str
) -> None:
    """A record whose file is a link to a host file: collect would upload it to a device, build would hash it."""
    run, victim = site
    f = run / "artifacts" / TARGET
    f.unlink()
    f.symlink_to(victim / "important.txt")
    args = ["collect", str(run), "--artifacts", TARGET] if stage == "collect" else [
        "build", str(_config(run, tmp_path)), "--out", str(run)
    ]
    with TreeState(run, victim):
        cli_refuses(args, TARGET, "resolves outside", "symbolic link")


def test_experiment_name_with_dotdot_never_writes_outside_runs(
    site: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, victim = site
    cfg = _config(run, tmp_path, 'name = "tiny"', 'name = "../../victim/escape"')
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with TreeState(run, victim, work):
        cli_refuses(["build", str(cfg)], "experiment.name", "../../victim/escape", "letters, digits")


def test_attack_device_id_never_becomes_a_path(site: tuple[Path, Path]) -> None:
    run, victim = site
    with TreeState(run, victim):
        cli_refuses(["attack", str(run), "--device", "../../victim"], "nothing collected", "outputs/victim")


def test_name_rule_and_inside_check_units(tmp_path: Path) -> None:
    for good in ("tf-target-prune-0.8+int8.tflite", "ssh_pi@host_22", "a=b", "x" * 160):
        assert check_name(good, "name", "here") == good
    for bad in ("", ".", "..", "../x", "a/b", "-rf", ".hidden", "a..b", "x" * 161, "a b", "a\x00b", "ü"):
        with pytest.raises(UnsafePathError, match="here: name"):
            check_name(bad, "name", "here")
    for uri in ("..", ".", "../../..", "ssh://../..@h:22", "-x", "adb://a/../../b", "ü" * 300):
        name = device_dirname(uri)
        assert check_name(name, "device folder", uri) == name and "/" not in name
    assert device_dirname("ssh://pi@host:22") == "ssh_pi@host_22" and device_dirname("local") == "local"
    rd = RunDir(tmp_path / "run")
    (rd.root / "artifacts").mkdir(parents=True)
    (rd.root / "artifacts" / "out").symlink_to(tmp_path)
    assert rd.inside("artifacts/m.tflite", "p", "src", under="artifacts") == rd.root / "artifacts" / "m.tflite"
    for rel in ("artifacts/out/x", "../x", "/abs", "artifacts\\x", "artifacts//x", "artifacts/./x", "other/x"):
        with pytest.raises(ContractError, match="src: p"):
            rd.inside(rel, "p", "src", under="artifacts")
    with pytest.raises(ContractError, match="artifact id"):
        rd.output_npz("local", "../../x")


# --------------------------------------------------------------------------- item 3: a refused build changes nothing


@pytest.mark.parametrize(
    "old,new,expect",
    [
        ('dataset = "digits"', 'dataset = "npz:/nonexistent/data.npz"', "/nonexistent/data.npz"),
        ("target_in = 300", "target_in = 100000", "splits"),
    ],
    ids=["missing-dataset", "splits-too-large"],
)
def test_failed_rebuild_with_new_preprocessing_leaves_run_byte_identical(
    site: tuple[Path, Path], tmp_path: Path, old: str, new: str, expect: str
) -> None:
    """The new config changes preprocessing AND fails: experiment.toml, splits and manifest must stay the old ones,
    or the next collect would silently query the old artifacts with the new preprocessing."""
    run, victim = site
    text = (run / "experiment.toml").read_text().replace('[data]\n', '[data]\npreprocess = { scale = 0.5 }\n', 1)
    cfg = tmp_path / "exp.toml"
    cfg.write_text(text.replace(old, new, 1))
    with TreeState(run, victim):
        cli_refuses(["build", str(cfg), "--out", str(run)], expect)


# --------------------------------------------------------------------------- item 7: one-line errors


def test_negative_seed_is_refused(site: tuple[Path, Path], tmp_path: Path) -> None:
    run, victim = site
    cfg = _config(run, tmp_path, "seed = 7", "seed = -1")
    with TreeState(run, victim):
        cli_refuses(["build", str(cfg), "--out", str(run)], "experiment.seed", "greater than or equal to 0")


@pytest.mark.parametrize("fprs", ["[1.5]", "[0.0]", "[0.01, -0.1]"])
def test_attack_fprs_outside_zero_one_are_refused(site: tuple[Path, Path], fprs: str) -> None:
    run, victim = site
    exp = run / "experiment.toml"
    exp.write_text(exp.read_text() + f"\n[attack]\nfprs = {fprs}\n")
    (run / "outputs" / "local").mkdir(parents=True)
    with TreeState(run, victim):
        cli_refuses(["attack", str(run), "--device", "local"], "attack.fprs", "between 0 and 1")


@pytest.mark.parametrize(
    "values,expect",
    [
        (np.array([["1.5", "2.0"]] * 600), "float array"),
        (np.ones((600, 10), dtype=bool), "float array"),
        (np.ones((600, 1), dtype=np.float32), "need at least 2"),
        (np.ones((600, 0), dtype=np.float32), "need at least 2"),
    ],
    ids=["strings", "booleans", "one-class", "zero-class"],
)
def test_outputs_with_non_float_or_single_class_logits_are_refused(
    site: tuple[Path, Path], values: np.ndarray, expect: str
) -> None:
    run, victim = site
    out = run / "outputs" / "local"
    out.mkdir(parents=True)
    np.savez(out / f"{TARGET}.npz", index=np.arange(600, dtype=np.int64), logits=values)
    (out / f"{TARGET}.json").write_text(json.dumps({"device": {"id": "local"}}))
    with TreeState(run, victim):
        cli_refuses(["attack", str(run), "--device", "local"], f"{TARGET}.npz", expect, "re-collect")


@pytest.mark.parametrize(
    "content,expect",
    [
        ("[]", "(top level)"),
        ('{"version": 1, "device": "ssh://pi@h:22", "artifacts": [{"artifact": "x"}]}', "artifacts.0"),
        ('{"version": 1, "device": "ssh://pi@h:22", "leakage_deltas": [{"family": "NR", "method": "m", '
         '"variant": "int8", "delta_auc": "huge"}]}', "delta_auc"),
        ('{"version": 1, "device": ', "invalid JSON"),
    ],
    ids=["list", "missing-fields", "wrong-type", "truncated"],
)
def test_report_refuses_malformed_compare_files(site: tuple[Path, Path], content: str, expect: str) -> None:
    run, victim = site
    (run / "compare").mkdir()
    (run / "compare" / "ssh_pi@h_22.json").write_text(content)
    with TreeState(run, victim):
        cli_refuses(["report", str(run)], "compare/ssh_pi@h_22.json", expect, "delete it")


@pytest.fixture
def readonly_site(site: tuple[Path, Path]):  # type: ignore[no-untyped-def]
    """The run bind-mounted read-only onto itself (a real read-only file system, which binds root too)."""
    run, victim = site
    if subprocess.run(["mount", "--bind", str(run), str(run)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here (needs root and mount privileges)")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(run)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield run, victim
    finally:
        subprocess.run(["umount", str(run)], check=True)


@pytest.mark.parametrize("stage", ["build", "collect", "attack", "report", "import"])
def test_read_only_run_fails_before_computing(
    readonly_site: tuple[Path, Path], tmp_path: Path, stage: str
) -> None:
    run, victim = readonly_site
    args = {
        "build": ["build", str(_config(run, tmp_path)), "--out", str(run)],
        "collect": ["collect", str(run)],
        "attack": ["attack", str(run)],
        "report": ["report", str(run)],
        "import": ["import", str(run), "--target", str(tmp_path / "m.onnx"), "--data", "digits", "--members",
                   str(tmp_path / "members.txt")],
    }[stage]
    with TreeState(run, victim):
        cli_refuses(args, str(run), "read-only", f"compleak {stage}", "writable")


def test_report_survives_garbled_provenance(site: tuple[Path, Path]) -> None:
    """Provenance is informational: a garbled one is left out of the report, never a traceback or a wrong device."""
    run, victim = site
    out = run / "outputs" / "local"
    out.mkdir(parents=True)
    (out / "a.json").write_text("[1, 2]")
    (out / "b.json").write_bytes(b"\xff\xfe not utf-8")
    (out / "c.json").write_text(json.dumps({"device": {"id": ["../../victim"]}, "runtime": "x",
                                            "wall_seconds_per_batch": ["1", None], "artifact": "y"}))
    with TreeState(victim):
        r = cli(["report", str(run)])
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert summary["devices"] == ["local"]


# --------------------------------------------------------------------------- issue 26: nesting and names in plots

DEEP = "[" * 100_000 + "]" * 100_000  # Python's parser would recurse; every run file is read depth-bounded


@pytest.mark.parametrize(
    ("rel", "command", "expect"),
    [("manifest.json", ["collect", "{run}"], ["manifest.json", "nested"]),
     ("attacks/local/results.json", ["check", "{run}", "--fail-on", "auc>0.9"], ["results.json", "nested"]),
     ("compare/ssh_x@y_22.json", ["report", "{run}"], ["compare", "nested"])],
)
def test_deeply_nested_json_in_a_run_file_is_one_line(site: tuple[Path, Path], rel: str, command: list[str],
                                                      expect: list[str]) -> None:
    run, victim = site
    path = run / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DEEP)
    with TreeState(run, victim):
        cli_refuses([c.replace("{run}", str(run)) for c in command], *expect)


def test_deeply_nested_provenance_is_ignored_like_any_garbled_one(site: tuple[Path, Path]) -> None:
    """Provenance is informational: a hostile one is left out of the report (as a garbled one), never a crash."""
    run, _ = site
    assert cli(["collect", str(run), "--artifacts", TARGET]).exit_code == 0
    (run / "outputs" / "local" / TARGET.replace(".tflite", ".json")).write_text(DEEP)
    res = cli(["report", str(run), "--no-compare"])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output


def test_a_variant_name_in_mathtext_prints_literally_in_the_plots(tmp_path: Path) -> None:
    """A variant name matplotlib would read as mathtext (an undefined command) must not stop the report: the page
    is written and names the variant literally."""
    from test_report import make_synthetic_run

    rd = make_synthetic_run(tmp_path / "run", n=60)
    m = json.loads(rd.manifest.read_text())
    hostile = r"$\undefinedcommand{x}$"
    for a in m["artifacts"]:
        if a["variant"] == "prune-0.8":
            a["variant"] = hostile
    rd.manifest.write_text(json.dumps(m))
    res = cli(["attack", str(rd.root), "--families", "NR,SR"])
    assert res.exit_code == 0, res.output
    res = cli(["report", str(rd.root), "--no-compare"])
    assert res.exit_code == 0, res.output
    page = rd.report_index.read_text()
    assert "\\undefinedcommand{x}" in page and "data:image/png;base64," in page
