"""The report stage: ``RUN/report/index.html`` (one self-contained page), ``RUN/report/summary.json`` and a table
in the terminal.

The page embeds every figure as a base64 PNG drawn with matplotlib and carries its CSS inline; it loads nothing
from anywhere. Every piece of text that comes from the run directory is HTML-escaped. How to read it:
docs/report.md.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from compleak.metrics import fpr_resolvable
from compleak.rundir import (
    ArtifactRecord,
    ContractError,
    Manifest,
    ResultRow,
    RunDir,
    atomic_write_bytes,
    atomic_write_json,
    load_results,
)
from harness.compare import HOST, load_compare
from harness.errors import HarnessError

FPR_LEVELS = ("0.001", "0.01")
DEFAULT_THREAT_MODEL = {
    "attacker_knowledge": (
        "Shadow data from the same distribution as the training data, disjoint from the target's members and "
        "non-members; the model architecture and training recipe; the compression pipeline (shadow models go "
        "through the identical pruning / clustering / quantization / export)."
    ),
    "attacker_access": (
        "Black-box: the raw output vector (logits or probabilities, dequantized) of each deployed artifact, as the "
        "device runtime produced it, for every queried example. NR uses one artifact; SR also uses the original "
        "(uncompressed) model; MR uses several compressed variants, with and without the original."
    ),
    "never_used_by_attacker": "Target members or non-members, for training or model selection.",
}


# --------------------------------------------------------------------------- loading


@dataclass
class DeviceResults:
    """Everything known about one device in a run."""

    device_id: str
    dirname: str
    rows: list[ResultRow] = field(default_factory=list)
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)  # artifact id -> provenance json
    roc: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # row index -> (fpr, tpr)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ContractError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None


def _load_roc(rows: list[ResultRow]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """ROC points per result row, from the ``roc`` field the attack stage writes into each row
    ({"fpr": [...], "tpr": [...]}, tie-aware, on a log grid from 1/n_nonmembers: ``compleak.metrics.roc_points``)."""
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i, r in enumerate(rows):
        roc = (r.model_extra or {}).get("roc")
        if isinstance(roc, dict) and "fpr" in roc and "tpr" in roc and len(roc["fpr"]) == len(roc["tpr"]):
            out[i] = (np.asarray(roc["fpr"], float), np.asarray(roc["tpr"], float))
    return out


def load_devices(rd: RunDir) -> list[DeviceResults]:
    """Every device with outputs or attack results, the host first."""
    found: dict[str, DeviceResults] = {}
    for device_id, d in rd.collected_devices():
        dr = found.setdefault(d.name, DeviceResults(device_id, d.name))
        for prov in sorted(d.glob("*.json")):
            try:
                dr.provenance[prov.stem] = _read_json(prov)
            except ContractError:
                continue
    attacks = rd.root / "attacks"
    if attacks.is_dir():
        for d in sorted(p for p in attacks.iterdir() if p.is_dir()):
            dr = found.setdefault(d.name, DeviceResults(d.name, d.name))
            if (d / "results.json").is_file():
                dr.rows = load_results(d / "results.json")
                dr.roc = _load_roc(dr.rows)
    return sorted(found.values(), key=lambda r: (r.dirname != HOST, r.dirname))


# --------------------------------------------------------------------------- helpers


def _joined(v: Any) -> str:
    return ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def _variant_str(v: str | list[str]) -> str:
    return v if isinstance(v, str) else " + ".join(v)


def _artifact_of(row: ResultRow, manifest: Manifest | None) -> ArtifactRecord | None:
    """The target artifact a result row was computed on, if the row names it (``artifact`` extra field) or its
    framework/format/variant identify exactly one target artifact."""
    if manifest is None:
        return None
    extra = row.model_extra or {}
    aid = extra.get("artifact_id", extra.get("artifact"))
    if isinstance(aid, str) and aid:
        try:
            return manifest.by_id(aid)
        except KeyError:
            return None
    if not isinstance(row.variant, str):
        return None
    cands = [
        a
        for a in manifest.targets()
        if a.variant == row.variant
        and ("framework" not in extra or a.framework == extra["framework"])
        and ("format" not in extra or a.format == extra["format"])
    ]
    return cands[0] if len(cands) == 1 else None


def _where(row: ResultRow, manifest: Manifest | None) -> str:
    """framework/format of a row ('tf/tflite'), or '' when the row does not say."""
    extra = row.model_extra or {}
    a = _artifact_of(row, manifest)
    if a is not None:
        return f"{a.framework}/{a.format}"
    if extra.get("framework") or extra.get("format"):
        fmt = extra.get("format", "?")
        return f"{extra.get('framework', '?')}/{fmt if isinstance(fmt, str) else ','.join(map(str, fmt))}"
    return ""


def _attack_name(row: ResultRow) -> str:
    return f"{row.family} {row.method}"


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, (float, np.floating)) else str(x)


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * float(x):.2f}%"


def _bytes(n: int | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def resolvable(n_nonmembers: int, fpr: float) -> bool:
    """Whether ``n_nonmembers`` can resolve a false-positive rate ``fpr`` (compleak.metrics' rule:
    n_nonmembers * fpr >= 1; below that the measured TPR@FPR is really TPR@0)."""
    return fpr_resolvable(n_nonmembers, fpr)


def _tpr_text(row: ResultRow, level: str) -> str:
    v = row.tpr_at_fpr.get(level)
    if not resolvable(row.n_nonmembers, float(level)) or v is None:
        return "n/r"
    return _pct(v)


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{b64}" alt="{_e(alt)}">'


def _table(headers: list[str], rows: Iterable[list[str]], raw: bool = False, cls: str = "") -> str:
    """An HTML table; cells are escaped unless ``raw`` (then the caller escaped them)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{_e(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# --------------------------------------------------------------------------- summary


def worst_leakage(devices: list[DeviceResults], manifest: Manifest | None) -> dict[str, Any] | None:
    """The result row with the highest AUC over every device and attack, as a summary dict."""
    best: tuple[float, DeviceResults, ResultRow] | None = None
    for dr in devices:
        for r in dr.rows:
            if best is None or r.auc > best[0]:
                best = (r.auc, dr, r)
    if best is None:
        return None
    _, dr, r = best
    a = _artifact_of(r, manifest)
    out: dict[str, Any] = {
        "device": dr.device_id,
        "family": r.family,
        "method": r.method,
        "variant": r.variant,
        "where": _where(r, manifest),
        "artifact": a.id if a else (r.model_extra or {}).get("artifact_id"),
        "auc": r.auc,
        "auc_ci": r.auc_ci,
        "balanced_accuracy": r.balanced_accuracy,
        "tpr_at_fpr": r.tpr_at_fpr,
        "n_members": r.n_members,
        "n_nonmembers": r.n_nonmembers,
        "resolvable": {k: resolvable(r.n_nonmembers, float(k)) for k in r.tpr_at_fpr},
    }
    return out


def _best_per_target(dr: DeviceResults, manifest: Manifest | None) -> list[tuple[str, str, ResultRow]]:
    """(variant, where, best row) per single-variant target, highest AUC first within the variant order."""
    best: dict[tuple[str, str], ResultRow] = {}
    for r in dr.rows:
        if not isinstance(r.variant, str):
            continue
        key = (r.variant, _where(r, manifest))
        if key not in best or r.auc > best[key].auc:
            best[key] = r
    return [(v, w, r) for (v, w), r in sorted(best.items(), key=lambda kv: (_strength_order(kv[0][0]), kv[0][1]))]


def _strength_order(variant: str) -> tuple[int, float, str]:
    if variant == "original":
        return (0, 0.0, variant)
    if variant.startswith("prune-"):
        return (1, _num(variant, "prune-"), variant)
    if variant.startswith("cluster-"):
        return (2, -_num(variant, "cluster-"), variant)
    return (3, 0.0, variant)


def _num(variant: str, prefix: str) -> float:
    head = variant.split("+")[0]
    try:
        return float(head.removeprefix(prefix))
    except ValueError:
        return 0.0


# --------------------------------------------------------------------------- figures


def _family_colors() -> dict[str, str]:
    return {"NR": "#1f77b4", "SR": "#d62728", "MR": "#2ca02c", "baseline": "#9467bd"}


def roc_figures(devices: list[DeviceResults], manifest: Manifest | None) -> list[tuple[str, str]]:
    """One log-log ROC figure per attack family, a panel per device and framework/format (three per row): for each
    target variant the family's best method by AUC (for MR each method). Returns (family, base64 PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    families = [f for f in ("NR", "SR", "MR", "baseline") if any(r.family == f for d in devices for r in d.rows)]
    for fam in families:
        panels: dict[tuple[str, str], dict[str, tuple[ResultRow, tuple[np.ndarray, np.ndarray]]]] = {}
        for dr in devices:
            for i, r in enumerate(dr.rows):
                if r.family != fam or i not in dr.roc:
                    continue
                curves = panels.setdefault((dr.device_id, _where(r, manifest)), {})
                if isinstance(r.variant, list):  # MR: with and without the original are different attacks
                    label = f"{r.method} over {len(r.variant)} variants"
                else:
                    label = r.variant
                if label not in curves or r.auc > curves[label][0].auc:
                    curves[label] = (r, dr.roc[i])
        if not panels:
            continue
        ncol = min(3, len(panels))
        nrow = math.ceil(len(panels) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(5.0 * ncol, 4.3 * nrow), squeeze=False)
        for ax in axes.flat[len(panels) :]:
            ax.set_visible(False)
        for ax, ((dev, where), curves) in zip(axes.flat, panels.items()):
            cmap = plt.get_cmap("viridis", max(len(curves), 2))
            floor = 1.0 / max(max(r.n_nonmembers for r, _ in curves.values()), 1)
            ordered = sorted(curves.items(), key=lambda kv: (_strength_order(kv[0].split(" ")[0]), kv[0]))
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
        fig.tight_layout()
        out.append((fam, _png(fig)))
    return out


def strength_figures(devices: list[DeviceResults], manifest: Manifest | None) -> list[tuple[str, str]]:
    """Leakage (best AUC per family, with CI) against pruning sparsity and against cluster count, per device and
    framework/format. The original model is drawn at sparsity 0 and at 'no clustering'. Returns (title, PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    for kind, prefix, xlabel in (
        ("sparsity", "prune-", "pruning sparsity"),
        ("clusters", "cluster-", "clusters per weight tensor"),
    ):
        series: dict[tuple[str, str, str], list[tuple[float, ResultRow]]] = {}
        for dr in devices:
            for r in dr.rows:
                if not isinstance(r.variant, str):
                    continue
                v = r.variant
                if v.startswith(prefix) and "+" not in v:
                    x = _num(v, prefix)
                elif v == "original" and kind == "sparsity":
                    x = 0.0
                else:
                    continue
                key = (dr.device_id, _where(r, manifest), r.family)
                pts = series.setdefault(key, [])
                same = [k for k, (px, pr) in enumerate(pts) if px == x]
                if same:
                    if r.auc > pts[same[0]][1].auc:
                        pts[same[0]] = (x, r)
                else:
                    pts.append((x, r))
        series = {k: v for k, v in series.items() if len({x for x, _ in v}) >= 2}
        if not series:
            continue
        colors = _family_colors()
        styles = ["-", "--", ":", "-."]
        devs = sorted({k[0] for k in series}, key=lambda d: (d != HOST, d))
        wheres = sorted({k[1] for k in series})
        ncol = min(2, len(wheres))
        nrow = math.ceil(len(wheres) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(6.4 * ncol, 4.2 * nrow + 0.6), squeeze=False)
        for ax in axes.flat[len(wheres) :]:
            ax.set_visible(False)
        for ax, where in zip(axes.flat, wheres):
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
                    color=colors.get(fam, "k"),
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
        fig.suptitle(f"leakage versus {xlabel}", fontsize=11)
        fig.tight_layout()
        out.append((f"leakage versus {xlabel}", _png(fig)))
    return out


def divergence_figure(compare: dict[str, dict[str, Any]]) -> str | None:
    """Mean |device - host| and argmax-flip rate per target artifact, one bar group per device (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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


# --------------------------------------------------------------------------- page


def _css() -> str:
    return resources.files("harness").joinpath("report_assets/report.css").read_text()


def _section(title: str, body: str, anchor: str) -> str:
    return f'<section id="{_e(anchor)}"><h2>{_e(title)}</h2>{body}</section>'


def _auc_cell(r: ResultRow) -> str:
    ci = f" [{r.auc_ci[0]:.3f}, {r.auc_ci[1]:.3f}]" if len(r.auc_ci) == 2 else ""
    return f"{r.auc:.3f}{ci}"


def _verdict_html(verdicts: dict[str, dict[str, Any]]) -> str:
    items = []
    for dev, v in verdicts.items():
        d = v["max_abs_delta_auc"]
        g = v["max_abs_host_shadow_gap"]
        items.append(
            f"<li><b>{_e(dev)}</b> versus the host: {v['n_bit_identical']} of {v['n_artifacts']} artifacts give "
            f"bit-identical outputs (largest |Δ| {v['max_abs_diff']:.3g}, {v['argmax_flips']} argmax flip(s)); "
            + ("no attack ran on both sides" if d is None else f"attack AUCs differ by at most {d:.3f}")
            + (
                ""
                if g is None
                else f"; attacks trained on host shadows differ from device-shadow ones by at most {g:.3f}"
            )
            + ".</li>"
        )
    return f"<p>Can the host's numbers be trusted for the devices?</p><ul>{''.join(items)}</ul>" if items else ""


def _summary_html(worst: dict[str, Any] | None) -> str:
    if worst is None:
        return "<p class='warn'>No attack results yet: run <code>compleak attack RUN</code>.</p>"
    ci = worst["auc_ci"]
    lines = [
        f"<p class='headline'>Worst leakage: <b>{_e(worst['family'])} {_e(worst['method'])}</b> on variant "
        f"<b>{_e(_variant_str(worst['variant']))}</b>"
        + (f" ({_e(worst['where'])})" if worst["where"] else "")
        + f" on device <b>{_e(worst['device'])}</b>: AUC <b>{worst['auc']:.3f}</b>"
        + (f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if len(ci) == 2 else "")
        + f", balanced accuracy {worst['balanced_accuracy']:.3f}.</p>",
        "<ul>",
    ]
    for level in sorted(worst["tpr_at_fpr"], key=float):
        v = worst["tpr_at_fpr"][level]
        pct = f"{100 * float(level):g}%"
        if not worst["resolvable"].get(level, True) or v is None:
            need = math.ceil(1 / float(level))
            lines.append(
                f"<li>TPR at {pct} FPR: <span class='warn'>not resolvable</span> — "
                f"{worst['n_nonmembers']} non-members cannot resolve a {pct} false-positive rate "
                f"(needs at least {need}).</li>"
            )
        else:
            lines.append(f"<li>TPR at {pct} FPR: <b>{_pct(v)}</b> (chance: {pct}).</li>")
    lines.append(f"<li>{worst['n_members']} members and {worst['n_nonmembers']} non-members evaluated.</li></ul>")
    return "".join(lines)


def _results_html(devices: list[DeviceResults], manifest: Manifest | None) -> str:
    parts = []
    headers = [
        "variant",
        "framework/format",
        "device",
        "best attack",
        "AUC [95% CI]",
        "TPR@0.1% FPR",
        "TPR@1% FPR",
        "balanced acc.",
        "test acc. (host)",
        "artifact size",
    ]
    rows = []
    for dr in devices:
        for v, w, r in _best_per_target(dr, manifest):
            a = _artifact_of(r, manifest)
            test_acc = a.host_accuracy.get("test") if a else None
            rows.append(
                [
                    v,
                    w or "–",
                    dr.device_id,
                    _attack_name(r),
                    _auc_cell(r),
                    _tpr_text(r, "0.001"),
                    _tpr_text(r, "0.01"),
                    _fmt(r.balanced_accuracy),
                    _pct(test_acc) if test_acc is not None else "–",
                    _bytes(a.bytes) if a else "–",
                ]
            )
    parts.append(
        "<p>Per target variant and device, the attack with the highest AUC (chance: AUC 0.5, TPR = FPR). "
        "<i>n/r</i>: not resolvable — resolving a false-positive rate α needs at least 1/α non-members "
        "(1000 for 0.1%, 100 for 1%).</p>"
    )
    parts.append(_table(headers, rows, cls="results"))
    for dr in devices:
        if not dr.rows:
            continue
        all_rows = [
            [
                r.family,
                r.method,
                _variant_str(r.variant),
                _where(r, manifest) or "–",
                _auc_cell(r),
                _tpr_text(r, "0.001"),
                _tpr_text(r, "0.01"),
                _fmt(r.balanced_accuracy),
                str(r.n_members),
                str(r.n_nonmembers),
            ]
            for r in sorted(dr.rows, key=lambda r: (r.family, _variant_str(r.variant), r.method))
        ]
        parts.append(
            f"<details><summary>All {len(dr.rows)} attack results on {_e(dr.device_id)}</summary>"
            + _table(
                [
                    "family",
                    "method",
                    "variant(s)",
                    "framework/format",
                    "AUC [95% CI]",
                    "TPR@0.1%",
                    "TPR@1%",
                    "balanced acc.",
                    "members",
                    "non-members",
                ],
                all_rows,
            )
            + "</details>"
        )
    return "".join(parts)


def _compare_html(compare: dict[str, dict[str, Any]], fig: str | None) -> str:
    if not compare:
        return (
            "<p>Only the host was collected; no device to compare. Collect on a device "
            "(<code>compleak collect RUN --device URI</code>) to see how its runtime changes outputs and leakage.</p>"
        )
    parts = [
        (
            "<p>Each artifact's outputs on the device against the same artifact's outputs on the host "
            "(<code>local</code>), on the same examples. Definitions in docs/report.md.</p>"
        )
    ]
    if fig:
        parts.append(_img(fig, "host versus device output divergence"))
    for dev, c in compare.items():
        parts.append(f"<h3>{_e(dev)} versus host</h3>")
        arts = c.get("artifacts", [])
        same = sum(1 for a in arts if a["frac_bit_identical"] == 1.0)
        flips = sum(a["argmax_flips"] for a in arts)
        worst_kl = max((a["kl_max"] for a in arts), default=0.0)
        parts.append(
            f"<p>{same} of {len(arts)} artifacts produce bit-identical outputs on {_e(dev)}; "
            f"{flips} argmax flips in total; largest per-example KL divergence {worst_kl:.3g} nats.</p>"
        )
        rows = [
            [
                a["artifact"],
                a["variant"],
                f"{a['framework']}/{a['format']}",
                str(a["n"]),
                f"{a['max_abs_diff']:.3g}",
                f"{a['mean_abs_diff']:.3g}",
                f"{a['argmax_flips']} ({100 * a['argmax_flip_rate']:.2f}%)",
                f"{a['kl_mean']:.3g}",
                f"{a['kl_max']:.3g}",
                _pct(a["frac_bit_identical"]),
                _pct(a["frac_values_bit_identical"]),
            ]
            for a in c.get("artifacts", [])
        ]
        parts.append(
            _table(
                [
                    "artifact",
                    "variant",
                    "framework/format",
                    "examples",
                    "max |Δ|",
                    "mean |Δ|",
                    "argmax flips",
                    "KL mean (nats)",
                    "KL max",
                    "rows bit-identical",
                    "values bit-identical",
                ],
                rows,
            )
        )
        deltas = c.get("leakage_deltas", [])
        if deltas:
            drows = []
            for d in sorted(deltas, key=lambda d: -abs(d["delta_auc"])):
                dt = d.get("delta_tpr_at_fpr", {})
                drows.append(
                    [
                        d["family"],
                        d["method"],
                        _variant_str(d["variant"]),
                        _joined(d.get("artifact_id", "–")),
                        f"{d['auc_host']:.3f}",
                        f"{d['auc_device']:.3f}",
                        f"{d['delta_auc']:+.3f}",
                        *(("–" if dt.get(k) is None else f"{100 * dt[k]:+.2f} pp") for k in FPR_LEVELS),
                    ]
                )
            big = max(abs(d["delta_auc"]) for d in deltas)
            parts.append(
                f"<details{' open' if big > 0 else ''}><summary>Leakage on device minus leakage on host "
                f"({len(deltas)} attacks; largest |Δ AUC| {big:.3f})</summary>"
                + _table(
                    [
                        "family",
                        "method",
                        "variant(s)",
                        "artifact",
                        "AUC host",
                        "AUC device",
                        "Δ AUC",
                        "Δ TPR@0.1%",
                        "Δ TPR@1%",
                    ],
                    drows,
                )
                + "</details>"
            )
        transfer = c.get("host_shadow_device_target", [])
        if transfer:
            trows = []
            for t in transfer:
                own = t.get("auc_device_shadows")
                delta = t.get("delta_auc_vs_device_shadows")
                trows.append(
                    [
                        t["family"],
                        t["method"],
                        _variant_str(t["variant"]),
                        f"{t['auc']:.3f}"
                        + (f" [{t['auc_ci'][0]:.3f}, {t['auc_ci'][1]:.3f}]" if len(t.get("auc_ci", [])) == 2 else ""),
                        "–" if own is None else f"{own:.3f}",
                        "–" if delta is None else f"{delta:+.3f}",
                        *(("n/r" if t["tpr_at_fpr"].get(k) is None else _pct(t["tpr_at_fpr"][k])) for k in FPR_LEVELS),
                        _fmt(t["balanced_accuracy"]),
                    ]
                )
            gaps = [
                abs(t["delta_auc_vs_device_shadows"])
                for t in transfer
                if t.get("delta_auc_vs_device_shadows") is not None
            ]
            gap = f"; largest |Δ AUC| against device-collected shadows {max(gaps):.3f}" if gaps else ""
            parts.append(
                "<details open><summary>Auditor's realistic case: attacks trained on HOST shadow outputs, "
                f"applied to DEVICE target outputs ({len(transfer)} attacks{gap})</summary>"
                + _table(
                    [
                        "family",
                        "method",
                        "variant(s)",
                        "AUC [95% CI]",
                        "AUC with device shadows",
                        "Δ AUC",
                        "TPR@0.1%",
                        "TPR@1%",
                        "balanced acc.",
                    ],
                    trows,
                )
                + "</details>"
            )
        elif c.get("host_shadow_device_target_note"):
            parts.append(
                f"<p class='note'>Host-shadow → device-target attack: {_e(c['host_shadow_device_target_note'])}.</p>"
            )
    return "".join(parts)


def _provenance_html(rd: RunDir, manifest: Manifest | None, devices: list[DeviceResults]) -> str:
    parts = []
    if manifest is not None:
        rows = [
            [
                a.id,
                a.role + (f" {a.shadow}" if a.shadow is not None else ""),
                a.variant,
                a.format,
                a.sha256[:16] + "…",
                _bytes(a.bytes),
                _pct(a.host_accuracy.get("train")) if a.host_accuracy.get("train") is not None else "–",
                _pct(a.host_accuracy.get("test")) if a.host_accuracy.get("test") is not None else "–",
            ]
            for a in manifest.artifacts
        ]
        parts.append(
            "<h3>Artifacts</h3>"
            + _table(["id", "role", "variant", "format", "sha256", "size", "train acc.", "test acc."], rows)
        )
    for dr in devices:
        if not dr.provenance:
            continue
        first = next(iter(dr.provenance.values()))
        dev = first.get("device", {})
        props = {k: v for k, v in dev.items() if k != "id"} if isinstance(dev, dict) else {}
        if isinstance(props.get("properties"), dict):
            props = props["properties"]
        prow = [[str(k), json.dumps(v) if isinstance(v, (dict, list)) else str(v)] for k, v in props.items()]
        parts.append(f"<h3>Device {_e(dr.device_id)}</h3>")
        if prow:
            parts.append(
                "<details><summary>Device properties</summary>" + _table(["property", "value"], prow) + "</details>"
            )
        rrows = []
        for aid, p in sorted(dr.provenance.items()):
            rt = p.get("runtime", {})
            rt_s = f"{rt.get('name') or '?'} {rt.get('version') or ''}".strip() if isinstance(rt, dict) else str(rt)
            wall = p.get("wall_seconds_per_batch", p.get("wall_time_per_batch_s"))
            if isinstance(wall, list) and wall:
                wall_s = f"{float(np.mean(wall)) * 1000:.1f} ms (n={len(wall)})"
            elif isinstance(wall, (int, float)):
                wall_s = f"{1000 * float(wall):.1f} ms"
            else:
                wall_s = "–"
            art = p.get("artifact") if isinstance(p.get("artifact"), dict) else {}
            sha = str(art.get("sha256") or p.get("artifact_sha256") or "")
            rrows.append(
                [
                    aid,
                    (sha[:16] + "…") if sha else "–",
                    rt_s,
                    str(p.get("delegate") or "–"),
                    str(p.get("threads") or "–"),
                    str(p.get("batch_size") or "–"),
                    wall_s,
                ]
            )
        parts.append(
            _table(["artifact", "sha256", "runtime", "delegate", "threads", "batch", "wall time / batch"], rrows)
        )
    return "".join(parts) or "<p>No provenance recorded.</p>"


def _threat_html(rd: RunDir) -> str:
    path = rd.root / "threat_model.json"
    if path.is_file():
        tm = _read_json(path)
        src = f"recorded in {path.name}"
    else:
        tm = DEFAULT_THREAT_MODEL
        src = "the default of runs built by compleak build"
    if not isinstance(tm, dict):
        tm = {"threat model": tm}
    parts = [f"<p>Threat model ({_e(src)}).</p>"]
    if isinstance(tm.get("summary"), str):
        parts.append(f"<p class='threat'>{_e(tm['summary'])}</p>")
    rows = []
    for k, v in tm.items():
        if k == "summary" and isinstance(v, str):
            continue
        cell = f"<pre class='json'>{_e(json.dumps(v, indent=1))}</pre>" if isinstance(v, (dict, list)) else _e(v)
        rows.append([_e(k.replace("_", " ")), cell])
    parts.append(_table(["assumption", "value"], rows, raw=True))
    return "".join(parts)


def _experiment_name(rd: RunDir) -> str:
    try:
        raw = tomllib.loads(rd.experiment.read_text())
        return str(raw.get("experiment", {}).get("name", rd.root.name))
    except (OSError, tomllib.TOMLDecodeError):
        return rd.root.name


def render_html(
    rd: RunDir,
    summary: dict[str, Any],
    devices: list[DeviceResults],
    manifest: Manifest | None,
    compare: dict[str, dict[str, Any]],
) -> str:
    """The whole page as a string (self-contained: inline CSS, figures as data: URIs)."""
    rocs = roc_figures(devices, manifest)
    strength = strength_figures(devices, manifest)
    div_fig = divergence_figure(compare)
    title = f"compleak report — {_experiment_name(rd)}"
    nav = [
        ("summary", "Summary"),
        ("results", "Results"),
        ("roc", "ROC curves"),
        ("strength", "Compression strength"),
        ("devices", "Host vs device"),
        ("threat", "Threat model"),
        ("provenance", "Provenance"),
    ]
    roc_body = "".join(f"<h3>{_e(f)}</h3>{_img(b, f'ROC curves of {f}')}" for f, b in rocs) or (
        "<p>The attack results carry no ROC points, so no ROC curves can be drawn; "
        "rerun <code>compleak attack</code>.</p>"
    )
    roc_body = (
        "<p>Log-log ROC curves: the low false-positive region is what matters for membership inference. "
        "For each variant, the family's best method. The dotted vertical line is 1/(non-members): below it "
        "the sample cannot resolve a false-positive rate.</p>"
    ) + roc_body
    strength_body = "".join(_img(b, t) for t, b in strength) or (
        "<p>Fewer than two pruning sparsities or cluster counts were attacked; nothing to plot.</p>"
    )
    body = "".join(
        [
            _section(
                "Summary",
                _summary_html(summary.get("worst")) + _verdict_html(summary.get("host_vs_device", {})),
                "summary",
            ),
            _section("Leakage per variant and device", _results_html(devices, manifest), "results"),
            _section("ROC curves", roc_body, "roc"),
            _section("Leakage versus compression strength", strength_body, "strength"),
            _section("Host versus device", _compare_html(compare, div_fig), "devices"),
            _section("Threat model", _threat_html(rd), "threat"),
            _section("Provenance", _provenance_html(rd, manifest, devices), "provenance"),
        ]
    )
    nav_html = "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in nav)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_css()}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><p class='meta'>run <code>{_e(rd.root)}</code> · generated "
        f"{_e(summary['generated'])} · devices: {_e(', '.join(d.device_id for d in devices) or 'none')}</p>"
        f"<nav>{nav_html}</nav></header><main>{body}</main>"
        "<footer>compleak-harness · CompLeak NR/SR/MR (arXiv 2507.16872), RMIA, LiRA</footer></body></html>\n"
    )


def device_verdict(c: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of one device's comparison with the host (from ``compare/<device>.json``)."""
    arts = c.get("artifacts", [])
    deltas = [abs(d["delta_auc"]) for d in c.get("leakage_deltas", [])]
    gaps = [
        abs(t["delta_auc_vs_device_shadows"])
        for t in c.get("host_shadow_device_target", [])
        if t.get("delta_auc_vs_device_shadows") is not None
    ]
    return {
        "n_artifacts": len(arts),
        "n_bit_identical": sum(1 for a in arts if a["frac_bit_identical"] == 1.0),
        "argmax_flips": sum(a["argmax_flips"] for a in arts),
        "max_abs_diff": max((a["max_abs_diff"] for a in arts), default=0.0),
        "max_abs_delta_auc": max(deltas, default=None),
        "max_abs_host_shadow_gap": max(gaps, default=None),
    }


def build_summary(
    rd: RunDir, devices: list[DeviceResults], manifest: Manifest | None, compare: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """``report/summary.json``: worst leakage, best attack per target and device, divergence per device."""
    per = []
    for dr in devices:
        for v, w, r in _best_per_target(dr, manifest):
            a = _artifact_of(r, manifest)
            per.append(
                {
                    "device": dr.device_id,
                    "variant": v,
                    "where": w,
                    "artifact": a.id if a else None,
                    "family": r.family,
                    "method": r.method,
                    "auc": r.auc,
                    "auc_ci": r.auc_ci,
                    "tpr_at_fpr": r.tpr_at_fpr,
                    "balanced_accuracy": r.balanced_accuracy,
                    "test_accuracy": a.host_accuracy.get("test") if a else None,
                    "bytes": a.bytes if a else None,
                    "n_members": r.n_members,
                    "n_nonmembers": r.n_nonmembers,
                }
            )
    return {
        "run": str(rd.root),
        "experiment": _experiment_name(rd),
        "generated": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "devices": [d.device_id for d in devices],
        "n_artifacts": len(manifest.artifacts) if manifest else 0,
        "worst": worst_leakage(devices, manifest),
        "best_per_target": per,
        "host_vs_device": {dev: device_verdict(c) for dev, c in compare.items()},
        "divergence": {dev: c.get("artifacts", []) for dev, c in compare.items()},
        "leakage_deltas": {dev: c.get("leakage_deltas", []) for dev, c in compare.items()},
        "host_shadow_device_target": {
            dev: [
                {k: v for k, v in t.items() if k not in ("roc", "selected")}
                for t in c.get("host_shadow_device_target", [])
            ]
            for dev, c in compare.items()
        },
    }


def print_terminal(summary: dict[str, Any], console: Console) -> None:
    """A rich table: best attack per target variant and device, and the worst case underneath."""
    t = Table(title=f"leakage — {summary['experiment']}", show_lines=False)
    for h in ("variant", "fw/format", "device", "attack", "AUC [95% CI]", "TPR@0.1%", "TPR@1%", "test acc."):
        t.add_column(h, overflow="fold")
    for p in summary["best_per_target"]:
        ci = p["auc_ci"]
        tp = {
            k: (_pct(v) if v is not None and resolvable(p["n_nonmembers"], float(k)) else "n/r")
            for k, v in p["tpr_at_fpr"].items()
        }
        t.add_row(
            p["variant"],
            p["where"] or "–",
            p["device"],
            f"{p['family']} {p['method']}",
            f"{p['auc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if len(ci) == 2 else f"{p['auc']:.3f}",
            tp.get("0.001", "–"),
            tp.get("0.01", "–"),
            _pct(p["test_accuracy"]) if p["test_accuracy"] is not None else "–",
        )
    console.print(t)
    w = summary["worst"]
    if w:
        console.print(
            f"worst: [bold]{w['family']} {w['method']}[/] on [bold]{_variant_str(w['variant'])}[/] "
            f"({w['where'] or '?'}) @ {w['device']}: AUC {w['auc']:.3f}",
            highlight=False,
        )


def write_report(run: Path, console: Console | None = None) -> Path:
    """Write ``RUN/report/index.html`` and ``RUN/report/summary.json``; print the terminal table. Returns index.html."""
    console = console or Console()
    rd = RunDir(run)
    if not rd.root.is_dir():
        raise HarnessError(f"{run}: no such run directory; create one with 'compleak build' or 'compleak import'")
    manifest = rd.load_manifest() if rd.manifest.is_file() else None
    devices = load_devices(rd)
    if manifest is None and not devices:
        raise HarnessError(f"{run}: no manifest.json and no results; run 'compleak build' (or audit) first")
    compare = load_compare(rd.root)
    summary = build_summary(rd, devices, manifest, compare)
    page = render_html(rd, summary, devices, manifest, compare)
    atomic_write_json(rd.report_dir / "summary.json", summary)
    index = rd.report_dir / "index.html"
    atomic_write_bytes(index, page.encode("utf-8"))
    for f in (index, rd.report_dir / "summary.json"):
        f.chmod(0o644)  # a report is meant to be read and served: not the private 0600 of a temp file
    print_terminal(summary, console)
    return index
