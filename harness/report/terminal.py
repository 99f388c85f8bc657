"""The report in the terminal: a rich table of the best attack per target and device (or their mean ± sd across
seeds), the worst case underneath and the threat model's summary line. It only formats ``summary.json``."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from harness.errors import esc
from harness.report.fmt import ci, mean_sd, pct
from harness.report.load import resolvable, variant_str


def print_terminal(summary: dict[str, Any], console: Console) -> None:
    """A rich table: best attack per target variant and device, and the worst case underneath."""
    t = Table(title=f"leakage — {esc(summary['experiment'])}", show_lines=False)
    for h in ("variant", "fw/format", "device", "attack", "AUC [95% CI]", "TPR@0.1%", "TPR@1%", "ε ≥", "test acc."):
        t.add_column(h, overflow="fold")
    for p in summary["best_per_target"]:
        tp = {
            k: (pct(v) if v is not None and resolvable(p["n_nonmembers"], float(k)) else "n/r")
            for k, v in p["tpr_at_fpr"].items()
        }
        t.add_row(
            esc(p["variant"]),
            esc(p["where"] or "–"),
            esc(p["device"]),
            esc(f"{p['family']} {p['method']}"),
            f"{p['auc']:.3f}{ci(p['auc_ci'])}",
            tp.get("0.001", "–"),
            tp.get("0.01", "–"),
            "–" if p.get("eps_lower_bound") is None else f"{p['eps_lower_bound']:.2f}",
            pct(p["test_accuracy"]),
        )
    console.print(t)
    w = summary["worst"]
    if w:
        console.print(
            f"worst: [bold]{esc(w['family'])} {esc(w['method'])}[/] on [bold]{esc(variant_str(w['variant']))}[/] "
            f"({esc(w['where'] or '?')}) @ {esc(w['device'])}: AUC {w['auc']:.3f}"
            + ("" if w.get("eps_lower_bound") is None else f", ε ≥ {w['eps_lower_bound']:.2f}"),
            highlight=False,
        )
    _print_threat(summary, console)
    if summary.get("verdict"):
        console.print(f"[bold]verdict[/]: {esc(summary['verdict']['sentence'])}", highlight=False)


def _print_threat(summary: dict[str, Any], console: Console) -> None:
    tm = summary.get("threat_model")
    if isinstance(tm, dict):
        text = tm.get("summary") if isinstance(tm.get("summary"), str) else None
        text = text or "; ".join(f"{k}: {v}" for k, v in tm.items() if isinstance(v, (str, int, float)))[:300]
        console.print(f"threat model ({esc(summary.get('threat_model_source', ''))}): {esc(text)}", highlight=False)


def print_seed_terminal(summary: dict[str, Any], console: Console) -> None:
    """A rich table: best attack (by mean AUC) per target variant and device, mean ± sd across seeds."""
    t = Table(title=f"leakage across seeds {', '.join(map(str, summary['seeds']))} — {esc(summary['experiment'])}")
    for h in ("variant", "fw/format", "device", "attack", "AUC mean ± sd", "per seed", "TPR@1% mean ± sd", "ε ≥"):
        t.add_column(h, overflow="fold")
    for e in summary["best_per_target"]:
        t1 = e["tpr_at_fpr_mean"].get("0.01")
        t.add_row(
            esc(e["variant"]), esc(e["where"] or "–"), esc(e["device"]), esc(f"{e['family']} {e['method']}"),
            mean_sd(e["auc_mean"], e["auc_sd"]), esc(", ".join(f"{p['auc']:.3f}" for p in e["per_seed"])),
            "n/r" if t1 is None else mean_sd(t1, e["tpr_at_fpr_sd"].get("0.01"), 2, as_pct=True),
            mean_sd(e["eps_mean"], e["eps_sd"], 2),
        )
    console.print(t)
    w = summary["worst"]
    if w:
        console.print(
            f"worst across seeds: [bold]{esc(w['family'])} {esc(w['method'])}[/] on "
            f"[bold]{esc(variant_str(w['variant']))}[/] ({esc(w['where'] or '?')}) @ {esc(w['device'])}: "
            f"AUC {mean_sd(w['auc_mean'], w['auc_sd'])}",
            highlight=False,
        )
    _print_threat(summary, console)
