"""SR: the original and one compressed variant side by side (arXiv 2507.16872), per compressed variant.

Rows ``sr1-*`` (sorted posteriors of both) and ``sr2-*`` (with the label) x LR / RF / MLP, when the group has its
original. The best sr2 model of each variant (by validation AUC) goes to :attr:`FitContext.best_sr2` for MR's
fusion; when only MR asks for it, the sr2 models are fitted without rows."""

from __future__ import annotations

import numpy as np

from compleak import signals as sig
from compleak.fitters.base import FitContext, Fitter, SR2Choice, TargetFeatures, TargetView


def _pair_features(original: str, v: str, with_label: bool) -> TargetFeatures:
    """The target's SR features of variant ``v`` [n, d]: sorted posteriors of the original and ``v``."""
    def features(t: TargetView) -> np.ndarray:
        T = t.side(v)
        return sig.sorted_features(t.side(original).p, [T.p], T.labels if with_label else None)

    return features


class SRFitter(Fitter):
    """SR rows of each compressed variant against the original; SR's best sr2 models for MR."""

    family = "SR"

    def wanted(self, ctx: FitContext) -> bool:
        return ctx.has_original and ctx.wants(self.family)

    def fit_group(self, ctx: FitContext) -> None:
        if not ctx.has_original:
            return
        rows = ctx.wants(self.family)
        original = ctx.original
        O_s = ctx.shadow_side(original)
        for v in ctx.compressed:
            S = ctx.shadow_side(v)
            for feat, with_label in (("sr1", False), ("sr2", True)):
                if not rows and feat == "sr1":
                    continue
                Xs = sig.sorted_features(O_s.p, [S.p], S.labels if with_label else None)
                tx = _pair_features(original, v, with_label)
                for model in ("lr", "rf", "mlp"):
                    method = f"{feat}-{model}"
                    if rows:
                        est = ctx.learned(self.family, method, v, model, Xs, S.y, tx, original=original)
                    else:  # for MR only
                        est = ctx.fit_learned(f"{self.family} {method} {v}", model, Xs, S.y)
                    best = ctx.best_sr2.get(v)
                    if feat == "sr2" and (best is None or est.val_auc_ > best.model.val_auc_):
                        ctx.best_sr2[v] = SR2Choice(est, Xs, tx)
