"""The attack stage: collected outputs in ``RUN/outputs/<device>/`` -> ``RUN/attacks/<device>/results.json``.

Artifacts are grouped by framework. Within a framework one artifact per variant forms the *primary set* (the
``original`` in the first available format of pte, onnx, ptl, tflite; every compressed variant in the original's
format if collected, else in that order); the primary set gets NR, the baselines, SR (each compressed variant with
the original) and MR (all compressed variants). Every other collected artifact (another format of a variant) gets
NR, the baselines and SR paired with the original of its own format when there is one. Shadow outputs are read
from the same device; when that device has none for a shadow artifact but ``local`` has, the host's are used and
the row says so (``shadow_device``). The stage is a pure function of its inputs, so rerunning it is resuming it.

Fit once, score many: the attacks of one (framework, variant group, shadow source) are fitted once
(:func:`compleak.engine.fit_attacks`) and score every device whose group matches; a :class:`FitCache` passed by
the caller (``compare`` and ``audit`` do) carries the fits across calls in one process. Besides ``results.json``
the stage writes ``RUN/attacks/<device>/scores.npz``: ``index`` (the candidates), ``y`` (their membership),
``labels``, and one float64 array of per-example scores per row, keyed by the row's ``score_key``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from compleak.engine import AttackConfig, FittedAttacks, check_inputs, fit_attacks
from compleak.samia import PerturbedBatch, load_perturbed, perturbed_path
from harness.attack.resume import families_after, plan_resume, write_state
from harness.config import AttackSection, load_experiment
from harness.errors import HarnessError, esc
from harness.execution import ExecEvents, Executor, SerialExecutor, Unit
from harness.progress import stage_progress
from rundir.errors import ContractError
from rundir.files import atomic_save_npz
from rundir.layout import RunDir
from rundir.manifest import ArtifactRecord, Manifest
from rundir.outputs import OutputBatch
from rundir.results import ResultRow, save_results
from rundir.splits import Splits
from rundir.vocabulary import families_problem

FORMAT_PREFERENCE = ("pte", "onnx", "ptl", "tflite")
HOST = "local"


def _pref(fmt: str) -> int:
    return FORMAT_PREFERENCE.index(fmt) if fmt in FORMAT_PREFERENCE else len(FORMAT_PREFERENCE)


def _pick(cands: list[ArtifactRecord], prefer_format: str | None) -> ArtifactRecord:
    same = [a for a in cands if a.format == prefer_format]
    return same[0] if same else sorted(cands, key=lambda a: (_pref(a.format), a.id))[0]


def scores_path(rd: RunDir, device: str) -> Path:
    """``RUN/attacks/<device>/scores.npz`` (``RunDir.scores``; read it as a DataFrame with
    ``compleak.results.load_scores``)."""
    return rd.scores(device)


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

    def perturbed(self, device: str, artifact_id: str) -> PerturbedBatch | None:
        """SAMIA's perturbed outputs of ``artifact_id`` on ``device`` (None when not collected)."""
        return load_perturbed(perturbed_path(self.rd.outputs_dir(device), artifact_id))

    def shadows(self, target: ArtifactRecord, force: str | None = None) -> tuple[list[OutputBatch], str]:
        """Outputs of the shadow models of ``target`` (one per shadow index) and the device they came from
        (``force``: always that device)."""
        records = self.manifest.shadows_of(target)
        ks = [r.shadow or 0 for r in records]
        if ks != list(range(self.splits.n_shadows)):
            raise ContractError(
                f"{self.rd.manifest}: shadow artifacts of {target.id} are for shadow models {ks}, but splits.npz has "
                f"{self.splits.n_shadows} shadow models; rebuild or re-import the shadows"
            )
        on_device = all(self.rd.output_npz(self.device, r.id).is_file() for r in records)
        on_host = all(self.rd.output_npz(HOST, r.id).is_file() for r in records)
        source = force if force is not None else self.device if on_device or not on_host else HOST
        for r in records:
            path = self.rd.output_npz(source, r.id)
            if not path.is_file():
                raise ContractError(
                    f"{path}: shadow outputs of {r.id} (needed to attack {target.id}) are missing; "
                    f"run 'compleak collect {self.rd.root} --device {source}'"
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
        aid = extra["artifact_id"]
        extra["score_key"] = f"{r.family}|{r.method}|{','.join(aid) if isinstance(aid, list) else aid}"


def _fingerprint(paths: list[Path]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for p in paths:
        st = p.stat() if p.is_file() else None
        out.append((str(p), st.st_size if st else -1, st.st_mtime_ns if st else -1))
    return tuple(out)


class FitCache:
    """Fitted attack groups of one process, keyed by (framework, variant group, shadow source, families, attack
    settings, and name, size and mtime of every input file on the attacker's side), so a fit is reused only for
    identical inputs. Pass one to :func:`attack_run` / :func:`attack_rows` to fit once and score every device."""

    def __init__(self) -> None:
        self._fits: dict[tuple, FittedAttacks] = {}
        self.fitted = 0  # fits computed here (not reused)

    def get(self, key: tuple) -> FittedAttacks | None:
        return self._fits.get(key)

    def put(self, key: tuple, fitted: FittedAttacks) -> None:
        self._fits[key] = fitted
        self.fitted += 1

    def __len__(self) -> int:
        return len(self._fits)


@dataclass
class _Group:
    """One scoring unit: a variant group of one framework on one device, with its shadow side."""

    device: str
    group: dict[str, ArtifactRecord]
    fams: list[str]
    nr_variants: list[str] | None
    target: dict[str, OutputBatch]
    shadow: dict[str, list[OutputBatch]]
    shadow_dev: dict[str, str]
    key: tuple = ()
    target_perturbed: dict[str, PerturbedBatch] = field(default_factory=dict)
    shadow_perturbed: dict[str, list[Any]] = field(default_factory=dict)


def _plan_device(
    rd: RunDir,
    device: str,
    splits: Splits,
    manifest: Manifest,
    cfg: AttackSection,
    families: list[str],
    console: Console,
    shadow_device: str | None = None,
) -> list[_Group]:
    """The groups of ``device`` with their inputs loaded and checked (every file before any attack runs)."""
    outs = _DeviceOutputs(rd, device, splits, manifest)
    by_fw: dict[str, list[ArtifactRecord]] = defaultdict(list)
    for a in manifest.targets():
        if not rd.output_npz(device, a.id).is_file():
            continue
        if not manifest.shadows_of(a):
            console.print(
                f"[yellow]skip[/] {esc(a.id)}: no shadow artifacts in the manifest, nothing to train attacks on"
            )
            continue
        by_fw[a.framework].append(a)
    if not by_fw:
        raise HarnessError(
            f"{rd.outputs_dir(device)}: no collected target artifact with shadow models; "
            f"run 'compleak collect {rd.root} --device {device}' first"
        )
    settings = (tuple(cfg.baselines), tuple(cfg.fprs), cfg.bootstrap, cfg.seed)
    groups: list[_Group] = []
    for fw in sorted(by_fw):
        arts = by_fw[fw]
        originals = [a for a in arts if a.variant == "original"]
        orig = _pick(originals, None) if originals else None
        primary: dict[str, ArtifactRecord] = {}
        for v in dict.fromkeys(a.variant for a in arts):
            primary[v] = _pick([a for a in arts if a.variant == v], orig.format if orig else None)
        plan: list[tuple[dict[str, ArtifactRecord], list[str], list[str] | None]] = [(primary, list(families), None)]
        for a in arts:
            if primary[a.variant].id == a.id:
                continue
            group = {a.variant: a}
            same = [o for o in originals if o.format == a.format]
            if orig is not None and a.variant != "original":
                group = {"original": same[0] if same else orig, a.variant: a}
            plan.append((group, [f for f in families if f in ("NR", "SR")], [a.variant]))
        for group, fams, nr_variants in plan:
            if not fams and not cfg.baselines:
                continue
            target = {v: outs.load(device, a.id) for v, a in group.items()}
            shadow, shadow_dev = {}, {}
            for v, a in group.items():
                shadow[v], shadow_dev[v] = outs.shadows(a, force=shadow_device)
            check_inputs(splits, target, shadow)
            g = _Group(device, group, fams, nr_variants, target, shadow, shadow_dev)
            files: list[Path] = []
            for v, a in group.items():
                recs = manifest.shadows_of(a)
                files += [rd.output_npz(shadow_dev[v], r.id) for r in recs]
                if "NR" in fams:
                    files += [perturbed_path(rd.outputs_dir(shadow_dev[v]), r.id) for r in recs]
                    g.shadow_perturbed[v] = [outs.perturbed(shadow_dev[v], r.id) for r in recs]
                    tp = outs.perturbed(device, a.id)
                    if tp is not None:
                        g.target_perturbed[v] = tp
            g.key = (
                fw, tuple((v, a.id) for v, a in group.items()), tuple(sorted(set(shadow_dev.values()))),
                tuple(fams), tuple(nr_variants or ()), settings, _fingerprint([rd.splits, *files]),
            )
            groups.append(g)
    return groups


def _progress(console: Console) -> Progress:
    return stage_progress(console, spinner=True, transient=True, bold=True)


class _FitsStarted(ExecEvents):
    """The fit progress line names how the fits run."""

    def __init__(self, prog: Progress, task: Any) -> None:
        self.prog, self.task = prog, task

    def started(self, units: Sequence[Unit], where: str) -> None:
        self.prog.update(self.task, description=f"fitting {len(units)} attack groups {where}")


def _fit_and_score(
    splits: Splits, groups: list[_Group], cfg: AttackSection, fits: FitCache, console: Console,
    executor: Executor | None = None,
) -> dict[str, tuple[list[ResultRow], dict[str, np.ndarray]]]:
    """Fit every distinct group once (reusing ``fits``), then score every group. Progress: groups fitted, then rows
    scored out of the total with an ETA. Returns {device: (rows, scores by score_key)}.

    The fits are independent: with a Ray ``executor`` each is a 1-CPU task (the group's reference outputs go to
    the worker, the fitted attacks come back); otherwise, or with a serial one, they run here one by one. Either
    way a fit is a function of its inputs and seed, so the rows are the same."""
    todo: dict[tuple, _Group] = {}
    for g in groups:
        if fits.get(g.key) is None and g.key not in todo:
            todo[g.key] = g
    out: dict[str, tuple[list[ResultRow], dict[str, np.ndarray]]] = {}
    with _progress(console) as prog:
        if todo:
            task = prog.add_task("fitting attack groups", total=len(todo))
            runner = executor or SerialExecutor()
            units, key_of = [], {}
            for key, g in todo.items():
                label = "+".join(a.id for a in g.group.values())

                def note(msg: str, label: str = label) -> None:
                    prog.update(task, description=esc(f"fit {label}: {msg}"))

                ac = AttackConfig(tuple(g.fams), tuple(cfg.baselines), tuple(cfg.fprs), cfg.bootstrap, cfg.seed,
                                  "original", None if g.nr_variants is None else tuple(g.nr_variants))
                unit = Unit(f"fit {label}", fit_attacks, (splits, g.shadow, ac, g.shadow_perturbed),
                            local={"progress": note})
                units.append(unit)
                key_of[id(unit)] = key  # labels may repeat (another shadow source)
            for unit, fitted in runner.run(units, _FitsStarted(prog, task)):
                fits.put(key_of[id(unit)], fitted)
                prog.update(task, advance=1, description=esc(f"fitted {unit.key.removeprefix('fit ')}"))
        fitted_of = {id(g): fits.get(g.key) for g in groups}
        total = sum(f.n_rows for f in fitted_of.values() if f is not None)
        rtask = prog.add_task("scoring rows", total=total)
        for g in groups:
            fitted = fitted_of[id(g)]
            assert fitted is not None
            prog.update(rtask, description=esc(f"score {g.device}: {'+'.join(a.id for a in g.group.values())}"))
            rows, scores = fitted.score(g.target, g.target_perturbed, on_row=lambda _r: prog.advance(rtask))
            _tag(rows, g.group, g.device, g.shadow_dev)
            dev_rows, dev_scores = out.setdefault(g.device, ([], {}))
            for n in fitted.notes:
                console.print(f"[yellow]note[/] {esc(g.device)}: {esc(n)}", highlight=False)
            for r in rows:  # engine keys are unique within a group; the stage's name the artifacts
                dev_rows.append(r)
                extra = r.model_extra or {}
                engine_key = f"{r.family}|{r.method}|" + (",".join(r.variant) if isinstance(r.variant, list)
                                                         else r.variant)
                dev_scores[extra["score_key"]] = scores[engine_key]
    return out


def save_scores(rd: RunDir, device: str, splits: Splits, scores: dict[str, np.ndarray]) -> Path:
    """Write ``attacks/<device>/scores.npz`` atomically: index, y, labels, one array per row's score_key."""
    ids = np.concatenate([splits.target_in, splits.target_out]).astype(np.int64)
    y = np.r_[np.ones(len(splits.target_in)), np.zeros(len(splits.target_out))].astype(np.int8)
    reserved = {"index", "y", "labels"}
    arrays = {k: v.astype(np.float64) for k, v in scores.items() if k not in reserved}
    path = scores_path(rd, device)
    atomic_save_npz(path, index=ids, y=y, labels=splits.labels[ids].astype(np.int64), **arrays)
    return path


def load_scores(path: Path) -> dict[str, np.ndarray]:
    """Read a ``scores.npz`` (no pickles)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _setup(
    run: Path | str, families: Sequence[str] | None
) -> tuple[RunDir, AttackSection, list[str], Splits, Manifest]:
    rd = RunDir(run)
    if not rd.root.is_dir():
        raise HarnessError(f"{rd.root}: run directory not found; create it with 'compleak build' or 'compleak import'")
    cfg = load_experiment(rd.experiment).attack if rd.experiment.is_file() else AttackSection()
    fams = list(families) if families else list(cfg.families)
    problem = families_problem(fams, "families")
    if problem:
        raise HarnessError(problem)
    return rd, cfg, fams, rd.load_splits(), rd.load_manifest()


def attack_rows(
    run: Path | str,
    device: str,
    shadow_device: str | None = None,
    families: Sequence[str] | None = None,
    fits: FitCache | None = None,
    console: Console | None = None,
) -> tuple[list[ResultRow], dict[str, np.ndarray]]:
    """The attack stage's rows and scores for ``device`` without writing anything; ``shadow_device`` forces the
    shadow side (e.g. ``local`` for host shadows -> device targets). Reuses and fills ``fits``."""
    console = console or Console(quiet=True)
    rd, cfg, fams, splits, manifest = _setup(run, families)
    groups = _plan_device(rd, device, splits, manifest, cfg, fams, console, shadow_device)
    return _fit_and_score(splits, groups, cfg, fits if fits is not None else FitCache(), console).get(device, ([], {}))


def results_table(device: str, rows: list[ResultRow]) -> Table:
    """A rich table of result rows (AUC with CI, balanced accuracy, TPR at each FPR)."""
    fprs = list(rows[0].tpr_at_fpr) if rows else []
    sizes = sorted({(r.n_members, r.n_nonmembers) for r in rows})
    t = Table(
        title=f"membership leakage on {esc(device)}",
        caption="members/non-members: " + ", ".join(f"{a}/{b}" for a, b in sizes) + "; n/a: too few non-members",
    )
    t.add_column("artifact")
    t.add_column("family")
    t.add_column("method", no_wrap=True)
    t.add_column("variant")
    t.add_column("AUC [95% CI]")
    t.add_column("bal.acc", justify="right")
    t.add_column("ε ≥", justify="right")
    for f in fprs:
        t.add_column(f"TPR@{float(f) * 100:g}%", justify="right")
    for r in rows:
        extra = r.model_extra or {}
        fmt = extra.get("format", "")
        variant = ", ".join(r.variant) if isinstance(r.variant, list) else r.variant
        tprs = [("n/a" if r.tpr_at_fpr.get(f) is None else f"{r.tpr_at_fpr[f]:.4f}") for f in fprs]
        t.add_row(
            esc(f"{extra.get('framework', '')}/{fmt if isinstance(fmt, str) else ','.join(fmt)}"),
            esc(r.family),
            esc(r.method),
            esc(variant),
            f"{r.auc:.3f} [{r.auc_ci[0]:.3f}, {r.auc_ci[1]:.3f}]",
            f"{r.balanced_accuracy:.3f}",
            f"{extra['eps_lower_bound']:.2f}" if isinstance(extra.get("eps_lower_bound"), (int, float)) else "",
            *tprs,
        )
    return t


def attack_run(
    run: Path | str,
    device: str | None = None,
    families: Sequence[str] | None = None,
    console: Console | None = None,
    fits: FitCache | None = None,
    executor: Executor | None = None,
    force: bool = False,
    table: bool = True,
) -> dict[str, list[ResultRow]]:
    """Run the attacks on every collected device (or only ``device``); write ``attacks/<device>/results.json``,
    ``scores.npz`` and ``state.json``. ``executor``: where the attack groups are fitted (a Ray executor fans them
    out as tasks; None: in this process).

    Results are never lost (:mod:`harness.attack.resume`): a device whose inputs and families are unchanged is
    skipped (``force``: recompute); a subset of the families computed before is merged into the rows of the others;
    a subset that would drop rows computed from other inputs is refused in one line, before anything is written.
    ``table``: print every row per device (``compleak attack``); False: one line per device (``audit``, ``demo``).

    ``families``: subset of NR, SR, MR; empty or None takes ``[attack] families`` of ``RUN/experiment.toml``
    (all three when there is no config). Every device's inputs are checked first; each distinct attack group is
    then fitted once (or taken from ``fits``) and scores every device. Returns {device id: rows}.
    """
    console = console or Console()
    rd, cfg, fams, splits, manifest = _setup(run, families)
    rd.require_writable("attack", "attacks")
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
    explicit = bool(families)
    plans = {dev: plan_resume(rd, dev, fams, force, explicit, load_scores) for dev in devices}  # refusals first
    results: dict[str, list[ResultRow]] = {}
    for dev in devices:
        if plans[dev].skip:
            results[dev] = plans[dev].keep_rows
            console.print(f"attack {esc(dev)}: up to date ({len(results[dev])} rows in {esc(rd.results(dev))}; "
                          "--force recomputes)", highlight=False)
    todo = [dev for dev in devices if not plans[dev].skip]
    groups = [g for dev in todo for g in _plan_device(rd, dev, splits, manifest, cfg, fams, console)]
    fits = fits if fits is not None else FitCache()
    done = _fit_and_score(splits, groups, cfg, fits, console, executor) if todo else {}
    for dev in todo:
        plan = plans[dev]
        if plan.note:
            console.print(f"[yellow]note[/] {esc(dev)}: {esc(plan.note)}", highlight=False)
        rows, scores = done.get(dev, ([], {}))
        rows, scores = rows + plan.keep_rows, {**scores, **plan.keep_scores}
        save_scores(rd, dev, splits, scores)
        save_results(rd.results(dev), rows)
        write_state(rd, dev, plan.fingerprint, families_after(fams, plan))
        if table:
            console.print(results_table(dev, rows))
        else:
            best = max(rows, key=lambda r: r.auc, default=None)
            console.print(f"attack {esc(dev)}: {len(rows)} rows" + (
                f", best AUC {best.auc:.3f} ({esc(best.family)} {esc(best.method)})" if best else "")
                + " (every row: compleak export RUN, or --all)", highlight=False)  # fmt: skip
        kept = f" ({len(plan.keep_rows)} rows of {', '.join(sorted({r.family for r in plan.keep_rows}))} kept)" \
            if plan.keep_rows else ""  # fmt: skip
        console.print(f"results: {esc(rd.results(dev))}{kept}, per-example scores: {esc(scores_path(rd, dev))}")
        results[dev] = rows
    return results
