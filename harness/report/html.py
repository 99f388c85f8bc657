"""The page, ``RUN/report/index.html``: the values the Jinja2 templates in ``harness/report/templates/`` show.

The templates render with autoescaping on, so every piece of text that comes from the run directory is
HTML-escaped by the template engine; Python only prepares the values here. The page embeds every figure as a
base64 PNG (:mod:`harness.report.charts`) and carries its CSS (``assets/report.css``) inline; it loads nothing
from anywhere. How to read it: docs/report.md.
"""

from __future__ import annotations

import html
import json
import math
from importlib import resources
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from harness.report import charts
from harness.report.fmt import (
    attack_name,
    auc_cell,
    ci,
    eps_text,
    joined,
    mean_sd,
    num,
    pct,
    per_seed_text,
    size,
    tpr_text,
)
from harness.report.load import (
    DeviceResults,
    artifact_of,
    best_per_target,
    experiment_name,
    host_test_accuracy,
    load_threat_model,
    per_class_of,
    variant_str,
    where_of,
)
from harness.report.seeds import threat_run
from rundir import Manifest, RunDir

FPR_LEVELS = ("0.001", "0.01")


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


# --------------------------------------------------------------------------- summary and results


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
    interval = worst["auc_ci"]
    tpr = []
    for level in sorted(worst["tpr_at_fpr"], key=float):
        v = worst["tpr_at_fpr"][level]
        ok = worst["resolvable"].get(level, True) and v is not None
        tpr.append({"pct": f"{100 * float(level):g}%", "value": pct(v) if ok else None,
                    "need": math.ceil(1 / float(level))})  # fmt: skip
    return {
        "attack": f"{worst['family']} {worst['method']}",
        "variant": variant_str(worst["variant"]),
        "where": worst["where"],
        "device": worst["device"],
        "auc": f"{worst['auc']:.3f}",
        "ci": f"{interval[0]:.3f}–{interval[1]:.3f}" if len(interval) == 2 else "",
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
        for v, w, r in best_per_target(dr, manifest):
            a = artifact_of(r, manifest)
            rows.append([
                v, w or "–", dr.device_id, attack_name(r), auc_cell(r), tpr_text(r, "0.001"), tpr_text(r, "0.01"),
                num(r.balanced_accuracy), eps_text(r), pct(host_test_accuracy(a)), size(a.bytes) if a else "–",
            ])  # fmt: skip
    return rows


def _all_results(devices: list[DeviceResults], manifest: Manifest | None) -> list[dict[str, Any]]:
    """Every attack result per device (the collapsible tables)."""
    out = []
    for dr in devices:
        if not dr.rows:
            continue
        rows = [
            [r.family, r.method, variant_str(r.variant), where_of(r, manifest) or "–", auc_cell(r),
             tpr_text(r, "0.001"), tpr_text(r, "0.01"), num(r.balanced_accuracy), eps_text(r),
             str(r.n_members), str(r.n_nonmembers)]
            for r in sorted(dr.rows, key=lambda r: (r.family, variant_str(r.variant), r.method))
        ]  # fmt: skip
        out.append({"device": dr.device_id, "n": len(dr.rows), "rows": rows})
    return out


def _per_class_rows(devices: list[DeviceResults], manifest: Manifest | None) -> list[list[str]]:
    """Per target variant and device, the per-class AUC of the best attack (the classes it exposes most first)."""
    rows = []
    for dr in devices:
        for v, w, r in best_per_target(dr, manifest):
            pc = per_class_of(r)
            if pc is None:
                continue
            aucs = {str(k): x for k, x in pc["auc"].items() if isinstance(x, (int, float))}
            top = [str(c) for c in pc.get("most_vulnerable", [])][:3]
            rows.append([
                v, w or "–", dr.device_id, attack_name(r),
                ", ".join(f"{c}: {aucs[c]:.3f}" for c in top if c in aucs) or "–",
                f"{min(aucs.values()):.3f}–{max(aucs.values()):.3f}" if aucs else "–",
                str(pc.get("n_classes", len(aucs))),
            ])
    return rows


# --------------------------------------------------------------------------- host versus device


def _delta_table(deltas: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Leakage on the device minus leakage on the host, largest change first (None without deltas)."""
    if not deltas:
        return None
    drows = []
    for d in sorted(deltas, key=lambda d: -abs(d["delta_auc"])):
        dt = d.get("delta_tpr_at_fpr", {})
        drows.append([
            d["family"], d["method"], variant_str(d["variant"]), joined(d.get("artifact_id", "–")),
            f"{d['auc_host']:.3f}", f"{d['auc_device']:.3f}", f"{d['delta_auc']:+.3f}",
            *(("–" if dt.get(k) is None else f"{100 * dt[k]:+.2f} pp") for k in FPR_LEVELS),
        ])  # fmt: skip
    big = max(abs(d["delta_auc"]) for d in deltas)
    return {"rows": drows, "n": len(deltas), "big": f"{big:.3f}", "open": big > 0}


def _transfer_table(transfer: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Attacks fitted on host shadows and applied to the device's targets (None without any)."""
    if not transfer:
        return None
    trows = []
    for t in transfer:
        own, delta = t.get("auc_device_shadows"), t.get("delta_auc_vs_device_shadows")
        trows.append([
            t["family"], t["method"], variant_str(t["variant"]), f"{t['auc']:.3f}" + ci(t.get("auc_ci", [])),
            "–" if own is None else f"{own:.3f}", "–" if delta is None else f"{delta:+.3f}",
            *(("n/r" if t["tpr_at_fpr"].get(k) is None else pct(t["tpr_at_fpr"][k])) for k in FPR_LEVELS),
            num(t["balanced_accuracy"]),
        ])  # fmt: skip
    gaps = [abs(t["delta_auc_vs_device_shadows"]) for t in transfer
            if t.get("delta_auc_vs_device_shadows") is not None]  # fmt: skip
    return {"rows": trows, "n": len(transfer), "gap": f"{max(gaps):.3f}" if gaps else None}


def _compare_devices(compare: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per compared device: divergence table, leakage deltas and the host-shadow -> device-target attacks."""
    out = []
    for dev, c in compare.items():
        arts = c.get("artifacts", [])
        out.append({
            "device": dev,
            "n": len(arts),
            "same": sum(1 for a in arts if a["frac_bit_identical"] == 1.0),
            "flips": sum(a["argmax_flips"] for a in arts),
            "worst_kl": f"{max((a['kl_max'] for a in arts), default=0.0):.3g}",
            "rows": [
                [a["artifact"], a["variant"], f"{a['framework']}/{a['format']}", str(a["n"]),
                 f"{a['max_abs_diff']:.3g}", f"{a['mean_abs_diff']:.3g}",
                 f"{a['argmax_flips']} ({100 * a['argmax_flip_rate']:.2f}%)", f"{a['kl_mean']:.3g}",
                 f"{a['kl_max']:.3g}", pct(a["frac_bit_identical"]), pct(a["frac_values_bit_identical"])]
                for a in arts
            ],  # fmt: skip
            "deltas": _delta_table(c.get("leakage_deltas", [])),
            "transfer": _transfer_table(c.get("host_shadow_device_target", [])),
            "note": c.get("host_shadow_device_target_note") or None,
        })
    return out


# --------------------------------------------------------------------------- threat model and provenance


def _artifact_rows(manifest: Manifest | None) -> list[list[str]] | None:
    """The manifest's artifacts (None without a manifest)."""
    if manifest is None:
        return None
    return [
        [a.id, a.role + (f" {a.shadow}" if a.shadow is not None else ""), a.variant, a.format,
         a.sha256[:16] + "…", size(a.bytes), pct(a.host_accuracy.get("train")),
         pct(a.host_accuracy.get("test"))]
        for a in manifest.artifacts
    ]  # fmt: skip


def _wall_text(wall: Any) -> str:
    """Wall time per batch from provenance: a list of seconds (mean), one number, or '–'."""
    if isinstance(wall, list) and wall and all(type(w) in (int, float) for w in wall):
        return f"{float(np.mean(wall)) * 1000:.1f} ms (n={len(wall)})"
    if type(wall) in (int, float):
        return f"{1000 * float(wall):.1f} ms"
    return "–"


def _device_provenance(dr: DeviceResults) -> dict[str, Any]:
    """One device's properties and, per artifact, runtime, delegate, threads, batch and wall time."""
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
        wall_s = _wall_text(p.get("wall_seconds_per_batch", p.get("wall_time_per_batch_s")))
        art = p.get("artifact") if isinstance(p.get("artifact"), dict) else {}
        sha = str(art.get("sha256") or p.get("artifact_sha256") or "")
        rrows.append([aid, (sha[:16] + "…") if sha else "–", rt_s, str(p.get("delegate") or "–"),
                      str(p.get("threads") or "–"), str(p.get("batch_size") or "–"), wall_s])  # fmt: skip
    return {"device": dr.device_id, "props": prow, "rows": rrows}


def _provenance(manifest: Manifest | None, devices: list[DeviceResults]) -> dict[str, Any]:
    """Artifacts of the manifest (None without one) and, per device with provenance, its properties and the
    runtime, delegate, threads, batch and wall time per artifact."""
    artifacts = _artifact_rows(manifest)
    return {"artifacts": artifacts, "devices": [_device_provenance(dr) for dr in devices if dr.provenance]}


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


# --------------------------------------------------------------------------- the pages


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
        title=f"compleak report — {experiment_name(rd)}",
        run=str(rd.root),
        generated=summary["generated"],
        devices=", ".join(d.device_id for d in devices),
        nav=[("summary", "Summary"), ("results", "Results"), ("roc", "ROC curves"),
             ("strength", "Compression strength"), ("devices", "Host vs device"), ("per-class", "Per class"),
             ("threat", "Threat model"), ("provenance", "Provenance")],  # fmt: skip
        verdict=(summary.get("verdict") or {}).get("sentence"),
        worst=_worst(summary.get("worst")),
        verdicts=_verdicts(summary.get("host_vs_device", {})),
        results=_results_rows(devices, manifest),
        all_results=_all_results(devices, manifest),
        rocs=charts.roc_figures(devices, manifest),
        strength=charts.strength_figures(devices, manifest),
        compare=_compare_devices(compare),
        divergence_fig=charts.divergence_figure(compare),
        per_class=_per_class_rows(devices, manifest),
        threat=_threat(rd),
        provenance=_provenance(manifest, devices),
    )


def _seed_line(e: dict[str, Any]) -> list[str]:
    """One row of the tables across seeds (an entry of :func:`harness.report.seeds.aggregate_seeds`)."""
    t, sd = e["tpr_at_fpr_mean"], e["tpr_at_fpr_sd"]
    return [
        variant_str(e["variant"]), e["where"] or "–", e["device"], f"{e['family']} {e['method']}",
        mean_sd(e["auc_mean"], e["auc_sd"]), per_seed_text(e),
        *(mean_sd(t.get(k), sd.get(k), 2, as_pct=True) if t.get(k) is not None else "n/r" for k in FPR_LEVELS),
        mean_sd(e["eps_mean"], e["eps_sd"], 2),
        pct(e["test_accuracy_mean"]),
    ]


def _seed_worst(w: dict[str, Any] | None) -> dict[str, Any] | None:
    if w is None:
        return None
    return {"attack": f"{w['family']} {w['method']}", "variant": variant_str(w["variant"]), "where": w["where"],
            "device": w["device"], "auc": mean_sd(w["auc_mean"], w["auc_sd"]), "n_seeds": w["n_seeds"],
            "per_seed": per_seed_text(w)}  # fmt: skip


def _seed_run_row(p: dict[str, Any]) -> list[Any]:
    """One seed's run: its folder, its own page (linked) and its worst result."""
    pw = p["worst"]
    return [
        str(p["seed"]), p["run"], {"href": p["report"], "text": p["report"]} if p["report"] else "not written",
        f"{pw['family']} {pw['method']} on {variant_str(pw['variant'])}" if pw else "–",
        f"{pw['auc']:.3f}" + ci(pw["auc_ci"]) if pw else "–",
    ]


def render_seed_html(rd: RunDir, summary: dict[str, Any]) -> str:
    """The page of a run with experiment.seeds, from ``templates/seeds.html.j2`` (autoescaped,
    self-contained; per-seed pages are linked by relative path)."""
    worst = _seed_worst(summary["worst"])
    per_seed = [_seed_run_row(p) for p in summary["per_seed"]]
    return _render(
        "seeds.html.j2",
        title=f"compleak report — {experiment_name(rd)} — {len(summary['seeds'])} seeds",
        run=str(rd.root),
        generated=summary["generated"],
        devices=", ".join(summary["devices"]),
        nav=[("summary", "Summary"), ("results", "Results"), ("seeds", "Per seed"), ("threat", "Threat model")],
        worst=worst,
        seeds=", ".join(map(str, summary["seeds"])),
        best=[_seed_line(e) for e in summary["best_per_target"]],
        across=[_seed_line(e) for e in summary["across_seeds"]],
        per_seed=per_seed,
        threat=_threat(threat_run(rd, RunDir(rd.root / summary["per_seed"][0]["run"]))),
    )
