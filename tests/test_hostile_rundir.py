"""Hostile run directories (issue 11, items 1, 3 and 7): names and paths never leave the run, a refused build or
stage leaves the run byte-identical, bad values are one-line errors.

Every case plants one hostile input in a private copy of the tiny run and goes through the shared check
(``hostile_fixtures.check``): exit status 2, one ``error:`` line naming the thing, no traceback, the run AND a
sentinel ``victim`` folder beside it byte-identical afterwards. The few cases whose point is that a command succeeds
safely say so (``status=0, errors=0``, the run paths it may write and why).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hostile_fixtures import Site, check, cli, copy_run, make_site

from rundir import RunDir, UnsafePathError, check_name, device_dirname

TARGET = "tf-target-original.tflite"


@pytest.fixture
def site(tiny_run: Path, tmp_path: Path) -> Site:
    """A private copy of the tiny run at ``tmp/a/run`` and a sentinel folder ``tmp/victim`` (``../../victim`` from
    the run)."""
    return make_site(copy_run(tiny_run, tmp_path / "a" / "run"), tmp_path / "victim")


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


def test_collect_refuses_manifest_id_that_is_a_path(site: Site) -> None:
    _edit_manifest(site.run, TARGET, id="../../..")
    check(["collect", str(site.run), "--artifacts", "../../.."], "manifest.json", "artifact id", "'../../..'",
          site=site)


@pytest.mark.parametrize("wanted", ["../../..", "nope.tflite", "-rf"])
def test_collect_refuses_artifact_ids_not_in_the_manifest(site: Site, wanted: str) -> None:
    check(["collect", str(site.run), "--artifacts", wanted], "artifact", wanted, site=site)


def test_build_never_deletes_a_stale_record_path_outside_the_run(site: Site, tmp_path: Path) -> None:
    run = site.run
    m = json.loads((run / "manifest.json").read_text())
    stale = dict(m["artifacts"][0], id="tf-target-gone.tflite", path="../../victim/important.txt")
    m["artifacts"].append(stale)
    (run / "manifest.json").write_text(json.dumps(m))
    cfg = _config(run, tmp_path)
    check(["build", str(cfg), "--out", str(run)], "artifact path", "../../victim/important.txt", site=site)
    assert (site.sentinel / "important.txt").read_text() == "must survive\n"


@pytest.mark.parametrize("path", ["/etc/passwd", "artifacts/../../../victim/important.txt", "splits.npz", "artifacts"])
def test_collect_refuses_record_paths_outside_artifacts(site: Site, path: str) -> None:
    _edit_manifest(site.run, TARGET, path=path)
    check(["collect", str(site.run), "--artifacts", TARGET], "artifact path", path, site=site)


def test_collect_refuses_a_sha256_that_is_a_path(site: Site) -> None:
    """collect keeps resumable chunks under outputs/<device>/.partial/<id>/<sha256[:16]>/: never free text."""
    _edit_manifest(site.run, TARGET, sha256="../../../../../victim/" + "0" * 42)
    check(["collect", str(site.run), "--artifacts", TARGET], "sha256", "64 lowercase hex", site=site)


@pytest.mark.parametrize("stage", ["collect", "build"])
def test_an_artifact_symlinked_outside_the_run_is_refused(site: Site, tmp_path: Path, stage: str) -> None:
    """A record whose file is a link to a host file: collect would upload it to a device, build would hash it."""
    run = site.run
    f = run / "artifacts" / TARGET
    f.unlink()
    f.symlink_to(site.sentinel / "important.txt")
    args = ["collect", str(run), "--artifacts", TARGET] if stage == "collect" else [
        "build", str(_config(run, tmp_path)), "--out", str(run)
    ]
    check(args, TARGET, "resolves outside", "symbolic link", site=site)


def test_experiment_name_with_dotdot_never_writes_outside_runs(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(site.run, tmp_path, 'name = "tiny"', 'name = "../../victim/escape"')
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    check(["build", str(cfg)], "experiment.name", "../../victim/escape", "letters, digits", site=site.plus(work))


def test_attack_device_id_never_becomes_a_path(site: Site) -> None:
    check(["attack", str(site.run), "--device", "../../victim"], "nothing collected", "outputs/victim", site=site)


def test_name_rule_and_inside_check_units(tmp_path: Path) -> None:
    for good in ("tf-target-prune-0.8+int8.tflite", "ssh_pi@host_22", "a=b", "x" * 160):
        assert check_name(good, "name", "here") == good
    for uri in ("..", ".", "../../..", "ssh://../..@h:22", "-x", "adb://a/../../b", "ü" * 300):
        name = device_dirname(uri)
        assert check_name(name, "device folder", uri) == name and "/" not in name
    assert device_dirname("ssh://pi@host:22") == "ssh_pi@host_22" and device_dirname("local") == "local"
    rd = RunDir(tmp_path / "run")
    (rd.root / "artifacts").mkdir(parents=True)
    (rd.root / "artifacts" / "out").symlink_to(tmp_path)
    assert rd.inside("artifacts/m.tflite", "p", "src", under="artifacts") == rd.root / "artifacts" / "m.tflite"
    site = make_site(rd.root)
    for bad in ("", ".", "..", "../x", "a/b", "-rf", ".hidden", "a..b", "x" * 161, "a b", "a\x00b", "ü"):
        check(lambda bad=bad: check_name(bad, "name", "here"), "here: name", site=site)
        with pytest.raises(UnsafePathError):  # the type callers catch
            check_name(bad, "name", "here")
    for rel in ("artifacts/out/x", "../x", "/abs", "artifacts\\x", "artifacts//x", "artifacts/./x", "other/x"):
        check(lambda rel=rel: rd.inside(rel, "p", "src", under="artifacts"), "src: p", site=site)
    check(lambda: rd.output_npz("local", "../../x"), "artifact id", site=site)


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
    site: Site, tmp_path: Path, old: str, new: str, expect: str
) -> None:
    """The new config changes preprocessing AND fails: experiment.toml, splits and manifest must stay the old ones,
    or the next collect would silently query the old artifacts with the new preprocessing."""
    text = (site.run / "experiment.toml").read_text().replace('[data]\n', '[data]\npreprocess = { scale = 0.5 }\n', 1)
    cfg = tmp_path / "exp.toml"
    cfg.write_text(text.replace(old, new, 1))
    check(["build", str(cfg), "--out", str(site.run)], expect, site=site)


# --------------------------------------------------------------------------- item 7: one-line errors


def test_negative_seed_is_refused(site: Site, tmp_path: Path) -> None:
    cfg = _config(site.run, tmp_path, "seed = 7", "seed = -1")
    check(["build", str(cfg), "--out", str(site.run)], "experiment.seed", "greater than or equal to 0", site=site)


@pytest.mark.parametrize("fprs", ["[1.5]", "[0.0]", "[0.01, -0.1]"])
def test_attack_fprs_outside_zero_one_are_refused(site: Site, fprs: str) -> None:
    exp = site.run / "experiment.toml"
    exp.write_text(exp.read_text() + f"\n[attack]\nfprs = {fprs}\n")
    (site.run / "outputs" / "local").mkdir(parents=True)
    check(["attack", str(site.run), "--device", "local"], "attack.fprs", "between 0 and 1", site=site)


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
def test_outputs_with_non_float_or_single_class_logits_are_refused(site: Site, values: np.ndarray,
                                                                   expect: str) -> None:
    out = site.run / "outputs" / "local"
    out.mkdir(parents=True)
    np.savez(out / f"{TARGET}.npz", index=np.arange(600, dtype=np.int64), logits=values)
    (out / f"{TARGET}.json").write_text(json.dumps({"device": {"id": "local"}}))
    check(["attack", str(site.run), "--device", "local"], f"{TARGET}.npz", expect, "re-collect", site=site)


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
def test_report_refuses_malformed_compare_files(site: Site, content: str, expect: str) -> None:
    (site.run / "compare").mkdir()
    (site.run / "compare" / "ssh_pi@h_22.json").write_text(content)
    check(["report", str(site.run)], "compare/ssh_pi@h_22.json", expect, "delete it", site=site)


@pytest.fixture
def readonly_site(site: Site) -> Iterator[Site]:
    """The run bind-mounted read-only onto itself (a real read-only file system, which binds root too). Needs root
    (CI runs the suite as root) and ``mount`` from util-linux."""
    run = site.run
    if shutil.which("mount") is None:
        pytest.skip("the mount command is missing: install util-linux (apt install mount)")
    bound = subprocess.run(["mount", "--bind", str(run), str(run)], check=False, capture_output=True, text=True)
    if bound.returncode != 0:
        pytest.skip(f"mount --bind failed ({bound.stderr.strip()[:120]}): needs root with CAP_SYS_ADMIN; run the "
                    "suite as root (as CI does) or in a container started with --privileged")
    try:
        ro = subprocess.run(["mount", "-o", "remount,bind,ro", str(run)], check=False, capture_output=True,
                            text=True)
        if ro.returncode != 0:
            pytest.skip(f"mount -o remount,bind,ro failed ({ro.stderr.strip()[:120]}): needs root with "
                        "CAP_SYS_ADMIN; run the suite as root (as CI does)")
        yield site
    finally:
        subprocess.run(["umount", str(run)], check=True)


@pytest.mark.parametrize("stage", ["build", "collect", "attack", "report", "import"])
def test_read_only_run_fails_before_computing(readonly_site: Site, tmp_path: Path, stage: str) -> None:
    run = readonly_site.run
    args = {
        "build": ["build", str(_config(run, tmp_path)), "--out", str(run)],
        "collect": ["collect", str(run)],
        "attack": ["attack", str(run)],
        "report": ["report", str(run)],
        "import": ["import", str(run), "--target", str(tmp_path / "m.onnx"), "--data", "digits", "--members",
                   str(tmp_path / "members.txt")],
    }[stage]
    check(args, str(run), "read-only", f"compleak {stage}", "writable", site=readonly_site)


def test_report_survives_garbled_provenance(site: Site) -> None:
    """Provenance is informational: a garbled one is left out of the report, never a traceback or a wrong device."""
    out = site.run / "outputs" / "local"
    out.mkdir(parents=True)
    (out / "a.json").write_text("[1, 2]")
    (out / "b.json").write_bytes(b"\xff\xfe not utf-8")
    (out / "c.json").write_text(json.dumps({"device": {"id": ["../../victim"]}, "runtime": "x",
                                            "wall_seconds_per_batch": ["1", None], "artifact": "y"}))
    check(["report", str(site.run)], site=site, status=0, errors=0, writes=("report", "logs"),
          why="garbled provenance is informational: left out, and the report is written (into report/ only)")
    summary = json.loads((site.run / "report" / "summary.json").read_text())
    assert summary["devices"] == ["local"]


# --------------------------------------------------------------------------- issue 26: nesting and names in plots

DEEP = "[" * 100_000 + "]" * 100_000  # Python's parser would recurse; every run file is read depth-bounded


@pytest.mark.parametrize(
    ("rel", "command", "expect"),
    [("manifest.json", ["collect", "{run}"], ["manifest.json", "nested"]),
     ("attacks/local/results.json", ["check", "{run}", "--fail-on", "auc>0.9"], ["results.json", "nested"]),
     ("compare/ssh_x@y_22.json", ["report", "{run}"], ["compare", "nested"])],
)
def test_deeply_nested_json_in_a_run_file_is_one_line(site: Site, rel: str, command: list[str],
                                                      expect: list[str]) -> None:
    path = site.run / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DEEP)
    check([c.replace("{run}", str(site.run)) for c in command], *expect, site=site)


def test_deeply_nested_provenance_is_ignored_like_any_garbled_one(site: Site) -> None:
    """Provenance is informational: a hostile one is left out of the report (as a garbled one), never a crash."""
    run = site.run
    assert cli(["collect", str(run), "--artifacts", TARGET]).exit_code == 0
    (run / "outputs" / "local" / TARGET.replace(".tflite", ".json")).write_text(DEEP)
    check(["report", str(run), "--no-compare"], site=site, status=0, errors=0, writes=("report", "logs"),
          why="hostile provenance is informational: left out, and the report is written (into report/ only)")


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
    site = make_site(rd.root)
    check(["attack", str(rd.root), "--families", "NR,SR", "--force"], site=site, status=0, errors=0,
          writes=("attacks", "logs"), why="a variant name is data, not a refusal: attack writes its results only")
    check(["report", str(rd.root), "--no-compare"], site=site, status=0, errors=0, writes=("report", "logs"),
          why="a variant name is data, not a refusal: the report is written (into report/ only)")
    page = rd.report_index.read_text()
    assert "\\undefinedcommand{x}" in page and "data:image/png;base64," in page
