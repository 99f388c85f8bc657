"""Reading output batches for the attacks: rows by example id, one class count for every batch, and the signals of
one side (a variant's reference models pooled, or the target) that the fitters and scorers work on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from compleak import signals as sig
from rundir import ContractError, OutputBatch, Splits


def source_name(batch: Any, fallback: str) -> str:
    """The file a batch was read from (its ``source``), else ``fallback``: what an error message names."""
    return getattr(batch, "source", None) or fallback


def take(batch: OutputBatch, ids: np.ndarray, src: str) -> np.ndarray:
    """Rows of ``batch`` for ``ids`` in that order, float32 [len(ids), C] (vectorised ``OutputBatch.rows``)."""
    order = np.argsort(batch.index, kind="stable")
    sorted_idx = batch.index[order]
    pos = np.minimum(np.searchsorted(sorted_idx, ids), max(len(order) - 1, 0))
    found = sorted_idx[pos] == ids if len(order) else np.zeros(len(ids), bool)
    if not found.all():
        missing = [int(i) for i in ids[~found][:3]]
        raise ContractError(
            f"{src}: {int((~found).sum())} required example ids missing (e.g. {missing}); re-run collect"
        )
    return batch.values[order[pos]]


def covers(batch: Any, ids: np.ndarray) -> bool:
    """Whether ``batch`` has a row for every id of ``ids`` [n]."""
    return bool(np.all(np.isin(ids, batch.index)))


class Classes:
    """Checks every batch once and that all share one class count matching the labels."""

    def __init__(self, splits: Splits) -> None:
        self.labels = splits.labels.astype(np.int64)
        self.n: int | None = None
        self.first = ""

    def check(self, batch: OutputBatch, what: str) -> str:
        """Validate ``batch`` (ids within the labels, the shared class count); returns its name for messages."""
        src = source_name(batch, what)
        batch.validate(src)
        if batch.index.size and (batch.index.min() < 0 or batch.index.max() >= len(self.labels)):
            raise ContractError(f"{src}: index has example ids outside [0, {len(self.labels)}) of the splits' labels; "
                                "outputs and splits.npz do not belong together")
        c = batch.values.shape[1]
        if self.n is None:
            self.n, self.first = c, src
            if self.labels.size and self.labels.max() >= c:
                raise ContractError(
                    f"{src}: {c} output classes but splits labels go up to {int(self.labels.max())}; "
                    "outputs and splits.npz do not belong together"
                )
        elif c != self.n:
            raise ContractError(f"{src}: {c} classes but {self.first} has {self.n}; all variants must share classes")
        return src

    def log_p(self, batch: OutputBatch, ids: np.ndarray, what: str) -> np.ndarray:
        """Checked log-posterior float64 [len(ids), C] of ``batch`` on ``ids``."""
        src = self.check(batch, what)
        return sig.log_posterior(take(batch, ids, src), batch.kind, src)


@dataclass
class Signals:
    """One model's signals on a list of examples (the target's on the candidates)."""

    log_p: np.ndarray  # float64 [n, C]
    labels: np.ndarray  # int64 [n]

    @property
    def p(self) -> np.ndarray:
        """Posterior float64 [n, C]."""
        return np.exp(self.log_p)

    def p_y(self) -> np.ndarray:
        """True-class probability float64 [n]."""
        return np.exp(self.log_p[np.arange(len(self.labels)), self.labels])


@dataclass
class ShadowSide(Signals):
    """A variant's learned reference models pooled: each reference on its own ``shadow_in ∪ shadow_out``, with the
    reference's exact membership (the attacker's training data)."""

    y: np.ndarray  # int64 [n], 1 member of the reference that produced the row
    ids: np.ndarray  # int64 [n], example ids
    owner: np.ndarray  # int64 [n], reference index per row
