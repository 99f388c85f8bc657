"""Datasets, preprocessing, membership splits and query inputs (see docs/architecture.md).

Raw datasets are loaded as NHWC arrays at their raw pixel scale (uint8 0..255 for images); :func:`query_inputs`
turns example ids into model inputs with the :class:`~harness.config.Preprocess` spec. The same function feeds
training (via :func:`owner_data`), host evaluation and the query batches sent to devices, so every consumer sees
identical inputs. Every user-facing problem raises :class:`~harness.errors.HarnessError` with one line naming the
path and the fix.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import pickle
import struct
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness.errors import HarnessError
from rundir import Splits, atomic_path

if TYPE_CHECKING:
    from rich.console import Console

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
# The datasets' official distribution points (used only with download=true) and the pinned sha256 of each file
# (the digests published with the official archives: Keras' CIFAR loaders, Fashion-MNIST's .gz files).
# Fashion-MNIST's official host serves plain http only, which download_verified() refuses (https only): fetch
# those files yourself, check them against these digests, and pass --data-dir.
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FASHION_SHA256 = {
    "train-images-idx3-ubyte": "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
    "train-labels-idx1-ubyte": "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
    "t10k-images-idx3-ubyte": "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
    "t10k-labels-idx1-ubyte": "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
}
_CIFAR = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python"),
}
_CIFAR_SHA256 = {
    "cifar10": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    "cifar100": "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
}
_DOWNLOAD_MAX_BYTES = 1 << 30  # the largest official archive is 170 MB
_IDX_MAX_BYTES = 1 << 31  # an IDX file's data (header-declared); Fashion-MNIST's largest is 47 MB
_NPZ_MAX_BYTES = 1 << 34  # all arrays of an npz dataset together (header-declared)
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
    """What one model owner (the target, or one reference/shadow model) trains on. Arrays are preprocessed NHWC
    float32.

    x_train float32 [N, H, W, C], y_train int64 [N]: exactly the owner's members (``ids_train`` int64 [N]).
    x_holdout / y_holdout: the owner's own early-stopping hold-out (``ids_holdout``), outside its members.
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
    ids_train: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ids_holdout: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


# --------------------------------------------------------------------------- loading


def _cache_dir(name: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "compleak" / "datasets" / name


def _search_dirs(name: str, data_dir: Path | None) -> list[Path]:
    if data_dir is not None:
        return [Path(data_dir)]
    return [_cache_dir(name), *(Path(p) for p in DEFAULT_DATA_DIRS.get(name, ()))]


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to another https URL."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if urllib.parse.urlsplit(newurl).scheme != "https":
            raise urllib.error.URLError(f"redirected to a non-https URL {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


#: ``progress(url, bytes received so far, total bytes from Content-Length or None)``, called as a download streams
DownloadProgress = Callable[[str, int, "int | None"], None]


@contextmanager
def rich_download_progress(console: Console | None = None) -> Iterator[DownloadProgress]:
    """A rich progress bar per downloaded file (bytes, speed, time remaining) as a :data:`DownloadProgress`."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from harness.errors import esc

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=console or Console(), transient=False) as bar:
        tasks: dict[str, object] = {}

        def update(url: str, done: int, total: int | None) -> None:
            if url not in tasks:
                tasks[url] = bar.add_task(f"download {esc(url.rsplit('/', 1)[-1])}", total=total)
            bar.update(tasks[url], completed=done, total=total)  # type: ignore[arg-type]

        yield update


def download_verified(
    url: str,
    dest: Path,
    sha256: str,
    max_bytes: int = _DOWNLOAD_MAX_BYTES,
    progress: DownloadProgress | None = None,
) -> None:
    """Fetch the https ``url`` into ``dest`` and check it against the pinned ``sha256`` (hex) before it lands.

    The file is streamed into a temporary file next to ``dest`` and renamed onto it only when its digest matches;
    on a mismatch, a network error, more than ``max_bytes`` bytes, a non-https URL or redirect, the partial download
    is deleted and a one-line HarnessError is raised (nothing at ``dest`` changes). ``progress`` (e.g. from
    :func:`rich_download_progress`) is told the bytes received after each block.
    """
    fix = "put the verified files in a folder and pass --data-dir"
    if urllib.parse.urlsplit(url).scheme != "https":
        raise HarnessError(f"{url}: only https downloads are allowed (pinned sha256 {sha256[:16]}...); {fix}")
    opener = urllib.request.build_opener(_HttpsOnlyRedirects())
    digest = hashlib.sha256()
    with atomic_path(dest) as tmp:
        try:
            with open(tmp, "wb") as fh, opener.open(url, timeout=60) as resp:
                length = str(resp.headers.get("Content-Length") or "").strip()
                expected = int(length) if length.isdigit() and int(length) <= max_bytes else None
                total = 0
                if progress is not None:
                    progress(url, 0, expected)
                while block := resp.read(1 << 20):
                    total += len(block)
                    if total > max_bytes:
                        raise HarnessError(f"{url}: more than {max_bytes} bytes, not the pinned file; {fix}")
                    digest.update(block)
                    fh.write(block)
                    if progress is not None:
                        progress(url, total, expected)
        except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as exc:
            raise HarnessError(f"could not download {url} ({exc.__class__.__name__}: {exc}); {fix}") from None
        if digest.hexdigest() != sha256:
            raise HarnessError(
                f"{url}: downloaded file has sha256 {digest.hexdigest()[:16]}..., not the pinned {sha256[:16]}... "
                f"(the download was deleted); retry later or {fix}"
            )


def _read_idx(path: Path, max_bytes: int = _IDX_MAX_BYTES) -> np.ndarray:
    """Read one IDX file (gzip or plain) into a uint8 array of the shape its header declares.

    Reads are bounded by the header: at most ``max_bytes`` data bytes are accepted and never more than the header
    declares (plus one byte to detect trailing data) is read, so neither an absurd header nor a gzip bomb can
    exhaust memory.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(4)
            if len(head) != 4:
                raise ValueError("shorter than an IDX header")
            magic, = struct.unpack(">I", head)
            if magic >> 8 != 0x08:  # 0x0008NN: unsigned byte, NN dimensions
                raise ValueError(f"magic {magic:#x} is not an unsigned-byte IDX file")
            ndim = magic & 0xFF
            if not 1 <= ndim <= 4:
                raise ValueError(f"header declares {ndim} dimensions")
            shape = struct.unpack(f">{ndim}I", fh.read(4 * ndim))
            n = math.prod(shape)
            if n > max_bytes:
                raise ValueError(f"header declares {shape} = {n} bytes, more than the {max_bytes} this tool reads")
            chunks, got = [], 0
            while got <= n and (block := fh.read(min(1 << 24, n + 1 - got))):
                chunks.append(block)
                got += len(block)
        if got != n:
            raise ValueError(f"header declares {n} data bytes but the file holds {'more' if got > n else got}")
        return np.frombuffer(b"".join(chunks), dtype=np.uint8).reshape(shape)
    except (OSError, ValueError, EOFError, struct.error, zlib.error) as exc:
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
        with rich_download_progress() as progress:
            for stem in _FASHION_FILES:
                download_verified(f"{_FASHION_URL}{stem}.gz", target / f"{stem}.gz", _FASHION_SHA256[stem],
                                  progress=progress)  # fmt: skip
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


_NDARRAY_RECONSTRUCT = np.zeros(0, np.uint8).__reduce__()[0]  # numpy's array-unpickling helper, whatever its module


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler for the official CIFAR python batches (Python 2 cPickle, protocol 2): a dict of byte-string keys,
    lists of ints / byte strings, and one uint8 numpy array. Those need exactly three globals, numpy's
    ``_reconstruct``, ``ndarray`` and ``dtype``; every other global (``os.system``, ``builtins.eval``,
    ``_codecs.encode`` ...) is refused, and persistent ids are refused by ``pickle.Unpickler`` itself."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _NDARRAY_RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _NDARRAY_RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> object:
        found = self._ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return found


def _unpickle(path: Path) -> dict:
    """The dict of one CIFAR python batch, loaded with :class:`_CifarUnpickler` (byte-string keys)."""
    try:
        with open(path, "rb") as fh:
            d = _CifarUnpickler(fh, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, OverflowError, MemoryError, RecursionError, struct.error) as exc:
        raise HarnessError(
            f"{path}: not a CIFAR python-pickle batch ({exc.__class__.__name__}: {str(exc)[:200]}); "
            "re-extract the official archive"
        ) from None
    if not isinstance(d, dict):
        raise HarnessError(f"{path}: not a CIFAR python-pickle batch (a {type(d).__name__}, not a dict); "
                           "re-extract the official archive")
    return d


def _load_cifar(name: str, data_dir: Path | None, download: bool) -> Dataset:
    url, sub = _CIFAR[name]
    dirs = _search_dirs(name, data_dir)
    root = next((r for d in dirs if (r := _find_cifar(d, sub))), None)
    if root is None and download:
        target = Path(data_dir) if data_dir is not None else _cache_dir(name)
        archive = target / url.rsplit("/", 1)[1]
        with rich_download_progress() as progress:
            download_verified(url, archive, _CIFAR_SHA256[name], progress=progress)
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
        data, labels = d.get(b"data"), d.get(label_key)
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
            raise HarnessError(
                f"{b}: CIFAR batch without a uint8 'data' array [N, 3072]; re-extract the official archive"
            )
        n_classes = 10 if name == "cifar10" else 100
        if not (isinstance(labels, list) and len(labels) == len(data)
                and all(type(v) is int and 0 <= v < n_classes for v in labels)):
            raise HarnessError(
                f"{b}: CIFAR batch labels are not {len(data)} integers in [0, {n_classes}); re-extract the official "
                "archive"
            )
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(labels, dtype=np.int64))
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


def _check_npz_headers(path: Path, max_bytes: int = _NPZ_MAX_BYTES) -> None:
    """Refuse (one line) an npz whose arrays' headers declare object dtypes, sizes other than what their zip members
    hold, or more than ``max_bytes`` in all, before any array is read (so no header can ask for terabytes)."""
    fix = "save it again with numpy.savez from numeric arrays"
    total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                    else:
                        raise ValueError(f"npy format version {version}")
                    header = fh.tell()
                if dtype.hasobject:
                    raise HarnessError(f"{path}: array {info.filename} holds Python objects; {fix}")
                n = math.prod(shape) * dtype.itemsize
                if n != info.file_size - header:
                    raise HarnessError(
                        f"{path}: array {info.filename} declares {shape} {dtype} = {n} bytes but holds "
                        f"{info.file_size - header}; {fix}"
                    )
                total += n
                if total > max_bytes:
                    raise HarnessError(f"{path}: arrays larger than {max_bytes} bytes in all; {fix}")
    except HarnessError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError from the npy header parser, OSError
        raise HarnessError(f"{path}: not a readable .npz file ({exc.__class__.__name__}); {fix}") from None


def _load_npz(path: Path) -> Dataset:
    if not path.is_file():
        raise HarnessError(f"{path}: npz dataset not found; give npz:PATH to a file with arrays 'x' and 'y'")
    _check_npz_headers(path)
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


def _reference_rng(seed: int, k: int) -> np.random.Generator:
    """The generator of reference model ``k``'s draw: independent of K, so adding references keeps the first ones."""
    return np.random.default_rng([int(seed), 0x5EED, int(k)])


def make_splits(exp: Experiment, labels: np.ndarray) -> Splits:
    """Draw seeded membership splits for the target and the K reference models of ``exp`` (see docs/DESIGN.md).

    A permutation seeded by ``experiment.seed`` gives, in order: ``target_in``, ``target_out`` (the candidates),
    ``target_val`` (``round(holdout_fraction * target_in)``, the target's own hold-out), ``population``
    (``splits.population`` ids, RMIA's z set), then the attacker's remaining data. Every owner trains on exactly its
    ``*_in`` ids; its hold-out lies outside its members and is never scored.

    - offline (``attack.threat_model``): reference k gets ``shadow_in`` + ``shadow_out`` + ``round(holdout_fraction
      * shadow_in)`` ids of the attacker's data (mutually disjoint chunks when the data suffices, else its own random
      sample), so no reference ever sees a candidate.
    - online: the attacker's pool is the candidates plus ``splits.pool - candidates`` further ids (default pool size
      ``max(target_in + target_out, 2 * target_in)``, so a reference trains on as many examples as the target);
      reference k trains on a random half of the pool (``shadow_in[k]``), takes its hold-out from the other half and
      keeps the rest as ``shadow_out[k]``, so each candidate is IN for a Binomial(K, 1/2) number of references.
    Reference k's draw uses its own generator (:func:`_reference_rng`), so raising K keeps references 0..K-1.

    Args:
        labels: int64 [N], the labels of the whole dataset.
    Raises:
        HarnessError naming the ``splits.*`` keys when the dataset is too small.
    """
    s = exp.splits
    online = exp.attack.threat_model == "online"
    k_refs = exp.reference_models
    seed = exp.experiment.seed
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    h = s.holdout_fraction
    n_cand = s.target_in + s.target_out
    n_tval = int(round(h * s.target_in))
    head = n_cand + n_tval + s.population
    if online:
        pool_size = s.pool if s.pool is not None else max(n_cand, 2 * s.target_in)
        half = pool_size // 2
        n_sval = int(round(h * half))
        need_attacker = pool_size - n_cand
        what = "the online pool beyond the candidates (splits.pool - target_in - target_out)"
    else:
        n_sval = int(round(h * s.shadow_in))
        need_shadow = s.shadow_in + s.shadow_out + n_sval
        need_attacker = need_shadow
        what = "one reference model (splits.shadow_in + shadow_out + its hold-out)"
    if head + need_attacker > n:
        raise HarnessError(
            f"dataset has {n} examples but [splits] needs {head + need_attacker}: splits.target_in + target_out "
            f"({n_cand}) + the target hold-out ({n_tval}, splits.holdout_fraction) + splits.population "
            f"({s.population}) + {what} ({need_attacker}); lower those sizes in [splits]"
        )
    perm = np.random.default_rng(seed).permutation(n)
    target_in, target_out = perm[: s.target_in], perm[s.target_in : n_cand]
    target_val = perm[n_cand : n_cand + n_tval]
    population = perm[n_cand + n_tval : head]
    rest = perm[head:]
    shadow_in, shadow_out, shadow_val = [], [], []
    if online:
        pool = np.concatenate([target_in, target_out, rest[:need_attacker]])
        for k in range(k_refs):
            order = pool[_reference_rng(seed, k).permutation(len(pool))]
            shadow_in.append(np.sort(order[:half]))
            shadow_val.append(np.sort(order[half : half + n_sval]))
            shadow_out.append(np.sort(order[half + n_sval :]))
    else:
        for k in range(k_refs):
            if len(rest) >= k_refs * need_shadow:
                chunk = rest[k * need_shadow : (k + 1) * need_shadow]
            else:
                chunk = _reference_rng(seed, k).choice(rest, size=need_shadow, replace=False)
            shadow_in.append(np.sort(chunk[: s.shadow_in]))
            shadow_out.append(np.sort(chunk[s.shadow_in : s.shadow_in + s.shadow_out]))
            shadow_val.append(np.sort(chunk[s.shadow_in + s.shadow_out :]))
    return Splits(
        labels, np.sort(target_in), np.sort(target_out), shadow_in, shadow_out,
        target_val=np.sort(target_val), shadow_val=shadow_val,
        population=np.sort(population) if s.population else None, online=online,
    ).validate("make_splits")


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
    holdout_fraction: float | None = None,
    seed: int = 0,
) -> OwnerData:
    """The training data of one model owner (``role='target'`` or ``'shadow'`` with index ``shadow``).

    x_train holds EXACTLY the owner's members ``splits.members(role, shadow)`` (shuffled with ``seed``), x_holdout
    its own hold-out ``splits.holdout(role, shadow)`` (outside its members, never scored; empty for an older
    splits.npz without one), x_test its non-members (reporting only). ``ids_train`` / ``ids_holdout`` record the ids.
    ``holdout_fraction`` is not used (the hold-out is part of the splits; kept so older callers still work).
    """
    del holdout_fraction
    train = np.asarray(splits.members(role, shadow), dtype=np.int64)
    train = train[np.random.default_rng(seed).permutation(len(train))]
    hold = splits.holdout(role, shadow)
    nonmembers = splits.nonmembers(role, shadow)
    return OwnerData(
        x_train=query_inputs(ds, pre, train),
        y_train=ds.y[train],
        x_holdout=query_inputs(ds, pre, hold),
        y_holdout=ds.y[hold],
        x_test=query_inputs(ds, pre, nonmembers),
        y_test=ds.y[nonmembers],
        n_classes=ds.n_classes,
        seed=seed,
        ids_train=train,
        ids_holdout=hold,
    )
