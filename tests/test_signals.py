"""Signals: stable softmax from logits, no double softmax for probability outputs, exact formulas in float64."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from compleak import signals as sig
from rundir import ContractError


def test_posterior_from_logits_matches_softmax_and_is_stable() -> None:
    z = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [5000.0, 0.0, -5000.0]], dtype=np.float32)
    p = sig.posterior(z, "logits")
    assert p.dtype == np.float64
    np.testing.assert_allclose(p[:2], softmax(z[:2].astype(np.float64), axis=1), rtol=1e-12)
    assert np.all(np.isfinite(sig.log_posterior(z, "logits")))
    np.testing.assert_allclose(sig.log_posterior(z, "logits")[2], [0.0, -5000.0, -10000.0])


def test_probability_outputs_are_not_softmaxed_again() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    np.testing.assert_allclose(sig.posterior(probs, "probs"), probs, rtol=1e-12)
    # a second softmax would flatten the rows; e.g. it would turn 0.7 into ~0.45
    assert sig.posterior(probs, "probs")[0, 0] == pytest.approx(0.7)


def test_dequantized_int8_softmax_rows_with_zeros() -> None:
    # uint8 softmax output, scale 1/256, zero point 0: rows sum to 255/256 or 257/256 and contain exact zeros
    q = np.array([[255, 1, 0], [0, 0, 256]])
    probs = (q / 256.0).astype(np.float32)
    p = sig.posterior(probs, "probs")
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    lp = sig.log_posterior(probs, "probs")
    assert np.all(np.isfinite(lp))
    loss = sig.loss(lp, np.array([2, 2]))
    assert loss[0] == pytest.approx(-np.log(sig.PROB_FLOOR))  # true class got 0: loss capped at the floor
    assert loss[1] == pytest.approx(0.0, abs=1e-9)
    assert np.all(np.isfinite(sig.scaled_logit(lp, np.array([0, 2]))))


def test_wrong_kind_and_nan_are_one_line_errors_naming_the_source() -> None:
    with pytest.raises(ContractError, match=r"^out/x\.npz: declared 'probs' but has negative values"):
        sig.log_posterior(np.array([[3.0, -2.0]]), "probs", source="out/x.npz")
    with pytest.raises(ContractError, match=r"^out/y\.npz: declared 'probs' but rows sum"):
        sig.log_posterior(np.array([[3.0, 2.0]]), "probs", source="out/y.npz")
    with pytest.raises(ContractError, match=r"^out/z\.npz: outputs contain NaN") as exc:
        sig.log_posterior(np.array([[np.nan, 2.0]]), "logits", source="out/z.npz")
    assert "\n" not in str(exc.value)


def test_loss_entropy_and_modified_entropy_match_their_formulas() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 4)) * 2
    y = rng.integers(0, 4, size=50)
    lp = sig.log_posterior(z)
    p = softmax(z, axis=1)
    rows = np.arange(50)
    np.testing.assert_allclose(sig.loss(lp, y), -np.log(p[rows, y]), rtol=1e-12)
    np.testing.assert_allclose(sig.entropy(lp), -(p * np.log(p)).sum(1), rtol=1e-12)
    mask = np.ones_like(p, dtype=bool)
    mask[rows, y] = False
    mentr = -(1 - p[rows, y]) * np.log(p[rows, y]) - np.where(mask, p * np.log(1 - p), 0).sum(1)
    np.testing.assert_allclose(sig.modified_entropy(lp, y), mentr, rtol=1e-10)
    phi = np.log(p[rows, y]) - np.log(np.where(mask, p, 0).sum(1))
    np.testing.assert_allclose(sig.scaled_logit(lp, y), phi, rtol=1e-9)


def test_signals_stay_exact_where_float_probabilities_saturate() -> None:
    # p_0 = 1 - 2e-40/(1+...) rounds to 1.0: naive log(1 - p_0) is -inf, naive scaled logit is +inf
    lp = sig.log_posterior(np.array([[40.0, 0.0, 0.0]]))
    assert sig.scaled_logit(lp, np.array([0]))[0] == pytest.approx(40.0 - np.log(2.0), rel=1e-12)
    assert sig.modified_entropy(lp, np.array([1]))[0] == pytest.approx(80.0 - np.log(2.0), rel=1e-9)
    assert 0.0 <= sig.modified_entropy(lp, np.array([0]))[0] < 1e-30


def test_sorted_features_sr1_sr2_permute_by_the_reference_order() -> None:
    orig = np.array([[0.2, 0.5, 0.3]])
    comp = np.array([[0.1, 0.6, 0.3]])
    sr1 = sig.sorted_features(orig, [comp])
    np.testing.assert_allclose(sr1, [[0.2, 0.3, 0.5, 0.1, 0.3, 0.6]])
    sr2 = sig.sorted_features(orig, [comp], labels=np.array([1]))
    np.testing.assert_allclose(sr2[:, 6:], [[0.0, 0.0, 1.0]])  # label 1 is the largest original entry -> last
    assert sig.sorted_features(orig).shape == (1, 3)


def test_label_out_of_range_is_an_error() -> None:
    with pytest.raises(ContractError, match="labels outside"):
        sig.loss(sig.log_posterior(np.zeros((2, 3))), np.array([0, 3]))
