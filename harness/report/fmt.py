"""How the report writes numbers as text, the same on the page (:mod:`harness.report.html`) and in the terminal
(:mod:`harness.report.terminal`): AUCs with their CI, percentages, ``n/r`` for a TPR its non-members cannot
resolve, ``–`` for what is missing."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from harness.report.load import eps_of, resolvable
from rundir import ResultRow


def joined(v: Any) -> str:
    return ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def attack_name(row: ResultRow) -> str:
    return f"{row.family} {row.method}"


def num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, (float, np.floating)) else str(x)


def pct(x: Any) -> str:
    return "–" if x is None else f"{100 * float(x):.2f}%"


def size(n: int | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def mean_sd(mean: float | None, sd: float | None, digits: int = 3, as_pct: bool = False) -> str:
    """``mean ± sd`` (``–`` without a mean; the mean alone without an sd)."""
    if mean is None:
        return "–"
    f = 100.0 if as_pct else 1.0
    unit = "%" if as_pct else ""
    return f"{f * mean:.{digits}f}{unit}" + ("" if sd is None else f" ± {f * sd:.{digits}f}{unit}")


def ci(interval: list[float]) -> str:
    """`` [lo, hi]`` of a 95% CI, '' when there is none."""
    return f" [{interval[0]:.3f}, {interval[1]:.3f}]" if len(interval) == 2 else ""


def auc_cell(r: ResultRow) -> str:
    return f"{r.auc:.3f}{ci(r.auc_ci)}"


def tpr_text(row: ResultRow, level: str) -> str:
    v = row.tpr_at_fpr.get(level)
    if not resolvable(row.n_nonmembers, float(level)) or v is None:
        return "n/r"
    return pct(v)


def eps_text(row: ResultRow) -> str:
    eps = eps_of(row)
    return "–" if eps is None else f"{eps:.2f}"


def per_seed_text(e: dict[str, Any]) -> str:
    """``seed: AUC [CI]; ...`` of one entry of the report across seeds."""
    return "; ".join(f"{p['seed']}: {p['auc']:.3f}" + ci(p["auc_ci"]) for p in e["per_seed"])
