"""The import's target artifacts: each ``--target`` file inspected, checked against the data and the other
variants, run on the host and recorded (``role="target"``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError, esc
from harness.importer.args import ArtifactArg
from harness.importer.artifacts import (
    FRAMEWORK,
    QUANT_DTYPES,
    Inspected,
    declared_record,
    default_variant,
    describe_artifact,
)
from harness.importer.inputs import Inputs, Probe
from harness.importer.membership import Membership
from harness.importer.text import first_line
from rundir import ArtifactRecord, ContractError, Manifest


@dataclass
class TargetSet:
    """The imported targets: their records, the (variant, format) of every target of the run, the class count."""

    records: list[ArtifactRecord]
    variants: list[tuple[str, str]]
    n_classes: int
    taken: dict[tuple[str, str], Path] = field(default_factory=dict)  # (variant, format) -> the file giving it


def target_probe(inp: Inputs, ms: Membership) -> Probe:
    """The target examples every artifact is tried on; a preprocessing that cannot make them is one line."""
    ids, n_members = inp.probe_ids(ms.members, ms.nonmembers)
    where = inp.req.preprocess or "default preprocessing"
    try:
        x = inp.query(ids)
    except (HarnessError, ContractError) as exc:
        raise HarnessError(f"{where}: {exc}") from None
    except Exception as exc:
        raise HarnessError(f"{where}: cannot preprocess {inp.req.data} ({first_line(exc)})") from None
    return Probe(ids, x, n_members)


def _inspect(inp: Inputs) -> tuple[list[tuple[ArtifactArg, Inspected]], int]:
    """Every ``--target`` file described, and the class count they share (and the dataset's labels fit)."""
    inspected = [(arg, describe_artifact(arg.path)) for arg in inp.req.target_args]
    classes = {art.n_classes for _, art in inspected}
    if len(classes) > 1:
        a, b = inspected[0][1], next(x for _, x in inspected if x.n_classes != inspected[0][1].n_classes)
        raise HarnessError(
            f"{b.path}: has {b.n_classes} classes but {a.path} has {a.n_classes}; "
            f"the variants of one target must share the output classes"
        )
    n_classes = classes.pop()
    if n_classes < int(inp.labels.max()) + 1:
        raise HarnessError(
            f"{inspected[0][1].path}: outputs {n_classes} classes "
            f"but dataset {inp.req.data} has labels up to {int(inp.labels.max())}"
        )
    return inspected, n_classes


def _add_target(inp: Inputs, targets: TargetSet, arg: ArtifactArg, art: Inspected, probe: Probe) -> None:
    layout = inp.fit(art, probe)
    taken = targets.taken
    variant = arg.variant or default_variant(art, {v for v, f in taken if f == art.format}, arg)
    if variant == "original" and art.inputs[0].dtype in QUANT_DTYPES:
        raise HarnessError(
            f"{art.path}: declared 'original' but its input is {art.inputs[0].dtype}-quantized; label it :int8"
        )
    if (variant, art.format) in taken:
        raise HarnessError(
            f"{art.path}: variant '{variant}' ({art.format}) is already given by {taken[(variant, art.format)]}"
        )
    taken[(variant, art.format)] = art.path
    targets.variants.append((variant, art.format))
    rec = declared_record(art, variant, None, layout)
    targets.records.append(rec)
    inp.console.print(
        f"target [bold]{esc(rec.id)}[/]: {art.format}, input {art.inputs[0].shape} {art.inputs[0].dtype}, "
        f"{targets.n_classes} classes, {art.output_kind}, sha256 {art.sha256[:12]}"
    )


def import_targets(inp: Inputs, probe: Probe) -> TargetSet:
    """Inspect, check, run and record every ``--target`` file (printing one line each)."""
    inspected, n_classes = _inspect(inp)
    targets = TargetSet([], [], n_classes)
    for arg, art in inspected:
        _add_target(inp, targets, arg, art, probe)
    if not any(v == "original" for v, _ in targets.variants):
        inp.console.print(
            "[yellow]note[/]: no target is labelled 'original'; SR and MR attacks need it, only NR will run"
        )
    return targets


def add_earlier_targets(inp: Inputs, old: Manifest, targets: TargetSet) -> None:
    """The variants of targets an earlier import recorded in the run (the shadow side must cover them too)."""
    for a in old.targets():
        if a.framework == FRAMEWORK and (a.variant, a.format) not in targets.variants:
            if int(a.outputs[0].shape[-1]) != targets.n_classes:
                raise HarnessError(
                    f"{inp.rd.manifest}: holds target {a.id} with {a.outputs[0].shape[-1]} classes, "
                    f"the new ones have {targets.n_classes}"
                )
            targets.variants.append((a.variant, a.format))
