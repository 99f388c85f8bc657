"""SR: the original and one compressed variant side by side (arXiv 2507.16872), per compressed variant.

Rows ``sr1-*`` (the original's posterior sorted ascending, the compressed posterior permuted the same way) and
``sr2-*`` (and the one-hot label permuted the same way) x LR / RF / MLP, when the group has its original.

``sr1-lr``, ``sr1-rf``, ``sr2-lr``, ``sr2-rf`` are the paper's CompLeakSR1 / CompLeakSR2 and are fitted exactly as
the authors' code does (:class:`~compleak.attacks.AuthorsAttack`: all shadow examples, members first, fixed
hyper-parameters). The authors have no MLP: ``sr1-mlp`` / ``sr2-mlp`` are this project's variant, with model
selection (:class:`~compleak.attacks.LearnedAttack`).

MR's fusion reads, per compressed variant, the sr2 model with the best shadow-validation AUC among the
model-selected LR / RF / MLP (:attr:`FitContext.best_sr2`). Those LR / RF models are fitted for MR only (when MR
runs; no row of their own), so MR's inputs do not depend on the paper rows' procedure; when only MR asks for SR,
the sr2 models are fitted without rows."""

from __future__ import annotations

import numpy as np

from compleak import signals as sig
from compleak.attacks import AuthorsAttack, LearnedAttack
from compleak.fitters.base import FitContext, Fitter, SR2Choice, TargetFeatures, TargetView, authors_scorer

#: the paper's attack models (the authors' ``LR`` / ``RF``): these rows use the authors' procedure
AUTHORS_MODELS: frozenset[str] = frozenset({"lr", "rf"})


def _pair_features(original: str, v: str, with_label: bool) -> TargetFeatures:
    """The target's SR features of variant ``v`` [n, d]: sorted posteriors of the original and ``v``."""
    def features(t: TargetView) -> np.ndarray:
        T = t.side(v)
        return sig.sorted_features(t.side(original).p, [T.p], T.labels if with_label else None)

    return features


def _mr_reads_best_sr2(ctx: FitContext) -> bool:
    """Whether MR runs on this group and so reads :attr:`FitContext.best_sr2` (the table's MR fitter decides;
    imported here, not at the top: ``mr.py`` imports this module)."""
    from compleak.fitters import FITTERS

    mr = FITTERS.get("MR")
    return mr is not None and mr.wanted(ctx)


class SRFitter(Fitter):
    """SR rows of each compressed variant against the original; the model-selected sr2 models for MR."""

    family = "SR"

    def wanted(self, ctx: FitContext) -> bool:
        return ctx.has_original and ctx.wants(self.family)

    def fit_group(self, ctx: FitContext) -> None:
        if not ctx.has_original:
            return
        rows = ctx.wants(self.family)
        for_mr = _mr_reads_best_sr2(ctx)
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
                    est: LearnedAttack | None = None
                    if model in AUTHORS_MODELS:
                        if rows:
                            self._authors_row(ctx, method, v, model, Xs, S.y, tx)
                        if feat == "sr2" and for_mr:  # MR's candidate: the model-selected fit, no row
                            est = ctx.fit_learned(f"{self.family} {method} {v} (model-selected, for MR)", model, Xs,
                                                  S.y)
                    elif rows:
                        est = ctx.learned(self.family, method, v, model, Xs, S.y, tx, original=original)
                    elif feat == "sr2":  # for MR only
                        est = ctx.fit_learned(f"{self.family} {method} {v}", model, Xs, S.y)
                    if feat == "sr2" and for_mr and est is not None:
                        best = ctx.best_sr2.get(v)
                        if best is None or est.val_auc_ > best.model.val_auc_:
                            ctx.best_sr2[v] = SR2Choice(est, Xs, tx)

    def _authors_row(self, ctx: FitContext, method: str, v: str, model: str, Xs: np.ndarray, ys: np.ndarray,
                     tx: TargetFeatures) -> None:
        """The paper's row ``method`` (CompLeakSR1 / SR2 with the authors' LR / RF) of variant ``v``."""
        ctx.note(f"{self.family} {method} {v}")
        est = AuthorsAttack(model).fit(Xs, ys)
        ctx.add(self.family, method, v, authors_scorer(est, tx), est.threshold_, selected=est.selected_,
                n_shadow_examples=len(ys), threshold_source="the model's predict (p > 0.5), as the authors",
                procedure="CompLeak authors (all shadow examples, no selection)", original=ctx.original)
