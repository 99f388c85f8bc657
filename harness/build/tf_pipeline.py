"""Keras (tf_keras) model zoo, training, tfmot compression and TF-Lite export.

Entry point: :func:`build_variants` (interface in docs/architecture.md). For one model owner (the target or one
shadow) it trains the original model once (cached under ``out_dir/tf-cache`` keyed by a content hash of the data,
model and training recipe), then for each variant applies the model-level steps in order (magnitude pruning,
weight clustering, quantization-aware training; each with fine-tuning, each prefix cached) and converts the result
with the TF-Lite converter (float32, dynamic-range int8, float16, or full-integer int8 with a representative dataset
drawn from the owner's training data). Full-integer models keep float32 inputs and outputs (quantize/dequantize ops
inside the model); the file records every tensor's scale and zero-point.

The pipeline is the same function for the target and every shadow: only the owner's data and seed differ.

Cache entries are zip ``.keras`` archives with a sha256 sidecar (``<file>.json``: format, cache key, digest, model
recipe). A run directory is untrusted input, so an entry is used only when it verifies, and even then only its
weight arrays are read into an architecture this code builds (:func:`load_keras`); a missing, tampered, legacy
HDF5 or foreign entry is rebuilt with a one-line notice, never deserialized.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tfmot and the converter need Keras 2 (tf_keras)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

try:
    import tf_keras as keras  # noqa: E402  (Keras 2 as its own package, TF >= 2.16)
except ImportError:  # TF <= 2.15 (e.g. toolchain-tf:2.14.0): tf.keras is Keras 2 itself, and tfmot uses it
    keras = tf.keras

from harness.build import artifacts as art  # noqa: E402
from harness.config import Experiment, parse_variant  # noqa: E402
from harness.data import OwnerData  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from rundir import atomic_path, atomic_write_bytes  # noqa: E402

Progress = Callable[[str], None]
FRAMEWORK = "tf"
CACHE_DIR = art.CACHE_DIRS[FRAMEWORK]  # under out_dir: trained and fine-tuned Keras models keyed by content hash
_MODEL_STEPS = ("prune-", "cluster-", "qat-int8")


def toolchain() -> dict[str, str]:
    """Versions of the libraries that shape a TF-Lite artifact."""
    return {
        "tensorflow": tf.__version__,
        # tf.keras of TF <= 2.15 has no __version__: it is the separately installed `keras` 2.x package
        "tf_keras": getattr(keras, "__version__", None) or importlib.metadata.version("keras"),
        "tensorflow_model_optimization": tfmot.__version__,
        "converter": "tf.lite.TFLiteConverter.from_keras_model",
    }


# --------------------------------------------------------------------------- model zoo


def _l2(weight_decay: float) -> keras.regularizers.Regularizer | None:
    # coupled L2 weight decay (gradient += weight_decay * w), the same meaning as torch's optimizer weight_decay
    return keras.regularizers.L2(weight_decay / 2.0) if weight_decay > 0 else None


def _cnn_small(x: Any, n_classes: int, reg: Any) -> Any:
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", kernel_regularizer=reg, name="conv1")(x)
    x = keras.layers.MaxPool2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", kernel_regularizer=reg, name="conv2")(x)
    x = keras.layers.MaxPool2D(2, name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(128, activation="relu", kernel_regularizer=reg, name="fc1")(x)
    return keras.layers.Dense(n_classes, kernel_regularizer=reg, name="logits")(x)


def _conv_bn(x: Any, filters: int, kernel: int, stride: int, reg: Any, relu: bool = True) -> Any:
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, kernel_regularizer=reg)(x)
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
    return keras.layers.ReLU()(x) if relu else x


def _resnet18(x: Any, n_classes: int, reg: Any) -> Any:
    x = _conv_bn(x, 64, 3, 1, reg)  # CIFAR stem: 3x3 stride 1, no max-pool
    in_planes = 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for s in (stride, 1):  # BasicBlocks [2, 2, 2, 2]
            y = _conv_bn(x, planes, 3, s, reg)
            y = _conv_bn(y, planes, 3, 1, reg, relu=False)
            shortcut = _conv_bn(x, planes, 1, s, reg, relu=False) if (s != 1 or in_planes != planes) else x
            x = keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))
            in_planes = planes
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.layers.Dense(n_classes, kernel_regularizer=reg, name="logits")(x)


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _vgg16_bn(x: Any, n_classes: int, reg: Any) -> Any:
    for v in _VGG16:  # the 13 conv layers of VGG-16, each with BN; 'same' pooling keeps odd sizes (28 -> 1) valid
        if v == "M":
            x = keras.layers.MaxPool2D(2, padding="same")(x)
        else:
            x = keras.layers.Conv2D(int(v), 3, padding="same", kernel_regularizer=reg)(x)
            x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
            x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    return keras.layers.Dense(n_classes, kernel_regularizer=reg, name="logits")(x)


# (expansion t, channels c, repeats n, first stride s): the standard MobileNetV2 table
_MBV2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _mobilenetv2(x: Any, n_classes: int, reg: Any) -> Any:
    def relu6(y: Any) -> Any:
        return keras.layers.ReLU(6.0)(y)

    # stride 1 for 32x32
    x = keras.layers.Conv2D(32, 3, strides=1, padding="same", use_bias=False, kernel_regularizer=reg)(x)
    x = relu6(keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x))
    c_in = 32
    for t, c, n, s in _MBV2:
        for i in range(n):
            stride = s if i == 0 else 1
            y = x
            if t != 1:
                y = keras.layers.Conv2D(c_in * t, 1, use_bias=False, kernel_regularizer=reg)(y)
                y = relu6(keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(y))
            y = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(y)
            y = relu6(keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(y))
            y = keras.layers.Conv2D(c, 1, use_bias=False, kernel_regularizer=reg)(y)
            y = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(y)
            x = keras.layers.Add()([x, y]) if (stride == 1 and c_in == c) else y
            c_in = c
    x = keras.layers.Conv2D(1280, 1, use_bias=False, kernel_regularizer=reg)(x)
    x = relu6(keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.layers.Dense(n_classes, kernel_regularizer=reg, name="logits")(x)


ZOO: dict[str, Callable[[Any, int, Any], Any]] = {
    "cnn-small": _cnn_small,
    "resnet18": _resnet18,
    "vgg16-bn": _vgg16_bn,
    "mobilenetv2": _mobilenetv2,
}


def build_model(arch: str, input_shape: tuple[int, int, int], n_classes: int, weight_decay: float = 0.0) -> keras.Model:
    """A functional tf_keras model of the zoo: input float32 [N, H, W, C] (NHWC), output logits [N, n_classes]."""
    if arch not in ZOO:
        raise HarnessError(f"model.arch '{arch}' is not in the TF zoo; allowed: {', '.join(ZOO)}")
    inp = keras.Input(shape=input_shape, name="input")
    return keras.Model(inp, ZOO[arch](inp, n_classes, _l2(weight_decay)), name=arch.replace("-", "_"))


# --------------------------------------------------------------------------- runtime settings


def configure_runtime(exp: Experiment, say: Progress | None = None) -> dict[str, Any]:
    """TF threads, device and determinism of a build unit (``[build] threads`` / ``deterministic``,
    ``train.device``; docs/scale.md); returns the unit's ``build`` record (:mod:`harness.build.runtime`).

    Threads: ``[build] threads`` for TF's intra- and inter-op pools. Device: TF uses its GPU when one is visible;
    ``cpu`` hides GPUs, ``cuda`` requires one. Op determinism as configured (with the per-owner seeds, the same
    config gives the same model). TF accepts thread and device settings only before it runs its first op in a
    process; later calls keep the first settings, and when those differ from the config (TF used earlier in the
    same process with others) the record says what was in effect and ``say`` gets a notice.
    """
    cfg, threads = exp.train, int(exp.build.threads)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TF already initialised in this process
        pass
    if cfg.device == "cpu":
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:
            pass
    elif cfg.device == "cuda" and not tf.config.list_physical_devices("GPU"):
        raise HarnessError(
            'train.device = "cuda" but TensorFlow sees no GPU (CPU-only TF build, or no GPU on this worker); '
            'install tensorflow[and-cuda] or set train.device = "auto"'
        )
    from tensorflow.python.framework import config as tf_config

    if exp.build.deterministic:
        tf.config.experimental.enable_op_determinism()
    else:
        tf_config.disable_op_determinism()
    in_effect = tf.config.threading.get_intra_op_parallelism_threads()
    if in_effect != threads and say is not None:
        say(f"{art.NOTICE} TensorFlow was initialised in this process with {in_effect or 'default'} threads before "
            f"this unit asked for {threads}; its artifacts may differ from a fresh process's (run it alone)")
    device = "gpu" if cfg.device != "cpu" and tf.config.list_logical_devices("GPU") else "cpu"
    from harness.build.runtime import settings_record

    return settings_record(in_effect, tf_config.is_op_determinism_enabled(), device)


# --------------------------------------------------------------------------- training


def _optimizer(exp: Experiment, lr: float, total_steps: int) -> keras.optimizers.Optimizer:
    t = exp.train
    schedule: Any = lr
    if t.lr_schedule == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, total_steps))
    elif t.lr_schedule == "step":  # x0.1 at 50% and 75% of training
        b = [max(1, total_steps // 2), max(2, (3 * total_steps) // 4)]
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(b, [lr, lr * 0.1, lr * 0.01])
    if t.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=t.momentum)
    return keras.optimizers.Adam(schedule)


class _EpochProgress(keras.callbacks.Callback):
    def __init__(self, progress: Progress | None, label: str, epochs: int) -> None:
        super().__init__()
        self.progress, self.label, self.epochs = progress, label, epochs

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.progress is not None:
            acc = (logs or {}).get("accuracy")
            self.progress(
                f"{self.label} epoch {epoch + 1}/{self.epochs}" + (f" acc {acc:.3f}" if acc is not None else "")
            )


def _fit(
    model: keras.Model,
    exp: Experiment,
    owner: OwnerData,
    epochs: int,
    lr: float,
    label: str,
    progress: Progress | None,
    callbacks: list | None = None,
) -> None:
    """Train ``model`` on the owner's training part; early stopping (if configured) only on the owner's hold-out."""
    t = exp.train
    steps = int(np.ceil(len(owner.x_train) / t.batch_size)) * epochs
    model.compile(
        optimizer=_optimizer(exp, lr, steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    cbs = list(callbacks or []) + [_EpochProgress(progress, label, epochs)]
    val = None
    if t.early_stopping_patience > 0 and len(owner.x_holdout):
        val = (owner.x_holdout, owner.y_holdout)
        cbs.append(
            keras.callbacks.EarlyStopping("val_loss", patience=t.early_stopping_patience, restore_best_weights=True)
        )
    model.fit(
        owner.x_train,
        owner.y_train,
        batch_size=t.batch_size,
        epochs=epochs,
        shuffle=True,
        validation_data=val,
        callbacks=cbs,
        verbose=0,
    )


# --------------------------------------------------------------------------- caching


def original_key(exp: Experiment, owner: OwnerData) -> str:
    """Content hash of everything that determines the trained original model."""
    return art.content_digest(
        "tf-original",
        exp.model.model_dump(mode="json"),
        exp.train.model_dump(mode="json"),
        exp.build.model_dump(mode="json"),
        owner.seed,
        owner.n_classes,
        owner.x_train,
        owner.y_train,
        owner.x_holdout,
        owner.y_holdout,
        tf.__version__,
    )


CACHE_FORMAT = "keras-zip-weights"  # what a cache entry's sidecar records; nothing else is ever loaded
_KERAS_MEMBERS = frozenset({"metadata.json", "config.json", "model.weights.h5"})  # a tf_keras `.keras` zip
_KERAS_MAX_BYTES = 1 << 33  # 8 GiB uncompressed: far above any zoo model, far below a zip bomb


def model_recipe(exp: Experiment, owner: OwnerData, qat: bool = False) -> dict[str, Any]:
    """What rebuilds a cached model's architecture from code: zoo arch, input shape (H, W, C), classes, weight
    decay, and whether the quantization-aware wrappers are applied. Stored in the cache entry's sidecar."""
    return {
        "arch": exp.model.arch,
        "input_shape": [int(d) for d in owner.x_train.shape[1:]],
        "n_classes": int(owner.n_classes),
        "weight_decay": float(exp.train.weight_decay),
        "qat": bool(qat),
    }


def _architecture(recipe: Any) -> keras.Model | None:
    """A fresh model of ``recipe`` built by this code (None when the recipe is not one the tool writes)."""
    if not isinstance(recipe, dict) or set(recipe) != {"arch", "input_shape", "n_classes", "weight_decay", "qat"}:
        return None
    arch, shape, n, wd, qat = (recipe[k] for k in ("arch", "input_shape", "n_classes", "weight_decay", "qat"))
    if arch not in ZOO or not isinstance(qat, bool) or not isinstance(n, int) or not 1 <= n <= 100_000:
        return None
    if not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(d, int) and 1 <= d <= 4096 for d in shape):
        return None
    if not isinstance(wd, (int, float)) or not 0 <= wd < 1:
        return None
    model = build_model(arch, (shape[0], shape[1], shape[2]), n, float(wd))
    return tfmot.quantization.keras.quantize_model(model) if qat else model


def _cache_problem(path: Path, key: str | None, recipe: dict[str, Any] | None) -> tuple[str | None, dict[str, Any]]:
    """Why ``path`` may not be loaded (None when verified) and its sidecar record; reads only the zip directory."""
    why, rec = art.check_cache_entry(path, key, CACHE_FORMAT)
    if why is not None:
        return why, rec
    if recipe is not None and rec.get("recipe") != recipe:
        return "recorded for another model recipe", rec
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return "not a .keras zip archive (legacy HDF5 or foreign file)", rec
    if {i.filename for i in infos} != _KERAS_MEMBERS or len(infos) != len(_KERAS_MEMBERS):
        return "not a .keras archive written by this tool", rec
    if sum(i.file_size for i in infos) > _KERAS_MAX_BYTES:
        return "archive members too large", rec
    return None, rec


def _load_verified(path: Path, key: str | None, recipe: dict[str, Any] | None) -> keras.Model:
    """The model of a verified cache entry, or ValueError naming why it was refused.

    The architecture always comes from this code (:func:`model_recipe`); only the weight arrays are read from the
    file (tf_keras weights-only loading of the zip's ``model.weights.h5``): the archive's ``config.json`` is never
    deserialized, so no layer, ``Lambda`` or function named in a file can run.
    """
    why, rec = _cache_problem(path, key, recipe)
    if why is not None:
        raise ValueError(why)
    model = _architecture(recipe if recipe is not None else rec.get("recipe"))
    if model is None:
        raise ValueError("its recorded model recipe is not one this tool writes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model.load_weights(str(path))
    except Exception as exc:  # h5py / shape mismatches: a foreign archive
        raise ValueError(f"its weights do not fit the {model.name} architecture ({exc.__class__.__name__})") from None
    return model


def load_keras(path: Path, key: str | None = None) -> keras.Model:
    """Load a Keras model from the build cache (plain, stripped pruned/clustered, or quantization-aware).

    Only files the build wrote are accepted: a zip ``.keras`` archive whose sha256 matches the digest recorded in its
    sidecar (``<file>.json``, see :func:`harness.build.artifacts.check_cache_entry`), optionally for cache ``key``. The
    model is rebuilt by code from the recorded recipe and only its weights are read (safer than
    ``load_model(safe_mode=True)``: nothing from the file is deserialized). Anything else is a one-line HarnessError.
    """
    try:
        return _load_verified(Path(path), key, None)
    except ValueError as exc:
        raise HarnessError(
            f"{path}: refused as a cached Keras model ({exc}); delete it and rerun compleak build to rebuild it"
        ) from None


def _save_keras(model: keras.Model, path: Path, key: str, recipe: dict[str, Any]) -> None:
    """Write ``model`` as a zip ``.keras`` archive (atomically), then its digest sidecar (atomically)."""
    with atomic_path(path, keep_suffix=True) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.save(tmp)  # tmp ends in .keras: the zip format
    art.write_cache_record(path, key, CACHE_FORMAT, recipe=recipe)


def _cached(
    path: Path, key: str, recipe: dict[str, Any], make: Callable[[], keras.Model], say: Progress
) -> keras.Model:
    """The verified cache entry at ``path``; when it is missing, stale or refused: ``make()`` it and cache it."""
    model = art.read_cache_entry(
        path, lambda p: _load_verified(p, key, recipe), say, "tf cache {name} refused ({why}); rebuilding it"
    )
    if model is not None:
        return model
    model = make()
    _save_keras(model, path, key, recipe)
    return model


# --------------------------------------------------------------------------- compression steps


def _finetune_epochs(exp: Experiment) -> int:
    return max(1, exp.compress.finetune_epochs)  # pruning/clustering masks are applied during at least one epoch


def _prune(
    model: keras.Model, sparsity: float, exp: Experiment, owner: OwnerData, label: str, progress: Progress | None
) -> keras.Model:
    """Magnitude pruning to ``sparsity`` per weight tensor: polynomial schedule over the fine-tuning, then strip."""
    epochs = _finetune_epochs(exp)
    steps = int(np.ceil(len(owner.x_train) / exp.train.batch_size)) * epochs
    freq = max(1, steps // 10)
    end = max(freq, ((steps - 1) // freq) * freq)  # a mask update lands exactly on end_step
    if steps >= 2 * freq and end > 0:
        schedule: Any = tfmot.sparsity.keras.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=end, frequency=freq)
    else:
        schedule = tfmot.sparsity.keras.ConstantSparsity(sparsity, begin_step=0, frequency=1)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
    _fit(pruned, exp, owner, epochs, exp.compress.finetune_lr, label, progress, callbacks)
    return tfmot.sparsity.keras.strip_pruning(pruned)


def _cluster(
    model: keras.Model,
    k: int,
    preserve_sparsity: bool,
    exp: Experiment,
    owner: OwnerData,
    label: str,
    progress: Progress | None,
) -> keras.Model:
    """Weight clustering to ``k`` centroids per weight tensor (k-means++ init), fine-tuned, then stripped."""
    from tensorflow_model_optimization.python.core.clustering.keras.experimental import cluster as exp_cluster

    clustered = exp_cluster.cluster_weights(
        model,
        number_of_clusters=k,
        cluster_centroids_init=tfmot.clustering.keras.CentroidInitialization.KMEANS_PLUS_PLUS,
        preserve_sparsity=preserve_sparsity,
    )
    _fit(clustered, exp, owner, _finetune_epochs(exp), exp.compress.finetune_lr, label, progress)
    return tfmot.clustering.keras.strip_clustering(clustered)


def _qat(model: keras.Model, exp: Experiment, owner: OwnerData, label: str, progress: Progress | None) -> keras.Model:
    """Quantization-aware training (tfmot default 8-bit scheme), fine-tuned."""
    q = tfmot.quantization.keras.quantize_model(model)
    _fit(q, exp, owner, max(1, exp.compress.finetune_epochs), exp.compress.finetune_lr, label, progress)
    return q


def _representative(owner: OwnerData, n: int, seed: int) -> Callable[[], Any]:
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(owner.x_train), size=min(n, len(owner.x_train)), replace=False)

    def gen() -> Any:
        for i in idx:
            yield [owner.x_train[i : i + 1]]

    return gen


def convert(model: keras.Model, quant: str | None, owner: OwnerData, exp: Experiment) -> bytes:
    """TF-Lite flatbuffer of ``model``.

    ``quant``: None (float32), ``dynamic-int8``, ``fp16``, ``int8`` or ``qat-int8``.
    """
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if quant is not None:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if quant == "fp16":
        conv.target_spec.supported_types = [tf.float16]
    elif quant in ("int8", "qat-int8"):
        conv.representative_dataset = _representative(owner, exp.compress.representative_samples, owner.seed)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        with warnings.catch_warnings():  # "Statistics for quantized inputs were expected": float I/O is intended
            warnings.simplefilter("ignore", UserWarning)
            return conv.convert()
    except Exception as exc:  # converter errors are long multi-line dumps
        raise HarnessError(f"TF-Lite conversion ({quant or 'float32'}) failed: {art.first_line(exc)}") from None


# --------------------------------------------------------------------------- the builder


def _steps_of(variant: str) -> tuple[list[str], str | None]:
    steps = parse_variant(variant)
    if steps == ["original"]:
        return [], None
    model_steps = [s for s in steps if s.startswith(_MODEL_STEPS)]
    quant = steps[-1] if steps[-1] in ("int8", "dynamic-int8", "fp16", "qat-int8") else None
    return model_steps, quant


def train_model(
    exp: Experiment, owner: OwnerData, tag: str = "target", progress: Progress | None = None
) -> keras.Model:
    """Build the zoo model for ``owner``'s input shape and train it with the experiment's recipe (seeded by owner)."""
    keras.utils.set_random_seed(owner.seed)
    input_shape = tuple(int(d) for d in owner.x_train.shape[1:])
    model = build_model(exp.model.arch, input_shape, owner.n_classes, exp.train.weight_decay)  # type: ignore[arg-type]
    _fit(model, exp, owner, exp.train.epochs, exp.train.lr, f"tf {tag} train", progress)
    return model


def apply_step(
    model: keras.Model, step: str, applied: list[str], exp: Experiment, owner: OwnerData, tag: str = "target",
    progress: Progress | None = None,
) -> keras.Model:
    """One model-level compression step (``prune-S``, ``cluster-K`` or ``qat-int8``) with its fine-tuning.

    ``applied`` lists the steps already applied to ``model`` (clustering after pruning preserves the zeros).
    ``model`` itself is left untouched (tfmot's wrappers train the wrapped layers' variables in place, so the step
    works on a copy).
    """
    keras.utils.set_random_seed(owner.seed)
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    model = copy
    label = f"tf {tag} {'+'.join([*applied, step])}"
    if step.startswith("prune-"):
        return _prune(model, float(step[6:]), exp, owner, label, progress)
    if step.startswith("cluster-"):
        return _cluster(model, int(step[8:]), any(a.startswith("prune-") for a in applied), exp, owner, label, progress)
    if step == "qat-int8":
        return _qat(model, exp, owner, label, progress)
    raise HarnessError(f"'{step}' is not a model-level compression step; allowed: prune-S, cluster-K, qat-int8")


def _cache_entry(cache: Path, tag: str, applied: list[str], key: str) -> Path:
    """``tf-cache/tf-{tag}-{steps}-{key[:16]}.keras``: the cached Keras model after ``applied`` (``original`` when
    none)."""
    return cache / f"{art.cache_entry_prefix(FRAMEWORK, tag)}{'+'.join(applied) or 'original'}-{key[:16]}.keras"


def _variant_model(
    exp: Experiment, owner: OwnerData, cache: Path, tag: str, variant: str, key: str, progress: Progress | None
) -> tuple[keras.Model, Path]:
    """The Keras model behind ``variant`` (trained, then each model-level step applied and fine-tuned; a QAT variant
    ends with its quantization-aware training) and its entry in ``cache``; every stage comes from the verified cache
    when it is there, else is built and cached. ``key``: :func:`original_key` of the owner."""
    model_steps, quant = _steps_of(variant)
    say = progress or (lambda _msg: None)
    source = _cache_entry(cache, tag, [], key)
    model = _cached(source, key, model_recipe(exp, owner), lambda: train_model(exp, owner, tag, progress), say)
    applied: list[str] = []
    for step in [s for s in model_steps if s != "qat-int8"] + (["qat-int8"] if quant == "qat-int8" else []):
        cc = exp.compress
        key = art.content_digest(key, step, cc.finetune_epochs, cc.finetune_lr, exp.train.batch_size)
        source = _cache_entry(cache, tag, [*applied, step], key)
        model = _cached(
            source,
            key,
            model_recipe(exp, owner, qat=step == "qat-int8"),
            lambda prev=model, step=step, done=list(applied): apply_step(prev, step, done, exp, owner, tag, progress),
            say,
        )
        applied.append(step)
    return model, source


def _compression(exp: Experiment, owner: OwnerData, variant: str, keras_model: str) -> dict[str, Any]:
    """The manifest's compression record of ``variant``, whose converted model is the cache entry ``keras_model``."""
    model_steps, quant = _steps_of(variant)
    compression: dict[str, Any] = {"steps": parse_variant(variant), "keras_model": keras_model}
    for s in model_steps:
        if s.startswith("prune-"):
            compression["sparsity"] = float(s[6:])
        elif s.startswith("cluster-"):
            compression["clusters"] = int(s[8:])
    if quant is not None:
        compression["quantization"] = quant
        compression["io"] = "float32"
    if quant in ("int8", "qat-int8"):
        compression["representative_samples"] = min(exp.compress.representative_samples, len(owner.x_train))
    if model_steps or quant == "qat-int8":
        compression["finetune_epochs"] = _finetune_epochs(exp)
        compression["finetune_lr"] = exp.compress.finetune_lr
    return compression


def build_variants(
    exp: Experiment,
    owner: OwnerData,
    variants: list[str],
    out_dir: Path,
    tag: str,
    formats: list[str] | None = None,
    progress: Progress | None = None,
) -> list[art.BuiltArtifact]:
    """Train (or load) the owner's original model and write one ``.tflite`` per variant.

    Args:
        exp: the experiment (model, train and compress sections are used).
        owner: the owner's preprocessed data (NHWC float32).
        variants: labels such as ``original``, ``prune-0.8``, ``cluster-8``, ``int8``, ``prune-0.8+int8``.
        out_dir: the run's ``artifacts/`` folder; files are ``tf-{tag}-{variant}.tflite``.
        tag: ``target`` or ``shadow{k}``.
        formats: formats wanted (only ``tflite`` exists for TF); ``None`` means all.
        progress: called with a one-line status (training epochs, conversion).
    Returns:
        One :class:`harness.build.artifacts.BuiltArtifact` per variant, in order.
    """
    if formats is not None and "tflite" not in formats:
        return []
    settings = configure_runtime(exp, progress)
    # fresh Keras name counters: layer and tensor names (kept in the .tflite) must not depend on what this process
    # built before (serial build vs a Ray worker)
    keras.backend.clear_session()
    out_dir = Path(out_dir)
    say = progress or (lambda _msg: None)
    key0 = original_key(exp, owner)
    built = []
    for variant in variants:
        model, source = _variant_model(exp, owner, out_dir / CACHE_DIR, tag, variant, key0, progress)
        say(f"tf {tag} {variant}: converting to TF-Lite")
        data = convert(model, _steps_of(variant)[1], owner, exp)
        path = out_dir / art.artifact_id(FRAMEWORK, tag, variant, "tflite")
        atomic_write_bytes(path, data)
        built.append(
            art.BuiltArtifact(
                variant=variant,
                format="tflite",
                path=path,
                compression=_compression(exp, owner, variant, str(source.relative_to(out_dir))),
                toolchain=toolchain(),
                output_kind="logits",
                settings=dict(settings),
            )
        )
    return built
