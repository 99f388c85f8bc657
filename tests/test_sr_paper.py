"""The paper's SR rows compute exactly the CompLeak authors' procedure (CompLeakSR1 / CompLeakSR2 with LR / RF).

The reference below is written from the authors' code with NumPy and scikit-learn directly (none of this project's
attack or signal classes): hhhh384/CompLeak-Deep-Learning-Model-Compression-Exacerbates-Privacy-Leakage,

- ``CompLeak/attack/attackers.py`` ``MiaAttack._prepare``: each shadow model's original and compressed softmax
  posteriors on its members and non-members, concatenated over the shadow models; ``MiaAttack.feature_prepare_SR``:
  the shadow table holds every member (label 1), then every non-member (label 0), each row the original posterior,
  the compressed posterior and the one-hot label; the victim table likewise (members, then non-members);
- ``CompLeak/attack/attack_utils.py`` ``ConstructFeature.obtain_feature``: per row, ``np.argsort`` of the ORIGINAL
  posterior; CompLeakSR1 = (original[idx], compressed[idx]), CompLeakSR2 = (original[idx], compressed[idx],
  one-hot[idx]); ``Attack.train_attack_model`` trains on the whole shadow table, ``test_attack_model`` scores the
  victim table;
- ``CompLeak/attack/attack_model.py``: ``LR`` = ``StandardScaler`` fitted on the shadow features +
  ``LogisticRegression(random_state=0, solver='lbfgs', max_iter=400)``, AUC on ``predict_proba[:, 1]`` of the
  target scaled with the SHADOW scaler; ``RF`` = ``RandomForestClassifier(random_state=0, n_estimators=500,
  min_samples_leaf=30)`` unscaled; the accuracy uses the model's ``predict``.

Rows ``sr1-lr`` / ``sr1-rf`` / ``sr2-lr`` / ``sr2-rf`` must give these scores, AUCs and decisions; the procedure
they used before (``LearnedAttack``: selection on a 70/30 shadow split) gives different scores, so this file fails
on it. The MLP rows (the authors have none) and MR (which reads the model-selected sr2 models) keep their procedure.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from compleak.attacks import LearnedAttack
from compleak.engine import run_attacks
from compleak.signals import log_posterior
from compleak.synthetic import VariantSpec, make_splits, synthetic_outputs

N_CLASSES, SEED = 4, 9
SPLITS = make_splits((300, 300), (300, 300), n_shadows=2, n_classes=N_CLASSES, seed=SEED)
SPECS = {"original": VariantSpec(1.0, 0.0, noise=0.5), "int8": VariantSpec(1.8, 0.0, noise=0.3),
         "prune": VariantSpec(1.4, -0.3, noise=0.4)}
TARGET, SHADOW = synthetic_outputs(SPLITS, SPECS, n_classes=N_CLASSES, seed=SEED)
COMPRESSED = ("int8", "prune")
PAPER_ROWS = ("sr1-lr", "sr1-rf", "sr2-lr", "sr2-rf")
Y_TARGET = np.r_[np.ones(len(SPLITS.target_in)), np.zeros(len(SPLITS.target_out))].astype(int)


def _softmax(z: np.ndarray) -> np.ndarray:
    """torch's ``F.softmax`` (the authors' ``predict_target_sensitivity``), in float64."""
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _harness_posterior(values: np.ndarray) -> np.ndarray:
    """The posterior the harness's features are built from (``exp`` of its log-softmax), for the exact check."""
    return np.exp(log_posterior(values, "logits"))


def _obtain_feature(orig: np.ndarray, comp: np.ndarray, labels: np.ndarray, with_label: bool) -> np.ndarray:
    """``ConstructFeature.obtain_feature`` for CompLeakSR1 / CompLeakSR2, row by row as the authors write it."""
    onehot = np.eye(N_CLASSES)[labels]
    rows = []
    for i in range(len(orig)):
        idx = np.argsort(orig[i])  # the ORIGINAL's order, ascending; the other parts follow it
        parts = [orig[i, idx], comp[i, idx]] + ([onehot[i, idx]] if with_label else [])
        rows.append(np.concatenate(parts))
    return np.array(rows)


def _authors_tables(v: str, with_label: bool, posterior=_softmax) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """(shadow features, shadow membership, target features) laid out as the authors' code does."""
    K = SPLITS.n_shadows

    def table(ids_per_k: list[np.ndarray]) -> np.ndarray:
        orig = np.concatenate([posterior(SHADOW["original"][k].rows(ids_per_k[k])) for k in range(K)])
        comp = np.concatenate([posterior(SHADOW[v][k].rows(ids_per_k[k])) for k in range(K)])
        labels = np.concatenate([SPLITS.labels[ids_per_k[k]] for k in range(K)])
        return _obtain_feature(orig, comp, labels, with_label)

    X_in, X_out = table(list(SPLITS.shadow_in)), table(list(SPLITS.shadow_out))
    X = np.concatenate([X_in, X_out])  # every member, then every non-member
    y = np.r_[np.ones(len(X_in)), np.zeros(len(X_out))].astype(int)
    cand = SPLITS.candidates
    Xt = _obtain_feature(posterior(TARGET["original"].rows(cand)), posterior(TARGET[v].rows(cand)),
                         SPLITS.labels[cand], with_label)
    return X, y, Xt


@cache
def _authors(method: str, v: str, posterior=_softmax) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """The authors' (scores, decisions) of the target candidates for ``method`` on variant ``v``."""
    X, y, Xt = _authors_tables(v, method.startswith("sr2"), posterior)
    if method.endswith("-lr"):
        scaler = StandardScaler().fit(X)  # LR.train_model
        model = LogisticRegression(random_state=0, solver="lbfgs", max_iter=400).fit(scaler.transform(X), y)
        Xt = scaler.transform(Xt)  # LR.test_model_auc: the shadow scaler
    else:
        model = RandomForestClassifier(random_state=0, n_estimators=500, min_samples_leaf=30).fit(X, y)
    return model.predict_proba(Xt)[:, 1], model.predict(Xt) == 1


def _harness_order_tables(v: str, with_label: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same features in the harness's pooled order (per reference its members, then its non-members), which
    ``LearnedAttack``'s split indexes: what the model-selected rows (MLP, MR's sr2 models) train on."""
    K = SPLITS.n_shadows
    ids = [np.concatenate([SPLITS.shadow_in[k], SPLITS.shadow_out[k]]) for k in range(K)]
    orig = np.concatenate([_harness_posterior(SHADOW["original"][k].rows(ids[k])) for k in range(K)])
    comp = np.concatenate([_harness_posterior(SHADOW[v][k].rows(ids[k])) for k in range(K)])
    X = _obtain_feature(orig, comp, SPLITS.labels[np.concatenate(ids)], with_label)
    y = np.concatenate([np.r_[np.ones(len(SPLITS.shadow_in[k])), np.zeros(len(SPLITS.shadow_out[k]))]
                        for k in range(K)]).astype(int)
    cand = SPLITS.candidates
    Xt = _obtain_feature(_harness_posterior(TARGET["original"].rows(cand)), _harness_posterior(TARGET[v].rows(cand)),
                         SPLITS.labels[cand], with_label)
    return X, y, Xt


@pytest.fixture(scope="module")
def sr():  # type: ignore[no-untyped-def]
    rows, scores = run_attacks(SPLITS, TARGET, SHADOW, families=["SR", "MR"], baselines=[], bootstrap=0, seed=0,
                               return_scores=True)
    return {(r.method, r.variant if isinstance(r.variant, str) else tuple(r.variant)): r for r in rows}, scores


def test_no_ties_in_the_original_posterior() -> None:
    # the sort order of each row is then unambiguous (np.argsort's default and the harness's stable sort agree)
    for b in [TARGET["original"], *SHADOW["original"]]:
        p = np.sort(_softmax(b.values), axis=1)
        assert np.all(np.diff(p, axis=1) > 0)


@pytest.mark.parametrize("v", COMPRESSED)
@pytest.mark.parametrize("method", PAPER_ROWS)
def test_row_scores_are_the_authors(sr, method: str, v: str) -> None:  # type: ignore[no-untyped-def]
    by, scores = sr
    row = by[(method, v)]
    mine = scores[row.model_extra["score_key"]]
    # bit for bit on the harness's posterior (the procedure is the same, operation for operation) ...
    ref_exact, _ = _authors(method, v, _harness_posterior)
    assert np.array_equal(mine, ref_exact), np.max(np.abs(mine - ref_exact))
    # ... and to rounding on a posterior computed independently, as torch's softmax would
    ref, dec = _authors(method, v)
    assert np.allclose(mine, ref, rtol=0, atol=1e-12)
    assert row.auc == pytest.approx(roc_auc_score(Y_TARGET, ref), abs=1e-12)
    bal = 0.5 * (np.mean(dec[Y_TARGET == 1]) + np.mean(~dec[Y_TARGET == 0]))  # the model's own predict
    assert row.balanced_accuracy == pytest.approx(bal, abs=1e-12)
    extra = row.model_extra
    assert extra["threshold"] == 0.5
    assert extra["threshold_source"] == "the model's predict (p > 0.5), as the authors"
    assert "shadow_val_auc" not in extra  # nothing held out, nothing selected
    assert extra["n_shadow_examples"] == sum(len(a) + len(b) for a, b in zip(SPLITS.shadow_in, SPLITS.shadow_out))
    assert extra["original"] == "original"


@pytest.mark.parametrize("method", PAPER_ROWS)
def test_the_model_selected_procedure_is_a_different_attack(sr, method: str) -> None:  # type: ignore[no-untyped-def]
    # what the rows computed before: LearnedAttack on the harness-ordered table (70/30 shadow split, hyper-parameters
    # by validation AUC). Its scores differ, so test_row_scores_are_the_authors fails on it.
    v = "int8"
    X, y, Xt = _harness_order_tables(v, method.startswith("sr2"))
    old = LearnedAttack(method.rsplit("-", 1)[1], seed=0).fit(X, y).score(Xt)
    ref, _ = _authors(method, v, _harness_posterior)
    assert not np.allclose(old, ref, rtol=0, atol=1e-6)
    by, scores = sr
    assert not np.allclose(scores[by[(method, v)].model_extra["score_key"]], old, rtol=0, atol=1e-6)


@pytest.mark.parametrize("v", COMPRESSED)
@pytest.mark.parametrize("feat", ("sr1", "sr2"))
def test_mlp_rows_keep_the_model_selected_procedure(sr, feat: str, v: str) -> None:  # type: ignore[no-untyped-def]
    # the authors have no MLP: sr*-mlp are this project's rows and keep LearnedAttack, unchanged
    by, scores = sr
    X, y, Xt = _harness_order_tables(v, feat == "sr2")
    est = LearnedAttack("mlp", seed=0).fit(X, y)
    row = by[(f"{feat}-mlp", v)]
    assert np.array_equal(scores[row.model_extra["score_key"]], est.score(Xt))
    assert row.model_extra["shadow_val_auc"] == est.val_auc_
    assert row.model_extra["threshold_source"] == "shadow validation"
    assert "procedure" not in row.model_extra


def test_mr_reads_the_model_selected_sr2_models(sr) -> None:  # type: ignore[no-untyped-def]
    # MR's fusion takes, per variant, the model-selected sr2 LR / RF / MLP with the best validation AUC, never the
    # paper rows' fixed models; and MR is the same whether SR's rows are asked for or not
    by, scores = sr
    mr = by[("mr-fusion", COMPRESSED)]
    for v in COMPRESSED:
        X, y, _ = _harness_order_tables(v, True)
        fits = {m: LearnedAttack(m, seed=0).fit(X, y) for m in ("lr", "rf", "mlp")}
        best = max(fits, key=lambda m: fits[m].val_auc_)  # first of equals: lr, rf, mlp, as the fitter
        assert mr.model_extra["selected"]["sr2_models"][v] == {"model": best, **fits[best].selected_}
    rows_mr, scores_mr = run_attacks(SPLITS, TARGET, SHADOW, families=["MR"], baselines=[], bootstrap=0, seed=0,
                                     return_scores=True)
    alone = {r.method: r for r in rows_mr}["mr-fusion"]
    key = mr.model_extra["score_key"]
    assert np.array_equal(scores_mr[key], scores[key])
    assert alone.model_dump() == mr.model_dump()
