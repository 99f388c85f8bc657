"""Datasets, preprocessing, membership splits and query inputs (see docs/architecture.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class OwnerData:
    """What one model owner (the target, or one shadow) trains on. Arrays are preprocessed NHWC float32.

    x_train float32 [N, H, W, C], y_train int64 [N]: the owner's members minus its hold-out.
    x_holdout / y_holdout: the owner's own early-stopping hold-out, carved from its member set.
    x_test / y_test: the owner's non-members, used only to report host test accuracy (never for selection).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_holdout: np.ndarray
    y_holdout: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    seed: int
