"""Datasets, preprocessing, membership splits and query inputs (see docs/architecture.md).

Raw datasets are loaded as NHWC arrays at their raw pixel scale (uint8 0..255 for images); :func:`query_inputs`
turns example ids into model inputs with the :class:`~harness.config.Preprocess` spec. The same function feeds
training (via :func:`owner_data`), host evaluation and the query batches sent to devices, so every consumer sees
identical inputs. Every user-facing problem raises :class:`~harness.errors.HarnessError` with one line naming the
path and the fix.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import struct
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from compleak.rundir import Splits, atomic_path
from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.config import Experiment, Preprocess

#: Where datasets are looked for when no ``--data-dir`` is given (after the user cache).
DEFAULT_DATA_DIRS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("/usr/share/datasets/fashion-mnist",),
    "cifar10": ("/usr/share/datasets/cifar10", "/usr/share/datasets/cifar-10"),
    "cifar100": ("/usr/share/datasets/cifar100", "/usr/share/datasets/cifar-100"),
}
_FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# The datasets' official distribution points (used only with download=true).
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_CIFAR = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python"),
}
_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class Dataset:
    """Raw examples as loaded.

    x: uint8 or float32 [N, H, W, C] (NHWC, raw pixel scale, e.g. 0..255).
    y: int64 [N] class labels in [0, n_classes).
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    n_classes: int

    def __len__(self) -> int:
        return len(self.y)


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


# --------------------------------------------------------------------------- loading


def _cache_dir(name: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "compleak" / "datasets" / name


def _search_dirs(name: str, data_dir: Path | None) -> list[Path]:
    if data_dir is not None:
        return [Path(data_dir)]
    return [_cache_dir(name), *(Path(p) for p in DEFAULT_DATA_DIRS.get(name, ()))]


def _download(url: str, dest: Path) -> None:
    """Fetch ``url`` into ``dest`` atomically; HarnessError (one line) when offline."""
    with atomic_path(dest) as tmp:
        try:
            with open(tmp, "wb") as fh, urllib.request.urlopen(url, timeout=60) as resp:
                shutil.copyfileobj(resp, fh)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise HarnessError(
                f"could not download {url} ({exc.__class__.__name__}: {exc}); "
                f"put the files in a folder and pass --data-dir"
            ) from None


def _read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzip or plain) into a uint8 array of the shape its header declares."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
        magic, = struct.unpack(">I", data[:4])
        if magic >> 8 != 0x08:  # 0x0008NN: unsigned byte, NN dimensions
            raise ValueError(f"magic {magic:#x} is not an unsigned-byte IDX file")
        ndim = magic & 0xFF
        shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return arr.reshape(shape)
    except (OSError, ValueError, EOFError, struct.error) as exc:
        raise HarnessError(
            f"{path}: not a readable IDX file ({exc}); re-download Fashion-MNIST into that folder"
        ) from None


def _find_fashion(d: Path) -> dict[str, Path] | None:
    found = {}
    for stem in _FASHION_FILES:
        for cand in (d / stem, d / f"{stem}.gz"):
            if cand.is_file():
                found[stem] = cand
                break
    return found if len(found) == len(_FASHION_FILES) else None


def _load_fashion(data_dir: Path | None, download: bool) -> Dataset:
    dirs = _search_dirs("fashion-mnist", data_dir)
    files = next((f for d in dirs if (f := _find_fashion(d))), None)
    if files is None and download:
        target = Path(data_dir) if data_dir is not None else _cache_dir("fashion-mnist")
        for stem in _FASHION_FILES:
            _download(f"{_FASHION_URL}{stem}.gz", target / f"{stem}.gz")
        files = _find_fashion(target)
    if files is None:
        where = ", ".join(str(d) for d in dirs)
        raise HarnessError(
            f"Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz] ...) not found in {where}; "
            "pass --data-dir FOLDER or set data.download = true"
        )
    x = np.concatenate([_read_idx(files["train-images-idx3-ubyte"]), _read_idx(files["t10k-images-idx3-ubyte"])])
    y = np.concatenate([_read_idx(files["train-labels-idx1-ubyte"]), _read_idx(files["t10k-labels-idx1-ubyte"])])
    if x.ndim != 3 or len(x) != len(y):
        raise HarnessError(
            f"{files['train-images-idx3-ubyte'].parent}: image and label files do not match; re-download them"
        )
    return Dataset("fashion-mnist", x[..., None], y.astype(np.int64), 10)


def _find_cifar(d: Path, sub: str) -> Path | None:
    for cand in (d / sub, d):
        if (cand / "test_batch").is_file() or (cand / "test").is_file():
            return cand
    return None


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise HarnessError(
            f"{path}: not a CIFAR python-pickle batch ({exc}); re-extract the official archive"
        ) from None


def _load_cifar(name: str, data_dir: Path | None, download: bool) -> Dataset:
    url, sub = _CIFAR[name]
    dirs = _search_dirs(name, data_dir)
    root = next((r for d in dirs if (r := _find_cifar(d, sub))), None)
    if root is None and download:
        target = Path(data_dir) if data_dir is not None else _cache_dir(name)
        archive = target / url.rsplit("/", 1)[1]
        _download(url, archive)
        with tarfile.open(archive) as tf:
            tf.extractall(target, filter="data")
        root = _find_cifar(target, sub)
    if root is None:
        where = ", ".join(str(d) for d in dirs)
        raise HarnessError(
            f"{name} python-pickle folder '{sub}' not found in {where}; extract the official archive there and pass "
            "--data-dir FOLDER, or set data.download = true"
        )
    if name == "cifar10":
        batches = [root / f"data_batch_{i}" for i in range(1, 6)] + [root / "test_batch"]
        label_key = b"labels"
    else:
        batches = [root / "train", root / "test"]
        label_key = b"fine_labels"
    xs, ys = [], []
    for b in batches:
        if not b.is_file():
            raise HarnessError(f"{b}: missing CIFAR batch file; re-extract the official archive into {root}")
        d = _unpickle(b)
        if b"data" not in d or label_key not in d:
            raise HarnessError(f"{b}: missing 'data' or labels in CIFAR batch; re-extract the official archive")
        xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(d[label_key], dtype=np.int64))
    return Dataset(name, np.concatenate(xs), np.concatenate(ys), 10 if name == "cifar10" else 100)


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # 0..16 -> 0..255, [N, 8, 8, 1]
    return Dataset("digits", x, d.target.astype(np.int64), 10)


def _check_labels(y: np.ndarray, source: str) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise HarnessError(f"{source}: labels 'y' must be a 1-D array of integers >= 0, got {y.dtype} {y.shape}")
    return y.astype(np.int64)


def _load_npz(path: Path) -> Dataset:
    if not path.is_file():
        raise HarnessError(f"{path}: npz dataset not found; give npz:PATH to a file with arrays 'x' and 'y'")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files or "y" not in z.files:
                raise HarnessError(f"{path}: needs arrays 'x' [N,H,W(,C)] and 'y' [N]; found {sorted(z.files)}")
            x, y = z["x"], z["y"]
    except HarnessError:
        raise
    except Exception as exc:
        raise HarnessError(
            f"{path}: not a readable .npz file ({exc.__class__.__name__}); save it with numpy.savez"
        ) from None
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or len(x) != len(y):
        raise HarnessError(f"{path}: 'x' must be [N,H,W] or [N,H,W,C] with N = len(y); got x {x.shape}, y {y.shape}")
    if not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
        x = x.astype(np.float32)
    y = _check_labels(y, str(path))
    return Dataset(f"npz:{path}", x, y, int(y.max()) + 1 if y.size else 0)


def _load_imagefolder(root: Path) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise HarnessError(f"{root}: image folder not found; give imagefolder:PATH to a folder of class sub-folders")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [
        (f, c)
        for c, name in enumerate(classes)
        for f in sorted((root / name).iterdir())
        if f.suffix.lower() in _IMAGE_EXT
    ]
    if not files:
        raise HarnessError(f"{root}: no images found; expected {root}/CLASS_NAME/IMAGE.png")
    images: list[np.ndarray] = []
    mode: str | None = None
    for f, _ in files:
        try:
            with Image.open(f) as im:
                if mode is None:
                    mode = "L" if im.mode in ("L", "1", "I;16", "I") else "RGB"
                arr = np.asarray(im.convert(mode), dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as exc:
            raise HarnessError(f"{f}: not a readable image ({exc.__class__.__name__}); remove or replace it") from None
        if images and arr.shape != images[0].shape:
            raise HarnessError(
                f"{f}: size {arr.shape[:2]} differs from {images[0].shape[:2]}; "
                f"all images must have one size (resize them first)"
            )
        images.append(arr)
    x = np.stack(images)
    if x.ndim == 3:
        x = x[..., None]
    y = np.array([c for _, c in files], dtype=np.int64)
    return Dataset(f"imagefolder:{root}", x, y, len(classes))


def load_dataset(spec: str, data_dir: Path | None = None, download: bool = False) -> Dataset:
    """Load a dataset by its config spec.

    Args:
        spec: ``fashion-mnist`` | ``cifar10`` | ``cifar100`` | ``digits`` | ``npz:PATH`` | ``imagefolder:PATH``.
        data_dir: folder holding the dataset files (overrides the default search path).
        download: fetch fashion-mnist / cifar from their official source when not found (needs network).
    Returns:
        :class:`Dataset` with x [N, H, W, C] at raw pixel scale and y int64 [N]. Train and test parts of the
        official distributions are concatenated (membership splits are drawn from the whole pool).
    """
    data_dir = Path(data_dir).expanduser() if data_dir is not None else None
    if spec == "fashion-mnist":
        return _load_fashion(data_dir, download)
    if spec in _CIFAR:
        return _load_cifar(spec, data_dir, download)
    if spec == "digits":
        return _load_digits()
    if spec.startswith("npz:"):
        return _load_npz(Path(spec[4:]).expanduser())
    if spec.startswith("imagefolder:"):
        return _load_imagefolder(Path(spec[12:]).expanduser())
    raise HarnessError(
        f"'{spec}' is not a dataset; allowed: fashion-mnist, cifar10, cifar100, digits, npz:PATH, imagefolder:PATH"
    )


# --------------------------------------------------------------------------- splits


def make_splits(exp: Experiment, labels: np.ndarray) -> Splits:
    """Draw disjoint, seeded membership splits with the sizes of ``exp.splits``.

    The target's in/out sets come first from a permutation seeded by ``experiment.seed``; every shadow's in/out sets
    come from the remaining pool, disjoint from the target. When the pool holds enough examples the shadows are also
    mutually disjoint; otherwise each shadow samples its own subset of the pool (shadows may then overlap each other,
    which the contract allows).

    Args:
        labels: int64 [N], the labels of the whole dataset.
    Raises:
        HarnessError naming the ``splits.*`` keys when the dataset is too small.
    """
    s = exp.splits
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    need_target = s.target_in + s.target_out
    need_shadow = s.shadow_in + s.shadow_out
    if need_target + need_shadow > n:
        raise HarnessError(
            f"dataset has {n} examples but splits.target_in + target_out + shadow_in + shadow_out = "
            f"{need_target + need_shadow}; lower those sizes in [splits]"
        )
    rng = np.random.default_rng(exp.experiment.seed)
    perm = rng.permutation(n)
    target_in, target_out = perm[: s.target_in], perm[s.target_in : need_target]
    pool = perm[need_target:]
    shadow_in, shadow_out = [], []
    for k in range(s.n_shadows):
        if len(pool) >= s.n_shadows * need_shadow:
            chunk = pool[k * need_shadow : (k + 1) * need_shadow]
        else:
            chunk = rng.choice(pool, size=need_shadow, replace=False)
        shadow_in.append(np.sort(chunk[: s.shadow_in]))
        shadow_out.append(np.sort(chunk[s.shadow_in :]))
    return Splits(labels, np.sort(target_in), np.sort(target_out), shadow_in, shadow_out).validate("make_splits")


# --------------------------------------------------------------------------- inputs


def _resize(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of float32 [M, H, W, C] to [M, h, w, C] (Pillow, per channel)."""
    from PIL import Image

    h, w = hw
    out = np.empty((len(x), h, w, x.shape[3]), dtype=np.float32)
    for i in range(len(x)):
        for c in range(x.shape[3]):
            out[i, :, :, c] = np.asarray(Image.fromarray(x[i, :, :, c], mode="F").resize((w, h), Image.BILINEAR))
    return out


def query_inputs(ds: Dataset, pre: Preprocess, ids: np.ndarray) -> np.ndarray:
    """Model inputs for example ``ids``: float32 [M, H, W, C] (NHWC).

    Steps, in order: optional bilinear resize to ``pre.resize`` = [H, W]; multiply by ``pre.scale``; subtract
    ``pre.mean`` and divide by ``pre.std`` per channel (both after scaling). Torch artifacts transpose to NCHW
    themselves (their manifest input spec says so).
    """
    ids = np.asarray(ids, dtype=np.int64)
    x = ds.x[ids].astype(np.float32)
    if pre.resize is not None:
        if len(pre.resize) != 2:
            raise HarnessError(f"data.preprocess.resize must be [H, W], got {pre.resize}")
        if tuple(pre.resize) != x.shape[1:3]:
            x = _resize(x, (int(pre.resize[0]), int(pre.resize[1])))
    x *= np.float32(pre.scale)
    c = x.shape[3]
    for key, vals in (("mean", pre.mean), ("std", pre.std)):
        if vals is not None and len(vals) not in (1, c):
            raise HarnessError(f"data.preprocess.{key} has {len(vals)} values but the data has {c} channels")
    if pre.mean is not None:
        x -= np.asarray(pre.mean, dtype=np.float32)
    if pre.std is not None:
        x /= np.asarray(pre.std, dtype=np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


def owner_data(
    ds: Dataset,
    splits: Splits,
    pre: Preprocess,
    role: str,
    shadow: int | None,
    holdout_fraction: float,
    seed: int,
) -> OwnerData:
    """The training data of one model owner (``role='target'`` or ``'shadow'`` with index ``shadow``).

    The owner's members are shuffled with ``seed``; a ``holdout_fraction`` of them becomes the owner's own
    early-stopping hold-out (so x_train + x_holdout = members). Its non-members become x_test (reporting only).
    A shadow owner only ever receives shadow ids: the attacker never touches target data.
    """
    members = splits.members(role, shadow)
    nonmembers = splits.nonmembers(role, shadow)
    rng = np.random.default_rng(seed)
    members = members[rng.permutation(len(members))]
    n_hold = int(round(holdout_fraction * len(members)))
    hold, train = members[:n_hold], members[n_hold:]
    return OwnerData(
        x_train=query_inputs(ds, pre, train),
        y_train=ds.y[train],
        x_holdout=query_inputs(ds, pre, hold),
        y_holdout=ds.y[hold],
        x_test=query_inputs(ds, pre, nonmembers),
        y_test=ds.y[nonmembers],
        n_classes=ds.n_classes,
        seed=seed,
    )
