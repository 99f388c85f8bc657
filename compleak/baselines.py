"""Reference-model baselines: offline RMIA (Zarifzadeh et al. 2024) and offline LiRA (Carlini et al. 2022).

Both compare the target model's behaviour on an example with *reference models* that never trained on it: the
shadow models of the same variant (all of them are OUT for every target example, because shadow and target
splits are disjoint). Two modes, chosen by what was collected:

- ``per-example``: the reference models' outputs on the target examples themselves are available
  (``reference`` arrays [K, n]); this is the method as published.
- ``per-class``: only the shadow models' outputs on their own data exist; the reference statistic of an example
  is the mean (LiRA: mean and spread) over the shadow models' OUT examples of the same class. Weaker, but needs
  no extra queries. Each result row records which mode was used (``reference``).

The decision threshold (for balanced accuracy) is chosen on the shadow models' own members/non-members scored
in per-class mode, so no target membership is ever used.

Shapes: ``signal`` / ``labels`` [n]; ``reference`` [K, n]; scores float64 [n], higher = member.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from compleak.metrics import best_threshold


def _class_means(values: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    sums = np.bincount(labels, weights=values, minlength=n_classes)
    counts = np.bincount(labels, minlength=n_classes)
    overall = float(values.mean()) if values.size else 0.0
    return np.where(counts > 0, sums / np.maximum(counts, 1), overall)


class LiRAOffline:
    """Offline LiRA with a fixed (global) variance on scaled logits ``phi`` (see :func:`compleak.signals.scaled_logit`).

    OUT distribution of ``phi(x)``: Gaussian with mean ``mu(x)`` (per-example: mean over the reference models;
    per-class: mean over shadow OUT examples of x's class) and one global standard deviation ``sigma`` (pooled
    residuals of the reference scaled logits around their means). Score = ``log Phi((phi - mu) / sigma)``, the
    log-probability that an OUT model would give a *lower* scaled logit (logs avoid ties from saturation).
    """

    def __init__(self, n_classes: int) -> None:
        self.n_classes = n_classes

    def fit(self, phi: np.ndarray, labels: np.ndarray, y: np.ndarray) -> "LiRAOffline":
        """Shadow scaled logits ``phi``, labels and membership ``y`` (pooled over shadow models), each [n]."""
        phi, labels, y = np.asarray(phi, np.float64), np.asarray(labels, np.int64), np.asarray(y)
        out = y == 0
        self.class_mu_ = _class_means(phi[out], labels[out], self.n_classes)
        resid = phi[out] - self.class_mu_[labels[out]]
        self.sigma_ = float(max(np.sqrt(np.mean(resid**2)), 1e-6))
        self.threshold_ = best_threshold(y, self.score(phi, labels))
        return self

    def score(self, phi: np.ndarray, labels: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
        phi, labels = np.asarray(phi, np.float64), np.asarray(labels, np.int64)
        if reference is None:
            mu, sigma = self.class_mu_[labels], self.sigma_
        else:
            reference = np.asarray(reference, np.float64)
            k = len(reference)
            mu = reference.mean(axis=0)
            # pooled within-example spread (unbiased); one reference model has none, so use the per-class one
            sigma = float(np.sqrt(np.mean((reference - mu) ** 2) * k / (k - 1))) if k > 1 else self.sigma_
            sigma = max(sigma, 1e-6)
        return norm.logcdf((phi - mu) / sigma)


class RMIAOffline:
    """Offline RMIA on the probability of the true class ``p_y``.

    ``Pr(x)`` from OUT reference models is corrected for the missing IN models as ``((1+a)/2) * mean_ref p_y(x)
    + (1-a)/2`` (``a = 0.5`` by default); the likelihood ratio is ``ratio(x) = p_y(x | target) / Pr(x)``. The score
    of ``x`` is the fraction of population examples ``z`` with ``ratio(x) / ratio(z) > gamma`` (``gamma = 1``).
    The population is supplied by the caller (the attack engine uses every example the target model was queried
    on, without membership labels; none is a shadow member, as splits are disjoint).
    """

    def __init__(self, n_classes: int, a: float = 0.5, gamma: float = 1.0) -> None:
        self.n_classes = n_classes
        self.a = a
        self.gamma = gamma

    def _pr(self, ref_mean: np.ndarray) -> np.ndarray:
        return 0.5 * (1.0 + self.a) * ref_mean + 0.5 * (1.0 - self.a)

    def fit(self, p_y: np.ndarray, labels: np.ndarray, y: np.ndarray) -> "RMIAOffline":
        """Shadow ``p_y``, labels and membership ``y`` (pooled over shadow models), each [n]."""
        p_y, labels, y = np.asarray(p_y, np.float64), np.asarray(labels, np.int64), np.asarray(y)
        out = y == 0
        self.class_ref_ = _class_means(p_y[out], labels[out], self.n_classes)
        # threshold: the shadow data scored against itself as population, per-class reference
        self.threshold_ = best_threshold(y, self.score(p_y, labels, p_y, labels))
        return self

    def ratios(self, p_y: np.ndarray, labels: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
        """Likelihood ratios float64 [n]; ``reference`` [K, n] reference models' ``p_y`` on the same examples."""
        p_y = np.asarray(p_y, np.float64)
        ref = self.class_ref_[np.asarray(labels, np.int64)] if reference is None else np.mean(reference, axis=0)
        return p_y / np.maximum(self._pr(ref), 1e-300)

    def score(
        self,
        p_y: np.ndarray,
        labels: np.ndarray,
        pop_p_y: np.ndarray,
        pop_labels: np.ndarray,
        reference: np.ndarray | None = None,
        pop_reference: np.ndarray | None = None,
    ) -> np.ndarray:
        """Score float64 [n] of examples (``p_y``, ``labels``) against a population (``pop_*``, [m])."""
        rx = self.ratios(p_y, labels, reference)
        rz = np.sort(self.ratios(pop_p_y, pop_labels, pop_reference))
        # ratio(x)/ratio(z) > gamma  <=>  ratio(z) < ratio(x)/gamma  (strict)
        return np.searchsorted(rz, rx / self.gamma, side="left") / len(rz)
