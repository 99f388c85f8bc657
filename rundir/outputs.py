"""``outputs/<device>/<artifact>.npz``: the raw outputs of one artifact on one device (:class:`OutputBatch`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from rundir.errors import ContractError
from rundir.files import atomic_save_npz, load_npz


@dataclass(frozen=True)
class OutputBatch:
    """Raw outputs of one artifact on one device.

    Attributes:
        index: int64 [M], example ids into ``Splits.labels``.
        values: float32 [M, C], dequantized raw outputs.
        kind: ``"logits"`` or ``"probs"`` (the model ends in softmax).
        source: where the batch was read from (set by :meth:`load`), used to name the file in errors.
    """

    index: np.ndarray
    values: np.ndarray
    kind: Literal["logits", "probs"] = "logits"
    source: str | None = field(default=None, compare=False, repr=False)

    def validate(self, source: str = "outputs") -> "OutputBatch":
        """Check dtypes and shapes: ``index`` 1-D integers, values a finite float [M, C] with C >= 2 classes."""
        if self.index.ndim != 1 or not np.issubdtype(self.index.dtype, np.integer):
            raise ContractError(
                f"{source}: index must be a 1-D integer array, got {self.index.dtype} {self.index.shape}"
            )
        if not np.issubdtype(self.values.dtype, np.floating):
            raise ContractError(
                f"{source}: {self.kind} must be a float array, got {self.values.dtype}; delete the file and re-collect"
            )
        if self.values.ndim != 2:
            raise ContractError(f"{source}: {self.kind} must be 2-D [M, C], got shape {self.values.shape}")
        if self.values.shape[1] < 2:
            raise ContractError(
                f"{source}: {self.kind} has {self.values.shape[1]} classes, need at least 2; delete the file and "
                "re-collect"
            )
        if len(self.index) != len(self.values):
            raise ContractError(f"{source}: index has {len(self.index)} rows but {self.kind} has {len(self.values)}")
        if len(np.unique(self.index)) != len(self.index):
            raise ContractError(f"{source}: index contains duplicate example ids")
        if not np.all(np.isfinite(self.values)):
            bad = int(np.sum(~np.isfinite(self.values).all(axis=1)))
            raise ContractError(f"{source}: {bad} rows of {self.kind} contain NaN or Inf; re-collect this artifact")
        return self

    def rows(self, ids: np.ndarray, source: str = "outputs") -> np.ndarray:
        """Values for example ``ids`` in that order, float32 [len(ids), C]; error if any id is missing."""
        pos = {int(i): p for p, i in enumerate(self.index)}
        missing = [int(i) for i in ids if int(i) not in pos]
        if missing:
            raise ContractError(
                f"{source}: {len(missing)} required example ids missing (e.g. {missing[:3]}); re-run collect"
            )
        return self.values[[pos[int(i)] for i in ids]]

    def save(self, path: Path) -> None:
        self.validate(str(path))
        atomic_save_npz(Path(path), index=self.index.astype(np.int64), **{self.kind: self.values.astype(np.float32)})

    @classmethod
    def load(cls, path: Path) -> "OutputBatch":
        z = load_npz(path)
        if "index" not in z:
            raise ContractError(f"{path}: missing array 'index'")
        if "logits" in z:
            kind, values = "logits", z["logits"]
        elif "probs" in z:
            kind, values = "probs", z["probs"]
        else:
            raise ContractError(f"{path}: needs an array 'logits' or 'probs'")
        if not np.issubdtype(values.dtype, np.floating):  # strings and booleans would convert silently
            raise ContractError(
                f"{path}: {kind} must be a float array, got {values.dtype}; delete the file and re-collect"
            )
        return cls(z["index"], values.astype(np.float32), kind, str(path)).validate(str(path))  # type: ignore[arg-type]
