"""The verdict a reader needs first (``summary.json``'s ``verdict``, last in the terminal, on top of the page):
does the model leak, did compression make it worse, which variant is worst, which targets lost their accuracy.

Computed from the best attack per target and device (:func:`harness.report.summary.best_per_target_rows`):

- **identical outputs collapse**: targets of one device whose outputs are the same bytes (``.pte``/``.ptl``/``.onnx``
  of one torch model) form one entry naming every format;
- **leaking**: the best attack's 95% AUC interval lies above 0.5; **at the low FPR** (the smallest rate the rows
  resolve, ``n_nonmembers * FPR >= 1``): its TPR is above the FPR with a one-sided binomial p < 0.05 over the
  members (chance is TPR = FPR);
- **against the original**: each compressed variant's best AUC minus its original's (same device and
  framework/format, or the framework's original); ``higher`` / ``lower`` when the two 95% intervals do not overlap
  (a conservative test), else ``no significant change``;
- **worst**: the variant with the highest AUC and the one with the highest TPR at the low FPR;
- **accuracy**: a target whose host test accuracy is more than :data:`MAX_ACCURACY_DROP` below its original's is
  flagged with the drop (a model no one would ship; its leakage says little about a shipped one).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from rundir import ContractError, RunDir

#: a target more than this far (absolute test accuracy) below its original's is flagged
MAX_ACCURACY_DROP = 0.02
#: one-sided significance of "TPR above chance" at the low FPR
ALPHA = 0.05


def output_digest(rd: RunDir, device: str, artifact: str | None) -> str | None:
    """sha256 of an artifact's collected output values on ``device`` (None when not readable)."""
    if not artifact:
        return None
    try:
        values = rd.load_outputs(device, artifact).values
    except (ContractError, OSError, ValueError):
        return None
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def low_fpr(entries: Sequence[dict[str, Any]]) -> str | None:
    """The smallest FPR key every entry resolves (``n_nonmembers * FPR >= 1``), e.g. ``"0.01"``."""
    keys = sorted({k for e in entries for k in e["tpr_at_fpr"]}, key=float)
    for k in keys:
        if all(e["n_nonmembers"] * float(k) >= 1 and e["tpr_at_fpr"].get(k) is not None for e in entries):
            return k
    return None


def above_chance(tpr: float | None, n_members: int, fpr: float) -> bool:
    """TPR significantly above the FPR (one-sided binomial test over the members, p < :data:`ALPHA`)."""
    if tpr is None or n_members <= 0:
        return False
    from scipy.stats import binomtest

    return bool(binomtest(int(round(tpr * n_members)), n_members, fpr, alternative="greater").pvalue < ALPHA)


def _collapse(entries: list[dict[str, Any]], digests: list[str | None]) -> list[dict[str, Any]]:
    """One entry per (device, variant, outputs): identical outputs of several formats become one naming them all."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for e, d in zip(entries, digests):
        key = (e["device"], e["variant"], d or f"{e['where']}|{e['artifact']}")
        if key in out:
            out[key]["formats"].append(e["where"])
            if e["auc"] > out[key]["auc"]:  # the same outputs: the attack that did best on any of them
                out[key] |= {k: e[k] for k in ("family", "method", "auc", "auc_ci", "tpr_at_fpr")}
        else:
            out[key] = dict(e) | {"formats": [e["where"]]}
    return list(out.values())


def _original_of(e: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    same = [o for o in entries if o["device"] == e["device"] and o["variant"] == "original"]
    exact = [o for o in same if set(e["formats"]) & set(o["formats"])]
    fw = [o for o in same if o["where"].split("/")[0] == e["where"].split("/")[0]]
    return (exact or fw or [None])[0]


def _change(e: dict[str, Any], o: dict[str, Any]) -> dict[str, Any]:
    a, b = list(o["auc_ci"] or []), list(e["auc_ci"] or [])
    apart = len(a) == 2 and len(b) == 2 and (b[0] > a[1] or b[1] < a[0])
    word = ("higher" if e["auc"] > o["auc"] else "lower") if apart else "no significant change"
    drop = (o["test_accuracy"] - e["test_accuracy"]) if None not in (o["test_accuracy"], e["test_accuracy"]) else None
    return {"delta_auc": e["auc"] - o["auc"], "change": word, "accuracy_drop": drop}


def _label(e: dict[str, Any]) -> dict[str, Any]:
    return {"device": e["device"], "variant": e["variant"], "formats": e["formats"], "attack":
            f"{e['family']} {e['method']}", "auc": e["auc"], "auc_ci": e["auc_ci"]}  # fmt: skip


def build_verdict(rd: RunDir, per: list[dict[str, Any]]) -> dict[str, Any]:
    """The verdict object (module doc) from ``per`` (best attack per single-variant target and device)."""
    if not per:
        return {"leaking": None, "sentence": "no attack results yet: run 'compleak attack RUN'"}
    targets = _collapse(per, [output_digest(rd, e["device"], e["artifact"]) for e in per])
    fpr_key = low_fpr(targets)
    for e in targets:
        e["leaks"] = bool(e["auc_ci"] and e["auc_ci"][0] > 0.5)
        e["leaks_at_low_fpr"] = above_chance(e["tpr_at_fpr"].get(fpr_key), e["n_members"], float(fpr_key)) \
            if fpr_key else None  # fmt: skip
        o = _original_of(e, targets) if e["variant"] != "original" else None
        e["vs_original"] = _change(e, o) if o is not None else None
    changes = [e for e in targets if e["vs_original"] is not None]
    flagged = [e for e in changes if (e["vs_original"]["accuracy_drop"] or 0) > MAX_ACCURACY_DROP]
    worst_low = max((e for e in targets if fpr_key), key=lambda e: e["tpr_at_fpr"].get(fpr_key) or 0, default=None)
    verdict = {
        "targets": len(targets),
        "leaking": sum(e["leaks"] for e in targets),
        "low_fpr": float(fpr_key) if fpr_key else None,
        "leaking_at_low_fpr": sum(bool(e["leaks_at_low_fpr"]) for e in targets) if fpr_key else None,
        "worse_than_original": [_label(e) | e["vs_original"] for e in changes
                                if e["vs_original"]["change"] == "higher"],
        "better_than_original": [_label(e) | e["vs_original"] for e in changes
                                 if e["vs_original"]["change"] == "lower"],
        "unchanged": sum(e["vs_original"]["change"] == "no significant change" for e in changes),
        "worst_by_auc": _label(max(targets, key=lambda e: e["auc"])),
        "worst_at_low_fpr": (_label(worst_low) | {"tpr": worst_low["tpr_at_fpr"].get(fpr_key)}) if worst_low else None,
        "accuracy_flagged": [_label(e) | {"accuracy_drop": e["vs_original"]["accuracy_drop"],
                                          "test_accuracy": e["test_accuracy"]} for e in flagged],  # fmt: skip
        "max_accuracy_drop": MAX_ACCURACY_DROP,
        "rows": [{k: e[k] for k in ("device", "variant", "formats", "family", "method", "auc", "auc_ci",
                                    "tpr_at_fpr", "test_accuracy", "leaks", "leaks_at_low_fpr", "vs_original")}
                 for e in targets],  # fmt: skip
    }
    verdict["sentence"] = verdict_sentence(verdict)
    return verdict


def verdict_sentence(v: dict[str, Any]) -> str:
    """The verdict in one sentence, every number from ``v``."""
    if v.get("leaking") is None:
        return str(v.get("sentence", ""))
    n = v["targets"]
    devices = {r["device"] for r in v["rows"]}

    def name(e: dict[str, Any]) -> str:
        where = "/".join(e["formats"]) + (f" @ {e['device']}" if len(devices) > 1 else "")
        return f"{e['variant']} ({where})"

    fpr = f"{v['low_fpr'] * 100:g}%" if v["low_fpr"] is not None else ""
    head = (f"LEAKS: {v['leaking']} of {n} targets leak membership (AUC 95% CI above 0.5)" if v["leaking"]
            else f"no significant leakage: 0 of {n} targets have an AUC 95% CI above 0.5")
    if v["low_fpr"] is not None:
        head += f"; {v['leaking_at_low_fpr']} of {n} beat chance at {fpr} FPR (binomial p < {ALPHA})"
    worse = v["worse_than_original"]
    comp = (f"compression made {len(worse)} variant(s) significantly worse than their original: "
            + ", ".join(f"{name(w)} ΔAUC {w['delta_auc']:+.3f}" for w in worse[:4])
            + (f" and {len(worse) - 4} more" if len(worse) > 4 else "")
            if worse else f"no compressed variant is significantly worse than its original ({v['unchanged']} "
            "unchanged within the CIs)")  # fmt: skip
    w = v["worst_by_auc"]
    tail = f"worst by AUC: {name(w)} {w['auc']:.3f}"
    if v["worst_at_low_fpr"]:
        lw = v["worst_at_low_fpr"]
        tail += f"; worst at {fpr} FPR: {name(lw)} TPR {lw['tpr']:.1%}"
    acc = ""
    if v["accuracy_flagged"]:
        acc = "; accuracy: " + ", ".join(f"{name(f)} drops {f['accuracy_drop']:.1%}"
                                         for f in v["accuracy_flagged"][:4]) \
            + f" (over {v['max_accuracy_drop']:.0%}: not a model anyone would ship)"  # fmt: skip
    return f"{head}. {comp}. {tail}{acc}."
