"""The imported run's ``threat_model.json``: what the attacker was assumed to have (the report shows its
``summary``); the owner and split facts come from :func:`harness.build.threat.owners_summary`, as for a built run."""

from __future__ import annotations

from typing import Any

from harness.build.threat import owners_summary
from harness.importer.inputs import Inputs
from harness.importer.membership import Membership
from rundir import ArtifactRecord, ContractError, RunDir, Splits, load_json


def recorded_threat(rd: RunDir) -> dict[str, Any]:
    """The run's threat model as recorded, ``{}`` when it has none (or it does not read)."""
    path = rd.threat_model
    try:
        return load_json(path) if path.is_file() else {}
    except ContractError:
        return {}


def _shadow_texts(shadow: dict[str, Any]) -> tuple[str, str]:
    """(how the shadow models came about, what the attacker is assumed to know) for the shadow side's mode."""
    mode = shadow.get("mode", "unknown")
    how = {
        "supplied": "shadow models supplied by the auditor (trained like the targets)",
        "trained": f"shadow models trained by this tool with {shadow.get('arch')} and compressed as each variant "
        f"declares (an approximation of the target's training)",
    }.get(mode, str(shadow.get("note", mode)))
    knowledge = {
        "supplied": "Shadow data from the same distribution, disjoint from the target's members and non-members, and "
        "shadow models the auditor supplied for every variant, trained and compressed like the targets.",
        "trained": f"Shadow data from the same distribution, disjoint from the target's members and non-members; "
        f"NOT the target's architecture or training recipe: shadow models are {shadow.get('arch')} trained by this "
        f"tool and compressed as each variant's label declares, so the shadow side approximates the real pipeline.",
    }.get(mode, str(shadow.get("note", mode)))
    return how, knowledge


def threat_model(
    inp: Inputs, ms: Membership, records: list[ArtifactRecord], shadow: dict[str, Any], splits: Splits
) -> dict[str, Any]:
    """``RUN/threat_model.json`` of an import: the run's target ``records``, the ``shadow`` side's description,
    the target membership ``ms`` and the run's ``splits`` (K, online/offline, the attacker's pool, sizes)."""
    req = inp.req
    how, knowledge = _shadow_texts(shadow)
    variants = sorted({r.variant for r in records})
    doc = {
        "source": "compleak import (artifacts built outside this tool)",
        "summary": (
            f"black-box queries to the shipped artifacts ({', '.join(variants)}) returning raw scores; knowledge of "
            f"which compression each variant carries; {splits.n_shadows} {how}; attacker data from the same "
            f"distribution, disjoint from every target member and non-member"
        ),
        "attacker_knowledge": knowledge,
        "attacker_access": (
            "Black-box: the raw output vector (logits or probabilities, dequantized) of each imported artifact, as the "
            "device runtime produced it, and the compression label of each variant. NR uses one artifact; SR also "
            "uses the 'original' artifact; MR uses several variants."
        ),
        "never_used_by_attacker": "Target members or non-members, for training or model selection.",
        "shadow_models": shadow,
        "membership": {
            "members_file": str(req.members),
            "nonmembers_file": str(req.nonmembers) if req.nonmembers else None,
            "n_members": int(len(ms.members)),
            "n_nonmembers": int(len(ms.nonmembers)),
            "notes": ms.notes,
            "lowest_fpr": inp.lowest_fpr,
            "rule": "n_nonmembers >= 1/FPR for the lowest reported FPR",
        },
        "target_artifacts": [
            {"id": r.id, "variant": r.variant, "format": r.format, "sha256": r.sha256,
             "source_path": getattr(r, "source_path", None)}
            for r in records
        ],
        "data": {"dataset": req.data, "resolved": inp.spec, "preprocess": inp.pre.model_dump(mode="json"),
                 "shadow_split_sizes": [
                     [int(len(a)), int(len(b))] for a, b in zip(splits.shadow_in, splits.shadow_out)
                 ]},
    }
    doc.update(owners_summary(splits, inp.seed))  # K, online/offline, the attacker's pool, sizes
    return doc
