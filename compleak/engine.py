"""The data-level attack API: splits + output batches in, :class:`~compleak.rundir.ResultRow` s out.

:func:`run_attacks` runs NR, SR, MR and the RMIA/LiRA baselines on one group of variants of one model family
(an ``original`` plus compressed variants). Every attack is fitted on the shadow models' outputs only and
evaluated on the target model's outputs; target membership is used only by the metrics. The shadow-side and
target-side batches are independent arguments, so they may come from different devices (e.g. attacks trained on
host shadow outputs and applied to device target outputs).

Rows carry the DESIGN.md fields plus extra fields: ``fpr_resolvable``, ``threshold``, ``selected``
(hyper-parameters / epochs), ``shadow_val_auc``, ``n_shadow_examples``, ``n_bootstrap``, ``roc`` (log-grid ROC
points), ``reference`` (baselines), ``original`` (SR/MR).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from compleak import signals as sig
from compleak.attacks import FusionAttack, LearnedAttack, ThresholdAttack
from compleak.baselines import LiRAOffline, RMIAOffline
from compleak.metrics import evaluate
from compleak.rundir import ContractError, OutputBatch, ResultRow, Splits

FAMILIES = ("NR", "SR", "MR")
BASELINES = ("rmia", "lira")


@dataclass
class _Side:
    """Signals of one side (shadow pooled over shadow models, or target) for one variant."""

    log_p: np.ndarray  # float64 [n, C]
    labels: np.ndarray  # int64 [n]
    y: np.ndarray  # int64 [n], 1 member

    @property
    def p(self) -> np.ndarray:
        return np.exp(self.log_p)


def _name(batch: OutputBatch, fallback: str) -> str:
    return getattr(batch, "source", None) or fallback


def _rows(batch: OutputBatch, ids: np.ndarray, n_labels: int, what: str) -> np.ndarray:
    src = _name(batch, what)
    batch.validate(src)
    if batch.index.size and (batch.index.min() < 0 or batch.index.max() >= n_labels):
        raise ContractError(f"{src}: index has example ids outside [0, {n_labels}) of the splits' labels; "
                            "outputs and splits.npz do not belong together")
    return sig.log_posterior(batch.rows(ids, src), batch.kind, src)


def _covers(batch: OutputBatch, ids: np.ndarray) -> bool:
    return bool(np.all(np.isin(ids, batch.index)))


class _Prepared:
    """Signals of every variant on both sides, with the checks that make them comparable."""

    def __init__(self, splits: Splits, target: Mapping[str, OutputBatch], shadow: Mapping[str, Sequence[OutputBatch]]):
        splits.validate("splits passed to run_attacks")
        if splits.n_shadows == 0:
            raise ContractError("splits: no shadow split; the attacks need at least one shadow model")
        labels = splits.labels.astype(np.int64)
        n = len(labels)
        self.t_ids = np.concatenate([splits.target_in, splits.target_out]).astype(np.int64)
        t_y = np.r_[np.ones(len(splits.target_in)), np.zeros(len(splits.target_out))].astype(np.int64)
        s_ids = [np.concatenate([a, b]).astype(np.int64) for a, b in zip(splits.shadow_in, splits.shadow_out)]
        s_y = np.concatenate(
            [np.r_[np.ones(len(a)), np.zeros(len(b))] for a, b in zip(splits.shadow_in, splits.shadow_out)]
        ).astype(np.int64)
        self.target: dict[str, _Side] = {}
        self.shadow: dict[str, _Side] = {}
        self.reference: dict[str, np.ndarray | None] = {}  # [K, n_target, C] log-posteriors of shadows on target ids
        n_classes = None
        for v, tb in target.items():
            if v not in shadow or not shadow[v]:
                raise ContractError(f"variant '{v}': no shadow-model outputs given; collect the shadow artifacts first")
            sb = list(shadow[v])
            if len(sb) != splits.n_shadows:
                raise ContractError(
                    f"variant '{v}': outputs for {len(sb)} shadow models but splits have {splits.n_shadows}; "
                    "collect every shadow artifact"
                )
            t_lp = _rows(tb, self.t_ids, n, f"target outputs of '{v}'")
            s_lp = [_rows(b, ids, n, f"shadow {k} outputs of '{v}'") for k, (b, ids) in enumerate(zip(sb, s_ids))]
            src = _name(tb, f"target outputs of '{v}'")
            named = [(t_lp, src)]
            named += [(x, _name(b, f"shadow {k} outputs of '{v}'")) for k, (x, b) in enumerate(zip(s_lp, sb))]
            for lp, name in named:
                if n_classes is None:
                    n_classes, first = lp.shape[1], name
                elif lp.shape[1] != n_classes:
                    raise ContractError(
                        f"{name}: {lp.shape[1]} classes but {first} has {n_classes}; all variants must share classes"
                    )
            assert n_classes is not None
            if labels.max() >= n_classes:
                raise ContractError(
                    f"{src}: {n_classes} output classes but splits labels go up to {int(labels.max())}; "
                    "outputs and splits.npz do not belong together"
                )
            self.target[v] = _Side(t_lp, labels[self.t_ids], t_y)
            self.shadow[v] = _Side(np.concatenate(s_lp), labels[np.concatenate(s_ids)], s_y)
            if all(_covers(b, self.t_ids) for b in sb):
                self.reference[v] = np.stack([sig.log_posterior(b.rows(self.t_ids), b.kind, _name(b, v)) for b in sb])
            else:
                self.reference[v] = None
        self.n_classes = int(n_classes or 0)


def check_inputs(
    splits: Splits, target_outputs: Mapping[str, OutputBatch], shadow_outputs: Mapping[str, Sequence[OutputBatch]]
) -> None:
    """Validate inputs as :func:`run_attacks` would (splits, ids, labels, class counts, NaN) without attacking;
    raise :class:`~compleak.rundir.ContractError` naming the offending file. Lets a caller fail fast before
    hours of attacks on other groups."""
    _Prepared(splits, target_outputs, shadow_outputs)


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
    progress: Callable[[str], None] | None = None,
) -> list[ResultRow]:
    """Run the attacks on one group of variants of one model family.

    Args:
        splits: membership splits; ``target_in``/``target_out`` are the evaluation members/non-members, shadow
            model ``k`` was trained on ``shadow_in[k]`` and not on ``shadow_out[k]``.
        target_outputs: variant label -> the target artifact's outputs (must cover target_in and target_out).
        shadow_outputs: variant label -> one batch per shadow model ``k`` (covering shadow_in[k] and
            shadow_out[k]; when they also cover the target ids, RMIA/LiRA use them per example).
        families: subset of NR, SR, MR. SR needs ``original`` among the variants; MR needs >= 2 compressed ones
            (with the original: fusion over SR2 membership probabilities and losses; always also
            ``mr-no-original`` over per-variant posteriors and losses).
        baselines: subset of rmia, lira (run per NR variant, rows with family ``baseline``).
        fprs: false-positive rates for ``tpr_at_fpr``; bootstrap: AUC CI resamples; seed: everything random.
        nr_variants: variants to run NR and baselines on (default: all given).
        progress: called with a short description before each attack.

    Returns:
        One :class:`ResultRow` per attack, in a deterministic order.
    """
    bad = [f for f in families if f not in FAMILIES] + [b for b in baselines if b not in BASELINES]
    if bad:
        raise ValueError(f"unknown attack families/baselines {bad}; allowed: {FAMILIES + BASELINES}")
    data = _Prepared(splits, target_outputs, shadow_outputs)
    variants = list(target_outputs)
    compressed = [v for v in variants if v != original]
    has_original = original in target_outputs
    note = progress or (lambda _msg: None)
    rows: list[ResultRow] = []
    C = data.n_classes

    def row(family: str, method: str, variant: str | list[str], scores: np.ndarray, y: np.ndarray,
            threshold: float, **extra: object) -> None:
        m = evaluate(y, scores, threshold, fprs, bootstrap, seed)
        rows.append(
            ResultRow(
                family=family, method=method, variant=variant, auc=m.auc, balanced_accuracy=m.balanced_accuracy,
                tpr_at_fpr=m.tpr_at_fpr, auc_ci=list(m.auc_ci), n_members=m.n_members, n_nonmembers=m.n_nonmembers,
                fpr_resolvable=m.fpr_resolvable, threshold=m.threshold, n_bootstrap=m.n_bootstrap, roc=m.roc, **extra,
            )
        )

    def learned(family: str, method: str, variant: str | list[str], model: str, Xs: np.ndarray, ys: np.ndarray,
                Xt: np.ndarray, yt: np.ndarray, **extra: object) -> LearnedAttack:
        note(f"{family} {method} {variant}")
        est = LearnedAttack(model, seed=seed).fit(Xs, ys)
        row(family, method, variant, est.score(Xt), yt, est.threshold_, selected=est.selected_,
            shadow_val_auc=est.val_auc_, n_shadow_examples=len(ys), **extra)
        return est

    # ---------------------------------------------------------------- NR and baselines
    for v in (variants if nr_variants is None else [x for x in variants if x in nr_variants]):
        S, T = data.shadow[v], data.target[v]
        if "NR" in families:
            Ps, Pt = S.p, T.p
            for feat, with_label in (("posterior", False), ("posterior-label", True)):
                Xs = sig.sorted_features(Ps, labels=S.labels if with_label else None)
                Xt = sig.sorted_features(Pt, labels=T.labels if with_label else None)
                for model in ("lr", "rf"):
                    learned("NR", f"{feat}-{model}", v, model, Xs, S.y, Xt, T.y)
            for name, fn in (("entropy", lambda s: sig.entropy(s.log_p)),
                             ("mentropy", lambda s: sig.modified_entropy(s.log_p, s.labels))):
                note(f"NR {name}-threshold {v}")
                th = ThresholdAttack(C).fit(fn(S), S.labels, S.y)
                row("NR", f"{name}-threshold", v, th.score(fn(T), T.labels), T.y, th.threshold_,
                    selected=th.selected_, n_shadow_examples=len(S.y))
        ref = data.reference[v]
        mode = "per-example" if ref is not None else "per-class"
        if "lira" in baselines:
            note(f"baseline lira {v}")
            lira = LiRAOffline(C).fit(sig.scaled_logit(S.log_p, S.labels), S.labels, S.y)
            ref_phi = None if ref is None else np.stack([sig.scaled_logit(r, T.labels) for r in ref])
            row("baseline", "lira-offline", v, lira.score(sig.scaled_logit(T.log_p, T.labels), T.labels, ref_phi),
                T.y, lira.threshold_, reference=mode, n_reference_models=splits.n_shadows,
                n_shadow_examples=len(S.y))
        if "rmia" in baselines:
            note(f"baseline rmia {v}")
            rows_s, rows_t = np.arange(len(S.y)), np.arange(len(T.y))
            rmia = RMIAOffline(C).fit(S.p[rows_s, S.labels], S.labels, S.y)
            p_y = T.p[rows_t, T.labels]
            ref_py = None if ref is None else np.exp(ref[:, rows_t, T.labels])
            # population: every example the target was queried on (membership unknown to the attacker)
            scores = rmia.score(p_y, T.labels, p_y, T.labels, ref_py, ref_py)
            row("baseline", "rmia-offline", v, scores, T.y, rmia.threshold_, reference=mode,
                n_reference_models=splits.n_shadows, n_population=len(p_y), n_shadow_examples=len(S.y))

    # ---------------------------------------------------------------- SR
    sr2: dict[str, tuple[LearnedAttack, np.ndarray, np.ndarray]] = {}  # variant -> (best SR2 model, Xs, Xt)
    need_sr2 = has_original and "MR" in families and len(compressed) >= 2
    if has_original and ("SR" in families or need_sr2):
        O_s, O_t = data.shadow[original], data.target[original]
        for v in compressed:
            S, T = data.shadow[v], data.target[v]
            for feat, with_label in (("sr1", False), ("sr2", True)):
                if "SR" not in families and feat == "sr1":
                    continue
                Xs = sig.sorted_features(O_s.p, [S.p], S.labels if with_label else None)
                Xt = sig.sorted_features(O_t.p, [T.p], T.labels if with_label else None)
                for model in ("lr", "rf", "mlp"):
                    if "SR" in families:
                        est = learned("SR", f"{feat}-{model}", v, model, Xs, S.y, Xt, T.y, original=original)
                    else:
                        note(f"SR {feat}-{model} {v} (for MR)")
                        est = LearnedAttack(model, seed=seed).fit(Xs, S.y)
                    if feat == "sr2" and (v not in sr2 or est.val_auc_ > sr2[v][0].val_auc_):
                        sr2[v] = (est, Xs, Xt)

    # ---------------------------------------------------------------- MR
    if "MR" in families and len(compressed) >= 2:
        y_s, y_t = data.shadow[compressed[0]].y, data.target[compressed[0]].y
        loss_s = np.stack([sig.loss(data.shadow[v].log_p, data.shadow[v].labels) for v in compressed], axis=1)
        loss_t = np.stack([sig.loss(data.target[v].log_p, data.target[v].labels) for v in compressed], axis=1)
        if has_original:
            note(f"MR fusion over {len(compressed)} variants")
            A_s = np.stack([sr2[v][0].out_of_sample_scores(sr2[v][1], y_s) for v in compressed], axis=1)
            A_t = np.stack([sr2[v][0].score(sr2[v][2]) for v in compressed], axis=1)
            fu = FusionAttack(seed=seed).fit(A_s, loss_s, y_s)
            row("MR", "mr-fusion", list(compressed), fu.score(A_t, loss_t), y_t, fu.threshold_,
                selected={
                    **fu.selected_,
                    "sr2_models": {v: {"model": sr2[v][0].model, **sr2[v][0].selected_} for v in compressed},
                },
                shadow_val_auc=fu.val_auc_, n_shadow_examples=len(y_s), original=original)
        note(f"MR without original over {len(compressed)} variants")
        A_s = np.concatenate([sig.sorted_features(data.shadow[v].p) for v in compressed], axis=1)
        A_t = np.concatenate([sig.sorted_features(data.target[v].p) for v in compressed], axis=1)
        fu = FusionAttack(seed=seed).fit(A_s, loss_s, y_s)
        row("MR", "mr-no-original", list(compressed), fu.score(A_t, loss_t), y_t, fu.threshold_,
            selected=fu.selected_, shadow_val_auc=fu.val_auc_, n_shadow_examples=len(y_s), original=None)
    return rows
