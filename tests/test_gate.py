"""The CI gate (harness/gate.py): the --fail-on grammar, its scopes, `compleak check` and `compleak audit --fail-on`.

Rows come from real run directories: ``make_synthetic_run`` (tests/test_report.py: hand-made rows with known AUCs, a
hostile method name on the SSH device) and ``attacked_run`` (tests/results_fixtures.py: the real attack stage, with
ε lower bounds). Expected trips are computed from the results.json files directly, not through the gate's code.

The hostile-input cases (marked ``hostile``) go through the shared check (``hostile_fixtures.check``): exit 2 (a
refused rule or run; a tripped rule is the gate's documented 3), one ``error:`` line, no traceback, the run and a
sentinel folder beside it byte-identical.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hostile_fixtures import Site, TreeState, check, cli, copy_run, make_site
from test_report import DEVICE, FAST_ATTACKS, make_synthetic_run

from compleak.results import result_rows
from harness.errors import HarnessError
from harness.gate import EXIT_TRIPPED, GRAMMAR, evaluate_gate, parse_rule

DEVICE_DIR = "ssh_tester@127.0.0.1_2222"


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gate") / "run"
    root.mkdir()
    make_synthetic_run(root, n=150, variants=["original", "prune-0.6", "prune-0.8", "int8"])
    return root


@pytest.fixture
def gate_site(synthetic_run: Path, tmp_path: Path) -> Site:
    """A private copy of the synthetic run and a sentinel folder beside it."""
    return make_site(copy_run(synthetic_run, tmp_path / "run"), also=[tmp_path])


def _json_rows(run: Path) -> list[tuple[str, dict]]:
    """(device folder, row) of every results.json row, read without the gate's code."""
    out = []
    for res in sorted((run / "attacks").glob("*/results.json")):
        out += [(res.parent.name, r) for r in json.loads(res.read_text())]
    return out


def _trip_keys(outcome) -> list[tuple[str, str, str, str]]:
    return sorted((t.result.dirname, t.result.row.family, t.result.row.method, str(t.result.row.variant))
                  for t in outcome.trips)  # fmt: skip


def _expected(run: Path, pred) -> list[tuple[str, str, str, str]]:
    return sorted((d, r["family"], r["method"], str(r["variant"])) for d, r in _json_rows(run) if pred(d, r))


# --------------------------------------------------------------------------- grammar


@pytest.mark.parametrize(
    ("text", "metric", "level", "op", "threshold", "scope"),
    [
        ("auc>0.60", "auc", None, ">", 0.6, []),
        ("tpr@0.001>0.01", "tpr", 0.001, ">", 0.01, []),
        ("NR:auc>=0.6", "auc", None, ">=", 0.6, [("family", "NR")]),
        ("nr:auc>0.6", "auc", None, ">", 0.6, [("family", "NR")]),
        ("device=local:auc>0.6", "auc", None, ">", 0.6, [("device", "local")]),
        ("variant=int8,family=sr:auc_lo>0.55", "auc_lo", None, ">", 0.55, [("variant", "int8"), ("family", "SR")]),
        ("device=ssh://pi@board:22:auc_hi<0.9", "auc_hi", None, "<", 0.9, [("device", "ssh://pi@board:22")]),
        ("balanced_accuracy<=0.5", "bacc", None, "<=", 0.5, []),
        ("  eps > 1e-1 ", "eps", None, ">", 0.1, []),
        ("auc>60%", "auc", None, ">", 0.6, []),
        ("tpr@1%>5%", "tpr", 0.01, ">", 0.05, []),
        ("eps>=2.5", "eps", None, ">=", 2.5, []),
        ("baseline,method=rmia*:tpr@0.01 >= 0.05", "tpr", 0.01, ">=", 0.05, [("family", "baseline"),
                                                                             ("method", "rmia*")]),
    ],
)
def test_parse_valid(text: str, metric: str, level: float | None, op: str, threshold: float, scope: list) -> None:
    rule = parse_rule(text)
    assert (rule.metric, rule.level, rule.op, rule.threshold) == (metric, level, op, threshold)
    assert [(s.key, s.pattern) for s in rule.scope] == scope
    assert rule.text == text.strip()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty expression"),
        ("auc", "no comparison"),
        ("auc=0.6", "comparison '=' is not supported"),
        ("auc>x", "threshold 'x' is not a number"),
        ("auc>60", "auc lies in [0, 1]; the threshold 60 is outside it (for 60% write 0.6 or 60%)"),
        ("tpr@0.01>5", "tpr@0.01 lies in [0, 1]; the threshold 5 is outside it (for 5% write 0.05 or 5%)"),
        ("auc>150%", "the threshold 150% is outside it"),
        ("eps>-1", "eps lies in at least 0"),
        ("auc>1", "no auc is > 1 (auc lies in [0, 1]), so this rule could never trip"),
        ("bacc<0", "could never trip"),
        ("auc>nan", "not a finite number"),
        ("tpr>0.1", "tpr needs its false-positive rate"),
        ("tpr0.01>0.1", "tpr needs its false-positive rate"),
        ("tpr@2>0.1", "must be in (0, 1]"),
        ("tpr@abc>0.1", "not a false-positive rate"),
        ("auc@0.1>0.5", "only tpr takes '@FPR'"),
        ("accuracy>0.5", "unknown metric 'accuracy'"),
        ("XR:auc>0.6", "unknown scope 'XR'"),
        ("colour=red:auc>0.6", "unknown scope key 'colour'"),
        ("variant=:auc>0.6", "has no value"),
        ("NR,:auc>0.6", "empty selector"),
        ("auc>0.6:NR", "the scope goes first"),
        ("NR:", "expected METRIC OP NUMBER after the scope"),
    ],
)
@pytest.mark.hostile
def test_parse_errors_name_the_problem_and_the_grammar(text: str, fragment: str, tmp_path: Path) -> None:
    line = check(lambda: parse_rule(text), fragment, GRAMMAR, site=make_site(tmp_path / "run")).line
    assert line.startswith(f"error: --fail-on {text!r}") or text == ""
    with pytest.raises(HarnessError):  # the type the CLI and the action's gate step catch
        parse_rule(text)


# --------------------------------------------------------------------------- scopes select exactly the right rows


def test_scopes_select_exactly_the_rows_they_name(synthetic_run: Path) -> None:
    rows = result_rows(synthetic_run)
    assert len(rows) == len(_json_rows(synthetic_run))
    assert {r.device for r in rows} == {"local", DEVICE}  # ids from provenance, not folder names

    def check(text: str, pred) -> list:
        got = _trip_keys(evaluate_gate(rows, [parse_rule(text)]))
        assert got == _expected(synthetic_run, pred), text
        return got

    assert check("auc>0.7", lambda d, r: r["auc"] > 0.7)
    assert check("device=local:auc>0.7", lambda d, r: d == "local" and r["auc"] > 0.7)
    by_folder = check(f"device={DEVICE_DIR}:auc>0", lambda d, r: d == DEVICE_DIR)
    assert by_folder == _trip_keys(evaluate_gate(rows, [parse_rule(f"device={DEVICE}:auc>0")]))  # id with ':' works
    check("device=ssh://*,SR:auc>0.6", lambda d, r: d == DEVICE_DIR and r["family"] == "SR" and r["auc"] > 0.6)
    prune = check("variant=prune-*:auc>0", lambda d, r: any(str(v).startswith("prune-") for v in
                                                           (r["variant"] if isinstance(r["variant"], list)
                                                            else [r["variant"]])))  # fmt: skip
    assert any(k[1] == "MR" for k in prune)  # an MR row matches when any of its variants does
    assert len(check("MR:auc>=0.81", lambda d, r: r["family"] == "MR")) == 2
    check("method=<script>*:auc>0", lambda d, r: r["method"].startswith("<script>"))
    check("artifact=*int8*,family=NR:auc_hi>0", lambda d, r: r["family"] == "NR" and "int8" in r.get("artifact_id", ""))
    check("auc_lo>0.75", lambda d, r: r["auc_ci"][0] > 0.75)
    check("bacc<0.6", lambda d, r: r["balanced_accuracy"] < 0.6)
    check("SR:tpr@0.01>=0.03", lambda d, r: r["family"] == "SR")  # 150 non-members resolve 1%
    # two rules: each trip is reported under its own rule
    both = evaluate_gate(rows, [parse_rule("MR:auc>0.8"), parse_rule("device=local,MR:auc>0.8")])
    assert [t.rule.text for t in both.trips].count("MR:auc>0.8") == 2 and len(both.trips) == 3


def test_gate_over_real_attack_rows_uses_ci_and_eps(attacked_run: Path) -> None:
    rows = result_rows(attacked_run)
    raw = _json_rows(attacked_run)
    assert all(isinstance(r["eps_lower_bound"], float) for _, r in raw)
    eps_cut = sorted(r["eps_lower_bound"] for _, r in raw)[-5]  # the top few rows
    out = evaluate_gate(rows, [parse_rule(f"eps>={eps_cut}")])
    assert _trip_keys(out) == _expected(attacked_run, lambda d, r: r["eps_lower_bound"] >= eps_cut)
    assert 5 <= len(out.trips) < len(raw)
    out = evaluate_gate(rows, [parse_rule("auc_lo>0.55")])
    assert _trip_keys(out) == _expected(attacked_run, lambda d, r: r["auc_ci"][0] > 0.55)
    # 60 non-members cannot resolve 1%: the rule is refused rather than passed without measuring anything
    with pytest.raises(HarnessError, match=r"can resolve tpr@0.01 \(at least 100 non-members .* the rows have 60"):
        evaluate_gate(rows, [parse_rule("tpr@0.01>0.1")])


def test_rows_that_cannot_resolve_a_low_fpr_are_counted_in_a_note(synthetic_run: Path, tmp_path: Path) -> None:
    run = copy_run(synthetic_run, tmp_path / "run")
    res = run / "attacks" / "local" / "results.json"
    rows = json.loads(res.read_text())
    rows[0]["n_nonmembers"] = 50  # one row's sample too small for 1%: a property of the sample, said in a note
    res.write_text(json.dumps(rows))
    out = evaluate_gate(result_rows(run), [parse_rule("tpr@0.01>0.5")])
    assert out.passed and out.exit_code == 0
    assert any("1 of" in n and "cannot resolve tpr@0.01" in n for n in out.notes)


@pytest.mark.hostile
@pytest.mark.parametrize(("field", "value", "rule"), [("auc", float("nan"), "auc>0.6"), ("auc_ci", [], "auc_lo>0.99")])
def test_gate_fails_closed_on_rows_with_a_missing_metric(gate_site: Site, field: str, value: object,
                                                         rule: str) -> None:
    """A row in scope whose metric is NaN or missing could be the one that trips: the gate refuses (exit 2)
    instead of passing on the others."""
    run = gate_site.run
    res = run / "attacks" / "local" / "results.json"
    rows = json.loads(res.read_text())
    for row in rows:  # every row that would trip loses its metric
        if row["auc"] > 0.6:
            row[field] = value
    res.write_text(json.dumps(rows).replace("NaN", "NaN"))
    line = check(["check", str(run), "--fail-on", rule], rule, "cannot judge", "compleak attack", site=gate_site).line
    assert "rows in its scope have no" in line


# --------------------------------------------------------------------------- compleak check


@pytest.mark.hostile
def test_check_exit_statuses_and_the_offending_rows(synthetic_run: Path, gate_site: Site) -> None:
    with TreeState(synthetic_run):
        ok = cli(["check", str(synthetic_run), "--fail-on", "auc>0.99", "--fail-on", "NR:tpr@0.01>0.5"])
        assert ok.exit_code == 0, ok.output
        assert "gate passed: 2 rules held" in ok.output
        n = len(_json_rows(synthetic_run))
        assert f"auc>0.99: on {n} of {n} result rows\n" in ok.output
        n_nr = sum(1 for _, r in _json_rows(synthetic_run) if r["family"] == "NR")
        assert 0 < n_nr < n and f"NR:tpr@0.01>0.5: on {n_nr} of {n} result rows (its scope)" in ok.output
        bad = cli(["check", str(synthetic_run), "--fail-on", "MR:auc>0.8", "--fail-on", "auc>0.99"])
    assert bad.exit_code == EXIT_TRIPPED == 3, bad.output
    assert "gate failed: 2 result rows over 1 of 2 rules (exit status 3)" in bad.output
    assert "fusion-mlp" in bad.output and "0.81 > 0.8" in bad.output
    assert "<script>alert" in bad.output  # the device's hostile method name, printed literally

    # markup in a run's strings is printed, not interpreted
    run = gate_site.run
    res = run / "attacks" / "local" / "results.json"
    rows = json.loads(res.read_text())
    rows[0].update(method="[bold]evil[/]", auc=0.995)
    res.write_text(json.dumps(rows))
    check(["check", str(run), "--fail-on", "auc>0.99"], "[bold]evil[/]", site=gate_site, status=EXIT_TRIPPED,
          errors=0, why="the hostile name sits in a row that trips: the gate's documented exit 3 lists the row")


def test_check_across_seeds(tmp_path: Path) -> None:
    for seed in (3, 4):
        (tmp_path / "seeds" / str(seed)).mkdir(parents=True)
        make_synthetic_run(tmp_path / "seeds" / str(seed), n=60, seed=seed, variants=["original", "int8"])
    rows = result_rows(tmp_path)
    assert {r.seed for r in rows} == {3, 4}
    out = evaluate_gate(rows, [parse_rule("seed=4,MR:auc>0.8")])
    assert {(t.result.seed, t.result.row.family) for t in out.trips} == {(4, "MR")} and len(out.trips) == 2
    res = cli(["check", str(tmp_path), "--fail-on", "seed=4,MR:auc>0.8"])
    assert res.exit_code == 3 and "seed" in res.output


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--fail-on", "auc>>0.6"], ["--fail-on 'auc>>0.6'", "METRIC OP NUMBER"]),
        (["--fail-on", "device=adb://nope:auc>0.5"], ["no result row matches the scope", "local"]),
        (["--fail-on", "tpr@0.001>0.01"], ["tpr@0.001", "1000 non-members"]),
        (["--fail-on", "eps>0.5"], ["has the ε lower bound", "compleak attack"]),
        (["--fail-on", "tpr@0.05>0.1"], ["measured tpr@0.05", "measured: tpr@0.001, tpr@0.01", "[attack] fprs"]),
        (["--fail-on", "auc>0.5", "--fail-on", "bogus"], ["'bogus'", "unknown metric"]),
    ],
)
@pytest.mark.hostile
def test_check_refuses_bad_input(gate_site: Site, args: list[str], expect: list[str]) -> None:
    check(["check", str(gate_site.run), *args], *expect, site=gate_site)


@pytest.mark.hostile
@pytest.mark.parametrize("kind", ["missing", "empty", "invalid-json", "bad-family"])
def test_check_refuses_missing_or_broken_runs(synthetic_run: Path, tmp_path: Path, kind: str) -> None:
    expect = {"missing": ["no such run directory"], "empty": ["no attack results", "compleak attack"],
              "invalid-json": ["results.json", "invalid JSON"], "bad-family": ["results.json", "family"]}[kind]
    if kind == "missing":
        run = tmp_path / "nope"
    elif kind == "empty":
        run = tmp_path / "empty"
        run.mkdir()
        (run / "experiment.toml").write_text('[experiment]\nname = "x"\n')
    else:
        run = copy_run(synthetic_run, tmp_path / "run")
        bad = '[{"family": "NR", "method": 3' if kind == "invalid-json" else '[{"family": "XX"}]'
        (run / "attacks" / "local" / "results.json").write_text(bad)
    check(["check", str(run), "--fail-on", "auc>0.6"], *expect, site=make_site(run, also=[tmp_path]))


@pytest.mark.hostile
def test_check_without_fail_on_is_a_usage_error(gate_site: Site) -> None:
    check(["check", str(gate_site.run)], "--fail-on", site=gate_site, errors=0,
          why="a usage error is the CLI framework's own 'Usage:' block (exit 2), not the tool's 'error:' line")


# --------------------------------------------------------------------------- compleak audit --fail-on


@pytest.mark.hostile
def test_audit_refuses_a_malformed_rule_before_any_work(tmp_path: Path) -> None:
    tiny = Path(__file__).parent / "data" / "tiny.toml"
    site = make_site(tmp_path / "run", also=[tmp_path])
    check(["audit", str(tiny), "--out", str(site.run), "--no-ray", "--fail-on", "auc>0.6", "--fail-on",
           "NR:auc_low>0.5"], "auc_low", "unknown metric", site=site)
    assert not site.run.exists()


@pytest.mark.slow
def test_audit_fail_on_exits_3_after_the_report(tiny_run: Path, tmp_path: Path) -> None:
    """A real audit of the tiny config (build resumed from the shared tiny run): the gate runs after the report is
    written, prints the offending rows and exits 3; a rule nothing crosses lets the (resumed) audit exit 0."""
    tiny = tmp_path / "tiny.toml"  # the tiny config with fast attack settings (the build keys do not change)
    tiny.write_text((Path(__file__).parent / "data" / "tiny.toml").read_text() + FAST_ATTACKS)
    run = copy_run(tiny_run, tmp_path / "run")
    shutil.rmtree(run / "report", ignore_errors=True)
    res = cli(["audit", str(tiny), "--out", str(run), "--no-ray", "--fail-on", "auc>0.0",
               "--fail-on", "MR:auc_lo>0.9999"])  # fmt: skip
    assert res.exit_code == 3, res.output
    flat = " ".join(res.output.split())
    n_local = sum(1 for d, _ in _json_rows(run) if d == "local")
    assert f"attack local: {n_local} rows, best AUC" in flat and "(every row: compleak export RUN, or --all)" in flat
    assert "membership leakage on" not in res.output  # the per-attack table only with --all
    assert "verdict: " in flat
    assert (run / "report" / "index.html").is_file() and (run / "report" / "summary.json").is_file()
    n = len(_json_rows(run))
    assert f"gate failed: {n} result rows over 1 of 2 rules (exit status 3)" in res.output
    assert res.output.index("report:") < res.output.index("gate failed")
    again = cli(["audit", str(tiny), "--out", str(run), "--no-ray", "--fail-on", "auc>0.999"])
    assert again.exit_code == 0, again.output
    assert "gate passed: 1 rule held" in again.output and f"auc>0.999: on {n} of {n} result rows" in again.output


# --------------------------------------------------------------------------- machine-readable verdicts


def test_check_format_json_counts_what_each_rule_judged(synthetic_run: Path) -> None:
    res = cli(["check", str(synthetic_run), "--format", "json", "--fail-on", "MR:auc>0.8", "--fail-on", "auc>0.99"])
    assert res.exit_code == EXIT_TRIPPED, res.output
    got = json.loads(res.stdout)
    rows = _json_rows(synthetic_run)
    n_mr = sum(1 for _, r in rows if r["family"] == "MR")
    over = [(d, r) for d, r in rows if r["family"] == "MR" and r["auc"] > 0.8]
    assert got["passed"] is False and got["exit_status"] == 3 and got["result_rows"] == len(rows)
    assert got["rules"] == [{"rule": "MR:auc>0.8", "judged": n_mr, "tripped": len(over)},
                            {"rule": "auc>0.99", "judged": len(rows), "tripped": 0}]
    assert len(over) == len(got["trips"]) > 0
    assert {(t["family"], t["method"], t["metric"], t["op"], t["threshold"]) for t in got["trips"]} == {
        ("MR", r["method"], "auc", ">", 0.8) for _, r in over}
    assert sorted(t["value"] for t in got["trips"]) == sorted(r["auc"] for _, r in over)
    ok = cli(["check", str(synthetic_run), "-f", "json", "--fail-on", "auc>0.99"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["passed"] is True


def test_check_format_github_annotates_and_writes_the_job_summary(synthetic_run: Path, tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    res = cli(["check", str(synthetic_run), "--format", "github", "--fail-on", "MR:auc>0.8"],
              env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert res.exit_code == EXIT_TRIPPED, res.output
    lines = res.stdout.splitlines()
    assert lines and all(line.startswith("::error title=compleak gate%3A MR%3Aauc>0.8::") for line in lines)
    assert any("MR fusion-mlp on " in line and "auc = 0.81 > 0.8" in line for line in lines)
    md = summary.read_text()
    assert md.startswith("**compleak gate failed** (exit status 3)") and "| MR:auc&gt;0.8 | " in md
    assert "<script>alert" in res.stdout  # a hostile run string: annotations are plain text to GitHub
    assert "<script" not in md and "&lt;script&gt;alert" in md  # the summary is Markdown with HTML: escaped
    ok = cli(["check", str(synthetic_run), "-f", "github", "--fail-on", "auc>0.999"], env={"GITHUB_STEP_SUMMARY": ""})
    assert ok.exit_code == 0 and ok.stdout.startswith("::notice title=compleak gate::gate passed: auc>0.999 on ")


def test_check_refuses_an_unknown_format(synthetic_run: Path) -> None:
    res = cli(["check", str(synthetic_run), "--format", "xml", "--fail-on", "auc>0.6"])
    assert res.exit_code == 2 and "--format 'xml': choose one of text, json, github" in res.output
    assert "Traceback" not in res.output


# --------------------------------------------------------------------------- compleak diff: a regression gate


def _bumped(run: Path, dest: Path, by: float, family: str = "NR") -> tuple[Path, int]:
    """A copy of ``run`` whose ``family`` rows on the host have AUC + ``by`` (and CI moved with it)."""
    new = copy_run(run, dest)
    res = new / "attacks" / "local" / "results.json"
    rows = json.loads(res.read_text())
    n = 0
    for r in rows:
        if r["family"] == family:
            r["auc"] = min(1.0, r["auc"] + by)
            r["auc_ci"] = [min(1.0, x + by) for x in r["auc_ci"]]
            n += 1
    res.write_text(json.dumps(rows))
    return new, n


def test_diff_gates_the_change_from_a_baseline_run(synthetic_run: Path, tmp_path: Path) -> None:
    new, n_nr = _bumped(synthetic_run, tmp_path / "new", 0.05)
    total = len(_json_rows(synthetic_run))
    same = cli(["diff", str(synthetic_run), str(synthetic_run)])
    assert same.exit_code == 0, same.output
    assert f"{total} attacks in both, 0 only in the run, 0 only in the baseline" in " ".join(same.output.split())
    res = cli(["diff", str(synthetic_run), str(new), "--fail-on", "delta_auc>0.02", "--format", "json"])
    assert res.exit_code == EXIT_TRIPPED, res.output
    got = json.loads(res.stdout)
    assert got["matched"] == total and got["gate"]["rules"] == [{"rule": "delta_auc>0.02", "judged": total,
                                                                  "tripped": n_nr}]  # fmt: skip
    assert all(t["family"] == "NR" and t["metric"] == "delta_auc" for t in got["gate"]["trips"])
    moved = [r for r in got["rows"] if r["family"] == "NR" and r["device"] == "local"]
    assert all(abs(r["delta_auc"] - (r["auc_now"] - r["auc_before"])) < 1e-12 for r in got["rows"])
    assert len(moved) == n_nr and all(r["delta_auc"] > 0 and r["seed"] is None for r in moved)
    assert all(r["delta_auc"] == 0 for r in got["rows"] if r not in moved)
    ok = cli(["diff", str(synthetic_run), str(new), "--fail-on", "SR:delta_auc>0.02"])
    assert ok.exit_code == 0 and "gate passed: 1 rule held" in ok.output, ok.output
    text = cli(["diff", str(synthetic_run), str(new), "--fail-on", "NR:delta_auc>0.02"])
    assert text.exit_code == 3 and "gate failed:" in text.output and "largest AUC changes" in text.output


def test_diff_counts_unmatched_rows_and_refuses_what_it_cannot_compare(synthetic_run: Path, tmp_path: Path) -> None:
    new = copy_run(synthetic_run, tmp_path / "new")
    res = new / "attacks" / "local" / "results.json"
    rows = json.loads(res.read_text())
    rows.append(dict(rows[0], method="a-new-attack"))
    res.write_text(json.dumps(rows))
    out = cli(["diff", str(synthetic_run), str(new), "--fail-on", "delta_auc>0.5"])
    assert out.exit_code == 0, out.output
    assert "1 result rows only in" in " ".join(out.output.split())  # counted, never paired or dropped silently
    check_one = cli(["check", str(new), "--fail-on", "delta_auc>0.02"])
    assert check_one.exit_code == 2 and "use compleak diff BASELINE_RUN RUN" in check_one.output
    for rule, why in (("delta_auc>2", "delta_auc lies in [-1, 1]"), ("delta_auc<-1", "could never trip"),
                      ("delta_tpr>0.1", "tpr needs its false-positive rate")):
        bad = cli(["diff", str(synthetic_run), str(new), "--fail-on", rule])
        assert bad.exit_code == 2 and why in bad.output and "Traceback" not in bad.output, (rule, bad.output)
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = cli(["diff", str(synthetic_run), str(empty)])
    assert nothing.exit_code == 2 and "no attack results" in nothing.output
    missing = cli(["diff", str(tmp_path / "nope"), str(new)])
    assert missing.exit_code == 2 and "no such run directory" in missing.output
