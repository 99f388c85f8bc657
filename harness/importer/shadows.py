"""The shadow side of an import: shadow artifacts the user supplies (``--shadow`` with ``--shadow-members``), or
shadow models trained here with a zoo architecture and compressed the way each target variant declares."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.config import Experiment
from harness.errors import HarnessError, esc
from harness.importer.args import ArtifactArg
from harness.importer.artifacts import TF_FORMATS, declared_record, default_variant, describe_artifact, record
from harness.importer.experiment import run_experiment
from harness.importer.inputs import Inputs
from harness.importer.membership import Membership, resolve_membership
from harness.importer.targets import TargetSet
from harness.importer.text import first_line
from rundir import ArtifactRecord, RunDir, Splits


@dataclass
class ShadowSide:
    """The shadow models' splits and records, and how the threat model describes them (``kept``: the run's own
    splits, when its shadow side is kept as it was)."""

    shadow_in: list[np.ndarray]
    shadow_out: list[np.ndarray]
    records: list[ArtifactRecord] = field(default_factory=list)
    threat: dict[str, Any] = field(default_factory=dict)
    kept: Splits | None = None


def _builder(fmt: str):
    try:
        if fmt in TF_FORMATS:
            from harness.build.tf_pipeline import build_variants
        else:
            from harness.build.torch_pipeline import build_variants
    except ImportError as exc:
        raise HarnessError(f"training shadow models for {fmt} needs the builder ({first_line(exc)})") from None
    return build_variants


def _shadow_membership(inp: Inputs, k: int, ms: Membership) -> Membership:
    """Shadow ``k``'s membership from its ``--shadow-members`` file (disjoint from every target id)."""
    return resolve_membership(
        inp.req.shadow_members[k], None, inp.n, 0.0, inp.base.owner_seed("shadow", k), exclude=ms.ids,
        what=f"shadow {k}",
    )


# --------------------------------------------------------------------------- supplied


def _add_supplied(
    inp: Inputs, side: ShadowSide, targets: TargetSet, arg: ArtifactArg, seen: dict[tuple[int, str, str], Path]
) -> None:
    """Check, run and record one ``--shadow`` artifact (its variant must be a target's; one per shadow)."""
    k = int(arg.shadow or 0)
    art = describe_artifact(arg.path)
    if art.n_classes != targets.n_classes:
        raise HarnessError(f"{art.path}: shadow has {art.n_classes} classes but the targets have {targets.n_classes}")
    layout = inp.fit(art, inp.probe(side.shadow_in[k], side.shadow_out[k]))
    variant = arg.variant or default_variant(art, {v for (kk, v, f) in seen if kk == k and f == art.format}, arg)
    if (variant, art.format) not in targets.variants:
        raise HarnessError(
            f"{art.path}: shadow variant '{variant}' ({art.format}) matches no --target variant "
            f"({', '.join(f'{v} ({f})' for v, f in targets.variants)})"
        )
    if (k, variant, art.format) in seen:
        raise HarnessError(
            f"{art.path}: shadow {k} variant '{variant}' is already given by {seen[(k, variant, art.format)]}"
        )
    seen[(k, variant, art.format)] = art.path
    side.records.append(declared_record(art, variant, k, layout))


def supplied_shadows(inp: Inputs, ms: Membership, targets: TargetSet) -> ShadowSide:
    """Check and record user-supplied shadow artifacts; every shadow K needs every target variant and a
    ``--shadow-members`` file (the K-th) with the ids it was trained on."""
    req = inp.req
    k_total = max(a.shadow or 0 for a in req.shadow_args) + 1
    if len(req.shadow_members) != k_total:
        raise HarnessError(
            f"--shadow artifacts name {k_total} shadow model(s) (@0..@{k_total - 1}) but {len(req.shadow_members)} "
            f"--shadow-members file(s) were given; give one per shadow model, in order, with the ids it was trained on"
        )
    side = ShadowSide([], [])
    for k in range(len(req.shadow_members)):
        sm = _shadow_membership(inp, k, ms)
        for note in sm.notes:
            inp.note(note)
        side.shadow_in.append(sm.members)
        side.shadow_out.append(sm.nonmembers)
    seen: dict[tuple[int, str, str], Path] = {}
    for arg in req.shadow_args:
        _add_supplied(inp, side, targets, arg, seen)
    for k in range(k_total):
        for v, f in targets.variants:
            if (k, v, f) not in seen:
                raise HarnessError(
                    f"shadow {k} has no artifact for target variant '{v}' ({f}); add --shadow PATH:{v}@{k}"
                )
    side.threat = {
        "mode": "supplied",
        "n_shadows": k_total,
        "approximation": False,
        "note": "shadow artifacts supplied by the user; assumed trained and compressed like the targets",
        "artifacts": [
            {"id": r.id, "sha256": r.sha256, "source_path": r.source_path}  # type: ignore[attr-defined]
            for r in side.records
        ],
    }
    return side


# --------------------------------------------------------------------------- trained here


def _shadow_splits(inp: Inputs, ms: Membership, k_total: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Shadow splits for trained shadows: the user's ``--shadow-members`` files, else drawn from non-target ids
    (as many members as the target has)."""
    ins: list[np.ndarray] = []
    outs: list[np.ndarray] = []
    pool = np.setdiff1d(np.arange(inp.n, dtype=np.int64), ms.ids)
    for k in range(k_total):
        if k < len(inp.req.shadow_members):
            sm = _shadow_membership(inp, k, ms)
            ins.append(sm.members)
            outs.append(sm.nonmembers)
            continue
        m = min(len(ms.members), len(pool) // 2)
        if m < 20:
            raise HarnessError(
                f"only {len(pool)} examples lie outside the target membership; training shadow models needs data "
                f"disjoint from every target id (give a larger dataset or fewer target ids)"
            )
        perm = np.random.default_rng(inp.base.owner_seed("shadow", k)).permutation(pool)
        inp.console.print(f"shadow {k}: {m} members / {m} non-members drawn from the {len(pool)} non-target examples")
        ins.append(perm[:m].astype(np.int64))
        outs.append(perm[m : 2 * m].astype(np.int64))
    return ins, outs


def _train(
    inp: Inputs, exp: Experiment, splits: Splits, k: int, targets: TargetSet, stage: RunDir
) -> list[ArtifactRecord]:
    """Train shadow ``k`` and compress it into every target variant, per format; its records."""
    from harness.data import owner_data

    by_format: dict[str, list[str]] = {}
    for v, f in targets.variants:
        by_format.setdefault(f, []).append(v)
    owner = owner_data(inp.ds, splits, inp.pre, "shadow", k, exp.splits.holdout_fraction, exp.owner_seed("shadow", k))
    records: list[ArtifactRecord] = []
    for fmt, labels_v in by_format.items():
        build_variants = _builder(fmt)
        what = esc(f"shadow {k}: training {exp.model.arch}, then {', '.join(labels_v)} ({fmt})")
        with inp.console.status(what) as status:
            built = build_variants(
                exp, owner, labels_v, stage.root / "build", f"shadow{k}", formats=[fmt],
                progress=lambda msg: status.update(esc(msg)),
            )
        for ba in built:
            if ba.variant not in labels_v or ba.format != fmt:
                continue
            art = describe_artifact(Path(ba.path))
            if art.n_classes != targets.n_classes:
                raise HarnessError(
                    f"{ba.path}: the trained shadow has {art.n_classes} classes, the targets {targets.n_classes}"
                )
            layout = inp.fit(art, inp.probe(splits.shadow_in[k], splits.shadow_out[k]))
            records.append(record(
                art, ba.variant, k, layout, compression=dict(ba.compression), toolchain=dict(ba.toolchain),
                source_path=str(Path(ba.path).resolve()), trained_by="compleak", arch=exp.model.arch,
                approximation=True,
            ))  # fmt: skip
        missing = set(labels_v) - {r.variant for r in records if r.format == fmt}
        if missing:
            raise HarnessError(f"the {fmt} builder produced no shadow artifact for {sorted(missing)}")
    return records


def trained_shadows(inp: Inputs, ms: Membership, targets: TargetSet, stage: RunDir) -> ShadowSide:
    """Train shadow models with the zoo architecture ``--shadow-arch`` on each shadow split (in the staging run
    ``stage``) and compress them the way each target variant declares (the framework builders'
    ``build_variants``); record them as the targets' shadows."""
    req = inp.req
    k_total = max(len(req.shadow_members), inp.base.splits.n_shadows if req.config is not None else 1)
    side = ShadowSide(*_shadow_splits(inp, ms, k_total))
    splits = Splits(inp.labels, ms.members, ms.nonmembers, side.shadow_in, side.shadow_out)
    exp = run_experiment(inp, splits, req.shadow_arch or inp.base.model.arch, targets.variants)
    for k in range(splits.n_shadows):
        side.records += _train(inp, exp, splits, k, targets, stage)
    side.threat = {
        "mode": "trained",
        "n_shadows": splits.n_shadows,
        "arch": exp.model.arch,
        "approximation": True,
        "note": (
            f"shadow models trained here ({exp.model.arch}, [train] of experiment.toml) on data disjoint from the "
            f"target ids and compressed as each target variant declares; the target's real architecture, training "
            f"and compression toolchain are unknown, so the shadow side approximates them"
        ),
    }
    return side
