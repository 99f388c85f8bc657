"""The reference-model baselines, LiRA and RMIA (rows of family ``baseline``), per NR variant.

When every reference model was queried on the candidates (and the population), they run per example: online when
some candidates are IN for some references and OUT for others, always offline; the threshold comes from reference 0
playing the target against the others (K >= 2). Otherwise the per-class fallbacks run, with a note."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from compleak import signals as sig
from compleak.baselines import RMIA, LiRA, LiRAOffline, RMIAOffline, calibrate_rmia_a
from compleak.fitters.base import FitContext, Fitter, TargetView
from compleak.fitters.inputs import Classes, ShadowSide, covers, source_name
from compleak.metrics import best_threshold
from rundir import ContractError, OutputBatch, Splits
from rundir.vocabulary import BASELINE


def ref_masks(splits: Splits, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(IN, OUT) bool [K, len(ids)]: reference k trained on the id / never saw it (not in its hold-out either)."""
    ids = np.asarray(ids, np.int64)
    ins = np.array([np.isin(ids, a) for a in splits.shadow_in], dtype=bool).reshape(splits.n_shadows, len(ids))
    held = np.zeros_like(ins)
    for k, v in enumerate(getattr(splits, "shadow_val", []) or []):
        held[k] = np.isin(ids, np.asarray(v, np.int64))
    return ins, ~ins & ~held


def ref_signals(batches: Sequence[OutputBatch], ids: np.ndarray, labels: np.ndarray, classes: Classes,
                v: str) -> tuple[np.ndarray, np.ndarray]:
    """(scaled logit, true-class probability) float64 [K, len(ids)] of every reference, one reference at a time."""
    phi = np.empty((len(batches), len(ids)))
    py = np.empty((len(batches), len(ids)))
    rows = np.arange(len(ids))
    for k, b in enumerate(batches):
        lp = classes.log_p(b, ids, f"shadow {k} outputs of '{v}'")
        phi[k] = sig.scaled_logit(lp, labels)
        py[k] = np.exp(lp[rows, labels])
    return phi, py


@dataclass
class References:
    """Every reference model of one variant on the candidates ``x`` [n] and the population ``z`` [m] (the
    candidates when there is none): signals float64 [K, ·], IN / OUT masks bool [K, ·]."""

    phi_x: np.ndarray
    py_x: np.ndarray
    in_x: np.ndarray
    out_x: np.ndarray
    py_z: np.ndarray
    in_z: np.ndarray
    out_z: np.ndarray
    use_pop: bool

    @classmethod
    def read(cls, ctx: FitContext, v: str, batches: Sequence[OutputBatch]) -> References:
        ctx.note(f"baseline references {v}")
        phi_x, py_x = ref_signals(batches, ctx.candidates, ctx.candidate_labels, ctx.classes, v)
        in_x, out_x = ref_masks(ctx.splits, ctx.candidates)
        pop = ctx.pop_ids
        if len(pop) == 0:
            return cls(phi_x, py_x, in_x, out_x, py_x, in_x, out_x, False)
        missing = [b for b in batches if not covers(b, pop)]
        if missing:
            raise ContractError(f"{source_name(missing[0], v)}: the reference model was not queried on the "
                                "population ids of splits.npz (RMIA's z set); re-run collect")
        _, py_z = ref_signals(batches, pop, ctx.pop_labels, ctx.classes, v)
        in_z, out_z = ref_masks(ctx.splits, pop)
        return cls(phi_x, py_x, in_x, out_x, py_z, in_z, out_z, True)

    @property
    def k(self) -> int:
        return len(self.phi_x)

    @property
    def modes(self) -> list[str]:
        """``online`` (when some candidate is IN for some reference and OUT for another) and ``offline``."""
        online = self.k >= 2 and bool(np.any(self.in_x.any(axis=0) & self.out_x.any(axis=0)))
        return (["online"] if online else []) + ["offline"]

    @property
    def pseudo(self) -> bool:
        """Whether reference 0 can play the target (K >= 2 and it has IN and OUT candidates)."""
        return self.k >= 2 and bool(np.any(self.in_x[0])) and bool(np.any(self.out_x[0]))

    @property
    def others(self) -> list[int]:
        return list(range(1, self.k))

    def pseudo_threshold(self, scores0: np.ndarray) -> float:
        """The threshold on reference 0's scores [n] that best separates its IN from its OUT candidates."""
        keep0 = self.in_x[0] | self.out_x[0]
        return best_threshold(self.in_x[0][keep0].astype(np.int64), scores0[keep0])


def _lira(ctx: FitContext, v: str, S: ShadowSide, refs: References, per_class: LiRAOffline) -> None:
    suffix = "-1ref" if ctx.n_refs == 1 else ""
    o = refs.others
    for mode in refs.modes:
        ctx.note(f"baseline lira-{mode} {v}")
        is_on = mode == "online"
        att = LiRA(online=is_on).fit(refs.phi_x, refs.in_x, refs.out_x, fallback_sd=per_class.sigma_)
        if refs.pseudo:
            sub = LiRA(online=is_on, fixed_variance=att.variance_ == "global").fit(
                refs.phi_x[o], refs.in_x[o], refs.out_x[o], fallback_sd=per_class.sigma_)
            thr, src = refs.pseudo_threshold(sub.score(refs.phi_x[0])), "reference 0 as pseudo-target"
        elif is_on:
            thr, src = 0.0, "likelihood ratio 0"
        else:
            thr, src = per_class.threshold_, "shadow, per class"

        def scorer(t: TargetView, att: LiRA = att) -> tuple[np.ndarray, None]:
            return att.score(sig.scaled_logit(t.side(v).log_p, t.side(v).labels)), None

        ctx.add(BASELINE, f"lira-{mode}{suffix if not is_on else ''}", v, scorer, thr, reference="per-example",
                variance=att.variance_, threshold_source=src, n_shadow_examples=len(S.y),
                n_reference_models=ctx.n_refs)


def _rmia(ctx: FitContext, v: str, S: ShadowSide, refs: References, per_class: LiRAOffline) -> None:
    gamma = ctx.config.rmia_gamma
    suffix = "-1ref" if ctx.n_refs == 1 else ""
    use_pop = refs.use_pop  # (the scorer keeps this flag, not the reference signals)
    zsuffix = "" if use_pop else "-cand-z"
    r = refs
    o = r.others
    for mode in r.modes:
        ctx.note(f"baseline rmia-{mode} {v}")
        is_on = mode == "online"
        a, a_src = 0.5, "default (cannot calibrate: no reference has both IN and OUT candidates)"
        if not is_on:
            cal = calibrate_rmia_a(r.py_x, r.in_x, r.out_x, r.py_z, r.in_z, r.out_z, gamma)
            if cal is not None:
                a, a_src = cal[0], f"reference 0 as pseudo-target (AUC {cal[1]:.4f})"
        att = RMIA(online=is_on, a=a, gamma=gamma).fit(r.py_x, r.in_x, r.out_x, r.py_z, r.in_z, r.out_z)
        if r.pseudo:
            sub = RMIA(online=is_on, a=a, gamma=gamma).fit(
                r.py_x[o], r.in_x[o], r.out_x[o], r.py_z[o], r.in_z[o], r.out_z[o])
            thr, src = r.pseudo_threshold(sub.score(r.py_x[0], r.py_z[0])), "reference 0 as pseudo-target"
        else:
            rm = RMIAOffline(ctx.n_classes, a=a, gamma=gamma).fit(S.p_y(), S.labels, S.y)
            thr, src = rm.threshold_, "shadow, per class"

        def scorer(t: TargetView, att: RMIA = att) -> tuple[np.ndarray, None]:
            T = t.side(v)
            pz = t.pop_p_y(v) if use_pop else T.p_y()
            return att.score(T.p_y(), pz), None

        extra: dict[str, Any] = {"gamma": gamma}
        if not is_on:
            extra.update(a=a, a_source=a_src)
        ctx.add(BASELINE, f"rmia-{mode}{suffix if not is_on else ''}{zsuffix}", v, scorer, thr,
                reference="per-example", n_population=int(len(ctx.pop_ids) if use_pop else len(ctx.candidates)),
                population="splits.population" if use_pop else "candidates", threshold_source=src,
                n_shadow_examples=len(S.y), **extra, n_reference_models=ctx.n_refs)


def _lira_per_class(ctx: FitContext, v: str, S: ShadowSide, per_class: LiRAOffline) -> None:
    def scorer(t: TargetView) -> tuple[np.ndarray, None]:
        T = t.side(v)
        return per_class.score(sig.scaled_logit(T.log_p, T.labels), T.labels), None

    ctx.add(BASELINE, "lira-offline-per-class", v, scorer, per_class.threshold_, reference="per-class",
            n_shadow_examples=len(S.y), threshold_source="shadow, per class", n_reference_models=ctx.n_refs)


def _rmia_per_class(ctx: FitContext, v: str, S: ShadowSide, per_class: LiRAOffline) -> None:
    rm = RMIAOffline(ctx.n_classes).fit(S.p_y(), S.labels, S.y)

    def scorer(t: TargetView) -> tuple[np.ndarray, None]:
        T = t.side(v)
        return rm.score(T.p_y(), T.labels, T.p_y(), T.labels), None

    ctx.add(BASELINE, "rmia-offline-per-class", v, scorer, rm.threshold_, reference="per-class",
            n_population=len(ctx.candidates), population="candidates", n_shadow_examples=len(S.y),
            threshold_source="shadow, per class", n_reference_models=ctx.n_refs)


PerExample = Callable[[FitContext, str, ShadowSide, References, LiRAOffline], None]
PerClass = Callable[[FitContext, str, ShadowSide, LiRAOffline], None]
#: baseline name (``rundir.vocabulary.BASELINES``) -> (its per-example rows, its per-class fallback), in row order
METHODS: dict[str, tuple[PerExample, PerClass]] = {
    "lira": (_lira, _lira_per_class),
    "rmia": (_rmia, _rmia_per_class),
}


class BaselineFitter(Fitter):
    """LiRA and RMIA rows of each NR variant (``config.baselines`` turns them on)."""

    family = BASELINE

    def wanted(self, ctx: FitContext) -> bool:
        return bool(ctx.config.baselines)

    def fit_variant(self, ctx: FitContext, variant: str) -> None:
        v = variant
        batches = ctx.shadow_outputs[v]
        per_example = all(covers(b, ctx.candidates) for b in batches)
        S = ctx.shadow_side(v)
        # per-class statistics of the learned references' own examples: the 1-reference spread, the fallback
        per_class = LiRAOffline(ctx.n_classes).fit(sig.scaled_logit(S.log_p, S.labels), S.labels, S.y)
        asked = [fits for name, fits in METHODS.items() if name in ctx.config.baselines]
        if not per_example:
            for _, fallback in asked:
                fallback(ctx, v, S, per_class)
            ctx.skip(f"baselines {v}: reference models were not queried on the candidates; per-class fallbacks")
            return
        refs = References.read(ctx, v, batches)
        for fit, _ in asked:
            fit(ctx, v, S, refs, per_class)
