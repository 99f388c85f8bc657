"""Issue 11, class 2: nothing in a run's build caches or in dataset files executes code, and reads are bounded.

Each planted input is the real attack: a Keras model whose ``Lambda`` layer runs a shell command (as legacy HDF5 and
as a ``.keras`` zip with a forged digest record), a torch cache file whose pickle calls ``os.system``, a CIFAR batch
whose pickle calls ``os.system``. The command would create a sentinel file; every test asserts it never appears and
that what the build ships is not the planted model. Downloads are exercised against a real https server on
127.0.0.1 (self-signed certificate trusted through ``SSL_CERT_FILE``).

Every hostile case goes through the shared check (``hostile_fixtures.check``; a stage's error judged as the CLI prints
it): exit 2, one ``error:`` line, no traceback, the build folder or data folder byte-identical, a sentinel folder beside
it untouched. A build that must rebuild over a refused cache entry succeeds (``status=0``) and may write only the
refused entry and what is built from it; the controls with intact input are marked ``hostile_exempt``.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import pickle
import pickletools
import shlex
import ssl
import struct
import subprocess
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hostile_fixtures import Site, check, make_site

from harness.config import Experiment
from harness.data import OwnerData, download_verified, load_dataset

pytestmark = pytest.mark.slow


def _data_site(tmp_path: Path) -> Site:
    """A data-loading case: nothing under ``tmp`` (the data files, a would-be ``PWNED``) may change, a sentinel
    ``tmp/victim`` included; no run is made (``tmp/run`` stays absent)."""
    return make_site(tmp_path / "run", also=[tmp_path])


def _rebuild(why: str, *written: str) -> dict:
    """``check`` arguments for a build that succeeds over a refused cache entry, writing only ``written``."""
    return {"status": 0, "errors": 0, "writes": written, "why": why}


def _digits_owner(n_train: int = 300) -> OwnerData:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]  # NHWC [N, 8, 8, 1]
    y = d.target.astype(np.int64)
    p = np.random.default_rng(0).permutation(len(x))
    tr, ho, te = p[:n_train], p[n_train : n_train + 50], p[n_train + 50 : n_train + 250]
    return OwnerData(x[tr], y[tr], x[ho], y[ho], x[te], y[te], n_classes=10, seed=0)


def _experiment() -> Experiment:
    return Experiment.model_validate(
        {
            "model": {"arch": "cnn-small"},
            "train": {"epochs": 2, "batch_size": 64, "optimizer": "adam", "lr": 0.003},
            "compress": {"finetune_epochs": 1, "finetune_lr": 5e-4},
        }
    )


def _lambda_model(sentinel: Path):
    """A Keras model whose Lambda layer runs ``touch SENTINEL`` whenever the layer is called (also when a loader
    rebuilds the model from its config) and outputs the constant logit 7."""
    from harness.build.tf_pipeline import keras

    cmd = f"touch {shlex.quote(str(sentinel))}"
    fn = eval(f"lambda t: (__import__('os').system({cmd!r}), t * 0.0 + 7.0)[1]")  # a real lambda: its bytecode is saved
    inp = keras.Input((8, 8, 1), name="input")
    x = keras.layers.Flatten()(inp)
    x = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inp, keras.layers.Lambda(fn)(x))
    sentinel.unlink()  # building it ran the command once; from now on nothing may
    return model


def _tflite_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    from devices.ondevice.compleak_runner import load_model

    return load_model(str(path)).predict(x)


# --------------------------------------------------------------------------- TF build cache


@pytest.fixture(scope="module")
def tf_clean(tmp_path_factory: pytest.TempPathFactory):
    """One clean TF build of ``original`` (its cache entry and sidecar) to tamper with in copies."""
    import harness.build.tf_pipeline as tb

    out = tmp_path_factory.mktemp("tf-clean")
    exp, owner = _experiment(), _digits_owner()
    tb.build_variants(exp, owner, ["original"], out, "target")
    return exp, owner, out


def _tf_cache_entry(out: Path, exp, owner) -> Path:
    import harness.build.tf_pipeline as tb

    return out / tb.CACHE_DIR / f"tf-target-original-{tb.original_key(exp, owner)[:16]}.keras"


def _count_training(monkeypatch: pytest.MonkeyPatch, module) -> list[int]:
    calls: list[int] = []
    real = module.train_model

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(module, "train_model", counting)
    return calls


@pytest.mark.hostile_exempt("the control: an intact cache entry (no hostile input) is reused, not retrained")
def test_tf_verified_cache_entry_is_reused(tf_clean, tmp_path, monkeypatch):
    """The control: an intact entry (zip .keras + matching sidecar) is loaded, not retrained, same file out."""
    import shutil

    import harness.build.tf_pipeline as tb

    exp, owner, clean = tf_clean
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    entry = _tf_cache_entry(out, exp, owner)
    side = json.loads((entry.parent / (entry.name + ".json")).read_text())
    assert zipfile.is_zipfile(entry) and side["sha256"] == hashlib.sha256(entry.read_bytes()).hexdigest()
    assert side["key"] == tb.original_key(exp, owner) and side["format"] == tb.CACHE_FORMAT
    calls = _count_training(monkeypatch, tb)
    (art,) = tb.build_variants(exp, owner, ["original"], out, "target")
    assert calls == []
    x = owner.x_test[:64]
    np.testing.assert_allclose(_tflite_outputs(art.path, x), _tflite_outputs(clean / art.path.name, x), atol=1e-5)
    model = tb.load_keras(entry)
    assert model.count_params() == tb.build_model("cnn-small", (8, 8, 1), 10).count_params()


@pytest.mark.parametrize("fmt", ["h5", "keras"])
def test_tf_planted_lambda_model_never_runs_nor_ships(tf_clean, tmp_path, monkeypatch, fmt):
    """The issue's attack: a Lambda model planted where the trained original is cached. As legacy HDF5 (no sidecar)
    and as a .keras zip with a forged sidecar (correct sha256, key and recipe): never deserialized, rebuilt."""
    import shutil

    import harness.build.tf_pipeline as tb

    exp, owner, clean = tf_clean
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    sentinel = tmp_path / "PWNED"
    sentinel.touch()
    planted = _lambda_model(sentinel)
    entry = _tf_cache_entry(out, exp, owner)
    side = entry.parent / (entry.name + ".json")
    tmp_file = tmp_path / f"planted.{fmt}"
    planted.save(tmp_file)
    entry.write_bytes(tmp_file.read_bytes())
    if fmt == "keras":  # the attacker knows the sidecar scheme and forges it
        rec = json.loads(side.read_text())
        rec["sha256"] = hashlib.sha256(entry.read_bytes()).hexdigest()
        side.write_text(json.dumps(rec))
    else:
        side.unlink()
    planted_digest = hashlib.sha256(entry.read_bytes()).hexdigest()
    site = make_site(out, also=[tmp_path])  # tmp holds PWNED's folder: nothing may appear there

    check(lambda: tb.load_keras(entry), str(entry.name), "refused", site=site)  # the public loader: one line too
    assert not sentinel.exists()

    calls = _count_training(monkeypatch, tb)
    messages: list[str] = []
    built: list = []
    check(lambda: built.extend(tb.build_variants(exp, owner, ["original"], out, "target", progress=messages.append)),
          site=site, **_rebuild("the refused entry is rebuilt: the build succeeds with the tool's own model",
                                tb.CACHE_DIR, "tf-target-original.tflite"))
    (art,) = built
    assert not sentinel.exists(), "the planted Lambda layer ran"
    assert calls == [1], "the refused entry was not rebuilt"
    notice = [m for m in messages if entry.name in m and "refused" in m]
    assert len(notice) == 1 and "\n" not in notice[0], messages
    x = owner.x_test[:64]
    got = _tflite_outputs(art.path, x)
    assert not np.allclose(got, 7.0), "the build shipped the planted model"
    assert float(np.mean(got.argmax(1) == owner.y_test[:64])) > 0.3  # a model trained on the owner's data
    assert zipfile.is_zipfile(entry) and hashlib.sha256(entry.read_bytes()).hexdigest() != planted_digest
    assert json.loads(side.read_text())["sha256"] == hashlib.sha256(entry.read_bytes()).hexdigest()


def test_tf_digest_mismatch_rebuilds(tf_clean, tmp_path, monkeypatch):
    """A valid model of the right architecture swapped in without updating the digest is not used."""
    import shutil

    import harness.build.tf_pipeline as tb

    exp, owner, clean = tf_clean
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    entry = _tf_cache_entry(out, exp, owner)
    zeros = tb.build_model("cnn-small", (8, 8, 1), 10)
    zeros.set_weights([np.zeros_like(w) for w in zeros.get_weights()])
    swap = tmp_path / "swap.keras"
    zeros.save(swap)
    entry.write_bytes(swap.read_bytes())
    calls = _count_training(monkeypatch, tb)
    messages: list[str] = []
    built: list = []
    check(lambda: built.extend(tb.build_variants(exp, owner, ["original"], out, "target", progress=messages.append)),
          site=make_site(out, also=[tmp_path]),
          **_rebuild("the swapped entry is rebuilt: the build succeeds with the tool's own model", tb.CACHE_DIR,
                     "tf-target-original.tflite"))
    (art,) = built
    assert calls == [1]
    assert any("sha256" in m and entry.name in m for m in messages), messages
    assert not np.allclose(_tflite_outputs(art.path, owner.x_test[:64]), 0.0)


@pytest.mark.hostile_exempt("no hostile input: every cached stage is a verified zip .keras (the format the "
                             "planted-entry cases rely on)")
def test_tf_qat_stage_is_cached_as_verified_keras_zip(tmp_path, monkeypatch):
    """Every cached stage (here quantization-aware training) is a zip .keras with a sidecar, and reloads."""
    import harness.build.tf_pipeline as tb

    exp, owner = _experiment(), _digits_owner(200)
    tb.build_variants(exp, owner, ["qat-int8"], tmp_path, "target")
    files = sorted(p.name for p in (tmp_path / tb.CACHE_DIR).iterdir())
    assert not [f for f in files if f.endswith(".h5")], files
    qat = [tmp_path / tb.CACHE_DIR / f for f in files if "qat-int8" in f and f.endswith(".keras")]
    assert len(qat) == 1 and zipfile.is_zipfile(qat[0])
    assert json.loads((tmp_path / tb.CACHE_DIR / (qat[0].name + ".json")).read_text())["recipe"]["qat"] is True
    calls = _count_training(monkeypatch, tb)
    steps: list[int] = []
    real_step = tb.apply_step
    monkeypatch.setattr(tb, "apply_step", lambda *a, **k: steps.append(1) or real_step(*a, **k))
    tb.build_variants(exp, owner, ["qat-int8"], tmp_path, "target")
    assert calls == [] and steps == []


# --------------------------------------------------------------------------- torch build cache


class _Evil:
    def __init__(self, sentinel: Path) -> None:
        self.cmd = f"touch {shlex.quote(str(sentinel))}"

    def __reduce__(self):
        import os

        return (os.system, (self.cmd,))


@pytest.fixture(scope="module")
def torch_clean(tmp_path_factory: pytest.TempPathFactory):
    tb = pytest.importorskip("harness.build.torch_pipeline")
    out = tmp_path_factory.mktemp("torch-clean")
    exp, owner = _experiment(), _digits_owner()
    tb.build_variants(exp, owner, ["original"], out, "target", formats=["onnx"])
    return exp, owner, out


def _torch_entry(out: Path) -> Path:
    import harness.build.torch_pipeline as tb

    (entry,) = (out / tb.CACHE_DIR).glob("target-original-*.pt")
    return entry


def _onnx_outputs(path: Path, x_nhwc: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))})[0]


@pytest.mark.hostile_exempt("the control: an intact cache entry (no hostile input) is reused, not retrained")
def test_torch_verified_cache_is_reused(torch_clean, tmp_path, monkeypatch):
    import shutil

    import harness.build.torch_pipeline as tb

    exp, owner, clean = torch_clean
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    entry = _torch_entry(out)
    side = json.loads((entry.parent / (entry.name + ".json")).read_text())
    assert side["sha256"] == hashlib.sha256(entry.read_bytes()).hexdigest() and side["format"] == tb.CACHE_FORMAT
    calls = _count_training(monkeypatch, tb)
    tb.build_variants(exp, owner, ["original"], out, "target", formats=["onnx"])
    assert calls == []


@pytest.mark.parametrize("forge_digest", [False, True])
def test_torch_tampered_cache_never_unpickles(torch_clean, tmp_path, monkeypatch, forge_digest):
    """A cache file replaced by a pickle that calls os.system: without a matching digest it is never opened; with
    a forged digest ``torch.load(weights_only=True)`` refuses it. Either way: retrained, sentinel absent."""
    import shutil

    import torch

    import harness.build.torch_pipeline as tb

    exp, owner, clean = torch_clean
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    entry = _torch_entry(out)
    sentinel = tmp_path / "PWNED"
    buf = io.BytesIO()
    torch.save({"state_dict": _Evil(sentinel), "info": {"key": "x"}}, buf)
    entry.write_bytes(buf.getvalue())
    side = entry.parent / (entry.name + ".json")
    if forge_digest:
        rec = json.loads(side.read_text())
        rec["sha256"] = hashlib.sha256(entry.read_bytes()).hexdigest()
        side.write_text(json.dumps(rec))
    calls = _count_training(monkeypatch, tb)
    messages: list[str] = []
    built: list = []
    check(lambda: built.extend(tb.build_variants(exp, owner, ["original"], out, "target", formats=["onnx"],
                                                 progress=messages.append)),
          site=make_site(out, also=[tmp_path]),
          **_rebuild("the refused entry is rebuilt: the build succeeds with the tool's own model", tb.CACHE_DIR,
                     "target-original.onnx"))
    (art,) = built
    assert not sentinel.exists(), "the planted pickle ran"
    assert calls == [1]
    notice = [m for m in messages if entry.name in m and "refused" in m]
    assert len(notice) == 1, messages
    assert ("sha256" in notice[0]) != forge_digest  # digest check first; weights_only when the digest is forged
    want = _onnx_outputs(clean / art.path.name, owner.x_test[:32])
    np.testing.assert_allclose(_onnx_outputs(art.path, owner.x_test[:32]), want, atol=1e-4)  # retrained, same seed
    assert json.loads(side.read_text())["sha256"] == hashlib.sha256(entry.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- CIFAR python batches


def _py2_pickle(obj) -> bytes:
    """``obj`` pickled the way Python 2's cPickle (protocol 2) wrote the official CIFAR batches: byte strings as
    SHORT_BINSTRING/BINSTRING, numpy arrays via numpy.core.multiarray._reconstruct + BUILD."""
    out = bytearray(b"\x80\x02")

    def string(b: bytes) -> None:
        out.extend(b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b)

    def emit(o) -> None:
        if isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                emit(k)
                emit(v)
            out.extend(b"u")
        elif isinstance(o, list):
            out.extend(b"](")
            for v in o:
                emit(v)
            out.extend(b"e")
        elif isinstance(o, tuple):
            out.extend(b"(")
            for v in o:
                emit(v)
            out.extend(b"t")
        elif o is None:
            out.extend(b"N")
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        elif isinstance(o, bytes):
            string(o)
        elif isinstance(o, np.ndarray):
            assert o.dtype == np.uint8
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            emit((0,))
            string(b"b")
            out.extend(b"\x87R")  # TUPLE3, REDUCE
            out.extend(b"(J\x01\x00\x00\x00")  # state: (1, shape, dtype, fortran, raw)
            emit(tuple(int(d) for d in o.shape))
            out.extend(b"cnumpy\ndtype\n")
            emit((b"u1", 0, 1))
            out.extend(b"R")
            emit((3, b"|", None, None, None, -1, -1, 0))
            out.extend(b"b")  # BUILD the dtype
            emit(False)
            string(o.tobytes())
            out.extend(b"tb")  # close the state tuple, BUILD the array
        else:
            raise TypeError(type(o))

    emit(obj)
    out.extend(b".")
    return bytes(out)


def _cifar10_folder(root: Path, batch: dict[str, bytes] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR-10-layout folder of 6 genuine-format batches (4 images each); ``batch`` overrides files' bytes."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=4)]
        blob = _py2_pickle({b"batch_label": b"training batch", b"labels": labels, b"data": data,
                            b"filenames": [f"img{i}.png".encode() for i in range(4)]})  # fmt: skip
        (d / name).write_bytes((batch or {}).get(name, blob))
        xs.append(data)
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


@pytest.mark.hostile_exempt("the control: genuine CIFAR batches (Python 2 pickles) still load")
def test_cifar_genuine_format_batch_loads(tmp_path):
    data, labels = _cifar10_folder(tmp_path)
    blob = (tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes()
    assert "numpy.core.multiarray _reconstruct" in "".join(  # the Python 2 layout, as in the official files
        str(arg) for _, arg, _ in pickletools.genops(blob)
    )
    ref = pickle.loads(blob, encoding="bytes")  # the unrestricted reading of the same bytes, for comparison
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.x.shape == (24, 32, 32, 3) and ds.x.dtype == np.uint8 and ds.n_classes == 10
    np.testing.assert_array_equal(ds.x, data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(ds.y, labels)
    np.testing.assert_array_equal(ds.x[-4:], ref[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def test_cifar_malicious_pickle_is_refused(tmp_path):
    sentinel = tmp_path / "PWNED"
    evil = pickle.dumps({b"data": _Evil(sentinel), b"labels": [0]}, protocol=4)
    _cifar10_folder(tmp_path, {"data_batch_3": evil})
    check(lambda: load_dataset("cifar10", data_dir=tmp_path), "data_batch_3", "system", "not allowed",
          site=_data_site(tmp_path))
    assert not sentinel.exists()


def test_cifar_batch_with_wrong_content_is_refused(tmp_path):
    """Allowed types but not a CIFAR batch (float data, labels out of range): one line, no traceback."""
    bad = _py2_pickle({b"data": np.zeros((4, 10), np.uint8), b"labels": [0, 1, 2, 3]})
    _cifar10_folder(tmp_path, {"test_batch": bad})
    check(lambda: load_dataset("cifar10", data_dir=tmp_path), "test_batch", "3072", site=_data_site(tmp_path))


# --------------------------------------------------------------------------- downloads


@pytest.fixture
def https_server(tmp_path, monkeypatch):
    """A real https server on 127.0.0.1 serving ``/file`` (bytes set by the test) and ``/to-http`` (a redirect to an
    http URL); its self-signed certificate is trusted through SSL_CERT_FILE."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    served = {"body": b""}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/to-http":
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/file")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(served["body"])))
            self.end_headers()
            self.wfile.write(served["body"])

        def log_message(self, *a) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    try:
        yield f"https://127.0.0.1:{srv.server_address[1]}", served
    finally:
        srv.shutdown()
        srv.server_close()


def test_download_checks_the_pinned_sha256(https_server, tmp_path):
    base, served = https_server
    served["body"] = b"the real archive" * 1000
    good = hashlib.sha256(served["body"]).hexdigest()
    dest_dir = tmp_path / "data"
    dest_dir.mkdir()
    download_verified(f"{base}/file", dest_dir / "a.tar.gz", good)
    assert (dest_dir / "a.tar.gz").read_bytes() == served["body"]

    served["body"] = b"a tampered archive" * 1000
    site = make_site(tmp_path / "run", also=[dest_dir])
    check(lambda: download_verified(f"{base}/file", dest_dir / "b.tar.gz", good), "sha256", good[:16], "deleted",
          site=site)
    assert sorted(p.name for p in dest_dir.iterdir()) == ["a.tar.gz"]  # no partial file left
    # a downgrade redirect is not followed
    check(lambda: download_verified(f"{base}/to-http", dest_dir / "c.tar.gz", good), "non-https", site=site)
    assert sorted(p.name for p in dest_dir.iterdir()) == ["a.tar.gz"]


def test_download_refuses_plain_http(tmp_path):
    empty = tmp_path / "fmnist"
    empty.mkdir()
    site = _data_site(tmp_path)
    check(lambda: download_verified("http://127.0.0.1:9/file", tmp_path / "x", "0" * 64), "only https", site=site)
    # Fashion-MNIST's official host is http-only
    check(lambda: load_dataset("fashion-mnist", data_dir=empty, download=True), "https", "--data-dir", site=site)
    assert list(empty.iterdir()) == []


# --------------------------------------------------------------------------- bounded IDX / npz reads


def _idx(dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(">I", 0x0800 | len(dims)) + struct.pack(f">{len(dims)}I", *dims) + payload


def _fashion_folder(root: Path, overrides: dict[str, bytes] | None = None, n: int = 5) -> Path:
    rng = np.random.default_rng(1)
    files = {
        "train-images-idx3-ubyte": _idx((n, 28, 28), rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes()),
        "train-labels-idx1-ubyte": _idx((n,), bytes(range(n))),
        "t10k-images-idx3-ubyte": _idx((n, 28, 28), rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes()),
        "t10k-labels-idx1-ubyte": _idx((n,), bytes(range(n))),
    }
    files.update(overrides or {})
    root.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        if name.endswith(".gz"):
            (root / name).write_bytes(gzip.compress(blob))
        else:
            (root / name).write_bytes(blob)
    return root


@pytest.mark.hostile_exempt("the control: a well-formed IDX set is read")
def test_idx_reader_accepts_a_well_formed_set(tmp_path):
    ds = load_dataset("fashion-mnist", data_dir=_fashion_folder(tmp_path / "ok"))
    assert ds.x.shape == (10, 28, 28, 1) and list(ds.y) == [0, 1, 2, 3, 4] * 2


@pytest.mark.parametrize("gz", [False, True])
def test_idx_absurd_header_is_one_line(tmp_path, gz):
    """A header claiming 2^40 items (and a gzip that would inflate to more than declared) never reaches memory."""
    absurd = _idx((1 << 20, 1 << 10, 1 << 10), b"\x00" * 100)
    name = "train-images-idx3-ubyte.gz" if gz else "train-images-idx3-ubyte"
    root = _fashion_folder(tmp_path / "absurd", {name: absurd})
    if gz:
        (root / "train-images-idx3-ubyte").unlink()  # so the .gz one is read
    check(lambda: load_dataset("fashion-mnist", data_dir=root), "train-images-idx3-ubyte", str(1 << 40),
          site=_data_site(tmp_path))


def test_idx_header_and_size_must_agree(tmp_path):
    """More data than the header declares (a gzip bomb behind a small header) or less: one line each."""
    bomb = _idx((5,), bytes(5) + bytes(50_000_000))
    root = _fashion_folder(tmp_path / "bomb", {"train-labels-idx1-ubyte.gz": bomb})
    (root / "train-labels-idx1-ubyte").unlink()
    short = _fashion_folder(tmp_path / "short", {"t10k-labels-idx1-ubyte": _idx((5,), b"\x01")})
    site = _data_site(tmp_path)
    check(lambda: load_dataset("fashion-mnist", data_dir=root), "train-labels-idx1-ubyte.gz", "more", site=site)
    check(lambda: load_dataset("fashion-mnist", data_dir=short), "t10k-labels-idx1-ubyte", "declares 5", site=site)


def test_npz_absurd_header_is_one_line(tmp_path):
    """An npz whose x.npy header claims 2^40 bytes is refused from its header, before any allocation."""
    path = tmp_path / "d.npz"
    hdr = io.BytesIO()
    np.lib.format.write_array_header_1_0(hdr, {"descr": "|u1", "fortran_order": False, "shape": (1 << 40,)})
    ybuf = io.BytesIO()
    np.save(ybuf, np.zeros(4, np.int64))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", hdr.getvalue() + b"\x00" * 64)
        zf.writestr("y.npy", ybuf.getvalue())
    check(lambda: load_dataset(f"npz:{path}"), "x.npy", str(1 << 40), site=_data_site(tmp_path))
    ok = tmp_path / "ok.npz"
    np.savez(ok, x=np.zeros((4, 8, 8), np.uint8), y=np.arange(4))
    assert load_dataset(f"npz:{ok}").x.shape == (4, 8, 8, 1)


# --------------------------------------------------------------------------- the scenario, through the CLI


def test_cli_build_never_ships_a_planted_cache_model(tiny_run, tmp_path):
    """``compleak build`` on a received run whose TF cache holds a Lambda model (legacy HDF5 under the cache name)
    and whose target artifact must be rebuilt: the Lambda never runs and the rebuilt artifact is the tool's own
    model (today's failure: the command ran and the planted model shipped with exit 0)."""
    from hostile_fixtures import copy_run

    from rundir import RunDir, sha256_file

    run = copy_run(tiny_run, tmp_path / "run")
    sentinel = tmp_path / "PWNED"
    sentinel.touch()
    planted = _lambda_model(sentinel)
    # every entry under the cache name (a reused COMPLEAK_TINY_RUN may keep one per earlier cache key)
    entries = sorted((run / "artifacts" / "tf-cache").glob("tf-target-original-*.keras"))
    assert entries
    h5 = tmp_path / "planted.h5"
    planted.save(h5)
    for entry in entries:
        entry.write_bytes(h5.read_bytes())
    art = run / "artifacts" / "tf-target-original.tflite"
    art.write_bytes(b"damaged")  # so build has to rebuild it from the cache
    check(["build", str(run / "experiment.toml"), "--out", str(run)], site=make_site(run, also=[tmp_path]),
          **_rebuild("the refused entry is rebuilt: the build succeeds and ships the tool's own model",
                     "artifacts/tf-cache", "artifacts/tf-target-original.tflite", "logs"))
    assert not sentinel.exists(), "the planted Lambda layer ran"
    # (the one-line notice is asserted by the builder tests above: under the default Ray executor the workers'
    # progress messages do not reach this console)
    rec = RunDir(run).load_manifest().by_id("tf-target-original.tflite")
    assert sha256_file(art) == rec.sha256
    x = _digits_owner().x_test[:64]
    assert not np.allclose(_tflite_outputs(art, x), 7.0), "the build shipped the planted model"
    assert any(zipfile.is_zipfile(entry) for entry in entries)  # the entry the build used: rebuilt as a verified zip
