"""``compleak import``: audit artifacts built outside this tool (see docs/import.md).

An auditor holds the files an app really ships (``model_fp32.tflite``, ``model_int8.tflite``, a ``.pte`` ...) and
the owner's data with the membership of the target model. :func:`import_run` turns that into an ordinary run
directory, so that ``collect``, ``attack`` and ``report`` work on it unchanged:

- every ``--target PATH[:VARIANT]`` file is hashed, its format detected from its content, its input/output specs and
  quantization parameters read from the file itself, checked (readable, runs, one input the data can fill, the same
  class count as the other variants) and copied to ``RUN/artifacts/`` as a manifest record with ``role="target"``
  (:mod:`~harness.importer.targets`, :mod:`~harness.importer.artifacts`);
- the membership lists become ``splits.npz`` (``target_in`` / ``target_out``; shadow splits disjoint from every
  target id), after checking they are disjoint, balancing them, and refusing sets too small for the lowest FPR
  (:mod:`~harness.importer.membership`);
- the shadow side is either user-supplied artifacts (``--shadow PATH[:VARIANT][@K]`` with ``--shadow-members``) or
  shadow models trained here with a zoo architecture and compressed the way each target variant declares
  (:mod:`~harness.importer.shadows`);
- ``RUN/experiment.toml`` records the dataset and preprocessing (collect rebuilds the query inputs from it) and
  ``RUN/threat_model.json`` states what the attacker was assumed to have (:mod:`~harness.importer.experiment`,
  :mod:`~harness.importer.threat`).

Everything is staged inside the run, read back and then moved into place (:mod:`~harness.importer.staging`): a
failed import leaves the run byte-identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from rich.console import Console

from harness.errors import HarnessError, esc
from harness.importer.args import ImportRequest
from harness.importer.artifacts import io_differences
from harness.importer.experiment import experiment_toml, run_experiment
from harness.importer.inputs import Inputs, load_inputs
from harness.importer.membership import Membership, claimed_ids, resolve_membership
from harness.importer.shadows import ShadowSide, supplied_shadows, trained_shadows
from harness.importer.staging import Staging, copy_into
from harness.importer.targets import TargetSet, add_earlier_targets, import_targets, target_probe
from harness.importer.threat import recorded_threat, threat_model
from rundir import (
    ArtifactRecord,
    ContractError,
    Manifest,
    RunDir,
    Splits,
    atomic_write_bytes,
    atomic_write_json,
    sha256_file,
)

__all__ = ["ImportRequest", "experiment_toml", "import_run"]


@dataclass(frozen=True)
class _Before:
    """The run as it was before this import: its splits (None for a new run) and its manifest (empty)."""

    splits: Splits | None
    manifest: Manifest


@dataclass(frozen=True)
class _Plan:
    """What the import writes: target membership, targets, shadow side, splits, and the manifest it extends."""

    ms: Membership
    targets: TargetSet
    side: ShadowSide
    splits: Splits
    manifest: Manifest

    @property
    def records(self) -> list[ArtifactRecord]:
        return self.targets.records + self.side.records


def import_run(
    run: Path,
    targets: list[str],
    data: str,
    members: Path,
    nonmembers: Path | None = None,
    shadows: Iterable[str] = (),
    shadow_arch: str | None = None,
    preprocess: Path | None = None,
    data_dir: Path | None = None,
    console: Console | None = None,
    shadow_members: Iterable[Path] = (),
    config: Path | None = None,
) -> Path:
    """Create or extend the run directory ``run`` from artifacts built outside this tool; returns ``run``.

    Args:
        targets: ``PATH[:VARIANT]`` of each shipped artifact (the first fp32 one defaults to ``original``).
        data: dataset spec (``fashion-mnist``, ``npz:PATH``, ``imagefolder:PATH`` ...); ids index its examples.
        members / nonmembers: target membership (id lists, or one CSV with a membership column).
        shadows: ``PATH[:VARIANT][@K]`` user-supplied shadow artifacts; ``shadow_members`` gives, per K in order,
            the ids shadow K was trained on (same file formats as ``members``).
        shadow_arch: zoo architecture to train shadow models with instead (approximation of the target's training).
        preprocess: TOML with resize/scale/mean/std/layout; config: experiment.toml whose train, compress, attack
            and experiment sections apply (default: the run's own, else the defaults).
    Writes ``artifacts/``, ``manifest.json``, ``splits.npz``, ``experiment.toml`` and ``threat_model.json``,
    all staged and checked first (:class:`~harness.importer.staging.Staging`): a failed import changes nothing.
    """
    console = console or Console()
    rd = RunDir(run)
    with Staging(rd) as staging:
        rd.require_writable("import", rd.artifacts_dir.name)
        shadows, shadow_members = tuple(shadows), tuple(Path(p) for p in shadow_members)
        req = ImportRequest(
            run, tuple(targets), data, members, nonmembers, shadows, shadow_arch, preprocess, data_dir,
            shadow_members, config,
        )  # fmt: skip
        return run_import(req, console, staging)


def run_import(req: ImportRequest, console: Console, staging: Staging) -> Path:
    """The import of ``req`` into ``staging``'s run, step by step (see the module's description)."""
    inp = load_inputs(req, staging.rd, console)
    ms = _target_membership(inp)
    probe = target_probe(inp, ms)
    before = _Before(_existing_splits(inp.rd, ms), _manifest(inp.rd))
    targets = import_targets(inp, probe)
    add_earlier_targets(inp, before.manifest, targets)
    side = _shadow_side(inp, ms, targets, before, staging)
    plan = _plan(inp, ms, targets, side, before)
    threat = _write(inp, plan, staging)
    console.print(
        f"imported {len(targets.records)} target and {len(side.records)} shadow artifacts into "
        f"[bold]{esc(inp.rd.root)}[/]: {len(ms.members)} members / {len(ms.nonmembers)} non-members, "
        f"{plan.splits.n_shadows} shadow split(s)"
    )
    console.print(f"threat model: {esc(threat['summary'])}")
    return inp.rd.root


def _manifest(rd: RunDir) -> Manifest:
    return rd.load_manifest() if rd.manifest.is_file() else Manifest()


def _target_membership(inp: Inputs) -> Membership:
    """The target membership of ``--members`` / ``--nonmembers`` (non-members drawn avoiding every id the
    ``--shadow-members`` files claim); its notes are printed."""
    req = inp.req
    ms = resolve_membership(
        Path(req.members), Path(req.nonmembers) if req.nonmembers else None, inp.n, inp.lowest_fpr, inp.seed,
        avoid=claimed_ids(req.shadow_members, inp.n),
    )
    for note in ms.notes:
        inp.note(note)
    return ms


def _existing_splits(rd: RunDir, ms: Membership) -> Splits | None:
    """The run's splits, which must hold the same target membership (None for a new run)."""
    existing = rd.load_splits() if rd.splits.is_file() else None
    if existing is not None and not (
        np.array_equal(existing.target_in, ms.members) and np.array_equal(existing.target_out, ms.nonmembers)
    ):
        raise HarnessError(
            f"{rd.splits}: this run already holds a different target membership "
            f"({len(existing.target_in)} members); import into a new run directory"
        )
    return existing


def _shadow_side(inp: Inputs, ms: Membership, targets: TargetSet, before: _Before, staging: Staging) -> ShadowSide:
    """Supplied or trained shadows, else the run's own when they cover every target (earlier imports included)."""
    if inp.req.shadow_args:
        return supplied_shadows(inp, ms, targets)
    if inp.req.shadow_arch:
        return trained_shadows(inp, ms, targets, staging.run)
    existing, old = before.splits, before.manifest
    if existing is not None and existing.n_shadows and all(
        any(a.role == "shadow" and a.variant == v and a.format == f for a in old.artifacts) for v, f in targets.variants
    ):  # its hold-outs, population and threat model stay with its reference models
        threat = recorded_threat(inp.rd).get("shadow_models", {"mode": "kept from the existing run"})
        return ShadowSide(existing.shadow_in, existing.shadow_out, threat=threat, kept=existing)
    raise HarnessError(
        "no shadow side: give the shadow artifacts (--shadow PATH[:VARIANT][@K] with --shadow-members FILE) "
        "or let the tool train shadows (--shadow-arch cnn-small)"
    )


def _plan(inp: Inputs, ms: Membership, targets: TargetSet, side: ShadowSide, before: _Before) -> _Plan:
    """The run's splits (checked), with the shadows' I/O differences from their targets noted."""
    differences = io_differences(targets.records + before.manifest.targets(), side.records)
    if differences:
        side.threat = {**side.threat, "differences": differences}
        for line in differences:
            inp.note(line)
    kept = side.kept
    splits = Splits(
        inp.labels, ms.members, ms.nonmembers, side.shadow_in, side.shadow_out,
        **({} if kept is None else dict(target_val=kept.target_val, shadow_val=kept.shadow_val,
                                        population=kept.population, online=kept.online)),
    )  # fmt: skip
    try:
        splits.validate("membership")
    except ContractError as exc:
        raise HarnessError(str(exc)) from None
    return _Plan(ms, targets, side, splits, before.manifest)


def _write(inp: Inputs, plan: _Plan, staging: Staging) -> dict[str, Any]:
    """Write the run: staged inside it, read back, then committed with renames (see :class:`Staging`). Returns
    the threat model written."""
    rd, stage = inp.rd, staging.run
    for rec in plan.records:
        src = getattr(rec, "source_path", None)
        if not src:
            continue
        final = rd.artifact_path(rec)
        if not (final.is_file() and sha256_file(final) == rec.sha256):  # unchanged files are not rewritten
            copy_into(Path(src), stage.artifact_path(rec), rec.sha256)
        setattr(rec, "source_path", staging.final_path(src))  # a trained shadow's file moves into RUN/build
    exp = run_experiment(inp, plan.splits, inp.req.shadow_arch or inp.base.model.arch, plan.targets.variants)
    header = f"written by 'compleak import' for run {rd.root.name}"
    atomic_write_bytes(stage.experiment, experiment_toml(exp, header).encode())
    plan.splits.save(stage.splits)
    manifest = plan.manifest
    if inp.req.shadow_args or inp.req.shadow_arch:  # a new shadow side replaces the old one
        manifest.artifacts = [a for a in manifest.artifacts if a.role != "shadow"]
    for rec in plan.records:
        manifest.upsert(rec)
    manifest.save(stage.manifest)
    threat = threat_model(inp, plan.ms, manifest.targets(), plan.side.threat, plan.splits)
    atomic_write_json(stage.threat_model, threat)
    staging.check(plan.records)
    staging.commit()
    return threat
