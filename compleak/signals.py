"""Per-example membership signals from raw model outputs.

Every signal is computed in float64 from the *log-posterior* of a model, which is obtained once per output
array by :func:`log_posterior`:

- ``kind="logits"``: a numerically stable log-softmax (``z - logsumexp(z)``), so nothing over- or underflows even
  for logits in the thousands.
- ``kind="probs"`` (the model ends in softmax, or a dequantized int8/uint8 softmax output): the values are used as
  probabilities as they are -- **no second softmax**. Tiny negative values from dequantization are clipped to 0,
  rows are renormalised to sum to 1 (quantized softmax rows rarely sum exactly to 1), and ``log`` is taken of
  ``max(p, PROB_FLOOR)``. Rows that are clearly not probabilities (negative entries below ``-0.01`` or sums outside
  ``[0.5, 1.5]``) raise :class:`~rundir.ContractError`: the artifact's ``output_kind`` is wrong.

Shapes: ``values`` float [M, C]; ``labels`` int [M]; signals float64 [M].
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.special import log_softmax, logsumexp

from rundir import ContractError

#: Smallest probability used when taking logs of already-probability outputs (quantized softmax emits exact zeros).
PROB_FLOOR = 1e-12

OutputKind = Literal["logits", "probs"]


def log_posterior(values: np.ndarray, kind: OutputKind = "logits", source: str = "outputs") -> np.ndarray:
    """Log-posterior float64 [M, C] from raw outputs ``values`` [M, C] of the given ``kind`` (see module doc)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] < 2:
        raise ContractError(f"{source}: outputs must be [M, C] with C >= 2 classes, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ContractError(f"{source}: outputs contain NaN or Inf; re-collect this artifact")
    if kind == "logits":
        return log_softmax(v, axis=1)
    if kind != "probs":
        raise ContractError(f"{source}: output kind must be 'logits' or 'probs', got {kind!r}")
    if v.size and v.min() < -0.01:
        raise ContractError(
            f"{source}: declared 'probs' but has negative values (min {v.min():.3g}); set output_kind to 'logits'"
        )
    p = np.clip(v, 0.0, None)
    sums = p.sum(axis=1, keepdims=True)
    if p.size and (sums.min() < 0.5 or sums.max() > 1.5):
        raise ContractError(
            f"{source}: declared 'probs' but rows sum to {sums.min():.3g}..{sums.max():.3g}, not ~1; "
            "set output_kind to 'logits'"
        )
    p = p / sums
    return np.log(np.maximum(p, PROB_FLOOR))


def posterior(values: np.ndarray, kind: OutputKind = "logits", source: str = "outputs") -> np.ndarray:
    """Softmax posterior float64 [M, C] (rows sum to 1) from raw outputs of the given kind."""
    p = np.exp(log_posterior(values, kind, source))
    return p / p.sum(axis=1, keepdims=True)


def _label_index(log_p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (log_p.shape[0],):
        raise ContractError(f"labels have shape {labels.shape}, expected ({log_p.shape[0]},)")
    if labels.size and (labels.min() < 0 or labels.max() >= log_p.shape[1]):
        raise ContractError(f"labels outside [0, {log_p.shape[1]}) for outputs with {log_p.shape[1]} classes")
    return labels.astype(np.int64)


def loss(log_p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy loss ``-log p_y`` float64 [M] (nats)."""
    y = _label_index(log_p, labels)
    return -log_p[np.arange(len(y)), y]


def entropy(log_p: np.ndarray) -> np.ndarray:
    """Prediction entropy ``-sum_j p_j log p_j`` float64 [M] (nats); ``0 log 0 = 0``."""
    p = np.exp(log_p)
    return -np.sum(np.where(p > 0, p * log_p, 0.0), axis=1)


def _log_one_minus(log_p: np.ndarray) -> np.ndarray:
    """``log(1 - p_j)`` float64 [M, C], accurate also when ``p_j`` is close to 1.

    ``log1p(-p)`` loses everything once ``p_j`` rounds to 1, so for the (at most one per row) entry with
    ``p_j > 0.5`` the exact ``logsumexp_{i != j} log p_i`` is used instead.
    """
    p = np.exp(log_p)
    out = np.log1p(-np.minimum(p, 0.5))
    rows = np.nonzero(p.max(axis=1) > 0.5)[0]
    if rows.size:
        cols = np.argmax(p[rows], axis=1)
        masked = log_p[rows].copy()
        masked[np.arange(len(rows)), cols] = -np.inf
        out[rows, cols] = logsumexp(masked, axis=1)
    return out


def modified_entropy(log_p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Song & Mittal's modified entropy float64 [M] (lower for members).

    ``Mentr = -(1 - p_y) log p_y - sum_{j != y} p_j log(1 - p_j)``.
    """
    y = _label_index(log_p, labels)
    rows = np.arange(len(y))
    p = np.exp(log_p)
    l1m = _log_one_minus(log_p)
    py, lpy = p[rows, y], log_p[rows, y]
    other = p * l1m
    other[rows, y] = 0.0
    return -(1.0 - py) * lpy - other.sum(axis=1)


def scaled_logit(log_p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """LiRA's scaled logit ``log p_y - log(sum_{j != y} p_j)`` float64 [M].

    Computed as ``log p_y - logsumexp_{j != y} log p_j``, which for logits equals ``z_y - logsumexp_{j != y} z_j``
    exactly, without forming ``1 - p_y``.
    """
    y = _label_index(log_p, labels)
    rows = np.arange(len(y))
    masked = log_p.copy()
    masked[rows, y] = -np.inf
    return log_p[rows, y] - logsumexp(masked, axis=1)


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """One-hot float64 [M, n_classes]."""
    out = np.zeros((len(labels), n_classes), dtype=np.float64)
    out[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)] = 1.0
    return out


def sorted_features(
    reference: np.ndarray, others: list[np.ndarray] | tuple = (), labels: np.ndarray | None = None
) -> np.ndarray:
    """CompLeak's sorted feature vector, float64 [M, C * (1 + len(others) + (labels is not None))].

    ``reference`` posterior [M, C] is sorted ascending per row; every array in ``others`` (posteriors of other
    models on the same examples) and the one-hot label (when ``labels`` is given) are permuted by the *same*
    per-row indices and concatenated. With ``reference`` = original and ``others`` = [compressed] this is SR1,
    adding ``labels`` gives SR2; with no ``others`` it is the ML-Leaks-style sorted NR feature
    (``sorted-posterior-*`` rows; CompLeak's own NR uses :func:`raw_features`).
    """
    order = np.argsort(reference, axis=1, kind="stable")
    parts = [np.take_along_axis(reference, order, axis=1)]
    parts += [np.take_along_axis(np.asarray(o, dtype=np.float64), order, axis=1) for o in others]
    if labels is not None:
        parts.append(np.take_along_axis(one_hot(labels, reference.shape[1]), order, axis=1))
    return np.concatenate(parts, axis=1)


def raw_features(posterior_: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """CompLeak's NR feature vector (the paper's train_based_1 / train_based_2), float64 [M, C (+ C)].

    The posterior [M, C] as the model returned it, in class order (NOT sorted), followed by the one-hot label
    [M, C] when ``labels`` is given. Contrast :func:`sorted_features` (ML-Leaks-style sorted posteriors).
    """
    p = np.asarray(posterior_, dtype=np.float64)
    if labels is None:
        return p.copy()
    return np.concatenate([p, one_hot(labels, p.shape[1])], axis=1)
