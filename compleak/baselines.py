"""Reference-model baselines: LiRA (Carlini et al. 2022) and RMIA (Zarifzadeh et al. 2024), online and offline.

Both compare the target model's output on a candidate ``x`` with K *reference models* (the attacker's shadow
models of the same variant), queried on the very same candidates. For reference ``k`` and candidate ``x`` the
engine derives from the splits whether ``k`` trained on ``x`` (IN: ``x in shadow_in[k]``) or not (OUT: ``x`` in
neither ``shadow_in[k]`` nor ``k``'s hold-out). In the *online* threat model the references are trained on random
halves of a pool that contains the candidates, so each candidate is IN for about half of them; in the *offline*
one every reference is OUT for every candidate (or only OUT references are used).

- :class:`LiRA` -- per-example Gaussians of the scaled logit. Online: ``log N(phi; mu_in, s_in) - log N(phi;
  mu_out, s_out)``. Offline: the one-sided ``log Phi((phi - mu_out) / s_out)``.
- :class:`RMIA` -- ``ratio(x) = p_y(x | target) / Pr(x)`` against population examples ``z``; score = fraction of
  ``z`` with ``ratio(x) / ratio(z) > gamma``. Online ``Pr(x)`` = mean over all references; offline
  ``((1 + a) / 2) * mean_OUT + (1 - a) / 2``; ``a`` from :func:`calibrate_rmia_a`.
- :class:`LiRAOffline`, :class:`RMIAOffline` -- the per-class fallbacks used when the references were not queried
  on the candidates (rows named ``*-per-class``): the reference statistic of ``x`` is that of the shadow OUT
  examples of x's class.

Shapes: reference arrays [K, n] (float64 values, bool IN / OUT masks); target signals [n]; population [m];
scores float64 [n], higher = member.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from compleak.metrics import best_threshold

#: Below this many reference models LiRA uses one global variance per side (IN / OUT), as the paper advises.
LIRA_PER_EXAMPLE_VARIANCE_MIN_K = 64
_SD_FLOOR = 1e-6


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-example mean over the references where ``mask`` holds: (mean float64 [n] (NaN where none), count [n])."""
    cnt = mask.sum(axis=0)
    tot = np.where(mask, values, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan), cnt


def _gaussian(values: np.ndarray, mask: np.ndarray, per_example: bool, fallback_sd: float | None
              ) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean [n], sd [n], global sd) of ``values`` [K, n] over the masked references of each example.

    The global sd pools the residuals around the per-example means over every example with >= 2 references
    (unbiased per example); per-example sds (when ``per_example``) need >= 2 references and fall back to the
    global one. Without any example with 2 references the global sd is ``fallback_sd``."""
    mu, cnt = _masked_mean(values, mask)
    resid2 = np.where(mask, (values - np.nan_to_num(mu)) ** 2, 0.0).sum(axis=0)
    ok = cnt >= 2
    if ok.any():
        g = float(np.sqrt(resid2[ok].sum() / (cnt[ok] - 1).sum()))
    elif fallback_sd is not None:
        g = float(fallback_sd)
    else:
        raise ValueError("LiRA needs >= 2 reference models on some example, or a fallback spread")
    g = max(g, _SD_FLOOR)
    if per_example:
        with np.errstate(invalid="ignore", divide="ignore"):
            sd = np.where(ok, np.sqrt(resid2 / np.maximum(cnt - 1, 1)), g)
        sd = np.maximum(sd, _SD_FLOOR)
    else:
        sd = np.full(values.shape[1], g)
    return mu, sd, g


def _fill_missing(mu_a: np.ndarray, mu_b: np.ndarray) -> np.ndarray:
    """``mu_a`` with NaNs (no reference of that side) replaced by ``mu_b`` plus the mean offset a - b over examples
    that have both sides."""
    both = np.isfinite(mu_a) & np.isfinite(mu_b)
    if not both.any():
        raise ValueError("no example has both IN and OUT reference models; online LiRA needs them")
    delta = float(np.mean(mu_a[both] - mu_b[both]))
    return np.where(np.isfinite(mu_a), mu_a, mu_b + delta)


class LiRA:
    """LiRA (Carlini et al. 2022) on scaled logits ``phi`` (:func:`compleak.signals.scaled_logit`).

    ``fit(ref_phi [K, n], ref_in [K, n], ref_out [K, n])`` estimates, per candidate, the mean of the references'
    scaled logits where they trained on it (IN) and where they did not (OUT). Variances: one global value per side
    (pooled residuals) when ``fixed_variance`` (default: K < 64, the paper's advice for few references), otherwise
    per example (falling back to the global one with fewer than 2 references of a side).

    - online: ``score = log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2)`` (the log likelihood ratio).
      A candidate without IN (or OUT) references gets ``mu_out + d`` (``mu_in - d``), ``d`` the mean IN-OUT gap.
    - offline (``online=False``): only OUT references; ``score = log Phi((phi - mu_out) / s_out)``, the one-sided
      test (how unlikely an OUT model reaches a scaled logit this high). A candidate without OUT references gets
      ``mu_in - d`` with ``d`` from the others when available, else the mean of all OUT means.
    """

    def __init__(self, online: bool, fixed_variance: bool | None = None) -> None:
        self.online = online
        self.fixed_variance = fixed_variance

    def fit(self, ref_phi: np.ndarray, ref_in: np.ndarray, ref_out: np.ndarray,
            fallback_sd: float | None = None) -> "LiRA":
        ref_phi = np.asarray(ref_phi, np.float64)
        k = ref_phi.shape[0]
        fixed = self.fixed_variance if self.fixed_variance is not None else k < LIRA_PER_EXAMPLE_VARIANCE_MIN_K
        per_example = not fixed
        mu_out, sd_out, g_out = _gaussian(ref_phi, ref_out, per_example, fallback_sd)
        self.n_references_ = k
        self.variance_ = "global" if fixed else "per-example"
        if self.online:
            mu_in, sd_in, _ = _gaussian(ref_phi, ref_in, per_example, g_out)
            self.mu_in_ = _fill_missing(mu_in, mu_out)
            self.mu_out_ = _fill_missing(mu_out, mu_in)
            self.sd_in_, self.sd_out_ = sd_in, sd_out
        else:
            if np.isnan(mu_out).any():
                mu_in, _ = _masked_mean(ref_phi, ref_in)
                both = np.isfinite(mu_in) & np.isfinite(mu_out)
                fill = (mu_in - float(np.mean(mu_in[both] - mu_out[both]))) if both.any() else np.nanmean(mu_out)
                mu_out = np.where(np.isfinite(mu_out), mu_out, fill)
            self.mu_out_, self.sd_out_ = mu_out, sd_out
        return self

    def score(self, phi: np.ndarray) -> np.ndarray:
        """Score float64 [n] of the target's scaled logits on the same candidates (see class doc)."""
        phi = np.asarray(phi, np.float64)
        if self.online:
            return norm.logpdf(phi, self.mu_in_, self.sd_in_) - norm.logpdf(phi, self.mu_out_, self.sd_out_)
        return norm.logcdf((phi - self.mu_out_) / self.sd_out_)


class RMIA:
    """RMIA (Zarifzadeh et al. 2024) on the true-class probability ``p_y``.

    ``Pr(x)``, the probability of ``x`` under a random model of the training recipe, is estimated from the
    references: online, the mean of ``p_y(x | theta_k)`` over every reference that trained on ``x`` or not
    (IN and OUT); offline, ``((1 + a) / 2) * mean_OUT p_y(x | theta_k) + (1 - a) / 2`` over the OUT references
    only (an example without OUT references uses its IN ones). The same for every population example ``z``.
    ``ratio(x) = p_y(x | target) / Pr(x)``; ``score(x)`` = fraction of population ``z`` with
    ``ratio(x) / ratio(z) > gamma``.
    """

    def __init__(self, online: bool, a: float = 0.5, gamma: float = 1.0) -> None:
        self.online = online
        self.a = a
        self.gamma = gamma

    def _pr(self, ref_py: np.ndarray, ref_in: np.ndarray, ref_out: np.ndarray) -> np.ndarray:
        ref_py = np.asarray(ref_py, np.float64)
        if self.online:
            mean, cnt = _masked_mean(ref_py, ref_in | ref_out)
            return np.where(cnt > 0, mean, np.nanmean(mean) if np.isfinite(mean).any() else 1.0)
        mean_out, cnt = _masked_mean(ref_py, ref_out)
        if (cnt == 0).any():
            mean_in, _ = _masked_mean(ref_py, ref_in)
            mean_out = np.where(cnt > 0, mean_out, mean_in)
        mean_out = np.where(np.isfinite(mean_out), mean_out, 0.5)
        return 0.5 * (1.0 + self.a) * mean_out + 0.5 * (1.0 - self.a)

    def fit(self, ref_py_x: np.ndarray, in_x: np.ndarray, out_x: np.ndarray,
            ref_py_z: np.ndarray, in_z: np.ndarray, out_z: np.ndarray) -> "RMIA":
        """References' ``p_y`` on the candidates [K, n] and on the population [K, m], with IN / OUT masks."""
        self.pr_x_ = self._pr(ref_py_x, in_x, out_x)
        self.pr_z_ = self._pr(ref_py_z, in_z, out_z)
        return self

    def score(self, p_y: np.ndarray, pop_p_y: np.ndarray) -> np.ndarray:
        """Score float64 [n] from the target's ``p_y`` on the candidates [n] and on the population [m]."""
        rx = np.asarray(p_y, np.float64) / np.maximum(self.pr_x_, 1e-300)
        rz = np.sort(np.asarray(pop_p_y, np.float64) / np.maximum(self.pr_z_, 1e-300))
        # ratio(x)/ratio(z) > gamma  <=>  ratio(z) < ratio(x)/gamma  (strict)
        return np.searchsorted(rz, rx / self.gamma, side="left") / len(rz)


#: The grid searched for RMIA's offline ``a``.
RMIA_A_GRID = tuple(round(float(v), 2) for v in np.linspace(0.0, 1.0, 21))


def calibrate_rmia_a(ref_py_x: np.ndarray, in_x: np.ndarray, out_x: np.ndarray, ref_py_z: np.ndarray,
                     in_z: np.ndarray, out_z: np.ndarray, gamma: float = 1.0, pseudo_target: int = 0
                     ) -> tuple[float, float] | None:
    """Offline RMIA's ``a`` chosen on the references alone (Zarifzadeh et al.: one reference plays the target).

    Reference ``pseudo_target`` is the target, the others are its references; ``a`` in :data:`RMIA_A_GRID`
    maximising the AUC of offline RMIA against the pseudo-target's own membership of the candidates (those it
    trained on versus those it did not) wins. Returns ``(a, auc)``, or None when that is impossible (fewer than two
    references, or the pseudo-target has no IN or no OUT candidate, e.g. the disjoint offline threat model).
    """
    k = pseudo_target
    if ref_py_x.shape[0] < 2:
        return None
    y = in_x[k]
    keep = in_x[k] | out_x[k]
    if not (np.any(y & keep) and np.any(~y & keep)):
        return None
    others = [j for j in range(ref_py_x.shape[0]) if j != k]
    best: tuple[float, float] | None = None
    for a in RMIA_A_GRID:
        att = RMIA(online=False, a=a, gamma=gamma).fit(
            ref_py_x[others], in_x[others], out_x[others], ref_py_z[others], in_z[others], out_z[others])
        s = att.score(ref_py_x[k], ref_py_z[k])
        auc = float(roc_auc_score(y[keep], s[keep]))
        if best is None or auc > best[1] + 1e-12:
            best = (a, auc)
    return best


def _class_means(values: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    sums = np.bincount(labels, weights=values, minlength=n_classes)
    counts = np.bincount(labels, minlength=n_classes)
    overall = float(values.mean()) if values.size else 0.0
    return np.where(counts > 0, sums / np.maximum(counts, 1), overall)


class LiRAOffline:
    """Per-class offline LiRA (row ``lira-offline-per-class``) with a fixed (global) variance on scaled logits
    ``phi`` (see :func:`compleak.signals.scaled_logit`).

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
    """Per-class offline RMIA (row ``rmia-offline-per-class``) on the probability of the true class ``p_y``.

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
