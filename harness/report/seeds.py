"""The report across seeds (``[experiment] seeds``): the per-seed runs of ``RUN/seeds/<seed>/``, every attack
result's mean ± sd across them, and the ``summary.json`` of such a run. Results only: the page is
:func:`harness.report.html.render_seed_html`, the table :func:`harness.report.terminal.print_seed_terminal`."""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.compare import HOST
from harness.report.load import (
    artifact_of,
    eps_of,
    experiment_name,
    host_test_accuracy,
    load_devices,
    load_manifest,
    load_threat_model,
    resolvable,
    strength_order,
    variant_str,
    where_of,
)
from harness.report.summary import generated_now, worst_leakage
from rundir import RunDir


def seed_runs(rd: RunDir) -> list[tuple[int, RunDir]]:
    """The per-seed runs of ``RUN/seeds/<seed>/`` (experiment.seeds), by seed (links and other names ignored)."""
    from compleak.results import seed_dirs

    return [(seed, RunDir(d)) for seed, d in seed_dirs(rd.root)]


def threat_run(rd: RunDir, first: RunDir) -> RunDir:
    """Where the threat model of a run with seeds is read: the run itself when it records one, else its first
    seed's run."""
    return rd if rd.threat_model.is_file() else first


def _mean_sd(xs: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1; None with fewer than two values)."""
    if not xs:
        return None, None
    a = np.asarray(xs, float)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None)


def _per_seed_rows(runs: list[tuple[int, RunDir]]) -> dict[tuple[str, str, str, str, str], dict[str, Any]]:
    """Every attack result of every seed's run, grouped by (device, family, method, variant(s), framework/format)."""
    table: dict[tuple[str, str, str, str, str], dict[str, Any]] = {}
    for seed, srd in runs:
        manifest = load_manifest(srd)
        for dr in load_devices(srd):
            for r in dr.rows:
                key = (dr.device_id, r.family, r.method, variant_str(r.variant), where_of(r, manifest))
                e = table.setdefault(key, {
                    "device": dr.device_id, "family": r.family, "method": r.method, "variant": r.variant,
                    "where": key[4], "per_seed": [],
                })
                e["per_seed"].append({
                    "seed": seed, "auc": r.auc, "auc_ci": r.auc_ci, "tpr_at_fpr": r.tpr_at_fpr,
                    "balanced_accuracy": r.balanced_accuracy, "eps_lower_bound": eps_of(r),
                    "n_members": r.n_members, "n_nonmembers": r.n_nonmembers,
                    "test_accuracy": host_test_accuracy(artifact_of(r, manifest)),
                })
    return table


def aggregate_seeds(runs: list[tuple[int, RunDir]]) -> list[dict[str, Any]]:
    """One entry per attack result present in any seed's run (same device, family, method, variant(s) and
    framework/format): per-seed AUC with its CI, TPRs and ε bound, and their mean ± sd across the seeds."""
    out = []
    for e in _per_seed_rows(runs).values():
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
    return sorted(out, key=lambda e: (e["device"] != HOST, e["device"], e["family"], variant_str(e["variant"]),
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
    return [best[k] for k in sorted(best, key=lambda k: (k[2] != HOST, k[2], strength_order(k[0]), k[1]))]


def build_seed_summary(rd: RunDir, runs: list[tuple[int, RunDir]]) -> dict[str, Any]:
    """``report/summary.json`` of a run with experiment.seeds: mean ± sd across seeds beside each seed's figures."""
    rows = aggregate_seeds(runs)
    best = _best_across_seeds(rows)
    worst = max(rows, key=lambda e: e["auc_mean"], default=None)
    threat, threat_source = load_threat_model(threat_run(rd, runs[0][1]))
    per_seed = []
    for seed, srd in runs:
        manifest = load_manifest(srd)
        report = srd.report_index
        per_seed.append({
            "seed": seed, "run": str(srd.root.relative_to(rd.root)),
            "report": str(report.relative_to(rd.root)) if report.is_file() else None,
            "worst": worst_leakage(load_devices(srd), manifest),
        })
    return {
        "run": str(rd.root),
        "experiment": experiment_name(rd),
        "generated": generated_now(),
        "seeds": [s for s, _ in runs],
        "devices": sorted({e["device"] for e in rows}, key=lambda d: (d != HOST, d)),
        "worst": worst,
        "best_per_target": best,
        "across_seeds": rows,
        "per_seed": per_seed,
        "threat_model": threat,
        "threat_model_source": threat_source,
    }
