"""NR: attacks on one compressed model's outputs (arXiv 2507.16872), per variant, plus SAMIA (row ``samia``).

Rows per NR variant: the posterior features (raw / sorted, with / without the label) x LR / RF, entropy and
modified-entropy thresholds (per class), and SAMIA's MLP on perturbation sensitivity when the reference models
have perturbed outputs.

The raw-posterior rows (``posterior-*``, ``posterior-label-*``) are the paper's NR train_based_1 / train_based_2
and are fitted exactly as the authors' code does (:class:`~compleak.attacks.AuthorsAttack`: all shadow examples,
fixed hyper-parameters); the sorted rows are this project's ML-Leaks-style attacks with model selection
(:class:`~compleak.attacks.LearnedAttack`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from compleak import samia as sam
from compleak import signals as sig
from compleak.attacks import AuthorsAttack, LearnedAttack, ThresholdAttack
from compleak.fitters.base import FitContext, Fitter, Scorer, TargetFeatures, TargetView, authors_scorer
from compleak.fitters.inputs import ShadowSide, Signals, source_name
from rundir import ContractError

#: feature name -> (posterior float64 [n, C], labels int64 [n]) -> features [n, d]
FEATURES: tuple[tuple[str, Callable[[np.ndarray, np.ndarray], np.ndarray]], ...] = (
    ("posterior", lambda p, lab: sig.raw_features(p)),
    ("posterior-label", lambda p, lab: sig.raw_features(p, lab)),
    ("sorted-posterior", lambda p, lab: sig.sorted_features(p)),
    ("sorted-posterior-label", lambda p, lab: sig.sorted_features(p, labels=lab)),
)
#: the paper's features (CompLeak NR train_based_1 / _2): their rows use the authors' procedure
AUTHORS_FEATURES: frozenset[str] = frozenset({"posterior", "posterior-label"})
#: threshold attack name -> signals -> per-example signal float64 [n] (low = member)
THRESHOLDS: tuple[tuple[str, Callable[[Signals], np.ndarray]], ...] = (
    ("entropy", lambda s: sig.entropy(s.log_p)),
    ("mentropy", lambda s: sig.modified_entropy(s.log_p, s.labels)),
)


def _target_features(v: str, build: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> TargetFeatures:
    def features(t: TargetView) -> np.ndarray:
        return build(t.side(v).p, t.side(v).labels)

    return features


def _threshold_scorer(v: str, th: ThresholdAttack, signal: Callable[[Signals], np.ndarray]) -> Scorer:
    def scorer(t: TargetView) -> tuple[np.ndarray, np.ndarray]:
        return th.score(signal(t.side(v))), th.decide(signal(t.side(v)), t.side(v).labels)

    return scorer


class NRFitter(Fitter):
    """NR rows of each NR variant: learned posterior attacks, threshold attacks, SAMIA."""

    family = "NR"

    def fit_variant(self, ctx: FitContext, variant: str) -> None:
        v = variant
        S = ctx.shadow_side(v)
        Ps = S.p
        for feat, build in FEATURES:
            Xs = build(Ps, S.labels)
            for model in ("lr", "rf"):
                method, tx = f"{feat}-{model}", _target_features(v, build)
                if feat not in AUTHORS_FEATURES:
                    ctx.learned(self.family, method, v, model, Xs, S.y, tx)
                    continue
                ctx.note(f"{self.family} {method} {v}")
                est = AuthorsAttack(model).fit(Xs, S.y)
                ctx.add(self.family, method, v, authors_scorer(est, tx), est.threshold_, selected=est.selected_,
                        n_shadow_examples=len(S.y), threshold_source="the model's predict (p > 0.5), as the authors",
                        procedure="CompLeak authors (all shadow examples, no selection)")
        for name, fn in THRESHOLDS:
            ctx.note(f"NR {name}-threshold {v}")
            th = ThresholdAttack(ctx.n_classes).fit(fn(S), S.labels, S.y)
            ctx.add(self.family, f"{name}-threshold", v, _threshold_scorer(v, th, fn), th.threshold_,
                    selected=th.selected_, n_shadow_examples=len(S.y), threshold_source="shadow, per class")
        fit_samia(ctx, v, S)


def _sensitivities(ctx: FitContext, v: str, S: ShadowSide, P: np.ndarray,
                   pert: list[Any]) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(rows with a perturbed output bool [n], sensitivity float64 [n, C], epsilon) of the learned references'
    own examples (posterior ``P`` [n, C]; ``pert``: per reference its PerturbedBatch or None); other rows zero."""
    keep = np.zeros(len(S.y), dtype=bool)
    sens = np.zeros(S.log_p.shape)
    eps = None
    for k in ctx.refs:
        rows = np.nonzero(S.owner == k)[0]
        pb = pert[k]
        if pb is None:
            continue
        ok = np.isin(S.ids[rows], pb.index)
        rows = rows[ok]
        if rows.size:
            src = source_name(pb, f"perturbed shadow {k} outputs of '{v}'")
            if pb.values.shape[2] != S.log_p.shape[1]:
                raise ContractError(f"{src}: {pb.values.shape[2]} classes but the outputs have {S.log_p.shape[1]}")
            sens[rows] = sam.sensitivity(P[rows], pb.rows(S.ids[rows]), pb.kind, pb.epsilon, src)
            keep[rows] = True
            eps = pb.epsilon
    return keep, sens, eps


def fit_samia(ctx: FitContext, v: str, S: ShadowSide) -> None:
    """SAMIA (NR row ``samia``), trained on the learned references that have perturbed outputs (the collect stage
    perturbs reference 0 only); a note when none has."""
    pert = list(ctx.shadow_perturbed.get(v) or [])
    pert += [None] * (ctx.n_refs - len(pert))
    if not any(pert[k] is not None for k in ctx.refs):
        ctx.skip(f"samia {v}: no perturbed outputs of the reference models (collect with perturbations)")
        return
    P = S.p
    keep, sens, eps = _sensitivities(ctx, v, S, P, pert)
    ys = S.y[keep]
    if not (np.any(ys == 1) and np.any(ys == 0)):
        ctx.skip(f"samia {v}: perturbed reference outputs cover no members or no non-members")
        return
    Xs = sam.features(P[keep], sens[keep], S.labels[keep])
    ctx.note(f"NR samia {v}")
    est = LearnedAttack("mlp", seed=ctx.seed).fit(Xs, ys)

    def scorer(t: TargetView, v: str = v) -> tuple[np.ndarray, None]:
        pb = t.perturbed.get(v)
        T = t.side(v)
        if pb is None or not pb.covers(t.ids):
            raise ContractError(
                f"{source_name(pb, 'target perturbed outputs of ' + repr(v)) if pb is not None else repr(v)}: SAMIA "
                "needs the target's perturbed outputs on every candidate; re-run collect with perturbations"
            )
        s = sam.sensitivity(T.p, pb.rows(t.ids), pb.kind, pb.epsilon, source_name(pb, v))
        return est.score(sam.features(T.p, s, T.labels)), None

    ctx.add(NRFitter.family, "samia", v, scorer, est.threshold_, selected={**est.selected_, "epsilon": eps},
            shadow_val_auc=est.val_auc_, n_shadow_examples=int(keep.sum()), threshold_source="shadow validation",
            needs_perturbed=True)
