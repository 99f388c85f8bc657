"""Query inputs of a collect: float32 [M, H, W, C] (NHWC) for example ids, from ``RUN/queries.npz`` (imported runs)
or rebuilt from the dataset and ``experiment.toml``'s preprocessing; where those inputs are exactly raw uint8 pixels
under an affine preprocessing, also the uint8 dataset a runner can hold on the device (``DeviceDataset``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness.collect.guard import load_queries
from harness.errors import HarnessError
from rundir import ContractError, RunDir


class QueryInputs:
    """Model inputs for example ids of one run, float32 [M, H, W, C] (NHWC), from ``queries.npz`` or the dataset.

    ``dataset`` (a :class:`~devices.runners.server.DeviceDataset`, or None) holds the same inputs as raw uint8 pixels
    plus the affine preprocessing, when they are exactly that (a uint8 dataset, no resize, and the runner's float32
    arithmetic checked bit for bit against ``x`` here); ``device_dataset=False`` never makes one."""

    def __init__(self, run: RunDir, needed: np.ndarray, device_dataset: bool = True) -> None:
        self.source: str
        self.dataset: Any = None
        queries = run.queries
        needed = np.unique(np.asarray(needed, dtype=np.int64))
        if queries.is_file():
            index, x = load_queries(queries)
            order = np.argsort(index, kind="stable")
            where = np.searchsorted(index, needed, sorter=order)
            where = np.minimum(where, len(index) - 1) if len(index) else where
            found = order[where] if len(index) else np.zeros(0, np.int64)
            ok = index[found] == needed if len(index) else np.zeros(len(needed), bool)
            if not ok.all():
                missing = needed[~ok]
                raise ContractError(
                    f"{queries}: {len(missing)} queried example ids missing (e.g. {missing[:3].tolist()})"
                )
            self.ids = needed
            same = len(found) == len(x) and np.array_equal(found, np.arange(len(x)))
            self.x = np.ascontiguousarray(x if same else x[found], dtype=np.float32)
            self.source = str(queries)
        else:
            from harness.config import load_experiment
            from harness.data import load_dataset, query_inputs

            if not run.experiment.is_file():
                raise HarnessError(
                    f"{run.root}: neither queries.npz nor experiment.toml; the run cannot rebuild its query inputs"
                )
            exp = load_experiment(run.experiment)
            data_dir = Path(exp.data.data_dir) if exp.data.data_dir else None
            ds = load_dataset(exp.data.dataset, data_dir=data_dir, download=exp.data.download)
            self.ids = needed
            self.x = query_inputs(ds, exp.data.preprocess, needed)
            self.source = f"{exp.data.dataset} + {run.experiment.name} [data.preprocess]"
            if device_dataset:
                self.dataset = _device_dataset(ds.x, exp.data.preprocess, needed, self.x)

    def for_runner(self, runner: Any, ids: np.ndarray) -> Any:
        """The queries of ``ids`` as ``runner``'s session takes them: rows of :attr:`dataset` (``DatasetRows``)
        when there is one and the runner takes rows (``accepts_dataset_rows``), else float32 [len(ids), H, W, C]."""
        if self.dataset is None or not getattr(runner, "accepts_dataset_rows", False):
            return self.rows(ids)
        from devices.runners.server import DatasetRows

        return DatasetRows(self.dataset, np.searchsorted(self.ids, ids))

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Inputs for ``ids`` in that order, float32 [len(ids), H, W, C] (``self.ids`` is sorted and unique)."""
        pos = np.searchsorted(self.ids, ids)
        if len(pos) and pos[-1] - pos[0] == len(pos) - 1 and np.all(np.diff(pos) == 1):
            return self.x[pos[0] : pos[-1] + 1]  # a contiguous run of ids: a view, no copy
        return self.x[pos]


def _device_dataset(raw_all: np.ndarray, pre: Any, ids: np.ndarray, x: np.ndarray) -> Any:
    """A :class:`~devices.runners.server.DeviceDataset` of the raw rows ``raw_all[ids]`` when ``x`` (the host's
    float32 queries of ``ids``) is exactly their affine preprocessing in the runner's arithmetic (checked bit for
    bit, in blocks), else None: float datasets, a resize, anything else keeps the float32 path."""
    from devices.runners.server import MAX_DATASET_BYTES, DeviceDataset

    if raw_all.dtype != np.uint8 or raw_all.ndim != 4 or x.shape != (len(ids), *raw_all.shape[1:]):
        return None
    if pre.resize is not None and tuple(pre.resize) != tuple(raw_all.shape[1:3]):
        return None
    if len(ids) * int(np.prod(raw_all.shape[1:])) > MAX_DATASET_BYTES:
        return None
    tup = lambda v: None if v is None else tuple(float(a) for a in v)  # noqa: E731
    ds = DeviceDataset(raw_all[ids], float(pre.scale), tup(pre.mean), tup(pre.std))
    for a in range(0, len(ids), 4096):
        b = min(a + 4096, len(ids))
        mine = ds.inputs(np.arange(a, b))
        if mine.shape != x[a:b].shape or not np.array_equal(mine.view(np.uint32), x[a:b].view(np.uint32)):
            return None
    return ds
