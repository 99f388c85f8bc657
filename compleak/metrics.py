"""Analysis of attack scores (kept apart from producing them): AUC with a bootstrap CI, tie-aware TPR at a fixed
FPR, balanced accuracy at a threshold chosen on shadow data, and whether a sample can resolve a given FPR.

Convention everywhere: ``y`` int [n] with 1 = member, 0 = non-member; ``scores`` float [n], higher = more likely
a member; a hard decision is ``member iff score >= threshold``.

Tie-aware TPR at FPR ``alpha`` (quantized models emit many identical outputs, hence tied scores): the ROC curve is
taken with one point per *distinct* score (``sklearn.metrics.roc_curve(drop_intermediate=False)``) and read off
at ``alpha`` by linear interpolation between the last point with ``FPR <= alpha`` and the next point. This is
exactly the expected TPR of the randomised threshold rule that accepts every example scoring above the tie block
and each example of the tie block with the probability that makes the FPR equal ``alpha``. It never credits an
attack for an arbitrary ordering inside a tie block (a plain sort would).

An FPR ``alpha`` is *resolvable* only when ``n_nonmembers * alpha >= 1``: with fewer non-members no threshold can
produce a false-positive rate that small other than 0, and the TPR is reported as ``None``.

Privacy-auditing figures (as in DP auditing, Jagielski et al. 2020 / Nasr et al. 2021): :func:`eps_lower_bound` turns
the attack's decisions at its shadow-chosen threshold into a lower bound on epsilon with Clopper-Pearson intervals,
and :func:`per_class_auc` gives the AUC within each class (the most vulnerable classes first).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import beta, rankdata
from sklearn.metrics import roc_auc_score, roc_curve


@dataclass
class AttackMetrics:
    """All figures of one attack on one evaluation set (see module doc for definitions)."""

    auc: float
    auc_ci: tuple[float, float]
    balanced_accuracy: float
    threshold: float
    tpr_at_fpr: dict[str, float | None]
    fpr_resolvable: dict[str, bool]
    n_members: int
    n_nonmembers: int
    n_bootstrap: int
    roc: dict[str, list[float]] = field(default_factory=dict)
    eps_lower_bound: dict[str, float] = field(default_factory=dict)
    per_class: dict[str, object] | None = None


def _check(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y has {y.size} entries but scores has {s.size}")
    if not np.all(np.isfinite(s)):
        raise ValueError("attack scores contain NaN or Inf")
    if not (np.any(y == 1) and np.any(y == 0)):
        raise ValueError("need at least one member (y=1) and one non-member (y=0)")
    return y, s


def fpr_key(fpr: float) -> str:
    """The JSON key of an FPR: ``0.001 -> "0.001"``."""
    return repr(float(fpr))


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (scikit-learn; ties count one half)."""
    y, s = _check(y, scores)
    return float(roc_auc_score(y, s))


def bootstrap_auc_ci(
    y: np.ndarray, scores: np.ndarray, n_bootstrap: int = 200, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUC, resampling members and non-members separately (sizes kept).

    Each resample's AUC is computed in O(n) from counts per distinct score (ties count one half, as in
    :func:`roc_auc`), so 200 resamples of 20 000 scores take well under a second. Returns ``(auc, auc)`` when
    ``n_bootstrap == 0``.
    """
    y, s = _check(y, scores)
    if n_bootstrap <= 0:
        a = roc_auc(y, s)
        return a, a
    _, group = np.unique(s, return_inverse=True)
    n_groups = int(group.max()) + 1
    g_in, g_out = group[y == 1], group[y == 0]
    n1, n0 = len(g_in), len(g_out)
    rng = np.random.default_rng(seed)
    aucs = np.empty(n_bootstrap)
    for b in range(n_bootstrap):
        c_in = np.bincount(g_in[rng.integers(0, n1, n1)], minlength=n_groups).astype(np.float64)
        c_out = np.bincount(g_out[rng.integers(0, n0, n0)], minlength=n_groups).astype(np.float64)
        below = np.cumsum(c_out) - c_out  # non-members strictly below each distinct score
        aucs[b] = np.dot(c_in, below + 0.5 * c_out) / (n1 * n0)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(aucs, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def fpr_resolvable(n_nonmembers: int, fpr: float) -> bool:
    """True when ``n_nonmembers`` can resolve a false-positive rate of ``fpr`` (``n_nonmembers * fpr >= 1``)."""
    return n_nonmembers * fpr >= 1.0 - 1e-9


def tpr_at_fpr(y: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """Tie-aware TPR at false-positive rate ``fpr`` (linear interpolation inside tie blocks; see module doc)."""
    y, s = _check(y, scores)
    f, t, _ = roc_curve(y, s, drop_intermediate=False)
    i = int(np.searchsorted(f, fpr, side="right")) - 1  # last point with FPR <= fpr (highest TPR there)
    if i >= len(f) - 1 or f[i] == fpr:
        return float(t[i])
    j = i + 1
    q = (fpr - f[i]) / (f[j] - f[i])
    return float(t[i] + q * (t[j] - t[i]))


def roc_points(y: np.ndarray, scores: np.ndarray, n_points: int = 60) -> dict[str, list[float]]:
    """A compact tie-aware ROC for plotting on log axes: FPR on a log grid from ``1/n_nonmembers`` to 1."""
    y, s = _check(y, scores)
    n0 = int(np.sum(y == 0))
    grid = np.geomspace(1.0 / n0, 1.0, n_points)
    f, t, _ = roc_curve(y, s, drop_intermediate=False)
    # np.interp on the (non-decreasing) FPR axis; where FPR repeats take the upper TPR, as tpr_at_fpr does
    last = np.r_[f[1:] != f[:-1], True]
    tpr = np.interp(grid, f[last], t[last])
    return {"fpr": [round(float(v), 6) for v in grid], "tpr": [round(float(v), 6) for v in tpr]}


def best_threshold(y: np.ndarray, scores: np.ndarray) -> float:
    """Threshold maximising balanced accuracy of ``member iff score >= threshold`` on (shadow) data.

    Candidates are midpoints between consecutive distinct scores (and one below / above all), so the rule
    generalises to unseen scores instead of sitting exactly on a training score.
    """
    y, s = _check(y, scores)
    u = np.unique(s)
    cands = np.r_[u[0] - 1.0, (u[:-1] + u[1:]) / 2.0, u[-1] + 1.0]
    pos, neg = np.sort(s[y == 1]), np.sort(s[y == 0])
    tpr = 1.0 - np.searchsorted(pos, cands, side="left") / len(pos)  # fraction of members with s >= t
    tnr = np.searchsorted(neg, cands, side="left") / len(neg)  # fraction of non-members with s < t
    return float(cands[int(np.argmax(tpr + tnr))])


def balanced_accuracy(y: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """Balanced accuracy (mean of TPR and TNR) of ``member iff score >= threshold``."""
    y, s = _check(y, scores)
    pred = s >= threshold
    return float(0.5 * (np.mean(pred[y == 1]) + np.mean(~pred[y == 0])))


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval of a binomial proportion ``k / n`` at confidence ``level``:
    ``(Beta.ppf(a/2; k, n-k+1), Beta.ppf(1-a/2; k+1, n-k))`` with ``a = 1 - level``; 0 / 1 at the ends."""
    if n <= 0:
        return 0.0, 1.0
    a = 1.0 - level
    lo = 0.0 if k <= 0 else float(beta.ppf(a / 2.0, k, n - k + 1))
    hi = 1.0 if k >= n else float(beta.ppf(1.0 - a / 2.0, k + 1, n - k))
    return lo, hi


def eps_lower_bound(y: np.ndarray, decisions: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Empirical epsilon lower bound of a membership decision rule, as in DP auditing.

    ``decisions`` bool [n] (True = "member"), ``y`` int [n]. With Clopper-Pearson intervals (``level``, two-sided
    per rate) ``[TPR_lo, TPR_hi]`` and ``[FPR_lo, FPR_hi]``, any (epsilon, 0)-DP training gives
    ``TPR <= e^eps FPR`` and ``1 - FPR <= e^eps (1 - TPR)``, hence with confidence >= ``level``
    ``eps >= max(0, log(TPR_lo / FPR_hi), log((1 - FPR_hi) / (1 - TPR_lo)))``. Returns that bound (``eps``) and
    the rates and interval ends it came from.
    """
    y = np.asarray(y).astype(np.int64).ravel()
    d = np.asarray(decisions, dtype=bool).ravel()
    n1, n0 = int(np.sum(y == 1)), int(np.sum(y == 0))
    tp, fp = int(np.sum(d & (y == 1))), int(np.sum(d & (y == 0)))
    tpr_lo, tpr_hi = clopper_pearson(tp, n1, level)
    fpr_lo, fpr_hi = clopper_pearson(fp, n0, level)
    cands = [0.0]
    if tpr_lo > 0.0 and fpr_hi > 0.0:
        cands.append(float(np.log(tpr_lo / fpr_hi)))
    if fpr_hi < 1.0 and tpr_lo < 1.0:
        cands.append(float(np.log((1.0 - fpr_hi) / (1.0 - tpr_lo))))
    return {
        "eps": max(cands),
        "level": level,
        "tpr": tp / max(n1, 1),
        "fpr": fp / max(n0, 1),
        "tpr_lo": tpr_lo,
        "tpr_hi": tpr_hi,
        "fpr_lo": fpr_lo,
        "fpr_hi": fpr_hi,
    }


def per_class_auc(y: np.ndarray, scores: np.ndarray, labels: np.ndarray, top: int = 10) -> dict[str, object]:
    """AUC within each class that has members and non-members: ``{"auc": {class: auc}, "most_vulnerable":
    [classes by AUC, highest first, at most 3], "n_classes": scored classes}``. With more than 20 classes only the
    ``top`` most vulnerable are listed under ``auc``."""
    y, s = _check(y, scores)
    labels = np.asarray(labels, dtype=np.int64).ravel()
    aucs: dict[int, float] = {}
    for c in np.unique(labels):
        m = labels == c
        n1 = int(np.sum(y[m] == 1))
        n0 = int(m.sum()) - n1
        if n1 and n0:  # Mann-Whitney with mid-ranks: equals roc_auc_score (ties count one half), without its overhead
            r = rankdata(s[m])
            aucs[int(c)] = float((r[y[m] == 1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))
    order = sorted(aucs, key=lambda c: (-aucs[c], c))
    keep = order if len(order) <= 20 else order[:top]
    return {
        "auc": {str(c): round(aucs[c], 6) for c in sorted(keep)},
        "most_vulnerable": order[:3],
        "n_classes": len(aucs),
    }


def evaluate(
    y: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    fprs: list[float] | tuple[float, ...] = (0.001, 0.01),
    n_bootstrap: int = 200,
    seed: int = 0,
    decisions: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> AttackMetrics:
    """Every metric of one attack's target scores; ``threshold`` must have been chosen on shadow data.

    ``decisions`` bool [n]: the attack's own member/non-member decisions when they are not ``score >= threshold``
    (per-class thresholds); balanced accuracy and the epsilon bound use them. ``labels`` int [n]: class labels,
    for the per-class AUC."""
    y, s = _check(y, scores)
    n1, n0 = int(np.sum(y == 1)), int(np.sum(y == 0))
    resolvable = {fpr_key(a): fpr_resolvable(n0, a) for a in fprs}
    dec = (s >= threshold) if decisions is None else np.asarray(decisions, dtype=bool)
    if dec.shape != s.shape:
        raise ValueError(f"decisions has {dec.size} entries but scores has {s.size}")
    return AttackMetrics(
        auc=roc_auc(y, s),
        auc_ci=bootstrap_auc_ci(y, s, n_bootstrap, seed),
        balanced_accuracy=float(0.5 * (np.mean(dec[y == 1]) + np.mean(~dec[y == 0]))),
        threshold=float(threshold),
        tpr_at_fpr={fpr_key(a): (tpr_at_fpr(y, s, a) if resolvable[fpr_key(a)] else None) for a in fprs},
        fpr_resolvable=resolvable,
        n_members=n1,
        n_nonmembers=n0,
        n_bootstrap=int(max(n_bootstrap, 0)),
        roc=roc_points(y, s),
        eps_lower_bound=eps_lower_bound(y, dec),
        per_class=None if labels is None else per_class_auc(y, s, labels),
    )
