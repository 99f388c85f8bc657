"""The report's figures, drawn with matplotlib (Agg) and returned as base64 PNG for ``data:`` URIs: ROC curves per
attack family, leakage against compression strength, host-versus-device divergence."""

from __future__ import annotations

import base64
import functools
import io
import math
from typing import Any, Callable, TypeVar

import numpy as np

from harness.compare import HOST
from harness.report.load import DeviceResults, strength_order, variant_number, where_of
from rundir import Manifest, ResultRow
from rundir.vocabulary import ROW_FAMILIES

FAMILY_COLORS = {"NR": "#1f77b4", "SR": "#d62728", "MR": "#2ca02c", "baseline": "#9467bd"}
Curve = tuple[ResultRow, tuple[np.ndarray, np.ndarray]]  # a result row and its ROC points (fpr, tpr)


F = TypeVar("F", bound=Callable[..., Any])

def _pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def literal_text(fn: F) -> F:
    """Draw every text of the figures ``fn`` makes literally: names from the run (variants, methods, device ids)
    never go through matplotlib's mathtext, so ``$...$`` in one prints as it is and cannot stop the report."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _panels(n: int, max_cols: int, width: float, height: float, extra: float = 0.0) -> tuple[Any, list[Any]]:
    """A figure of ``n`` panels, at most ``max_cols`` a row (the unused ones hidden): (figure, the n axes)."""
    ncol = min(max_cols, n)
    nrow = math.ceil(n / ncol)
    fig, axes = _pyplot().subplots(nrow, ncol, figsize=(width * ncol, height * nrow + extra), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


# --------------------------------------------------------------------------- ROC curves


def _roc_panels(devices: list[DeviceResults], manifest: Manifest | None, fam: str) -> dict[tuple[str, str], dict]:
    """(device, framework/format) -> {curve label: the best row of ``fam`` with that label, and its ROC}."""
    panels: dict[tuple[str, str], dict[str, Curve]] = {}
    for dr in devices:
        for i, r in enumerate(dr.rows):
            if r.family != fam or i not in dr.roc:
                continue
            curves = panels.setdefault((dr.device_id, where_of(r, manifest)), {})
            if isinstance(r.variant, list):  # MR: with and without the original are different attacks
                label = f"{r.method} over {len(r.variant)} variants"
            else:
                label = r.variant
            if label not in curves or r.auc > curves[label][0].auc:
                curves[label] = (r, dr.roc[i])
    return panels


def _roc_panel(ax: Any, fam: str, dev: str, where: str, curves: dict[str, Curve]) -> None:
    """One log-log ROC panel: a curve per label (by compression strength), the chance line, the FPR floor."""
    cmap = _pyplot().get_cmap("viridis", max(len(curves), 2))
    floor = 1.0 / max(max(r.n_nonmembers for r, _ in curves.values()), 1)
    ordered = sorted(curves.items(), key=lambda kv: (strength_order(kv[0].split(" ")[0]), kv[0]))
    for k, (label, (r, (fpr, tpr))) in enumerate(ordered):
        ax.plot(
            np.clip(fpr, floor / 2, 1),
            np.clip(tpr, floor / 2, 1),
            color=cmap(k),
            lw=1.3,
            label=f"{label} · {r.method} (AUC {r.auc:.3f})" if fam != "MR" else f"{label} (AUC {r.auc:.3f})",
        )
    grid = np.logspace(np.log10(floor / 2), 0, 50)
    ax.plot(grid, grid, "k--", lw=0.8, label="chance")
    ax.axvline(floor, color="grey", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor / 2, 1)
    ax.set_ylim(floor / 2, 1.05)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"{fam} · {where or '?'} · {dev}", fontsize=9.5)
    ax.legend(fontsize=6, loc="lower right")
    ax.grid(True, which="both", alpha=0.25)


@literal_text
def roc_figures(devices: list[DeviceResults], manifest: Manifest | None) -> list[tuple[str, str]]:
    """One log-log ROC figure per attack family, a panel per device and framework/format (three per row): for each
    target variant the family's best method by AUC (for MR each method). Returns (family, base64 PNG)."""
    out = []
    families = [f for f in ROW_FAMILIES if any(r.family == f for d in devices for r in d.rows)]
    for fam in families:
        panels = _roc_panels(devices, manifest, fam)
        if not panels:
            continue
        fig, axes = _panels(len(panels), 3, 5.0, 4.3)
        for ax, ((dev, where), curves) in zip(axes, panels.items()):
            _roc_panel(ax, fam, dev, where, curves)
        fig.tight_layout()
        out.append((fam, _png(fig)))
    return out


# --------------------------------------------------------------------------- leakage versus compression strength

STRENGTHS = (("sparsity", "prune-", "pruning sparsity"), ("clusters", "cluster-", "clusters per weight tensor"))
Series = dict[tuple[str, str, str], list[tuple[float, ResultRow]]]  # (device, where, family) -> [(x, best row)]


def _strength_series(devices: list[DeviceResults], manifest: Manifest | None, kind: str, prefix: str) -> Series:
    """Per device, framework/format and family: the best row at each strength (the original at sparsity 0);
    only series with at least two strengths."""
    series: Series = {}
    for dr in devices:
        for r in dr.rows:
            if not isinstance(r.variant, str):
                continue
            v = r.variant
            if v.startswith(prefix) and "+" not in v:
                x = variant_number(v, prefix)
            elif v == "original" and kind == "sparsity":
                x = 0.0
            else:
                continue
            pts = series.setdefault((dr.device_id, where_of(r, manifest), r.family), [])
            same = [k for k, (px, pr) in enumerate(pts) if px == x]
            if same:
                if r.auc > pts[same[0]][1].auc:
                    pts[same[0]] = (x, r)
            else:
                pts.append((x, r))
    return {k: v for k, v in series.items() if len({x for x, _ in v}) >= 2}


def _strength_panel(ax: Any, series: Series, where: str, devs: list[str], kind: str, xlabel: str) -> None:
    """One framework/format's panel: AUC with its CI against strength, a line per family and device."""
    styles = ["-", "--", ":", "-."]
    for (dev, w, fam), pts in sorted(series.items()):
        if w != where:
            continue
        pts.sort(key=lambda p: p[0])
        xs = np.array([p[0] for p in pts])
        ys = np.array([p[1].auc for p in pts])
        lo = np.array([p[1].auc_ci[0] if len(p[1].auc_ci) == 2 else p[1].auc for p in pts])
        hi = np.array([p[1].auc_ci[1] if len(p[1].auc_ci) == 2 else p[1].auc for p in pts])
        ax.errorbar(
            xs,
            ys,
            yerr=[np.clip(ys - lo, 0, None), np.clip(hi - ys, 0, None)],
            color=FAMILY_COLORS.get(fam, "k"),
            ls=styles[devs.index(dev) % len(styles)],
            marker="o",
            ms=4,
            capsize=3,
            lw=1.2,
            label=f"{fam} · {dev}" if len(devs) > 1 else fam,
        )
    if kind == "clusters":
        ax.set_xscale("log", base=2)
    ax.axhline(0.5, color="grey", lw=0.7, ls=":")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("attack AUC (best method, 95% CI)")
    ax.set_title(f"{where or '?'}", fontsize=9.5)
    ax.legend(fontsize=7, loc="best")
    ax.grid(True, alpha=0.25)


@literal_text
def strength_figures(devices: list[DeviceResults], manifest: Manifest | None) -> list[tuple[str, str]]:
    """Leakage (best AUC per family, with CI) against pruning sparsity and against cluster count, per device and
    framework/format. The original model is drawn at sparsity 0 and at 'no clustering'. Returns (title, PNG)."""
    out = []
    for kind, prefix, xlabel in STRENGTHS:
        series = _strength_series(devices, manifest, kind, prefix)
        if not series:
            continue
        devs = sorted({k[0] for k in series}, key=lambda d: (d != HOST, d))
        wheres = sorted({k[1] for k in series})
        fig, axes = _panels(len(wheres), 2, 6.4, 4.2, extra=0.6)
        for ax, where in zip(axes, wheres):
            _strength_panel(ax, series, where, devs, kind, xlabel)
        fig.suptitle(f"leakage versus {xlabel}", fontsize=11)
        fig.tight_layout()
        out.append((f"leakage versus {xlabel}", _png(fig)))
    return out


# --------------------------------------------------------------------------- host versus device


@literal_text
def divergence_figure(compare: dict[str, dict[str, Any]]) -> str | None:
    """Mean |device - host| and argmax-flip rate per target artifact, one bar group per device (PNG)."""
    plt = _pyplot()
    from matplotlib.ticker import LogLocator, NullFormatter

    items = [(dev, a) for dev, c in compare.items() for a in c.get("artifacts", []) if a.get("role") == "target"]
    if not items or all(a["max_abs_diff"] == 0 and a["argmax_flips"] == 0 for _, a in items):
        return None  # nothing to draw: the tables say every output is identical
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, max(2.8, 0.28 * len(items) + 1.2)))
    labels = [f"{a['artifact']} @ {dev}" for dev, a in items]
    y = np.arange(len(items))
    vals = np.array([a["mean_abs_diff"] for _, a in items], dtype=float)
    nonzero = vals[vals > 0]
    if nonzero.size and (nonzero.size < vals.size or nonzero.max() / nonzero.min() > 100):
        ax1.barh(y, np.maximum(vals, 1e-12), color="#1f77b4")  # orders of magnitude apart, or some exactly 0
        ax1.set_xscale("log")
        ax1.xaxis.set_minor_formatter(NullFormatter())
        ax1.xaxis.set_major_locator(LogLocator(base=10, numticks=6))
        ax1.set_xlabel("mean |device − host| (log scale; 1e-12 = identical)")
    else:
        ax1.barh(y, vals, color="#1f77b4")
        ax1.set_xlim(left=0)
        ax1.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
        ax1.set_xlabel("mean |device − host|")
    ax1.set_yticks(y, labels, fontsize=7)
    ax1.invert_yaxis()
    ax2.barh(y, [100 * a["argmax_flip_rate"] for _, a in items], color="#d62728")
    ax2.set_xlim(left=0, right=max(1.0, 1.1 * max(100 * a["argmax_flip_rate"] for _, a in items)))
    ax2.set_yticks(y, [""] * len(items))
    ax2.invert_yaxis()
    ax2.set_xlabel("argmax flips (% of examples)")
    for ax in (ax1, ax2):
        ax.grid(True, axis="x", alpha=0.25)
    fig.tight_layout()
    return _png(fig)
