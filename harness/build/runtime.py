"""What a build unit's result depends on besides its inputs, applied the same way wherever the unit runs.

A build unit (one framework, one owner) gives the same bytes serially in the driver, in a worker of an embedded
Ray and on a cluster node only when everything its numbers depend on is fixed by the config, not by the process
that runs it: ``[build] threads`` (CPU kernels split their sums by thread count; Ray workers start with
``OMP_NUM_THREADS=1``, the serial driver with all cores), ``[build] deterministic`` (op determinism) and the owner's
seed. This module holds the part common to both frameworks -- the OpenMP/BLAS thread pools (scikit-learn's k-means,
NumPy) and the process-wide random generators, set on entry and restored on exit -- and the ``build`` record every
artifact's manifest entry carries (:func:`settings_record`). Each framework applies its own part:
:func:`harness.build.torch_train.torch_settings`, :func:`harness.build.tf_pipeline.configure_runtime`.
docs/scale.md, "Results independent of where they ran".
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np

from harness.config import BuildSection


@contextlib.contextmanager
def unit_runtime(settings: BuildSection, seed: int) -> Iterator[None]:
    """Run a build unit with ``settings.threads`` threads in every OpenMP/BLAS pool loaded so far and Python's and
    NumPy's global generators seeded with the owner's ``seed`` (nothing of the build should draw from them; should a
    library do so, it draws the same numbers wherever the unit runs). The caller's state is restored afterwards."""
    from threadpoolctl import threadpool_limits

    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        with threadpool_limits(limits=settings.threads):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def cpu_pool_limits(threads: int) -> contextlib.AbstractContextManager[Any]:
    """``threads`` threads in every OpenMP/BLAS pool loaded by now (call it after importing the library whose pool
    matters, e.g. scikit-learn's bundled OpenMP for k-means: a pool loaded later is not limited by
    :func:`unit_runtime`)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads)


def settings_record(threads: int, deterministic: bool, device: str) -> dict[str, Any]:
    """The ``build`` entry of an artifact's manifest record: what its bytes depended on, as applied in the unit.

    ``threads`` and ``deterministic`` are the values in effect: the configured ones (``[build]``), unless a
    framework was initialised with others earlier in the same process (TF fixes its thread pools at its first op),
    which the builder then also says in a notice; ``device`` is where the unit trains (``cpu``, ``cuda``, ``gpu``).
    Nothing about where the unit ran (host, executor, process) is recorded: that must not matter."""
    return {"threads": int(threads), "deterministic": bool(deterministic), "device": device}
