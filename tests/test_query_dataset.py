"""Query inputs sent once per device (issue 13, collect): the runner protocol's ``dataset`` op and infer by rows.

- The runner's preprocessing of raw uint8 rows is the host's ``[data.preprocess]`` bit for bit.
- On the tiny run's real artifacts of every format (tflite float and int8, pte, ptl, onnx) on ``local``, collecting
  through the device-resident dataset gives bit-identical outputs to the float32 path, and the provenance says how
  the queries travelled and what the host sent (the dataset once, then 4 bytes per query).
- A runner whose hello lists no ``dataset`` op, or one that refuses the dataset, gets float32 queries: same outputs.
- A runner killed mid-artifact: the rerun resumes (fresh runner, dataset sent again) with identical outputs.
- Untrusted requests to the runner: a wrong key, an oversized dataset, a bad preprocessing, rows out of range or
  of the wrong size, an infer naming no held dataset: one-line error replies, and the runner stays in step.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from hostile_fixtures import copy_run
from rich.console import Console

import devices.runners.server as rs
from devices.errors import DeviceError
from devices.ondevice import compleak_runner as cr
from devices.ondevice import runner_path
from harness.collect.stage import collect_run
from rundir import RunDir

#: one artifact of every format, a quantized-input TF-Lite model among them, and a reference model
ARTS = ["tf-target-original.tflite", "tf-target-int8.tflite", "torch-target-original.pte",
        "torch-target-original.ptl", "torch-target-original.onnx", "torch-shadow0-int8.pte"]


def _collect(run: Path, arts: list[str], **kw: object) -> None:
    collect_run(run, "local", artifacts=arts, chunk_size=250, console=Console(quiet=True), perturbations=0,
                **kw)  # type: ignore[arg-type]


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def _prov(run: Path, art: str) -> dict:
    return json.loads(RunDir(run).output_provenance("local", art).read_text())


def _same_outputs(a: Path, b: Path, arts: list[str]) -> None:
    for art in arts:
        x, y = RunDir(a).load_outputs("local", art), RunDir(b).load_outputs("local", art)
        assert np.array_equal(x.index, y.index), art
        assert np.array_equal(_bits(x.values), _bits(y.values)), f"{art}: outputs differ between the two paths"


@pytest.fixture(scope="module")
def float_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run collected on ``local`` the old way: float32 queries for every chunk."""
    run = copy_run(tiny_run, tmp_path_factory.mktemp("float") / "run")
    _collect(run, ARTS, device_dataset=False)
    return run


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("mean,std", [(None, None), ([0.5], [0.25]),
                                      ([0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261])])
def test_runner_preprocessing_is_the_hosts_bit_for_bit(mean: list[float] | None, std: list[float] | None) -> None:
    from harness.config import Preprocess
    from harness.data import Dataset, load_dataset, query_inputs

    rng = np.random.default_rng(0)
    ds = Dataset("rgb", rng.integers(0, 256, (300, 6, 5, 3), dtype=np.uint8), np.zeros(300, np.int64), 1)
    pre = Preprocess(scale=1 / 255, mean=mean, std=std)
    ids = rng.permutation(300)[:200]
    host = query_inputs(ds, pre, ids)
    dev = rs.DeviceDataset(ds.x[ids], pre.scale, None if mean is None else tuple(mean), None if std is None else
                           tuple(std))
    held = cr.HeldDataset(dev.key, dev.raw, json.loads(json.dumps(dev.preprocess())))  # as the runner gets it
    assert np.array_equal(_bits(held.inputs(np.arange(200))), _bits(host))
    assert np.array_equal(_bits(dev.inputs(np.arange(200))), _bits(host))
    digits = load_dataset("digits")
    assert np.array_equal(_bits(cr.preprocess_uint8(digits.x[:500], np.float32(1 / 255))),
                          _bits(query_inputs(digits, Preprocess(), np.arange(500))))


# --------------------------------------------------------------------------- collect: both paths, same outputs


def test_device_dataset_equals_float_queries_for_every_format(float_run: Path, tiny_run: Path, tmp_path: Path) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    _collect(run, ARTS)
    _same_outputs(float_run, run, ARTS)
    splits = RunDir(run).load_splits()
    union = np.unique(np.concatenate([splits.collected_ids(r, s) for r, s in (("target", None), ("shadow", 0))]))
    row = 8 * 8 * 1
    sent_dataset = 0
    for art in ARTS:
        old, new = _prov(float_run, art), _prov(run, art)
        assert old["query_transport"] == "float32" and new["query_transport"] == "device dataset"
        assert all("device-resident uint8 dataset" in c["transfer"] for c in new["chunks"])
        assert all(c["query_dataset"]["shape"] == [len(union), 8, 8, 1] for c in new["chunks"])
        n = new["n_queries"]
        assert old["bytes_sent"]["queries"] == 4 * row * n  # float32 rows
        assert new["bytes_sent"]["queries"] == 4 * n  # one uint32 row number per query
        assert new["bytes_sent"]["model"] == old["bytes_sent"]["model"] == (run / "artifacts" / art).stat().st_size
        sent_dataset += new["bytes_sent"]["dataset"]
    assert sent_dataset == len(union) * row  # the uint8 dataset went once, for the whole collection
    assert _prov(run, ARTS[0])["chunks"][0]["query_dataset"]["sent_with_this_chunk"] is True


def _variant_runner(path: Path, *edits: tuple[str, str]) -> Path:
    """The real runner source with textual ``edits`` (old, new): an older or stricter runner."""
    text = runner_path().read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    return path


@pytest.mark.parametrize("kind", ["no-dataset-op", "refuses-dataset"])
def test_runner_without_the_dataset_op_gets_float_queries(kind: str, float_run: Path, tiny_run: Path,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if kind == "no-dataset-op":  # protocol 1 as it was: the hello lists no ops
        edits = [('"ops": list(OPS), "max_dataset_bytes": MAX_DATASET_BYTES', '"old": True')]
        why = "does not list the dataset op"
    else:  # lists the op, then refuses the dataset (it keeps only 100 bytes)
        edits = [('"max_dataset_bytes": MAX_DATASET_BYTES', '"max_dataset_bytes": 1 << 30'),
                 ("MAX_DATASET_BYTES = 1 << 30", "MAX_DATASET_BYTES = 100")]
        why = "refused the query dataset"
    runner = _variant_runner(tmp_path / "compleak_runner.py", *edits)
    monkeypatch.setattr(rs, "runner_path", lambda: runner)
    run = copy_run(tiny_run, tmp_path / "run")
    arts = ARTS[:2]
    _collect(run, arts)
    _same_outputs(float_run, run, arts)
    for art in arts:
        prov = _prov(run, art)
        assert prov["query_transport"] == "float32"
        assert all(why in c["dataset_fallback"] for c in prov["chunks"])
    # the refusing runner was sent the dataset once (refused, then never again); the older one never
    n = len(RunDir(run).load_splits().collected_ids("target"))
    assert sum(_prov(run, a)["bytes_sent"]["dataset"] for a in arts) == (0 if kind == "no-dataset-op" else n * 64)


def test_runner_killed_mid_artifact_resumes_with_identical_outputs(float_run: Path, tiny_run: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    arts = ["tf-target-original.tflite", "torch-target-original.onnx"]
    chunks = -(-len(RunDir(run).load_splits().collected_ids("target")) // 250)  # per artifact (both are targets)
    assert chunks >= 3
    infer_rows = rs.RunnerServer.infer_rows
    calls = [0]

    def kill_mid_second(self: rs.RunnerServer, *a: object, **kw: object):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == chunks + 2:  # the second artifact's second chunk: its runner dies under it
            os.kill(self.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
        return infer_rows(self, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(rs.RunnerServer, "infer_rows", kill_mid_second)
    with pytest.raises(DeviceError) as exc:
        _collect(run, arts)
    assert "\n" not in str(exc.value) and "torch-target-original.onnx" in str(exc.value)
    partial = RunDir(run).outputs_dir("local") / ".partial" / "torch-target-original.onnx"
    assert len(list(partial.rglob("*.npz"))) == 1  # the finished chunk is kept
    monkeypatch.setattr(rs.RunnerServer, "infer_rows", infer_rows)
    _collect(run, arts)  # a fresh runner: the dataset goes again, the stored chunk is reused
    _same_outputs(float_run, run, arts)
    prov = _prov(run, "torch-target-original.onnx")
    assert prov["query_transport"] == "device dataset"
    assert [c["query_dataset"]["sent_with_this_chunk"] for c in prov["chunks"]] == [False, True] + [False] * (
        chunks - 2)
    assert not partial.exists()


# --------------------------------------------------------------------------- the runner's side, untrusted requests


def _frame(header: dict, payload: bytes = b"") -> bytes:
    """A request as the host frames it (``bytes``: the payload's size unless the header says otherwise)."""
    return cr.frame({"bytes": len(payload), **header}) + payload


def _replies(data: bytes) -> list[tuple[dict, bytes]]:
    out = io.BytesIO()
    assert cr.serve(io.BytesIO(data), out) == 0
    stream, replies = io.BytesIO(out.getvalue()), []
    while (header := cr.read_message(stream)) is not None:
        replies.append((header, stream.read(int(header.get("bytes") or 0))))
    return replies


def test_runner_checks_every_dataset_request(tiny_run: Path) -> None:
    model = str(RunDir(tiny_run).artifacts_dir / "tf-target-original.tflite")
    raw = np.random.default_rng(1).integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    key = hashlib.sha256(raw.tobytes()).hexdigest()
    pre = {"scale": float(np.float32(1 / 255)), "mean": None, "std": None}
    ds = {"op": "dataset", "key": key, "shape": [40, 8, 8, 1], "dtype": "uint8", "preprocess": pre}
    rows = np.array([3, 0, 39, 3], "<u4")

    def by_rows(r: np.ndarray, **kw: object) -> bytes:
        return _frame({"op": "infer", "dataset": key, "rows": len(r), "batch_size": 2, **kw}, r.tobytes())

    stream = b"".join([
        _frame({"op": "load", "model": model}),
        _frame({**ds, "key": "0" * 64}, raw.tobytes()),  # not the payload's sha256
        by_rows(rows),  # ... so nothing is held
        _frame({**ds, "preprocess": {**pre, "std": [1.0, 2.0]}}, raw.tobytes()),  # 2 std values for 1 channel
        _frame({**ds, "preprocess": {**pre, "scale": "1/255"}}, raw.tobytes()),
        _frame({**ds, "shape": [40, 8, 8, 2]}, raw.tobytes()),  # payload of another size
        _frame({**ds, "dtype": "float32"}, raw.tobytes()),
        _frame(ds, raw.tobytes()),  # good
        by_rows(np.array([0, 40], "<u4")),  # row 40 of 40
        _frame({"op": "infer", "dataset": key, "rows": 5, "batch_size": 2}, rows.tobytes()),  # 4 rows' bytes for 5
        _frame({"op": "infer", "dataset": "f" * 64, "rows": 4, "batch_size": 2}, rows.tobytes()),
        by_rows(rows),  # good
        _frame({**ds, "shape": [1 << 16, 128, 128, 2], "bytes": 1 << 31}),  # over the limit (payload never sent)
    ])
    replies = _replies(stream)
    assert len(replies) == 14
    hello, load = replies[0][0], replies[1][0]
    assert "dataset" in hello["ops"] and hello["max_dataset_bytes"] == cr.MAX_DATASET_BYTES and load["ok"]
    errors = [h.get("error", "") for h, _ in replies[2:]]
    for i, want in [(0, "sha256"), (1, "holds no dataset"), (2, "a list of 1"), (3, "not a finite number"),
                    (4, "payload bytes for a uint8 dataset"), (5, "only uint8"), (7, "row 40 named"),
                    (8, "4 payload bytes per row"), (9, "but the runner holds dataset"), (11, "over this runner's")]:
        assert want in errors[i] and "\n" not in errors[i], (i, errors[i])
    assert replies[8][0] == {"ok": True, "key": key, "rows": 40}
    header, payload = replies[12]
    assert replies[10][0]["ok"] is False and replies[13][0]["ok"] is False
    assert header["ok"] and header["shape"][0] == 4 and header["batch_sizes"] == [2, 2]
    expected = cr.load_model(model).predict(cr.preprocess_uint8(raw[rows.astype(np.int64)], pre["scale"]), 2)
    assert np.array_equal(_bits(np.frombuffer(payload, np.float32).reshape(header["shape"])), _bits(expected))
