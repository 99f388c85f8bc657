"""The report stage: ``RUN/report/index.html`` (one self-contained page), ``RUN/report/summary.json`` and a table
in the terminal.

The page is rendered from the Jinja2 templates in ``harness/report/templates/`` (package data) with autoescaping
on, so every piece of text that comes from the run directory is HTML-escaped by the template engine; Python only
prepares the values. It embeds every figure as a base64 PNG drawn with matplotlib and carries its CSS inline; it
loads nothing from anywhere. How to read it: docs/report.md.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from rich.console import Console
from rich.table import Table

from compleak.metrics import fpr_resolvable
from rundir import (
    ArtifactRecord,
    ContractError,
    Manifest,
    ResultRow,
    RunDir,
    atomic_write_bytes,
    atomic_write_json,
    load_results,
)
from rundir.vocabulary import ROW_FAMILIES
from harness.compare import HOST, load_compare
from harness.errors import HarnessError, esc

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
                obj = _read_json(prov)
            except (ContractError, OSError, UnicodeDecodeError):
                continue
            if isinstance(obj, dict):  # untrusted: anything else is not provenance and is left out
                dr.provenance[prov.stem] = obj
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


def _eps(row: ResultRow) -> float | None:
    """The row's epsilon lower bound (``eps_lower_bound``: a dict with ``eps`` as compleak.metrics writes it, or a
    number), or None when the row carries none."""
    v = (row.model_extra or {}).get("eps_lower_bound")
    if isinstance(v, dict):
        v = v.get("eps")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _eps_text(row: ResultRow) -> str:
    eps = _eps(row)
    return "–" if eps is None else f"{eps:.2f}"


def _per_class(row: ResultRow) -> dict[str, Any] | None:
    """The row's per-class vulnerability (``per_class``: {"auc": {class: AUC}, "most_vulnerable": [...]}) or None."""
    v = (row.model_extra or {}).get("per_class")
    return v if isinstance(v, dict) and isinstance(v.get("auc"), dict) else None


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


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
        "eps_lower_bound": _eps(r),
        "per_class": _per_class(r),
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
    families = [f for f in ROW_FAMILIES if any(r.family == f for d in devices for r in d.rows)]
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


# --------------------------------------------------------------------------- page (Jinja2 templates)


def _css() -> str:
    return resources.files("harness.report").joinpath("assets/report.css").read_text()


def _escape(value: Any) -> Markup:
    """Jinja2 ``finalize``: every ``{{ value }}`` is HTML-escaped here (quotes included, ``'`` as ``&#x27;`` like
    :func:`html.escape`) unless it is already markup (a macro's output, the package's own stylesheet)."""
    return value if isinstance(value, Markup) else Markup(html.escape(str(value), quote=True))


def _render(template: str, **context: Any) -> str:
    """Render ``harness/report/templates/<template>`` with autoescaping on: nothing from the run directory reaches
    the page unescaped. The page stays self-contained: the CSS is inlined and figures are ``data:`` URIs."""
    env = Environment(
        loader=PackageLoader("harness.report", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html", "html.j2"), default=True, default_for_string=True),
        finalize=_escape,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=StrictUndefined,
    )
    return env.get_template(template).render(css=_css(), **context)


def _auc_cell(r: ResultRow) -> str:
    ci = f" [{r.auc_ci[0]:.3f}, {r.auc_ci[1]:.3f}]" if len(r.auc_ci) == 2 else ""
    return f"{r.auc:.3f}{ci}"


def _verdicts(verdicts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "device": dev,
            "n_bit_identical": v["n_bit_identical"],
            "n_artifacts": v["n_artifacts"],
            "max_abs_diff": f"{v['max_abs_diff']:.3g}",
            "argmax_flips": v["argmax_flips"],
            "delta": None if v["max_abs_delta_auc"] is None else f"{v['max_abs_delta_auc']:.3f}",
            "gap": None if v["max_abs_host_shadow_gap"] is None else f"{v['max_abs_host_shadow_gap']:.3f}",
        }
        for dev, v in verdicts.items()
    ]


def _worst(worst: dict[str, Any] | None) -> dict[str, Any] | None:
    """The summary's headline, formatted for the template."""
    if worst is None:
        return None
    ci = worst["auc_ci"]
    tpr = []
    for level in sorted(worst["tpr_at_fpr"], key=float):
        v = worst["tpr_at_fpr"][level]
        ok = worst["resolvable"].get(level, True) and v is not None
        tpr.append({"pct": f"{100 * float(level):g}%", "value": _pct(v) if ok else None,
                    "need": math.ceil(1 / float(level))})  # fmt: skip
    return {
        "attack": f"{worst['family']} {worst['method']}",
        "variant": _variant_str(worst["variant"]),
        "where": worst["where"],
        "device": worst["device"],
        "auc": f"{worst['auc']:.3f}",
        "ci": f"{ci[0]:.3f}–{ci[1]:.3f}" if len(ci) == 2 else "",
        "balanced_accuracy": f"{worst['balanced_accuracy']:.3f}",
        "tpr": tpr,
        "eps": None if worst.get("eps_lower_bound") is None else f"{worst['eps_lower_bound']:.2f}",
        "n_members": worst["n_members"],
        "n_nonmembers": worst["n_nonmembers"],
    }


def _results_rows(devices: list[DeviceResults], manifest: Manifest | None) -> list[list[str]]:
    """Best attack per target variant and device: one table row each."""
    rows = []
    for dr in devices:
        for v, w, r in _best_per_target(dr, manifest):
            a = _artifact_of(r, manifest)
            test_acc = a.host_accuracy.get("test") if a else None
            rows.append([
                v, w or "–", dr.device_id, _attack_name(r), _auc_cell(r), _tpr_text(r, "0.001"), _tpr_text(r, "0.01"),
                _fmt(r.balanced_accuracy), _eps_text(r), _pct(test_acc) if test_acc is not None else "–",
                _bytes(a.bytes) if a else "–",
            ])  # fmt: skip
    return rows


def _all_results(devices: list[DeviceResults], manifest: Manifest | None) -> list[dict[str, Any]]:
    """Every attack result per device (the collapsible tables)."""
    out = []
    for dr in devices:
        if not dr.rows:
            continue
        rows = [
            [r.family, r.method, _variant_str(r.variant), _where(r, manifest) or "–", _auc_cell(r),
             _tpr_text(r, "0.001"), _tpr_text(r, "0.01"), _fmt(r.balanced_accuracy), _eps_text(r),
             str(r.n_members), str(r.n_nonmembers)]
            for r in sorted(dr.rows, key=lambda r: (r.family, _variant_str(r.variant), r.method))
        ]  # fmt: skip
        out.append({"device": dr.device_id, "n": len(dr.rows), "rows": rows})
    return out


def _compare_devices(compare: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per compared device: divergence table, leakage deltas and the host-shadow -> device-target attacks."""
    out = []
    for dev, c in compare.items():
        arts = c.get("artifacts", [])
        entry: dict[str, Any] = {
            "device": dev,
            "n": len(arts),
            "same": sum(1 for a in arts if a["frac_bit_identical"] == 1.0),
            "flips": sum(a["argmax_flips"] for a in arts),
            "worst_kl": f"{max((a['kl_max'] for a in arts), default=0.0):.3g}",
            "rows": [
                [a["artifact"], a["variant"], f"{a['framework']}/{a['format']}", str(a["n"]),
                 f"{a['max_abs_diff']:.3g}", f"{a['mean_abs_diff']:.3g}",
                 f"{a['argmax_flips']} ({100 * a['argmax_flip_rate']:.2f}%)", f"{a['kl_mean']:.3g}",
                 f"{a['kl_max']:.3g}", _pct(a["frac_bit_identical"]), _pct(a["frac_values_bit_identical"])]
                for a in arts
            ],  # fmt: skip
            "deltas": None,
            "transfer": None,
            "note": c.get("host_shadow_device_target_note") or None,
        }
        deltas = c.get("leakage_deltas", [])
        if deltas:
            drows = []
            for d in sorted(deltas, key=lambda d: -abs(d["delta_auc"])):
                dt = d.get("delta_tpr_at_fpr", {})
                drows.append([
                    d["family"], d["method"], _variant_str(d["variant"]), _joined(d.get("artifact_id", "–")),
                    f"{d['auc_host']:.3f}", f"{d['auc_device']:.3f}", f"{d['delta_auc']:+.3f}",
                    *(("–" if dt.get(k) is None else f"{100 * dt[k]:+.2f} pp") for k in FPR_LEVELS),
                ])  # fmt: skip
            big = max(abs(d["delta_auc"]) for d in deltas)
            entry["deltas"] = {"rows": drows, "n": len(deltas), "big": f"{big:.3f}", "open": big > 0}
        transfer = c.get("host_shadow_device_target", [])
        if transfer:
            trows = []
            for t in transfer:
                own, delta, ci = t.get("auc_device_shadows"), t.get("delta_auc_vs_device_shadows"), t.get("auc_ci", [])
                trows.append([
                    t["family"], t["method"], _variant_str(t["variant"]),
                    f"{t['auc']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if len(ci) == 2 else ""),
                    "–" if own is None else f"{own:.3f}", "–" if delta is None else f"{delta:+.3f}",
                    *(("n/r" if t["tpr_at_fpr"].get(k) is None else _pct(t["tpr_at_fpr"][k])) for k in FPR_LEVELS),
                    _fmt(t["balanced_accuracy"]),
                ])  # fmt: skip
            gaps = [abs(t["delta_auc_vs_device_shadows"]) for t in transfer
                    if t.get("delta_auc_vs_device_shadows") is not None]  # fmt: skip
            entry["transfer"] = {"rows": trows, "n": len(transfer), "gap": f"{max(gaps):.3f}" if gaps else None}
        out.append(entry)
    return out


def _provenance(manifest: Manifest | None, devices: list[DeviceResults]) -> dict[str, Any]:
    """Artifacts of the manifest (None without one) and, per device with provenance, its properties and the
    runtime, delegate, threads, batch and wall time per artifact."""
    artifacts = None
    if manifest is not None:
        artifacts = [
            [a.id, a.role + (f" {a.shadow}" if a.shadow is not None else ""), a.variant, a.format,
             a.sha256[:16] + "…", _bytes(a.bytes),
             _pct(a.host_accuracy.get("train")) if a.host_accuracy.get("train") is not None else "–",
             _pct(a.host_accuracy.get("test")) if a.host_accuracy.get("test") is not None else "–"]
            for a in manifest.artifacts
        ]  # fmt: skip
    devs = []
    for dr in devices:
        if not dr.provenance:
            continue
        first = next(iter(dr.provenance.values()))
        dev = first.get("device", {})
        props = {k: v for k, v in dev.items() if k != "id"} if isinstance(dev, dict) else {}
        if isinstance(props.get("properties"), dict):
            props = props["properties"]
        prow = [[str(k), json.dumps(v) if isinstance(v, (dict, list)) else str(v)] for k, v in props.items()]
        rrows = []
        for aid, p in sorted(dr.provenance.items()):
            rt = p.get("runtime", {})
            rt_s = f"{rt.get('name') or '?'} {rt.get('version') or ''}".strip() if isinstance(rt, dict) else str(rt)
            wall = p.get("wall_seconds_per_batch", p.get("wall_time_per_batch_s"))
            if isinstance(wall, list) and wall and all(type(w) in (int, float) for w in wall):
                wall_s = f"{float(np.mean(wall)) * 1000:.1f} ms (n={len(wall)})"
            elif type(wall) in (int, float):
                wall_s = f"{1000 * float(wall):.1f} ms"
            else:
                wall_s = "–"
            art = p.get("artifact") if isinstance(p.get("artifact"), dict) else {}
            sha = str(art.get("sha256") or p.get("artifact_sha256") or "")
            rrows.append([aid, (sha[:16] + "…") if sha else "–", rt_s, str(p.get("delegate") or "–"),
                          str(p.get("threads") or "–"), str(p.get("batch_size") or "–"), wall_s])  # fmt: skip
        devs.append({"device": dr.device_id, "props": prow, "rows": rrows})
    return {"artifacts": artifacts, "devices": devs}


def load_threat_model(rd: RunDir) -> tuple[dict[str, Any], str]:
    """(threat model, where it comes from): ``RUN/threat_model.json`` when the run records one, else the default
    of runs built by compleak build."""
    path = rd.root / "threat_model.json"
    if path.is_file():
        tm = _read_json(path)
        src = f"recorded in {path.name}"
    else:
        tm = DEFAULT_THREAT_MODEL
        src = "the default of runs built by compleak build"
    return (tm if isinstance(tm, dict) else {"threat model": tm}), src


def _per_class_rows(devices: list[DeviceResults], manifest: Manifest | None) -> list[list[str]]:
    """Per target variant and device, the per-class AUC of the best attack (the classes it exposes most first)."""
    rows = []
    for dr in devices:
        for v, w, r in _best_per_target(dr, manifest):
            pc = _per_class(r)
            if pc is None:
                continue
            aucs = {str(k): x for k, x in pc["auc"].items() if isinstance(x, (int, float))}
            top = [str(c) for c in pc.get("most_vulnerable", [])][:3]
            rows.append([
                v, w or "–", dr.device_id, _attack_name(r),
                ", ".join(f"{c}: {aucs[c]:.3f}" for c in top if c in aucs) or "–",
                f"{min(aucs.values()):.3f}–{max(aucs.values()):.3f}" if aucs else "–",
                str(pc.get("n_classes", len(aucs))),
            ])
    return rows


def _threat(rd: RunDir) -> dict[str, Any]:
    """The threat model for the template: where it comes from, its summary line, one row per assumption (a
    mapping or list is shown as indented JSON)."""
    tm, src = load_threat_model(rd)
    rows: list[list[Any]] = []
    for k, v in tm.items():
        if k == "summary" and isinstance(v, str):
            continue
        rows.append([k.replace("_", " "), {"pre": json.dumps(v, indent=1)} if isinstance(v, (dict, list)) else str(v)])
    return {"source": src, "summary": tm["summary"] if isinstance(tm.get("summary"), str) else None, "rows": rows}


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
    """The whole page as a string, from ``templates/report.html.j2`` (autoescaped; self-contained: inline
    CSS, figures as data: URIs)."""
    return _render(
        "report.html.j2",
        title=f"compleak report — {_experiment_name(rd)}",
        run=str(rd.root),
        generated=summary["generated"],
        devices=", ".join(d.device_id for d in devices),
        nav=[("summary", "Summary"), ("results", "Results"), ("roc", "ROC curves"),
             ("strength", "Compression strength"), ("devices", "Host vs device"), ("per-class", "Per class"),
             ("threat", "Threat model"), ("provenance", "Provenance")],  # fmt: skip
        worst=_worst(summary.get("worst")),
        verdicts=_verdicts(summary.get("host_vs_device", {})),
        results=_results_rows(devices, manifest),
        all_results=_all_results(devices, manifest),
        rocs=roc_figures(devices, manifest),
        strength=strength_figures(devices, manifest),
        compare=_compare_devices(compare),
        divergence_fig=divergence_figure(compare),
        per_class=_per_class_rows(devices, manifest),
        threat=_threat(rd),
        provenance=_provenance(manifest, devices),
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
                    "eps_lower_bound": _eps(r),
                    "per_class": _per_class(r),
                }
            )
    threat, threat_source = load_threat_model(rd)
    return {
        "run": str(rd.root),
        "experiment": _experiment_name(rd),
        "generated": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "devices": [d.device_id for d in devices],
        "n_artifacts": len(manifest.artifacts) if manifest else 0,
        "worst": worst_leakage(devices, manifest),
        "best_per_target": per,
        "threat_model": threat,
        "threat_model_source": threat_source,
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
    t = Table(title=f"leakage — {esc(summary['experiment'])}", show_lines=False)
    for h in ("variant", "fw/format", "device", "attack", "AUC [95% CI]", "TPR@0.1%", "TPR@1%", "ε ≥", "test acc."):
        t.add_column(h, overflow="fold")
    for p in summary["best_per_target"]:
        ci = p["auc_ci"]
        tp = {
            k: (_pct(v) if v is not None and resolvable(p["n_nonmembers"], float(k)) else "n/r")
            for k, v in p["tpr_at_fpr"].items()
        }
        t.add_row(
            esc(p["variant"]),
            esc(p["where"] or "–"),
            esc(p["device"]),
            esc(f"{p['family']} {p['method']}"),
            f"{p['auc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if len(ci) == 2 else f"{p['auc']:.3f}",
            tp.get("0.001", "–"),
            tp.get("0.01", "–"),
            "–" if p.get("eps_lower_bound") is None else f"{p['eps_lower_bound']:.2f}",
            _pct(p["test_accuracy"]) if p["test_accuracy"] is not None else "–",
        )
    console.print(t)
    w = summary["worst"]
    if w:
        console.print(
            f"worst: [bold]{esc(w['family'])} {esc(w['method'])}[/] on [bold]{esc(_variant_str(w['variant']))}[/] "
            f"({esc(w['where'] or '?')}) @ {esc(w['device'])}: AUC {w['auc']:.3f}"
            + ("" if w.get("eps_lower_bound") is None else f", ε ≥ {w['eps_lower_bound']:.2f}"),
            highlight=False,
        )
    _print_threat(summary, console)


def _print_threat(summary: dict[str, Any], console: Console) -> None:
    tm = summary.get("threat_model")
    if isinstance(tm, dict):
        text = tm.get("summary") if isinstance(tm.get("summary"), str) else None
        text = text or "; ".join(f"{k}: {v}" for k, v in tm.items() if isinstance(v, (str, int, float)))[:300]
        console.print(f"threat model ({esc(summary.get('threat_model_source', ''))}): {esc(text)}", highlight=False)


# --------------------------------------------------------------------------- across seeds (experiment.seeds)


def seed_runs(rd: RunDir) -> list[tuple[int, RunDir]]:
    """The per-seed runs of ``RUN/seeds/<seed>/`` (experiment.seeds), by seed (links and other names ignored)."""
    from compleak.results import seed_dirs

    return [(seed, RunDir(d)) for seed, d in seed_dirs(rd.root)]


def _mean_sd(xs: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1; None with fewer than two values)."""
    if not xs:
        return None, None
    a = np.asarray(xs, float)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None)


def aggregate_seeds(runs: list[tuple[int, RunDir]]) -> list[dict[str, Any]]:
    """One entry per attack result present in any seed's run (same device, family, method, variant(s) and
    framework/format): per-seed AUC with its CI, TPRs and ε bound, and their mean ± sd across the seeds."""
    table: dict[tuple[str, str, str, str, str], dict[str, Any]] = {}
    for seed, srd in runs:
        manifest = srd.load_manifest() if srd.manifest.is_file() else None
        for dr in load_devices(srd):
            for r in dr.rows:
                key = (dr.device_id, r.family, r.method, _variant_str(r.variant), _where(r, manifest))
                e = table.setdefault(key, {
                    "device": dr.device_id, "family": r.family, "method": r.method, "variant": r.variant,
                    "where": key[4], "per_seed": [],
                })
                a = _artifact_of(r, manifest)
                e["per_seed"].append({
                    "seed": seed, "auc": r.auc, "auc_ci": r.auc_ci, "tpr_at_fpr": r.tpr_at_fpr,
                    "balanced_accuracy": r.balanced_accuracy, "eps_lower_bound": _eps(r),
                    "n_members": r.n_members, "n_nonmembers": r.n_nonmembers,
                    "test_accuracy": a.host_accuracy.get("test") if a else None,
                })
    out = []
    for e in table.values():
        ps = e["per_seed"]
        e["n_seeds"] = len(ps)
        e["auc_mean"], e["auc_sd"] = _mean_sd([p["auc"] for p in ps])
        e["tpr_at_fpr_mean"], e["tpr_at_fpr_sd"] = {}, {}
        for level in sorted({k for p in ps for k in p["tpr_at_fpr"]}, key=float):
            vals = [float(p["tpr_at_fpr"][level]) for p in ps if p["tpr_at_fpr"].get(level) is not None
                    and resolvable(p["n_nonmembers"], float(level))]
            e["tpr_at_fpr_mean"][level], e["tpr_at_fpr_sd"][level] = _mean_sd(vals)
        e["eps_mean"], e["eps_sd"] = _mean_sd([p["eps_lower_bound"] for p in ps if p["eps_lower_bound"] is not None])
        e["test_accuracy_mean"], _ = _mean_sd([p["test_accuracy"] for p in ps if p["test_accuracy"] is not None])
        out.append(e)
    return sorted(out, key=lambda e: (e["device"] != HOST, e["device"], e["family"], _variant_str(e["variant"]),
                                      e["method"]))


def _best_across_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per single-variant target, framework/format and device: the attack with the highest mean AUC."""
    best: dict[tuple[str, str, str], dict[str, Any]] = {}
    for e in rows:
        if not isinstance(e["variant"], str):
            continue
        key = (e["variant"], e["where"], e["device"])
        if key not in best or e["auc_mean"] > best[key]["auc_mean"]:
            best[key] = e
    return [best[k] for k in sorted(best, key=lambda k: (k[2] != HOST, k[2], _strength_order(k[0]), k[1]))]


def _pm(mean: float | None, sd: float | None, digits: int = 3, pct: bool = False) -> str:
    if mean is None:
        return "–"
    f = 100.0 if pct else 1.0
    unit = "%" if pct else ""
    return f"{f * mean:.{digits}f}{unit}" + ("" if sd is None else f" ± {f * sd:.{digits}f}{unit}")


def _per_seed_text(e: dict[str, Any]) -> str:
    parts = []
    for p in e["per_seed"]:
        ci = p["auc_ci"]
        parts.append(f"{p['seed']}: {p['auc']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if len(ci) == 2 else ""))
    return "; ".join(parts)


def build_seed_summary(rd: RunDir, runs: list[tuple[int, RunDir]]) -> dict[str, Any]:
    """``report/summary.json`` of a run with experiment.seeds: mean ± sd across seeds beside each seed's figures."""
    rows = aggregate_seeds(runs)
    best = _best_across_seeds(rows)
    worst = max(rows, key=lambda e: e["auc_mean"], default=None)
    threat, threat_source = load_threat_model(rd if (rd.root / "threat_model.json").is_file() else runs[0][1])
    per_seed = []
    for seed, srd in runs:
        manifest = srd.load_manifest() if srd.manifest.is_file() else None
        report = srd.report_dir / "index.html"
        per_seed.append({
            "seed": seed, "run": str(srd.root.relative_to(rd.root)),
            "report": str(report.relative_to(rd.root)) if report.is_file() else None,
            "worst": worst_leakage(load_devices(srd), manifest),
        })
    return {
        "run": str(rd.root),
        "experiment": _experiment_name(rd),
        "generated": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "seeds": [s for s, _ in runs],
        "devices": sorted({e["device"] for e in rows}, key=lambda d: (d != HOST, d)),
        "worst": worst,
        "best_per_target": best,
        "across_seeds": rows,
        "per_seed": per_seed,
        "threat_model": threat,
        "threat_model_source": threat_source,
    }


def render_seed_html(rd: RunDir, summary: dict[str, Any]) -> str:
    """The page of a run with experiment.seeds, from ``templates/seeds.html.j2`` (autoescaped,
    self-contained; per-seed pages are linked by relative path)."""
    w = summary["worst"]
    worst = None
    if w is not None:
        worst = {"attack": f"{w['family']} {w['method']}", "variant": _variant_str(w["variant"]), "where": w["where"],
                 "device": w["device"], "auc": _pm(w["auc_mean"], w["auc_sd"]), "n_seeds": w["n_seeds"],
                 "per_seed": _per_seed_text(w)}  # fmt: skip

    def line(e: dict[str, Any]) -> list[str]:
        t, sd = e["tpr_at_fpr_mean"], e["tpr_at_fpr_sd"]
        return [
            _variant_str(e["variant"]), e["where"] or "–", e["device"], f"{e['family']} {e['method']}",
            _pm(e["auc_mean"], e["auc_sd"]), _per_seed_text(e),
            *(_pm(t.get(k), sd.get(k), 2, pct=True) if t.get(k) is not None else "n/r" for k in FPR_LEVELS),
            _pm(e["eps_mean"], e["eps_sd"], 2),
            _pct(e["test_accuracy_mean"]) if e["test_accuracy_mean"] is not None else "–",
        ]

    per_seed = []
    for p in summary["per_seed"]:
        pw = p["worst"]
        per_seed.append([
            str(p["seed"]), p["run"], {"href": p["report"], "text": p["report"]} if p["report"] else "not written",
            f"{pw['family']} {pw['method']} on {_variant_str(pw['variant'])}" if pw else "–",
            (f"{pw['auc']:.3f}" + (f" [{pw['auc_ci'][0]:.3f}, {pw['auc_ci'][1]:.3f}]" if len(pw["auc_ci"]) == 2
                                   else "")) if pw else "–",
        ])  # fmt: skip
    threat_rd = rd if (rd.root / "threat_model.json").is_file() else RunDir(rd.root / summary["per_seed"][0]["run"])
    return _render(
        "seeds.html.j2",
        title=f"compleak report — {_experiment_name(rd)} — {len(summary['seeds'])} seeds",
        run=str(rd.root),
        generated=summary["generated"],
        devices=", ".join(summary["devices"]),
        nav=[("summary", "Summary"), ("results", "Results"), ("seeds", "Per seed"), ("threat", "Threat model")],
        worst=worst,
        seeds=", ".join(map(str, summary["seeds"])),
        best=[line(e) for e in summary["best_per_target"]],
        across=[line(e) for e in summary["across_seeds"]],
        per_seed=per_seed,
        threat=_threat(threat_rd),
    )


def print_seed_terminal(summary: dict[str, Any], console: Console) -> None:
    """A rich table: best attack (by mean AUC) per target variant and device, mean ± sd across seeds."""
    t = Table(title=f"leakage across seeds {', '.join(map(str, summary['seeds']))} — {esc(summary['experiment'])}")
    for h in ("variant", "fw/format", "device", "attack", "AUC mean ± sd", "per seed", "TPR@1% mean ± sd", "ε ≥"):
        t.add_column(h, overflow="fold")
    for e in summary["best_per_target"]:
        t1 = e["tpr_at_fpr_mean"].get("0.01")
        t.add_row(
            esc(e["variant"]), esc(e["where"] or "–"), esc(e["device"]), esc(f"{e['family']} {e['method']}"),
            _pm(e["auc_mean"], e["auc_sd"]), esc(", ".join(f"{p['auc']:.3f}" for p in e["per_seed"])),
            "n/r" if t1 is None else _pm(t1, e["tpr_at_fpr_sd"].get("0.01"), 2, pct=True),
            _pm(e["eps_mean"], e["eps_sd"], 2),
        )
    console.print(t)
    w = summary["worst"]
    if w:
        console.print(
            f"worst across seeds: [bold]{esc(w['family'])} {esc(w['method'])}[/] on "
            f"[bold]{esc(_variant_str(w['variant']))}[/] ({esc(w['where'] or '?')}) @ {esc(w['device'])}: "
            f"AUC {_pm(w['auc_mean'], w['auc_sd'])}",
            highlight=False,
        )
    _print_threat(summary, console)


def write_report(run: Path, console: Console | None = None) -> Path:
    """Write ``RUN/report/index.html`` and ``RUN/report/summary.json``; print the terminal table. Returns index.html."""
    console = console or Console()
    rd = RunDir(run)
    if not rd.root.is_dir():
        raise HarnessError(f"{run}: no such run directory; create one with 'compleak build' or 'compleak import'")
    rd.require_writable("report", "report")
    runs = seed_runs(rd)
    if runs and not rd.manifest.is_file():  # experiment.seeds: one run per seed under seeds/
        seed_summary = build_seed_summary(rd, runs)
        page = render_seed_html(rd, seed_summary)
        atomic_write_json(rd.report_dir / "summary.json", seed_summary)
        index = rd.report_dir / "index.html"
        atomic_write_bytes(index, page.encode("utf-8"))
        for f in (index, rd.report_dir / "summary.json"):
            f.chmod(0o644)
        print_seed_terminal(seed_summary, console)
        return index
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
