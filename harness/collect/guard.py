"""Defences of the collect stage against untrusted input (issue 11): device outputs, ``queries.npz``, concurrent runs.

- :func:`bad_outputs` / :func:`refuse_bad_outputs`: what a device returned must have the manifest's shape (one row
  per query, the artifact's class count, a float dtype, finite values, probabilities in [0, 1]); otherwise nothing
  is stored. The same check decides whether stored outputs and stored chunks count as done on a rerun.
- :func:`load_queries`: ``RUN/queries.npz`` is read bounded and validated (integer ids, float inputs of rank 4,
  finite, duplicate ids only with identical rows); :func:`check_input_shape` compares the inputs with every
  artifact's input spec from the manifest.
- :class:`CollectLock`: one ``collect`` per (run, device); a second fails at once naming the holder.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from harness.errors import HarnessError
from rundir import ArtifactRecord, ContractError, RunDir

#: largest ``queries.npz`` array read (bytes, after decompression)
MAX_QUERY_BYTES = 8 << 30


# --------------------------------------------------------------------------- device outputs


def expected_classes(rec: ArtifactRecord) -> int | None:
    """Values per query the manifest states for ``rec``'s first output (product of its non-batch dimensions), or
    None when a dimension is dynamic."""
    from devices.runners.base import output_classes

    return output_classes(rec)


def bad_outputs(rec: ArtifactRecord, values: Any, n_rows: int, n_labels: int = 0) -> str | None:
    """Why ``values`` cannot be ``rec``'s outputs for ``n_rows`` queries (one phrase), or None when they can.

    Accepted: a float array [n_rows, C] where C is the manifest's class count (when it states one, else C >= 1 and
    C >= ``n_labels``, the number of label classes), every value finite, and for ``probs`` artifacts every value in
    [0, 1] (1 % slack for quantized softmax outputs).
    """
    if not isinstance(values, np.ndarray) or not np.issubdtype(values.dtype, np.floating):
        return f"outputs of dtype {getattr(values, 'dtype', type(values).__name__)}, not float"
    want = expected_classes(rec)
    want_text = f"[{n_rows}, {want}]" if want else f"[{n_rows}, C >= {max(1, n_labels)}]"
    if values.ndim != 2 or values.shape[0] != n_rows:
        return f"outputs of shape {list(values.shape)} where the manifest implies {want_text}"
    c = values.shape[1]
    if c < 1 or (want is not None and c != want) or (want is None and c < n_labels):
        return f"outputs of shape {list(values.shape)} where the manifest implies {want_text}"
    finite = np.isfinite(values)
    if not finite.all():
        return f"NaN/Inf outputs for {int((~finite).any(axis=1).sum())} of {n_rows} queries"
    if rec.output_kind == "probs" and values.size and (values.min() < -0.01 or values.max() > 1.01):
        return f"probabilities outside [0, 1] (from {float(values.min()):.3g} to {float(values.max()):.3g})"
    return None


def refuse_bad_outputs(rec: ArtifactRecord, values: Any, n_rows: int, n_labels: int, device_id: str) -> None:
    """Raise a one-line :class:`HarnessError` (nothing is stored) when :func:`bad_outputs` finds a problem."""
    why = bad_outputs(rec, values, n_rows, n_labels)
    if why is not None:
        raise HarnessError(
            f"{rec.id} on {device_id}: the device returned {why}; nothing was stored. The artifact does not match "
            f"its manifest record or the device runtime is broken: check both (`compleak devices probe "
            f"{device_id}`), then rerun collect"
        )


# --------------------------------------------------------------------------- queries.npz


def load_queries(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``index`` int64 [M] and ``x`` float32 [M, H, W, C] of a ``queries.npz``, validated; duplicate ids (with
    identical rows) are kept, the caller looks ids up. Raises :class:`ContractError` (one line, naming the file and
    the fix) for anything else: not an npz, missing arrays, pickled objects, ids that are not integers, raw integer
    pixels instead of preprocessed float inputs, NaN/Inf, duplicate ids with different rows, absurd sizes."""
    fix = "export it again with index int64 [M] and x float32 [M, H, W, C] (preprocessed model inputs)"
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ContractError(f"{path}: not an .npz archive; {fix}")
        with z:
            missing = [k for k in ("index", "x") if k not in z.files]
            if missing:
                raise ContractError(f"{path}: no array {missing[0]!r}; {fix}")
            for name in ("index", "x"):  # bounded: the declared size is checked before anything is inflated
                info = z.zip.getinfo(f"{name}.npy")
                if info.file_size > MAX_QUERY_BYTES:
                    raise ContractError(f"{path}: array {name!r} is {info.file_size} bytes, more than "
                                        f"{MAX_QUERY_BYTES}; {fix}")
            index, x = z["index"], z["x"]
    except ContractError:
        raise
    except (OSError, KeyError, ValueError, EOFError, MemoryError, zipfile.BadZipFile) as exc:
        why = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise ContractError(f"{path}: not a readable queries archive ({why}); {fix}") from None
    if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer) or np.issubdtype(index.dtype, np.bool_):
        raise ContractError(f"{path}: index is {index.dtype} {list(index.shape)}, not integer example ids [M]; {fix}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ContractError(
            f"{path}: x is {x.dtype}, not float: raw pixels instead of preprocessed model inputs; apply the "
            f"experiment's [data.preprocess] and {fix}"
        )
    if x.ndim != 4 or len(x) != len(index):
        raise ContractError(f"{path}: x has shape {list(x.shape)} for {len(index)} ids; {fix}")
    index = index.astype(np.int64)
    if len(index) and index.min() < 0:
        raise ContractError(f"{path}: negative example id {int(index.min())}; {fix}")
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1) if x.size else np.zeros(len(x), bool)
    if bad.any():
        raise ContractError(f"{path}: x has NaN/Inf for {int(bad.sum())} ids (e.g. id {int(index[bad][0])}); {fix}")
    order = np.argsort(index, kind="stable")
    sorted_ids = index[order]
    dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if len(dup):
        first = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])  # first row of every id, in order
        group = np.cumsum(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]]) - 1
        same = np.all(x[order] == x[order[first[group]]], axis=tuple(range(1, x.ndim)))
        if not same.all():
            bad_id = int(sorted_ids[~same][0])
            raise ContractError(
                f"{path}: example id {bad_id} appears more than once with different inputs; keep one row per id "
                f"and {fix}"
            )
    return index, x


def _fits(spec: Sequence[int], hwc: Sequence[int]) -> bool:
    dims = list(spec[1:])
    h, w, c = hwc
    ok = lambda want: all(d < 0 or d == e for d, e in zip(dims, want))  # noqa: E731
    return ok([h, w, c]) or ok([c, h, w])


def check_input_shape(inputs: Any, records: Sequence[ArtifactRecord]) -> None:
    """Refuse (one line) query inputs ``inputs.x`` [M, H, W, C] whose per-example shape fits none of the layouts
    (NHWC, NCHW) of an artifact's 4-D input spec in the manifest; other specs are left to the runner."""
    x = getattr(inputs, "x", None)
    if x is None or getattr(x, "ndim", 0) != 4:
        return
    hwc = tuple(int(d) for d in x.shape[1:])
    for rec in records:
        spec = rec.inputs[0].shape if rec.inputs else []
        if len(spec) == 4 and not _fits(spec, hwc):
            raise ContractError(
                f"{inputs.source}: query inputs are [M, {', '.join(map(str, hwc))}] but {rec.id} takes {spec} "
                f"(manifest); the queries were not made with this run's preprocessing: rebuild or re-export them"
            )


# --------------------------------------------------------------------------- one collect per (run, device)


class CollectLock:
    """An exclusive ``fcntl.flock`` on ``RUN/.collect-<device>.lock`` for the duration of a collect.

    The file holds ``{"pid", "host", "since", "device"}`` of its holder; a second collect on the same run and device
    fails at once with one line naming them. The kernel drops the lock when its holder dies, so a lock file left by
    a killed process does not block (it is taken over). The file is removed on release, so a finished or failed
    collect leaves the run as it was.
    """

    def __init__(self, run: RunDir, device_id: str) -> None:
        self.path = run.collect_lock(device_id)
        self.run, self.device_id = run, device_id
        self._fd: int | None = None

    def _holder(self, fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        except (OSError, ValueError):
            info = None
        if not isinstance(info, dict):
            return "another process"
        pid, host, since = (str(info.get(k, "?"))[:64] for k in ("pid", "host", "since"))
        return f"pid {pid} on {host} since {since}"

    def acquire(self) -> "CollectLock":
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        while True:
            try:
                fd = os.open(self.path, flags, 0o600)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise HarnessError(f"{self.path}: the collect lock is a symlink; remove it and rerun") from None
                raise HarnessError(
                    f"{self.path}: cannot create the collect lock ({exc.strerror}); make {self.run.root} writable"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                raise HarnessError(
                    f"{self.run.root}: another collect on {self.device_id} holds {self.path.name} ({holder}); wait "
                    f"for it to finish or stop it, then rerun (a lock left by a killed process is taken over)"
                ) from None
            try:
                same = os.stat(self.path, follow_symlinks=False)
                mine = os.fstat(fd)
                ours = (same.st_dev, same.st_ino) == (mine.st_dev, mine.st_ino)
            except FileNotFoundError:
                ours = False
            if not ours:  # the previous holder removed it while we opened it: lock the new file instead
                os.close(fd)
                continue
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": self.device_id}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            self._fd = fd
            return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            st, mine = os.stat(self.path, follow_symlinks=False), os.fstat(fd)
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                os.unlink(self.path)  # still holding the lock: nobody else can be using this file
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> "CollectLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
