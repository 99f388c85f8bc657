"""The attack stage: collected outputs in ``RUN/outputs/<device>/`` -> ``RUN/attacks/<device>/results.json``.

Artifacts are grouped by framework. Within a framework one artifact per variant forms the *primary set* (the
``original`` in the first available format of pte, onnx, ptl, tflite; every compressed variant in the original's
format if collected, else in that order); the primary set gets NR, the baselines, SR (each compressed variant with
the original) and MR (all compressed variants). Every other collected artifact (another format of a variant) gets
NR, the baselines and SR paired with the original of its own format when there is one. Shadow outputs are read
from the same device; when that device has none for a shadow artifact but ``local`` has, the host's are used and
the row says so (``shadow_device``). The stage is a pure function of its inputs, so rerunning it is resuming it.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from compleak.engine import FAMILIES, check_inputs, run_attacks
from compleak.rundir import (
    ArtifactRecord,
    ContractError,
    Manifest,
    OutputBatch,
    ResultRow,
    RunDir,
    Splits,
    save_results,
)
from harness.config import AttackSection, load_experiment
from harness.errors import HarnessError

FORMAT_PREFERENCE = ("pte", "onnx", "ptl", "tflite")
HOST = "local"


def _pref(fmt: str) -> int:
    return FORMAT_PREFERENCE.index(fmt) if fmt in FORMAT_PREFERENCE else len(FORMAT_PREFERENCE)


def _pick(cands: list[ArtifactRecord], prefer_format: str | None) -> ArtifactRecord:
    same = [a for a in cands if a.format == prefer_format]
    return same[0] if same else sorted(cands, key=lambda a: (_pref(a.format), a.id))[0]


class _DeviceOutputs:
    """Loads (and caches) the outputs of one device, with the host as fallback for shadow artifacts."""

    def __init__(self, rd: RunDir, device: str, splits: Splits, manifest: Manifest) -> None:
        self.rd, self.device, self.splits, self.manifest = rd, device, splits, manifest
        self._cache: dict[tuple[str, str], OutputBatch] = {}

    def load(self, device: str, artifact_id: str) -> OutputBatch:
        key = (device, artifact_id)
        if key not in self._cache:
            self._cache[key] = self.rd.load_outputs(device, artifact_id)
        return self._cache[key]

    def shadows(self, target: ArtifactRecord) -> tuple[list[OutputBatch], str]:
        """Outputs of the shadow models of ``target`` (one per shadow index) and the device they came from."""
        records = self.manifest.shadows_of(target)
        ks = [r.shadow or 0 for r in records]
        if ks != list(range(self.splits.n_shadows)):
            raise ContractError(
                f"{self.rd.manifest}: shadow artifacts of {target.id} are for shadow models {ks}, but splits.npz has "
                f"{self.splits.n_shadows} shadow models; rebuild or re-import the shadows"
            )
        on_device = all(self.rd.output_npz(self.device, r.id).is_file() for r in records)
        on_host = all(self.rd.output_npz(HOST, r.id).is_file() for r in records)
        source = self.device if on_device or not on_host else HOST
        for r in records:
            path = self.rd.output_npz(source, r.id)
            if not path.is_file():
                raise ContractError(
                    f"{path}: shadow outputs of {r.id} (needed to attack {target.id}) are missing; "
                    f"run 'compleak collect {self.rd.root} --device {self.device}'"
                )
        return [self.load(source, r.id) for r in records], source


def _tag(rows: list[ResultRow], by_variant: dict[str, ArtifactRecord], device: str, shadow_dev: dict[str, str]) -> None:
    for r in rows:
        extra = r.model_extra if r.model_extra is not None else {}
        if isinstance(r.variant, list):
            arts = [by_variant[v] for v in r.variant]
            fmts = sorted({a.format for a in arts})
            extra["artifact_id"] = [a.id for a in arts]
            extra["format"] = fmts[0] if len(fmts) == 1 else fmts
            extra["framework"] = arts[0].framework
            devs = sorted({shadow_dev[v] for v in r.variant})
            extra["shadow_device"] = devs[0] if len(devs) == 1 else devs
        else:
            a = by_variant[r.variant]
            extra.update(artifact_id=a.id, format=a.format, framework=a.framework, shadow_device=shadow_dev[r.variant])
        orig = extra.get("original")
        if orig is not None and orig in by_variant:
            extra["original_artifact_id"] = by_variant[orig].id
        extra["device"] = device


def _attack_device(
    rd: RunDir,
    device: str,
    splits: Splits,
    manifest: Manifest,
    cfg: AttackSection,
    families: list[str],
    note,  # type: ignore[no-untyped-def]
    console: Console,
) -> list[ResultRow]:
    outs = _DeviceOutputs(rd, device, splits, manifest)
    by_fw: dict[str, list[ArtifactRecord]] = defaultdict(list)
    for a in manifest.targets():
        if not rd.output_npz(device, a.id).is_file():
            continue
        if not manifest.shadows_of(a):
            console.print(f"[yellow]skip[/] {a.id}: no shadow artifacts in the manifest, nothing to train attacks on")
            continue
        by_fw[a.framework].append(a)
    if not by_fw:
        raise HarnessError(
            f"{rd.outputs_dir(device)}: no collected target artifact with shadow models; "
            f"run 'compleak collect {rd.root} --device {device}' first"
        )
    kw = dict(baselines=cfg.baselines, fprs=cfg.fprs, bootstrap=cfg.bootstrap, seed=cfg.seed, progress=note)
    rows: list[ResultRow] = []
    calls: list[tuple] = []
    for fw in sorted(by_fw):
        arts = by_fw[fw]
        originals = [a for a in arts if a.variant == "original"]
        orig = _pick(originals, None) if originals else None
        primary: dict[str, ArtifactRecord] = {}
        for v in dict.fromkeys(a.variant for a in arts):
            primary[v] = _pick([a for a in arts if a.variant == v], orig.format if orig else None)
        groups: list[tuple[dict[str, ArtifactRecord], list[str], list[str] | None]] = [(primary, list(families), None)]
        for a in arts:
            if primary[a.variant].id == a.id:
                continue
            group = {a.variant: a}
            same = [o for o in originals if o.format == a.format]
            if orig is not None and a.variant != "original":
                group = {"original": same[0] if same else orig, a.variant: a}
            groups.append((group, [f for f in families if f in ("NR", "SR")], [a.variant]))
        for group, fams, nr_variants in groups:
            if not fams and not cfg.baselines:
                continue
            target = {v: outs.load(device, a.id) for v, a in group.items()}
            shadow, shadow_dev = {}, {}
            for v, a in group.items():
                shadow[v], shadow_dev[v] = outs.shadows(a)
            check_inputs(splits, target, shadow)  # every file is checked before any attack runs
            calls.append((group, target, shadow, shadow_dev, fams, nr_variants))
    for group, target, shadow, shadow_dev, fams, nr_variants in calls:
        got = run_attacks(
            splits, target, shadow, families=fams, nr_variants=nr_variants, **kw  # type: ignore[arg-type]
        )
        _tag(got, group, device, shadow_dev)
        rows.extend(got)
    return rows


def results_table(device: str, rows: list[ResultRow]) -> Table:
    """A rich table of result rows (AUC with CI, balanced accuracy, TPR at each FPR)."""
    fprs = list(rows[0].tpr_at_fpr) if rows else []
    sizes = sorted({(r.n_members, r.n_nonmembers) for r in rows})
    t = Table(
        title=f"membership leakage on {device}",
        caption="members/non-members: " + ", ".join(f"{a}/{b}" for a, b in sizes) + "; n/a: too few non-members",
    )
    t.add_column("artifact")
    t.add_column("family")
    t.add_column("method", no_wrap=True)
    t.add_column("variant")
    t.add_column("AUC [95% CI]")
    t.add_column("bal.acc", justify="right")
    for f in fprs:
        t.add_column(f"TPR@{float(f) * 100:g}%", justify="right")
    for r in rows:
        extra = r.model_extra or {}
        fmt = extra.get("format", "")
        variant = ", ".join(r.variant) if isinstance(r.variant, list) else r.variant
        tprs = [("n/a" if r.tpr_at_fpr.get(f) is None else f"{r.tpr_at_fpr[f]:.4f}") for f in fprs]
        t.add_row(
            f"{extra.get('framework', '')}/{fmt if isinstance(fmt, str) else ','.join(fmt)}",
            r.family,
            r.method,
            variant,
            f"{r.auc:.3f} [{r.auc_ci[0]:.3f}, {r.auc_ci[1]:.3f}]",
            f"{r.balanced_accuracy:.3f}",
            *tprs,
        )
    return t


def attack_run(
    run: Path | str,
    device: str | None = None,
    families: Sequence[str] | None = None,
    console: Console | None = None,
) -> dict[str, list[ResultRow]]:
    """Run the attacks on every collected device (or only ``device``) and write ``attacks/<device>/results.json``.

    ``families``: subset of NR, SR, MR; empty or None takes ``[attack] families`` of ``RUN/experiment.toml``
    (all three when there is no config). Returns {device id: rows}.
    """
    console = console or Console()
    rd = RunDir(run)
    if not rd.root.is_dir():
        raise HarnessError(f"{rd.root}: run directory not found; create it with 'compleak build' or 'compleak import'")
    cfg = load_experiment(rd.experiment).attack if rd.experiment.is_file() else AttackSection()
    fams = list(families) if families else list(cfg.families)
    bad = [f for f in fams if f not in FAMILIES]
    if bad:
        raise HarnessError(f"unknown attack families {bad}; choose from {', '.join(FAMILIES)}")
    splits = rd.load_splits()
    manifest = rd.load_manifest()
    if device is not None:
        if not rd.outputs_dir(device).is_dir():
            raise HarnessError(
                f"{rd.outputs_dir(device)}: nothing collected for device '{device}'; "
                f"run 'compleak collect {rd.root} --device {device}'"
            )
        devices = [device]
    else:
        devices = [d for d, _ in rd.collected_devices()]
        if not devices:
            raise HarnessError(f"{rd.root / 'outputs'}: no collected outputs; run 'compleak collect {rd.root}' first")
    results: dict[str, list[ResultRow]] = {}
    for dev in devices:
        with Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as prog:
            task = prog.add_task(f"attacks on {dev}", total=None)
            rows = _attack_device(
                rd, dev, splits, manifest, cfg, fams,
                lambda msg, dev=dev: prog.update(task, description=f"{dev}: {msg}"), console,
            )
        save_results(rd.results(dev), rows)
        console.print(results_table(dev, rows))
        console.print(f"results: {rd.results(dev)}")
        results[dev] = rows
    return results

