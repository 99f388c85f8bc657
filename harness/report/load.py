"""Reading a run for the report: every device's result rows, ROC points and provenance, the recorded threat model
and the experiment's name; and what one result row says about itself (its target artifact, framework/format, ε
bound, per-class AUCs, the strength of its compression). Nothing here renders: ``summary``, ``charts``, ``html``
and ``terminal`` all start from these values."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compleak.metrics import fpr_resolvable
from harness.compare import HOST
from rundir import ArtifactRecord, ContractError, Manifest, ResultRow, RunDir, load_json, load_results
from rundir.layout import MAX_PROVENANCE_BYTES

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


@dataclass
class DeviceResults:
    """Everything known about one device in a run."""

    device_id: str
    dirname: str
    rows: list[ResultRow] = field(default_factory=list)
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)  # artifact id -> provenance json
    roc: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # row index -> (fpr, tpr)


def read_json(path: Path) -> Any:
    """A run's JSON file, bounded in size and depth (:func:`rundir.load_json`)."""
    return load_json(path, MAX_PROVENANCE_BYTES)


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
                obj = read_json(prov)
            except (ContractError, OSError, UnicodeDecodeError):
                continue
            if isinstance(obj, dict):  # untrusted: anything else is not provenance and is left out
                dr.provenance[prov.stem] = obj
    # attacks/<folder>/results.json for every folder on disk (RunDir names the folder of a known device id only)
    for name, res in rd.attack_folders():
        dr = found.setdefault(name, DeviceResults(name, name))
        if res.is_file():
            dr.rows = load_results(res)
            dr.roc = _load_roc(dr.rows)
    return sorted(found.values(), key=lambda r: (r.dirname != HOST, r.dirname))


def load_threat_model(rd: RunDir) -> tuple[dict[str, Any], str]:
    """(threat model, where it comes from): ``RUN/threat_model.json`` when the run records one, else the default
    of runs built by compleak build."""
    path = rd.threat_model
    if path.is_file():
        tm = read_json(path)
        src = f"recorded in {path.name}"
    else:
        tm = DEFAULT_THREAT_MODEL
        src = "the default of runs built by compleak build"
    return (tm if isinstance(tm, dict) else {"threat model": tm}), src


def experiment_name(rd: RunDir) -> str:
    try:
        raw = tomllib.loads(rd.experiment.read_text())
        return str(raw.get("experiment", {}).get("name", rd.root.name))
    except (OSError, tomllib.TOMLDecodeError):
        return rd.root.name


def load_manifest(rd: RunDir) -> Manifest | None:
    """The run's manifest, or None when it has none."""
    return rd.load_manifest() if rd.manifest.is_file() else None


# --------------------------------------------------------------------------- what a result row says


def resolvable(n_nonmembers: int, fpr: float) -> bool:
    """Whether ``n_nonmembers`` can resolve a false-positive rate ``fpr`` (compleak.metrics' rule:
    n_nonmembers * fpr >= 1; below that the measured TPR@FPR is really TPR@0)."""
    return fpr_resolvable(n_nonmembers, fpr)


def variant_str(v: str | list[str]) -> str:
    return v if isinstance(v, str) else " + ".join(v)


def artifact_of(row: ResultRow, manifest: Manifest | None) -> ArtifactRecord | None:
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


def host_test_accuracy(a: ArtifactRecord | None) -> float | None:
    """The artifact's host test accuracy (None without an artifact or a measurement)."""
    return a.host_accuracy.get("test") if a else None


def where_of(row: ResultRow, manifest: Manifest | None) -> str:
    """framework/format of a row ('tf/tflite'), or '' when the row does not say."""
    extra = row.model_extra or {}
    a = artifact_of(row, manifest)
    if a is not None:
        return f"{a.framework}/{a.format}"
    if extra.get("framework") or extra.get("format"):
        fmt = extra.get("format", "?")
        return f"{extra.get('framework', '?')}/{fmt if isinstance(fmt, str) else ','.join(map(str, fmt))}"
    return ""


def eps_of(row: ResultRow) -> float | None:
    """The row's epsilon lower bound (``eps_lower_bound``: a dict with ``eps`` as compleak.metrics writes it, or a
    number), or None when the row carries none."""
    v = (row.model_extra or {}).get("eps_lower_bound")
    if isinstance(v, dict):
        v = v.get("eps")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def per_class_of(row: ResultRow) -> dict[str, Any] | None:
    """The row's per-class vulnerability (``per_class``: {"auc": {class: AUC}, "most_vulnerable": [...]}) or None."""
    v = (row.model_extra or {}).get("per_class")
    return v if isinstance(v, dict) and isinstance(v.get("auc"), dict) else None


def strength_order(variant: str) -> tuple[int, float, str]:
    """Sort key of a variant: the original, then pruning by sparsity, then clustering from many clusters to few."""
    if variant == "original":
        return (0, 0.0, variant)
    if variant.startswith("prune-"):
        return (1, variant_number(variant, "prune-"), variant)
    if variant.startswith("cluster-"):
        return (2, -variant_number(variant, "cluster-"), variant)
    return (3, 0.0, variant)


def variant_number(variant: str, prefix: str) -> float:
    """The number of a ``prune-0.8`` / ``cluster-8`` variant (of its first step), 0 when it has none."""
    head = variant.split("+")[0]
    try:
        return float(head.removeprefix(prefix))
    except ValueError:
        return 0.0


def best_per_target(dr: DeviceResults, manifest: Manifest | None) -> list[tuple[str, str, ResultRow]]:
    """(variant, where, best row) per single-variant target, highest AUC first within the variant order."""
    best: dict[tuple[str, str], ResultRow] = {}
    for r in dr.rows:
        if not isinstance(r.variant, str):
            continue
        key = (r.variant, where_of(r, manifest))
        if key not in best or r.auc > best[key].auc:
            best[key] = r
    return [(v, w, r) for (v, w), r in sorted(best.items(), key=lambda kv: (strength_order(kv[0][0]), kv[0][1]))]
