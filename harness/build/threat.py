"""``RUN/threat_model.json``: what the attacker is assumed to hold, written by the build (and ``compleak import``).

The document states the threat model (``online`` / ``offline``), the number K of reference models, what the
attacker's pool contains (whether it holds the target candidates), every split size, the seed, and a one-line
``summary`` the report shows. It is derived from ``splits.npz`` alone (plus the config's seed and recipe), contains
no timestamps, and is rewritten only when its content changes, so a rerun leaves the file as it was.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from rundir import ContractError, RunDir, Splits, atomic_write_json, load_json


def _sizes(arrays: list[np.ndarray]) -> dict[str, int]:
    n = [int(len(a)) for a in arrays]
    return {"min": min(n), "max": max(n)} if n else {"min": 0, "max": 0}


def owners_summary(splits: Splits, seed: int) -> dict[str, Any]:
    """The owner / membership facts of ``splits`` as JSON-ready values (shared by the build and the importer).

    Keys: ``threat_model``, ``online``, ``reference_models`` (K), ``seed``, ``attacker_pool`` (what it contains and
    its size), ``sizes`` (per set; references as min/max over k), ``candidate_in_references`` (online: how many
    references each candidate was IN for, min / mean / max, and the expected K/2), ``population``.
    """
    cand = splits.candidates
    k = splits.n_references
    pool = np.unique(np.concatenate([cand] + list(splits.shadow_in) + list(splits.shadow_out) + [
        splits.holdout("shadow", j) for j in range(k)
    ])) if splits.online else None
    doc: dict[str, Any] = {
        "threat_model": splits.threat_model,
        "online": bool(splits.online),
        "reference_models": k,
        "seed": int(seed),
        "attacker_pool": {
            "contains_target_candidates": bool(splits.online),
            "size": int(len(pool)) if pool is not None else None,
            "n_target_candidates": int(len(cand)) if splits.online else 0,
            "n_other": int(len(pool) - len(cand)) if pool is not None else None,
            "reference_draw": (
                "each reference model trains on a random half of the pool (its own seeded draw); its hold-out comes "
                "from the other half; the rest of that half are its non-members"
                if splits.online
                else "each reference model trains on attacker data disjoint from every target set"
            ),
        },
        "sizes": {
            "target_in": int(len(splits.target_in)),
            "target_out": int(len(splits.target_out)),
            "target_val": int(len(splits.target_val)),
            "population": int(len(splits.population_ids)),
            "reference_in": _sizes(list(splits.shadow_in)),
            "reference_out": _sizes(list(splits.shadow_out)),
            "reference_val": _sizes([splits.holdout("shadow", j) for j in range(k)]),
        },
        "population": (
            "target non-members outside the candidates and outside every reference model's data, queried on the "
            "target and on every reference artifact (RMIA's z set)"
            if splits.population is not None
            else None
        ),
    }
    if splits.online and k:
        counts = splits.reference_membership(cand).sum(axis=0)
        doc["candidate_in_references"] = {
            "min": int(counts.min()), "mean": round(float(counts.mean()), 4), "max": int(counts.max()),
            "expected": k / 2,
        }
    return doc


def build_threat_model(exp: Any, splits: Splits, splits_sha256: str | None = None) -> dict[str, Any]:
    """The threat model of a run the build stage makes from ``exp`` (an :class:`~harness.config.Experiment`)."""
    k = splits.n_references
    doc = owners_summary(splits, exp.experiment.seed)
    variants = {"tf": list(exp.compress.tf), "torch": list(exp.compress.torch)}
    used = {fw: variants[fw] for fw in exp.export.frameworks}
    if splits.online:
        how = (
            f"online: {k} reference models, each trained on a random half of the attacker's pool of "
            f"{doc['attacker_pool']['size']} examples, which contains the {doc['attacker_pool']['n_target_candidates']}"
            f" target candidates (each candidate IN for about {k / 2:g} of them)"
        )
    else:
        how = f"offline: {k} reference model(s) trained on attacker data disjoint from every target example"
    doc = {
        "source": "compleak build",
        "summary": (
            f"black-box queries to every compressed variant returning raw scores; {how}; every reference model has "
            f"the target's architecture ({exp.model.arch}), training recipe and compression pipeline"
            + (f"; {doc['sizes']['population']} population examples" if splits.population is not None else "")
        ),
        **doc,
        "reference_training": {
            "arch": exp.model.arch,
            "same_recipe_as_target": True,
            "variants": used,
            "note": "every reference model goes through the same build plan (training, compression, export) as the "
            "target",
        },
        "attacker_access": (
            "Black-box: the raw output vector (logits or probabilities, dequantized) of each artifact as the device "
            "runtime produced it, and the compression label of each variant."
        ),
        "never_used_by_attacker": (
            "Target membership (which candidates are in target_in) for training or model selection, and the target's "
            "hold-out target_val."
        ),
        "splits_sha256": splits_sha256,
    }
    return doc


def write_threat_model(run: RunDir, doc: dict[str, Any]) -> None:
    """Write ``RUN/threat_model.json`` atomically, only when its content changes."""
    path = run.threat_model
    try:
        if path.is_file() and load_json(path, 1 << 20) == json.loads(json.dumps(doc)):
            return
    except ContractError:  # unreadable, oversized or malformed: rewritten
        pass
    atomic_write_json(path, doc)
