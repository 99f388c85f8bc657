"""Datasets in their real on-disk formats, membership splits, preprocessing and owner data."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from harness.config import Experiment, Preprocess
from harness.data import Dataset, load_dataset, make_splits, owner_data, query_inputs
from harness.errors import HarnessError


def _idx(arr: np.ndarray) -> bytes:
    """An IDX file (unsigned byte) as the MNIST/Fashion-MNIST distribution writes it."""
    return (
        struct.pack(">I", 0x0800 | arr.ndim)
        + struct.pack(f">{arr.ndim}I", *arr.shape)
        + arr.astype(np.uint8).tobytes()
    )


def _fashion_dir(d: Path, n_train: int = 12, n_test: int = 5, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n_train + n_test, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, n_train + n_test).astype(np.uint8)
    d.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": x[:n_train],
        "train-labels-idx1-ubyte": y[:n_train],
        "t10k-images-idx3-ubyte": x[n_train:],
        "t10k-labels-idx1-ubyte": y[n_train:],
    }
    for name, arr in files.items():
        if gz:
            (d / f"{name}.gz").write_bytes(gzip.compress(_idx(arr)))
        else:
            (d / name).write_bytes(_idx(arr))
    return x, y


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx_from_data_dir(tmp_path: Path, gz: bool) -> None:
    x, y = _fashion_dir(tmp_path / "fm", gz=gz)
    ds = load_dataset("fashion-mnist", tmp_path / "fm")
    assert ds.x.shape == (17, 28, 28, 1) and ds.x.dtype == np.uint8 and ds.n_classes == 10
    np.testing.assert_array_equal(ds.x[..., 0], x)
    np.testing.assert_array_equal(ds.y, y.astype(np.int64))


def test_fashion_mnist_default_search_path() -> None:
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist is not installed")
    ds = load_dataset("fashion-mnist")
    assert ds.x.shape == (70000, 28, 28, 1) and np.bincount(ds.y).tolist() == [7000] * 10


def test_fashion_mnist_errors_name_the_path_and_fix(tmp_path: Path) -> None:
    with pytest.raises(
        HarnessError, match=r"not found in .*nothing; pass --data-dir FOLDER or set data.download = true"
    ):
        load_dataset("fashion-mnist", tmp_path / "nothing")
    d = tmp_path / "bad"
    _fashion_dir(d)
    (d / "train-images-idx3-ubyte.gz").write_bytes(b"\x00\x00\x09\x03garbage")
    with pytest.raises(HarnessError, match=r"train-images-idx3-ubyte.gz: not a readable IDX file"):
        load_dataset("fashion-mnist", d)


def test_download_offline_is_a_clear_error(tmp_path: Path) -> None:
    from harness.data import download_verified

    # nothing listens on port 1: a real connection failure (downloads are https only, with a pinned sha256)
    with pytest.raises(HarnessError, match=r"could not download https://127.0.0.1:1/x.tar.gz .*--data-dir"):
        download_verified("https://127.0.0.1:1/x.tar.gz", tmp_path / "dl" / "x.tar.gz", "0" * 64)
    assert not list((tmp_path / "dl").iterdir())  # nothing half-written
    # Fashion-MNIST's official host serves plain http only: refused in one line, before any network access
    with pytest.raises(HarnessError, match=r"train-images-idx3-ubyte.gz: only https downloads .*--data-dir"):
        load_dataset("fashion-mnist", tmp_path / "fm", download=True)
    assert not (tmp_path / "fm").exists()


def _cifar_batch(path: Path, n: int, label_key: bytes, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, n).tolist()
    with open(path, "wb") as fh:
        pickle.dump({b"batch_label": b"x", b"data": data, label_key: labels, b"filenames": [b"f"] * n}, fh)
    return data, labels


def test_cifar10_python_pickle_layout(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    parts = [_cifar_batch(root / f"data_batch_{i}", 3, b"labels", i) for i in range(1, 6)]
    parts.append(_cifar_batch(root / "test_batch", 2, b"labels", 9))
    ds = load_dataset("cifar10", tmp_path)
    assert ds.x.shape == (17, 32, 32, 3) and ds.n_classes == 10
    first = parts[0][0][0]
    # row-major R plane, G plane, B plane -> NHWC
    assert ds.x[0, 0, 1, 0] == first[1] and ds.x[0, 0, 0, 1] == first[1024] and ds.x[0, 1, 0, 2] == first[2048 + 32]
    assert ds.y.tolist() == sum((p[1] for p in parts), [])
    assert load_dataset("cifar10", root).x.shape == (17, 32, 32, 3)  # the batches folder itself works too


def test_cifar100_python_pickle_layout(tmp_path: Path) -> None:
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    _cifar_batch(root / "train", 4, b"fine_labels", 1)
    _cifar_batch(root / "test", 2, b"fine_labels", 2)
    ds = load_dataset("cifar100", tmp_path)
    assert ds.x.shape == (6, 32, 32, 3) and ds.n_classes == 100


def test_digits() -> None:
    ds = load_dataset("digits")
    assert ds.x.shape == (1797, 8, 8, 1) and ds.x.dtype == np.uint8 and ds.x.max() == 255 and ds.n_classes == 10


def test_npz_dataset(tmp_path: Path) -> None:
    p = tmp_path / "mine.npz"
    np.savez(p, x=np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6), y=np.array([0, 2, 1, 2]))
    ds = load_dataset(f"npz:{p}")
    assert ds.x.shape == (4, 5, 6, 1) and ds.n_classes == 3 and ds.y.dtype == np.int64
    np.savez(p, images=np.zeros((2, 3, 3)), y=np.array([0, 1]))
    with pytest.raises(HarnessError, match=r"mine.npz: needs arrays 'x'"):
        load_dataset(f"npz:{p}")
    np.savez(p, x=np.zeros((2, 3, 3)), y=np.array([0.5, 1.0]))
    with pytest.raises(HarnessError, match="labels 'y' must be a 1-D array of integers"):
        load_dataset(f"npz:{p}")
    p.write_bytes(b"not a zip")
    with pytest.raises(HarnessError, match="not a readable .npz"):
        load_dataset(f"npz:{p}")


def test_imagefolder_dataset(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "imgs"
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((6, 5, 3), 40 * c + i, np.uint8)).save(root / name / f"{i}.png")
    ds = load_dataset(f"imagefolder:{root}")
    assert ds.x.shape == (6, 6, 5, 3) and ds.y.tolist() == [0, 0, 0, 1, 1, 1] and ds.n_classes == 2
    assert ds.x[4, 0, 0, 0] == 41
    Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(root / "dog" / "odd.png")
    with pytest.raises(HarnessError, match=r"odd.png: size \(7, 7\) differs"):
        load_dataset(f"imagefolder:{root}")
    (root / "dog" / "odd.png").write_bytes(b"broken")
    with pytest.raises(HarnessError, match="odd.png: not a readable image"):
        load_dataset(f"imagefolder:{root}")
    with pytest.raises(HarnessError, match="image folder not found"):
        load_dataset(f"imagefolder:{tmp_path / 'none'}")


def _exp(**splits) -> Experiment:
    return Experiment.model_validate({"experiment": {"seed": 5}, "splits": splits})


def test_splits_are_disjoint_seeded_and_sized() -> None:
    labels = np.arange(1000) % 10
    exp = _exp(target_in=100, target_out=120, shadow_in=90, shadow_out=80, n_shadows=3)
    s = make_splits(exp, labels)
    assert [len(s.target_in), len(s.target_out)] == [100, 120] and s.n_shadows == 3
    assert all(len(a) == 90 for a in s.shadow_in) and all(len(b) == 80 for b in s.shadow_out)
    assert len(s.target_val) == 10 and all(len(v) == 9 for v in s.shadow_val)  # round(0.1 * members)
    every = np.concatenate([s.target_in, s.target_out, s.target_val, *s.shadow_in, *s.shadow_out, *s.shadow_val])
    assert len(np.unique(every)) == len(every)  # enough data: all sets (hold-outs included) pairwise disjoint
    assert not s.online and s.population is None
    again = make_splits(exp, labels)
    assert np.array_equal(again.target_in, s.target_in) and np.array_equal(again.shadow_out[2], s.shadow_out[2])
    other = make_splits(_exp(target_in=100, target_out=120, shadow_in=90, shadow_out=80, n_shadows=3).model_copy(
        update={"experiment": exp.experiment.model_copy(update={"seed": 6})}), labels)  # fmt: skip
    assert not np.array_equal(other.target_in, s.target_in)


def test_splits_shadows_may_overlap_each_other_but_never_the_target() -> None:
    labels = np.arange(600) % 10
    s = make_splits(_exp(target_in=100, target_out=100, shadow_in=150, shadow_out=150, n_shadows=4), labels)
    target = np.concatenate([s.target_in, s.target_out])
    for k in range(4):
        shadow = np.concatenate([s.shadow_in[k], s.shadow_out[k], s.shadow_val[k]])
        assert len(np.unique(shadow)) == 315 and not np.intersect1d(shadow, target).size
        assert not np.intersect1d(shadow, s.target_val).size


def test_splits_too_small_names_the_keys() -> None:
    with pytest.raises(HarnessError, match=r"dataset has 50 examples .*splits.target_in \+ target_out"):
        make_splits(_exp(target_in=20, target_out=20, shadow_in=20, shadow_out=20), np.zeros(50, np.int64))


def test_query_inputs_preprocessing() -> None:
    x = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (0, 51, 255)])
    ds = Dataset("t", x, np.array([0, 1, 2]), 3)
    q = query_inputs(ds, Preprocess(), np.array([2, 1]))
    assert q.dtype == np.float32 and q.shape == (2, 4, 4, 3)
    np.testing.assert_allclose(q[:, 0, 0, 0], [1.0, 0.2], rtol=1e-6)
    pre = Preprocess(mean=[0.5, 0.5, 0.0], std=[0.5, 0.25, 1.0], resize=[8, 6])
    q = query_inputs(ds, pre, np.array([1]))
    assert q.shape == (1, 8, 6, 3)
    np.testing.assert_allclose(q[0, 3, 3], [(0.2 - 0.5) / 0.5, (0.2 - 0.5) / 0.25, 0.2], rtol=1e-5)
    with pytest.raises(HarnessError, match="preprocess.mean has 2 values but the data has 3 channels"):
        query_inputs(ds, Preprocess(mean=[0.1, 0.2]), np.array([0]))


def test_owner_data_trains_on_exactly_the_members_and_holds_out_outside_them() -> None:
    ds = load_dataset("digits")
    exp = _exp(target_in=200, target_out=150, shadow_in=200, shadow_out=150)
    s = make_splits(exp, ds.y)
    o = owner_data(ds, s, exp.data.preprocess, "shadow", 0, seed=11)
    assert o.x_train.shape == (200, 8, 8, 1) and o.x_holdout.shape == (20, 8, 8, 1) and o.x_test.shape == (150, 8, 8, 1)
    assert o.x_train.dtype == np.float32 and float(o.x_train.max()) == 1.0
    # train is exactly the shadow's members (as ids and as inputs); the hold-out is its own split; test = non-members
    np.testing.assert_array_equal(np.sort(o.ids_train), s.shadow_in[0])
    np.testing.assert_array_equal(np.sort(o.ids_holdout), s.shadow_val[0])
    assert not np.intersect1d(o.ids_holdout, np.concatenate([s.shadow_in[0], s.shadow_out[0]])).size
    members = query_inputs(ds, exp.data.preprocess, s.shadow_in[0]).reshape(200, -1)
    assert sorted(map(bytes, members)) == sorted(map(bytes, o.x_train.reshape(200, -1)))
    np.testing.assert_array_equal(o.y_train, ds.y[o.ids_train])
    np.testing.assert_array_equal(o.y_holdout, ds.y[o.ids_holdout])
    np.testing.assert_array_equal(o.y_test, ds.y[s.shadow_out[0]])
    again = owner_data(ds, s, exp.data.preprocess, "shadow", 0, 0.1, seed=11)  # the old positional fraction: unused
    assert np.array_equal(again.x_train, o.x_train) and np.array_equal(again.x_holdout, o.x_holdout)
    # the target likewise: target_in exactly, target_val (round(0.1 * 200) = 20 ids) outside in/out
    t = owner_data(ds, s, exp.data.preprocess, "target", None, seed=3)
    np.testing.assert_array_equal(np.sort(t.ids_train), s.target_in)
    np.testing.assert_array_equal(np.sort(t.ids_holdout), s.target_val)
    assert len(s.target_val) == 20
    # no hold-out at all: holdout_fraction = 0
    s0 = make_splits(_exp(target_in=200, target_out=150, shadow_in=200, shadow_out=150, holdout_fraction=0.0), ds.y)
    assert len(s0.target_val) == 0 and owner_data(ds, s0, exp.data.preprocess, "target", None).x_holdout.shape[0] == 0
