"""Metrics: tie-aware TPR@FPR against a hand-computed case, the bootstrap CI against a plain scikit-learn
bootstrap, thresholds, and the resolvability flag."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from compleak import metrics as M


def _tied_case() -> tuple[np.ndarray, np.ndarray]:
    # non-members: one at 0.9, three tied at 0.5, six at 0.1; members: two at 0.9, two at 0.5, one at 0.2
    out = [0.9, 0.5, 0.5, 0.5] + [0.1] * 6
    mem = [0.9, 0.9, 0.5, 0.5, 0.2]
    return np.r_[np.ones(5), np.zeros(10)].astype(int), np.array(mem + out)


def test_tie_aware_tpr_at_fpr_hand_computed() -> None:
    y, s = _tied_case()
    # ROC points (FPR, TPR) per distinct score: (0,0) -> 0.9 block (0.1, 0.4) -> 0.5 block (0.4, 0.8)
    #   -> 0.2 (0.4, 1.0) -> 0.1 (1.0, 1.0)
    assert M.tpr_at_fpr(y, s, 0.1) == pytest.approx(0.4)  # exactly at a point
    assert M.tpr_at_fpr(y, s, 0.05) == pytest.approx(0.2)  # half of the 0.9 tie block accepted
    assert M.tpr_at_fpr(y, s, 0.2) == pytest.approx(0.4 + (0.1 / 0.3) * 0.4)  # a third of the 0.5 block
    assert M.tpr_at_fpr(y, s, 0.4) == pytest.approx(1.0)  # the 0.2 member comes free at FPR 0.4
    assert M.tpr_at_fpr(y, s, 0.0) == pytest.approx(0.0)  # any accepted example brings a tied non-member


def test_tpr_at_fpr_without_ties_is_the_usual_count() -> None:
    rng = np.random.default_rng(1)
    s_in, s_out = rng.normal(1, 1, 3000), rng.normal(0, 1, 2000)
    y, s = np.r_[np.ones(3000), np.zeros(2000)].astype(int), np.r_[s_in, s_out]
    # the highest TPR with at most 20 of 2000 non-members accepted: every member above the 21st-highest non-member
    assert M.tpr_at_fpr(y, s, 0.01) == pytest.approx(np.mean(s_in > np.sort(s_out)[-21]), abs=1e-12)


def test_bootstrap_ci_equals_a_plain_sklearn_bootstrap_with_ties() -> None:
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(300), np.zeros(200)].astype(int)
    s = np.round(rng.normal(y * 0.5, 1.0), 1)  # quantized scores: many ties
    lo, hi = M.bootstrap_auc_ci(y, s, n_bootstrap=100, seed=7)
    draw = np.random.default_rng(7)
    s_in, s_out = s[y == 1], s[y == 0]
    aucs = []
    for _ in range(100):
        a = s_in[draw.integers(0, 300, 300)]
        b = s_out[draw.integers(0, 200, 200)]
        aucs.append(roc_auc_score(np.r_[np.ones(300), np.zeros(200)], np.r_[a, b]))
    assert (lo, hi) == pytest.approx(tuple(np.quantile(aucs, [0.025, 0.975])), abs=1e-12)
    assert lo < M.roc_auc(y, s) < hi


def test_best_threshold_and_balanced_accuracy() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.35, 0.4, 0.3, 0.2, 0.1])
    t = M.best_threshold(y, s)
    # best rule accepts {0.9, 0.8} (BA 0.5*(2/3+1) = 0.833) or {0.9,0.8,0.4,0.35} (0.5*(1+3/4) = 0.875)
    assert M.balanced_accuracy(y, s, t) == pytest.approx(0.875)
    assert 0.3 < t < 0.35


def test_resolvability_flag_and_none_tpr() -> None:
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(999), np.zeros(999)].astype(int)
    s = rng.normal(size=1998)
    m = M.evaluate(y, s, 0.0, fprs=[0.001, 0.01], n_bootstrap=10)
    assert m.fpr_resolvable == {"0.001": False, "0.01": True}
    assert m.tpr_at_fpr["0.001"] is None and m.tpr_at_fpr["0.01"] is not None
    y2 = np.r_[np.ones(10), np.zeros(1000)].astype(int)
    assert M.evaluate(y2, rng.normal(size=1010), 0.0, fprs=[0.001], n_bootstrap=0).fpr_resolvable == {"0.001": True}


def test_identical_distributions_give_chance_figures() -> None:
    rng = np.random.default_rng(4)
    y = np.r_[np.ones(5000), np.zeros(5000)].astype(int)
    s = rng.normal(size=10000)
    m = M.evaluate(y, s, 0.0, n_bootstrap=200)
    assert m.auc_ci[0] <= 0.5 <= m.auc_ci[1]
    assert m.tpr_at_fpr["0.001"] == pytest.approx(0.001, abs=0.002)
    assert m.tpr_at_fpr["0.01"] == pytest.approx(0.01, abs=0.006)
    assert len(m.roc["fpr"]) == len(m.roc["tpr"]) and m.roc["tpr"][-1] == 1.0


def test_clopper_pearson_eps_bound_against_scipy_beta() -> None:
    from scipy.stats import beta

    # 1000 members, 1000 non-members; the rule flags 300 members and 20 non-members
    y = np.r_[np.ones(1000), np.zeros(1000)].astype(int)
    dec = np.zeros(2000, dtype=bool)
    dec[:300] = True
    dec[1000:1020] = True
    got = M.eps_lower_bound(y, dec, level=0.95)
    tpr_lo = beta.ppf(0.025, 300, 1000 - 300 + 1)
    fpr_hi = beta.ppf(0.975, 20 + 1, 1000 - 20)
    tpr_hi = beta.ppf(0.975, 300 + 1, 1000 - 300)
    fpr_lo = beta.ppf(0.025, 20, 1000 - 20 + 1)
    assert got["tpr_lo"] == pytest.approx(tpr_lo) and got["fpr_hi"] == pytest.approx(fpr_hi)
    assert got["tpr_hi"] == pytest.approx(tpr_hi) and got["fpr_lo"] == pytest.approx(fpr_lo)
    expected = max(0.0, np.log(tpr_lo / fpr_hi), np.log((1 - fpr_hi) / (1 - tpr_lo)))
    assert got["eps"] == pytest.approx(expected)
    assert got["eps"] == pytest.approx(np.log(tpr_lo / fpr_hi))  # here the TPR/FPR side is the binding one
    assert got["tpr"] == pytest.approx(0.3) and got["fpr"] == pytest.approx(0.02)
    # the symmetric bound binds when the rule rarely misses members: FNR 0.01, TNR 0.3
    dec2 = np.zeros(2000, dtype=bool)
    dec2[:990] = True
    dec2[1000:1700] = True
    g2 = M.eps_lower_bound(y, dec2)
    lo_tpr, hi_fpr = beta.ppf(0.025, 990, 11), beta.ppf(0.975, 701, 300)
    assert g2["eps"] == pytest.approx(np.log((1 - hi_fpr) / (1 - lo_tpr)))
    # no separation: the bound is 0, never negative
    assert M.eps_lower_bound(y, np.r_[np.ones(1000), np.ones(1000)].astype(bool))["eps"] == 0.0
    # ends of the interval: k = 0 and k = n
    assert M.clopper_pearson(0, 50) == (0.0, pytest.approx(beta.ppf(0.975, 1, 50)))
    assert M.clopper_pearson(50, 50) == (pytest.approx(beta.ppf(0.025, 50, 1)), 1.0)


def test_per_class_auc_and_decisions_in_evaluate() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 200)
    y = np.tile(np.r_[np.ones(100), np.zeros(100)], 3).astype(int)
    s = rng.normal(size=600) + y * np.repeat([0.0, 1.0, 3.0], 200)
    pc = M.per_class_auc(y, s, labels)
    for c in range(3):
        m = labels == c
        assert pc["auc"][str(c)] == pytest.approx(roc_auc_score(y[m], s[m]), abs=1e-6)
    assert pc["most_vulnerable"] == [2, 1, 0] and pc["n_classes"] == 3
    dec = s >= 10.0  # flags nothing: balanced accuracy 0.5, whatever the threshold says
    m = M.evaluate(y, s, threshold=0.0, n_bootstrap=0, decisions=dec, labels=labels)
    assert m.balanced_accuracy == pytest.approx(0.5) and m.eps_lower_bound["eps"] == 0.0
    assert m.per_class is not None and m.per_class["most_vulnerable"][0] == 2
