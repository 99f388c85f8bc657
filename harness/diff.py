"""``compleak diff BASELINE RUN``: the same attacks in two runs, row by row, and a regression gate over the change
(``--fail-on 'delta_auc>0.02'``; docs/ci.md, "Regression gate against a baseline run").

Rows are matched by (device, seed, family, method, variant, artifact); a row of RUN whose attack the baseline does
not have (or the reverse) is counted, never silently paired. Each matched row of RUN carries its baseline row
(:attr:`compleak.results.RunResult.baseline`), so the gate's ``delta_METRIC`` rules read RUN's value minus the
baseline's and every other rule reads RUN's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from compleak.results import RunResult, result_rows
from harness.errors import HarnessError, esc
from harness.gate import GateOutcome, Rule, evaluate_gate

#: rows shown in the terminal table (the largest |Δ AUC| first); `--format json` has them all
TOP_ROWS = 15


def row_key(r: RunResult) -> tuple[str, ...]:
    """What identifies the same attack in two runs: device, seed, family, method, variant(s), artifact(s)."""
    extra = r.row.model_extra or {}
    art = extra.get("artifact_id", extra.get("artifact", ""))
    join = lambda v: "+".join(map(str, v)) if isinstance(v, list) else str(v)  # noqa: E731
    return (r.device, str(r.seed), r.row.family, r.row.method, join(r.row.variant), join(art))


@dataclass
class RunDiff:
    """Two runs row by row: ``matched`` (RUN's rows, each with its baseline), and the rows only one run has."""

    baseline: Path
    run: Path
    matched: list[RunResult]
    only_baseline: list[RunResult]
    only_run: list[RunResult]


def diff_runs(baseline: Path | str, run: Path | str) -> RunDiff:
    """Match every result row of ``run`` with the same attack's row in ``baseline``. One-line errors for a missing
    run, a run without results, or two runs that share no attack."""
    rows = {}
    for name, path in (("baseline", baseline), ("run", run)):
        if not Path(path).is_dir():
            raise HarnessError(f"{path}: no such run directory (the {name} of compleak diff)")
        rows[name] = result_rows(path)
        if not rows[name]:
            raise HarnessError(f"{path}: no attack results; run 'compleak attack {path}' (or 'compleak audit') first")
    base = {}
    for r in rows["baseline"]:
        base.setdefault(row_key(r), r)
    matched = [replace(r, baseline=base[row_key(r)].row) for r in rows["run"] if row_key(r) in base]
    keys = {row_key(r) for r in rows["run"]}
    out = RunDiff(Path(baseline), Path(run), matched, [r for r in rows["baseline"] if row_key(r) not in keys],
                  [r for r in rows["run"] if row_key(r) not in base])  # fmt: skip
    if not matched:
        raise HarnessError(f"{run} and {baseline} share no attack (device, family, method, variant, artifact); "
                           "diff runs of the same experiment")  # fmt: skip
    return out


def gate_diff(d: RunDiff, rules: Sequence[Rule]) -> GateOutcome:
    """The gate over the matched rows; the rows only one run has are counted in notes."""
    outcome = evaluate_gate(d.matched, rules)
    for rows, where in ((d.only_run, f"only in {d.run}"), (d.only_baseline, f"only in the baseline {d.baseline}")):
        if rows:
            outcome.notes.append(f"{len(rows)} result rows {where} were not compared")
    return outcome


def _delta(r: RunResult) -> float:
    assert r.baseline is not None
    return r.row.auc - r.baseline.auc


def _significant(r: RunResult) -> str:
    """'up' / 'down' when the two rows' 95% AUC intervals do not overlap, else ''."""
    a, b = list(r.baseline.auc_ci if r.baseline else []), list(r.row.auc_ci)
    if len(a) < 2 or len(b) < 2:
        return ""
    return "up" if b[0] > a[1] else "down" if b[1] < a[0] else ""


def diff_table(d: RunDiff, top: int = TOP_ROWS) -> Table:
    """The ``top`` matched rows with the largest |Δ AUC|: device, family, method, variant, AUC then and now, Δ with
    a mark where the 95% intervals do not overlap."""
    rows = sorted(d.matched, key=lambda r: -abs(_delta(r)))[:top]
    table = Table(title=f"largest AUC changes ({len(rows)} of {len(d.matched)} matched rows)", title_justify="left")
    for col in ("device", "family", "method", "variant", "AUC before", "AUC now", "Δ"):
        table.add_column(col, justify="right" if col.startswith(("AUC", "Δ")) else "left", overflow="fold")
    for r in rows:
        variant = " + ".join(r.row.variant) if isinstance(r.row.variant, list) else r.row.variant
        mark = {"up": " ▲ (CIs apart)", "down": " ▼ (CIs apart)", "": ""}[_significant(r)]
        table.add_row(esc(r.device), esc(r.row.family), esc(r.row.method), esc(variant),
                      f"{r.baseline.auc:.3f}" if r.baseline else "", f"{r.row.auc:.3f}", f"{_delta(r):+.3f}{mark}")
    return table


def print_diff(d: RunDiff, console: Console, top: int = TOP_ROWS) -> None:
    """The matched/unmatched counts, the table of the largest changes, and how many rows moved significantly."""
    up = sum(1 for r in d.matched if _significant(r) == "up")
    down = sum(1 for r in d.matched if _significant(r) == "down")
    console.print(f"diff: {esc(d.run)} against {esc(d.baseline)}: {len(d.matched)} attacks in both, "
                  f"{len(d.only_run)} only in the run, {len(d.only_baseline)} only in the baseline", highlight=False)
    console.print(diff_table(d, top))
    console.print(f"AUC significantly higher (95% CIs apart) on {up} rows, lower on {down}", highlight=False)


def diff_json(d: RunDiff, outcome: GateOutcome | None) -> dict[str, object]:
    """Every matched row (key, AUC before and now, Δ, whether the 95% CIs are apart), the counts, and the gate's
    verdict (:func:`harness.gate.outcome_json`) when rules were given."""
    from harness.gate import outcome_json

    names = ("device", "seed", "family", "method", "variant", "artifact")
    rows = [dict(zip(names, row_key(r))) | {"seed": r.seed, "auc_before": r.baseline.auc if r.baseline else None,
                                             "auc_now": r.row.auc, "delta_auc": _delta(r),
                                             "ci_apart": _significant(r) or None} for r in d.matched]  # fmt: skip
    return {"baseline": str(d.baseline), "run": str(d.run), "matched": len(d.matched),
            "only_run": len(d.only_run), "only_baseline": len(d.only_baseline), "rows": rows,
            "gate": outcome_json(outcome) if outcome is not None else None}  # fmt: skip
