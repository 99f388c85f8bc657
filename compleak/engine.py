"""The data-level attack API: fit on the reference (shadow) side once, score any target's outputs.

- :func:`fit_attacks` (splits + reference/shadow outputs -> :class:`FittedAttacks`) fits NR, SAMIA, SR, MR and the
  LiRA / RMIA baselines of one group of variants of one model family (an ``original`` plus compressed variants).
  It reads the attacker's side only: shadow models' outputs and their exact membership (``shadow_in`` /
  ``shadow_out``), the population, and the candidates' *ids* (the references are queried on them).
- :meth:`FittedAttacks.score` (target outputs -> rows, per-example scores) applies them to one device's target
  outputs; target membership (``target_in`` / ``target_out``) is used by the metrics and nothing else.
- :func:`run_attacks` is both in one call.

The attacks themselves are fitted by one fitter per family of rows, in the table :data:`compleak.fitters.FITTERS`
(``compleak/fitters/``: ``nr.py`` with SAMIA, ``sr.py``, ``mr.py``, ``baselines.py``), which this module runs
in order over a shared :class:`compleak.fitters.base.FitContext`.

The shadow-side and target-side batches are independent, so an attack fitted on host shadow outputs scores device
target outputs, and one fit scores every device. Memory: reference outputs stay float32 in their batches; per
variant only per-reference signals [K, n] (scaled logit, true-class probability) are formed, and the references'
per-candidate statistics are kept, never [K, n, C] float64.

Rows carry the DESIGN.md fields plus: ``fpr_resolvable``, ``threshold`` (+ ``threshold_source``), ``selected``,
``shadow_val_auc``, ``n_shadow_examples``, ``n_bootstrap``, ``roc``, ``eps_lower_bound`` (+ ``eps_bound``),
``per_class``, ``score_key`` (the row's array in the per-example scores), ``reference`` / ``n_reference_models`` /
``n_population`` / ``population`` (baselines), ``original`` (SR/MR). docs/attacks.md defines each.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from compleak.fitters import active
from compleak.fitters.base import (  # AttackConfig, LEARNED_MAX_EXAMPLES: exported here
    LEARNED_MAX_EXAMPLES,
    AttackConfig,
    Fit,
    FitContext,
    Progress,
    TargetView,
    candidates_of,
)
from compleak.fitters.inputs import Classes, take
from compleak.metrics import evaluate
from rundir import ContractError, OutputBatch, ResultRow, Splits
from rundir.vocabulary import BASELINES, FAMILIES, unknown

__all__ = ["LEARNED_MAX_EXAMPLES", "AttackConfig", "FittedAttacks", "check_inputs", "check_target", "fit_attacks",
           "run_attacks"]

# --------------------------------------------------------------------------- fitted attacks


class FittedAttacks:
    """Attacks fitted on the reference side of one variant group; :meth:`score` applies them to target outputs.

    ``planned``: (family, method, variant) of every row :meth:`score` produces, in order. ``notes``: attacks that
    were skipped and why (e.g. SAMIA without perturbed outputs)."""

    def __init__(self, splits: Splits, config: AttackConfig, classes: Classes) -> None:
        self.splits = splits
        self.config = config
        self._classes = classes
        self.t_ids = candidates_of(splits)
        self.t_labels = splits.labels.astype(np.int64)[self.t_ids]
        # target membership: used by the metrics only (never by a fit)
        self.t_y = np.r_[np.ones(len(splits.target_in)), np.zeros(len(splits.target_out))].astype(np.int64)
        self.pop_ids = np.zeros(0, np.int64)
        self.pop_labels = np.zeros(0, np.int64)
        self.fits: list[Fit] = []
        self.notes: list[str] = []
        self.variants: list[str] = []

    @classmethod
    def from_context(cls, ctx: FitContext) -> FittedAttacks:
        """What the fitters left in ``ctx`` (its rows' fits, notes), without the reference side itself."""
        fa = cls(ctx.splits, ctx.config, ctx.classes)
        fa.fits, fa.notes, fa.variants = ctx.fits, ctx.notes, ctx.variants
        fa.pop_ids, fa.pop_labels = ctx.pop_ids, ctx.pop_labels
        return fa

    @property
    def planned(self) -> list[tuple[str, str, str | list[str]]]:
        return [(f.family, f.method, f.variant) for f in self.fits]

    @property
    def n_rows(self) -> int:
        return len(self.fits)

    def score(
        self,
        target_outputs: Mapping[str, OutputBatch],
        target_perturbed: Mapping[str, Any] | None = None,
        on_row: Callable[[ResultRow], None] | None = None,
    ) -> tuple[list[ResultRow], dict[str, np.ndarray]]:
        """Score the target's outputs (variant -> batch covering ``target_in ∪ target_out``, and the population
        when RMIA uses it). Returns (rows, per-example scores keyed by each row's ``score_key``, float64 [n] in the
        order of ``splits.candidates``). ``target_perturbed``: variant -> :class:`compleak.samia.PerturbedBatch`."""
        check_target(self.splits, target_outputs, self.variants, self._classes)
        tgt = TargetView(target_outputs, target_perturbed, self._classes, self.t_ids, self.t_labels, self.pop_ids,
                         self.pop_labels)
        cfg = self.config
        rows: list[ResultRow] = []
        scores: dict[str, np.ndarray] = {}
        for f in self.fits:
            s, dec = f.scorer(tgt)
            m = evaluate(self.t_y, s, f.threshold, cfg.fprs, cfg.bootstrap, cfg.seed, decisions=dec,
                         labels=self.t_labels)
            key = f.key
            row = ResultRow(
                family=f.family, method=f.method, variant=f.variant, auc=m.auc,  # type: ignore[arg-type]
                balanced_accuracy=m.balanced_accuracy, tpr_at_fpr=m.tpr_at_fpr, auc_ci=list(m.auc_ci),
                n_members=m.n_members, n_nonmembers=m.n_nonmembers, fpr_resolvable=m.fpr_resolvable,
                threshold=m.threshold, n_bootstrap=m.n_bootstrap, roc=m.roc,
                eps_lower_bound=m.eps_lower_bound["eps"], eps_bound=m.eps_lower_bound, per_class=m.per_class,
                score_key=key, **f.extra,
            )
            rows.append(row)
            scores[key] = np.asarray(s, np.float64)
            if on_row is not None:
                on_row(row)
        return rows, scores


# --------------------------------------------------------------------------- checks


def check_target(splits: Splits, target_outputs: Mapping[str, OutputBatch], variants: Sequence[str] | None = None,
                 classes: Classes | None = None) -> None:
    """Validate target outputs: every batch valid, covering the candidates, one class count; names the file."""
    classes = classes or Classes(splits)
    t_ids = np.concatenate([splits.target_in, splits.target_out]).astype(np.int64)
    for v in variants if variants is not None else list(target_outputs):
        if v not in target_outputs:
            raise ContractError(f"variant '{v}': no target outputs given, but the attacks were fitted for it")
        b = target_outputs[v]
        src = classes.check(b, f"target outputs of '{v}'")
        take(b, t_ids, src)


def check_inputs(
    splits: Splits, target_outputs: Mapping[str, OutputBatch], shadow_outputs: Mapping[str, Sequence[OutputBatch]]
) -> None:
    """Validate inputs as :func:`run_attacks` would (splits, ids, labels, class counts, NaN) without attacking;
    raise :class:`~rundir.ContractError` naming the offending file. Lets a caller fail fast before
    hours of attacks on other groups."""
    splits.validate("splits passed to run_attacks")
    classes = Classes(splits)
    check_target(splits, target_outputs, None, classes)
    _check_shadows(splits, shadow_outputs, list(target_outputs), classes)


def _check_shadows(splits: Splits, shadow: Mapping[str, Sequence[OutputBatch]], variants: Sequence[str],
                   classes: Classes) -> None:
    if splits.n_shadows == 0:
        raise ContractError("splits: no shadow split; the attacks need at least one shadow model")
    for v in variants:
        if v not in shadow or not shadow[v]:
            raise ContractError(f"variant '{v}': no shadow-model outputs given; collect the shadow artifacts first")
        sb = list(shadow[v])
        if len(sb) != splits.n_shadows:
            raise ContractError(
                f"variant '{v}': outputs for {len(sb)} shadow models but splits have {splits.n_shadows}; "
                "collect every shadow artifact"
            )
        for k, b in enumerate(sb):
            src = classes.check(b, f"shadow {k} outputs of '{v}'")
            take(b, np.concatenate([splits.shadow_in[k], splits.shadow_out[k]]).astype(np.int64), src)


# --------------------------------------------------------------------------- fitting


def fit_attacks(
    splits: Splits,
    shadow_outputs: Mapping[str, Sequence[OutputBatch]],
    config: AttackConfig | None = None,
    shadow_perturbed: Mapping[str, Sequence[Any]] | None = None,
    progress: Progress | None = None,
) -> FittedAttacks:
    """Fit every configured attack on the reference side of one variant group.

    Args:
        splits: membership splits. Reference (shadow) model ``k`` trained on exactly ``shadow_in[k]`` and not on
            ``shadow_out[k]``; in the online threat model these overlap the candidates ``target_in ∪ target_out``.
            ``population`` (optional): attacker-held ids, RMIA's z set.
        shadow_outputs: variant label -> one batch per reference model ``k``, covering its own ``shadow_in[k] ∪
            shadow_out[k]``; when they also cover the candidates (and the population), LiRA / RMIA run per
            example (online when the candidates are IN for some references), otherwise per class.
        config: families, baselines, FPRs, bootstrap, seed, the ``original`` label, ``nr_variants``.
        shadow_perturbed: variant -> per reference model a :class:`compleak.samia.PerturbedBatch` or None (SAMIA
            trains on the learned references that have one).
        progress: called with a short description before each fit.
    """
    cfg = config or AttackConfig()
    bad = unknown(cfg.families, FAMILIES) + unknown(cfg.baselines, BASELINES)
    if bad:
        raise ValueError(f"unknown attack families/baselines {bad}; allowed: {FAMILIES + BASELINES}")
    splits.validate("splits passed to run_attacks")
    classes = Classes(splits)
    _check_shadows(splits, shadow_outputs, list(shadow_outputs), classes)
    ctx = FitContext(splits, shadow_outputs, cfg, classes, shadow_perturbed, progress)
    fitters = active(ctx)
    for v in ctx.nr_variants:
        ctx.shadow_side(v)  # every NR variant's reference outputs are read (and checked), whatever runs
        for fitter in fitters:
            fitter.fit_variant(ctx, v)
    for fitter in fitters:
        fitter.fit_group(ctx)
    return FittedAttacks.from_context(ctx)


# --------------------------------------------------------------------------- one call


def run_attacks(
    splits: Splits,
    target_outputs: Mapping[str, OutputBatch],
    shadow_outputs: Mapping[str, Sequence[OutputBatch]],
    families: Sequence[str] = FAMILIES,
    baselines: Sequence[str] = BASELINES,
    fprs: Sequence[float] = (0.001, 0.01),
    bootstrap: int = 200,
    seed: int = 0,
    original: str = "original",
    nr_variants: Sequence[str] | None = None,
    progress: Progress | None = None,
    shadow_perturbed: Mapping[str, Sequence[Any]] | None = None,
    target_perturbed: Mapping[str, Any] | None = None,
    return_scores: bool = False,
) -> Any:
    """Fit on ``shadow_outputs`` (:func:`fit_attacks`) and score ``target_outputs`` (:meth:`FittedAttacks.score`).

    ``target_outputs`` / ``shadow_outputs``: variant label -> the target's batch / one batch per reference model.
    Returns the rows (one per attack, deterministic order), or (rows, scores) with ``return_scores``."""
    check_inputs(splits, target_outputs, shadow_outputs)
    shadow = {v: shadow_outputs[v] for v in target_outputs}
    cfg = AttackConfig(tuple(families), tuple(baselines), tuple(fprs), bootstrap, seed, original,
                       None if nr_variants is None else tuple(nr_variants))
    fitted = fit_attacks(splits, shadow, cfg, shadow_perturbed, progress)
    rows, scores = fitted.score(target_outputs, target_perturbed)
    return (rows, scores) if return_scores else rows
