"""MR: several compressed variants of one model together (arXiv 2507.16872), once per group of >= 2 of them.

Rows ``mr-fusion`` (a two-branch network over SR's best sr2 scores and the variants' losses; needs the original
and SR's models, :attr:`FitContext.best_sr2`) and ``mr-no-original`` (sorted posteriors and losses only)."""

from __future__ import annotations

import numpy as np

from compleak import signals as sig
from compleak.attacks import FusionAttack
from compleak.fitters.base import FitContext, Fitter, TargetView
from compleak.fitters.sr import SRFitter


def _target_losses(compressed: list[str], t: TargetView) -> np.ndarray:
    """The target's loss per compressed variant, float64 [n, V]."""
    return np.stack([sig.loss(t.side(v).log_p, t.side(v).labels) for v in compressed], axis=1)


class MRFitter(Fitter):
    """MR rows over the group's compressed variants."""

    family = "MR"

    def wanted(self, ctx: FitContext) -> bool:
        return ctx.wants(self.family) and len(ctx.compressed) >= 2

    def needs(self, ctx: FitContext) -> tuple[str, ...]:
        return (SRFitter.family,) if ctx.has_original else ()  # mr-fusion reads SR's best sr2 models

    def fit_group(self, ctx: FitContext) -> None:
        compressed = ctx.compressed
        y_s = ctx.shadow_side(compressed[0]).y
        loss_s = np.stack([sig.loss(ctx.shadow_side(v).log_p, ctx.shadow_side(v).labels) for v in compressed],
                          axis=1)
        if ctx.has_original:
            self._fusion(ctx, compressed, y_s, loss_s)
        ctx.note(f"MR without original over {len(compressed)} variants")
        A_s = np.concatenate([sig.sorted_features(ctx.shadow_side(v).p) for v in compressed], axis=1)
        fu = FusionAttack(seed=ctx.seed).fit(A_s, loss_s, y_s)

        def scorer(t: TargetView) -> tuple[np.ndarray, None]:
            A_t = np.concatenate([sig.sorted_features(t.side(v).p) for v in compressed], axis=1)
            return fu.score(A_t, _target_losses(compressed, t)), None

        ctx.add(self.family, "mr-no-original", list(compressed), scorer, fu.threshold_, selected=fu.selected_,
                shadow_val_auc=fu.val_auc_, n_shadow_examples=len(y_s), original=None,
                threshold_source="shadow validation")

    def _fusion(self, ctx: FitContext, compressed: list[str], y_s: np.ndarray, loss_s: np.ndarray) -> None:
        """``mr-fusion``: SR's best sr2 model per variant, scored out of sample on the shadow side [n, V]."""
        ctx.note(f"MR fusion over {len(compressed)} variants")
        best = [ctx.best_sr2[v] for v in compressed]
        A_s = np.stack([b.model.out_of_sample_scores(b.shadow_X, y_s) for b in best], axis=1)
        fu = FusionAttack(seed=ctx.seed).fit(A_s, loss_s, y_s)
        sr2 = [(b.model, b.target_X) for b in best]  # not the shadow features: the scorer travels with the fit

        def scorer(t: TargetView) -> tuple[np.ndarray, None]:
            A_t = np.stack([model.score(target_X(t)) for model, target_X in sr2], axis=1)
            return fu.score(A_t, _target_losses(compressed, t)), None

        sr2_models = {v: {"model": b.model.model, **b.model.selected_} for v, b in zip(compressed, best)}
        ctx.add(self.family, "mr-fusion", list(compressed), scorer, fu.threshold_,
                selected={**fu.selected_, "sr2_models": sr2_models},
                shadow_val_auc=fu.val_auc_, n_shadow_examples=len(y_s), original=ctx.original,
                threshold_source="shadow validation")
