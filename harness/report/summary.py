"""``RUN/report/summary.json``: the report's results as data (worst leakage, best attack per target and device,
host versus device). Computed from what :mod:`harness.report.load` reads, apart from any rendering: the page
(:mod:`harness.report.html`) and the terminal table (:mod:`harness.report.terminal`) only format it."""

from __future__ import annotations

import datetime as _dt
from typing import Any

from harness.report.load import (
    DeviceResults,
    artifact_of,
    best_per_target,
    eps_of,
    experiment_name,
    host_test_accuracy,
    load_threat_model,
    per_class_of,
    resolvable,
    where_of,
)
from harness.report.verdict import build_verdict
from rundir import Manifest, ResultRow, RunDir


def generated_now() -> str:
    """The summary's ``generated`` stamp (UTC, to the second)."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


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
    a = artifact_of(r, manifest)
    out: dict[str, Any] = {
        "device": dr.device_id,
        "family": r.family,
        "method": r.method,
        "variant": r.variant,
        "where": where_of(r, manifest),
        "artifact": a.id if a else (r.model_extra or {}).get("artifact_id"),
        "auc": r.auc,
        "auc_ci": r.auc_ci,
        "balanced_accuracy": r.balanced_accuracy,
        "tpr_at_fpr": r.tpr_at_fpr,
        "n_members": r.n_members,
        "n_nonmembers": r.n_nonmembers,
        "resolvable": {k: resolvable(r.n_nonmembers, float(k)) for k in r.tpr_at_fpr},
        "eps_lower_bound": eps_of(r),
        "per_class": per_class_of(r),
    }
    return out


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


def _best_per_target_rows(devices: list[DeviceResults], manifest: Manifest | None) -> list[dict[str, Any]]:
    """``best_per_target``: the best attack per single-variant target and device, with its artifact's figures."""
    per = []
    for dr in devices:
        for v, w, r in best_per_target(dr, manifest):
            a = artifact_of(r, manifest)
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
                    "test_accuracy": host_test_accuracy(a),
                    "bytes": a.bytes if a else None,
                    "n_members": r.n_members,
                    "n_nonmembers": r.n_nonmembers,
                    "eps_lower_bound": eps_of(r),
                    "per_class": per_class_of(r),
                }
            )
    return per


def build_summary(
    rd: RunDir, devices: list[DeviceResults], manifest: Manifest | None, compare: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """``report/summary.json``: the verdict first (:mod:`harness.report.verdict`), then worst leakage, best attack
    per target and device, divergence per device."""
    per = _best_per_target_rows(devices, manifest)
    threat, threat_source = load_threat_model(rd)
    return {
        "verdict": build_verdict(rd, per),
        "run": str(rd.root),
        "experiment": experiment_name(rd),
        "generated": generated_now(),
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
