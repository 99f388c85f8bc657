"""PyTorch path of the build stage: torch model zoo, training, compression and export.

``build_variants`` trains (or reuses) one owner's original model, applies each requested compression variant
identically for the target and every shadow, and writes the deployable files:

============================  =====================================================================
variant kind                  formats written (of those requested)
============================  =====================================================================
fp32 (``original``,           ``.pte`` (ExecuTorch, XNNPACK-delegated fp32), ``.ptl`` (lite interpreter,
``prune-S``, ``cluster-K``)   traced), ``.onnx`` (fp32)
``...+int8``                  ``.pte`` only: PT2E with the XNNPACK quantizer (per-channel symmetric int8
                              weights, int8 activations calibrated on the owner's training data)
``...+dynamic-int8``          ``.pte`` (PT2E with the XNNPACK quantizer's dynamic config on every Linear:
                              per-channel symmetric int8 weights, int8 activations quantized at run time),
                              ``.onnx`` (``onnxruntime.quantization.quantize_dynamic`` of the fp32 export,
                              MatMul/Gemm only, i.e. the same Linear layers) and ``.ptl`` (the deprecated
                              eager ``torch.ao.quantization.quantize_dynamic``: the lite interpreter has no
                              PT2E path; its warnings go to this module's logger, not the terminal)
============================  =====================================================================

Any other combination (``int8`` as ``.ptl``/``.onnx``) is not produced; see
:func:`plan_formats`, which also gives the reason. ``fp16`` and ``qat-int8`` exist only on the TF path.

Every artifact takes float32 NCHW input ``[batch, C, H, W]`` (``owner.x_train`` is NHWC and is transposed here)
and returns float32 logits ``[batch, n_classes]``. The batch dimension is dynamic (``.pte``: 1..PTE_MAX_BATCH).
Each file also states its input layout: ONNX ``metadata_props["compleak.input_layout"]``, ``.ptl`` the extra file
``compleak.json``; ``.pte`` input metadata carries the NCHW shape.

Caching: the trained original and every fp32 compression prefix (e.g. the fine-tuned ``prune-0.8`` that
``prune-0.8+int8`` starts from) are stored as state dicts under ``out_dir/torch-cache/``, keyed by a content hash
of the config sections and the owner's training data, so other variants and reruns reuse them. Each entry has a
sha256 sidecar (``<file>.json``, with the cache key); an entry is read only when it verifies, and only with
``torch.load(weights_only=True)``; anything else is retrained with a one-line notice.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from rundir import atomic_path, atomic_write_bytes
from harness.build.artifacts import (
    NOTICE,
    BuiltArtifact,
    artifact_id,
    cache_record_path,
    check_cache_entry,
    content_digest,
    write_cache_record,
)
from harness.config import Experiment, TrainSection, parse_variant
from harness.data import OwnerData
from harness.errors import HarnessError

FRAMEWORK = "torch"
PTE_MAX_BATCH = 256  # upper bound of the dynamic batch dimension in .pte files (sizes the memory plan)
CACHE_DIR = "torch-cache"
_KMEANS_MAX_POINTS = 200_000  # k-means is fitted on at most this many weights of a tensor, then assigns all
_LOG = logging.getLogger(__name__)


# =========================================================================== model zoo


class CnnSmall(nn.Module):
    """Conv(32)-ReLU-MaxPool -> Conv(64)-ReLU-MaxPool -> Flatten -> Linear(128)-ReLU -> Linear(C) logits."""

    def __init__(self, in_ch: int, n_classes: int, hw: tuple[int, int]) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        flat = 64 * (hw[0] // 4) * (hw[1] // 4)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(), nn.Linear(128, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block: 3x3 conv-BN-ReLU, 3x3 conv-BN, plus (projected) shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 with the CIFAR stem: 3x3 conv stride 1, no max-pool; stages 64-128-256-512 of 2 BasicBlocks."""

    def __init__(self, in_ch: int, n_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers: list[nn.Module] = []
        cin = 64
        for i, cout in enumerate((64, 128, 256, 512)):
            for j in range(2):
                layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class VGG16BN(nn.Module):
    """VGG-16 with batch norm (CIFAR form): 13 conv3x3-BN-ReLU in 5 stages, each followed by a 2x2 max-pool with
    ceil mode (= Keras ``padding="same"``: 28 -> 14 -> 7 -> 4 -> 2 -> 1), Flatten, Linear(C)."""

    _CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, in_ch: int, n_classes: int, hw: tuple[int, int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, h, w = in_ch, hw[0], hw[1]
        for v in self._CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                h, w = -(-h // 2), -(-w // 2)
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU()]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(512 * h * w, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand-BN-ReLU6, 3x3 depthwise-BN-ReLU6, 1x1 project-BN (+ residual)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        ]  # fmt: skip
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) for small images: the stem conv has stride 1; otherwise the standard settings."""

    _SETTINGS = (
        (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)
    )

    def __init__(self, in_ch: int, n_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_ch, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
        cin = 32
        for t, c, n, s in self._SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1280, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def build_model(arch: str, input_shape: tuple[int, int, int], n_classes: int) -> nn.Module:
    """A fresh, randomly initialised model. ``input_shape`` is (C, H, W); the model maps float32 NCHW
    ``[N, C, H, W]`` to logits ``[N, n_classes]``."""
    c, h, w = input_shape
    if arch == "cnn-small":
        if h < 4 or w < 4:
            raise HarnessError(
                f"model.arch cnn-small needs inputs of at least 4x4 pixels, got {h}x{w}; resize in data.preprocess"
            )
        return CnnSmall(c, n_classes, (h, w))
    if arch == "resnet18":
        return ResNet18(c, n_classes)
    if arch == "vgg16-bn":
        return VGG16BN(c, n_classes, (h, w))
    if arch == "mobilenetv2":
        return MobileNetV2(c, n_classes)
    raise HarnessError(f"model.arch '{arch}' has no torch model; allowed: cnn-small, resnet18, vgg16-bn, mobilenetv2")


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv2d and Linear: the layers whose ``weight`` is pruned or clustered."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


# =========================================================================== progress, determinism


class _Progress:
    """Adapter over the ``progress`` argument: None, a callable taking a message, or a rich ``Progress``."""

    def __init__(self, progress: Any, tag: str) -> None:
        self._p = progress
        self._tag = tag
        self._task: Any = None

    def say(self, message: str) -> None:
        msg = f"torch {self._tag}: {message}"
        if self._p is None:
            return
        if hasattr(self._p, "add_task"):
            if self._task is None:
                self._task = self._p.add_task(msg, total=None)
            else:
                self._p.update(self._task, description=msg)
        elif callable(self._p):
            self._p(msg)

    def done(self) -> None:
        if self._p is not None and hasattr(self._p, "remove_task") and self._task is not None:
            self._p.remove_task(self._task)
            self._task = None


def train_device(cfg: TrainSection) -> torch.device:
    """Where to train (``train.device``): ``auto`` = CUDA when torch sees a GPU, else CPU. Exports stay on CPU."""
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise HarnessError(
                "train.device = \"cuda\" but torch sees no CUDA GPU (CPU-only torch build, or no GPU on this "
                "worker); install a CUDA build of torch or set train.device = \"auto\""
            )
        return torch.device("cuda")
    return torch.device("cpu")


def train_threads(cfg: TrainSection) -> int:
    """Intra-op threads: ``train.threads``, else the unit's CPU allocation (Ray) or this machine's cores."""
    from harness.execution import unit_cpus

    return int(cfg.threads) if cfg.threads else unit_cpus()


@contextlib.contextmanager
def _torch_settings(threads: int) -> Iterator[None]:
    """Run with ``threads`` intra-op threads and deterministic algorithms (CPU and CUDA); restore the caller's
    settings afterwards."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (read at CUDA start-up)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = old_cudnn


def _nchw(x: np.ndarray) -> torch.Tensor:
    """float32 NHWC [N, H, W, C] -> float32 NCHW tensor [N, C, H, W] with standard contiguous strides.

    (For C == 1 NumPy calls the transposed view contiguous although its strides are channels-last; torch.export
    would then record a channels-last dim order and the .pte would reject ordinary NCHW inputs. Hence the copy.)
    """
    t = torch.from_numpy(np.transpose(np.asarray(x, dtype=np.float32), (0, 3, 1, 2)))
    return t.clone(memory_format=torch.contiguous_format)


def _check_owner(owner: OwnerData) -> tuple[int, int, int]:
    """Validate the owner's arrays; return the model input shape (C, H, W)."""
    x = owner.x_train
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        raise HarnessError(
            f"torch build: owner x_train must be a 4-D NHWC array [N, H, W, C], got shape {getattr(x, 'shape', None)}"
        )
    if len(x) == 0:
        raise HarnessError("torch build: the owner has no training examples; increase splits.target_in/shadow_in")
    if len(owner.y_train) != len(x):
        raise HarnessError(f"torch build: x_train has {len(x)} rows but y_train has {len(owner.y_train)}")
    if owner.x_holdout.size and owner.x_holdout.shape[1:] != x.shape[1:]:
        raise HarnessError(
            f"torch build: x_holdout shape {owner.x_holdout.shape[1:]} differs from x_train {x.shape[1:]}"
        )
    y = np.asarray(owner.y_train)
    if y.min() < 0 or y.max() >= owner.n_classes:
        raise HarnessError(f"torch build: labels must lie in [0, {owner.n_classes}), got [{y.min()}, {y.max()}]")
    return int(x.shape[3]), int(x.shape[1]), int(x.shape[2])


# =========================================================================== training


@dataclass
class TrainResult:
    """What a training run did: epochs actually run, the epoch kept, per-epoch mean losses, wall seconds."""

    epochs_run: int
    best_epoch: int
    history: list[dict[str, float]]
    seconds: float


def _holdout_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> tuple[float, float]:
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = model(x[i : i + batch])
            loss += float(nn.functional.cross_entropy(out, y[i : i + batch], reduction="sum"))
            correct += int((out.argmax(1) == y[i : i + batch]).sum())
    return loss / max(len(x), 1), correct / max(len(x), 1)


def train_model(
    model: nn.Module,
    owner: OwnerData,
    cfg: TrainSection,
    *,
    epochs: int,
    lr: float,
    seed: int,
    schedule: str | None = None,
    say: Callable[[str], None] = lambda m: None,
) -> TrainResult:
    """Train ``model`` in place on the owner's training part with the recipe ``cfg`` (optimizer, momentum, weight
    decay, batch size) for ``epochs`` epochs at learning rate ``lr``; ``schedule`` overrides ``cfg.lr_schedule``.

    Early stopping (``cfg.early_stopping_patience`` > 0) watches the loss on the owner's own hold-out only and
    restores the best epoch's weights. Parameters with ``requires_grad=False`` are left untouched.

    Trains on ``train_device(cfg)`` (a GPU when ``train.device`` allows one); the model is back on the CPU when
    this returns (exports are always made on the CPU).
    """
    dev = train_device(cfg)
    model.to(dev)
    x, y = _nchw(owner.x_train).to(dev), torch.from_numpy(np.asarray(owner.y_train, dtype=np.int64)).to(dev)
    xh, yh = _nchw(owner.x_holdout).to(dev), torch.from_numpy(np.asarray(owner.y_holdout, dtype=np.int64)).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    kind = schedule or cfg.lr_schedule
    if kind == "cosine":
        sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    elif kind == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, epochs // 3), gamma=0.1)
    else:
        sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    gen = torch.Generator().manual_seed(seed)
    patience = cfg.early_stopping_patience if len(xh) else 0
    best_loss, best_epoch, best_state, waited = float("inf"), epochs, None, 0
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), cfg.batch_size):
            idx = order[i : i + cfg.batch_size].to(dev)
            if len(idx) < 2 and any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
                continue  # BatchNorm cannot train on a single example
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        row = {"epoch": float(epoch), "train_loss": total / len(x)}
        if len(xh):
            row["holdout_loss"], row["holdout_accuracy"] = _holdout_loss(model, xh, yh, 512)
        history.append(row)
        say(
            f"epoch {epoch}/{epochs} loss {row['train_loss']:.4f}"
            + (f" hold-out acc {row['holdout_accuracy']:.3f}" if len(xh) else "")
        )
        if patience:
            if row["holdout_loss"] < best_loss:
                best_loss, best_epoch, waited = row["holdout_loss"], epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                waited += 1
                if waited >= patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = len(history)
    model.to("cpu")
    model.eval()
    return TrainResult(len(history), best_epoch, history, time.perf_counter() - t0)


# =========================================================================== compression (fp32 steps)


def apply_pruning(model: nn.Module, sparsity: float) -> None:
    """Global L1 unstructured pruning of all Conv2d/Linear weights to ``sparsity`` (fraction of zeros).

    Leaves torch's pruning masks in place (``weight_orig`` + ``weight_mask``) so fine-tuning keeps the zeros;
    call :func:`make_pruning_permanent` afterwards.
    """
    params = [(m, "weight") for _, m in prunable_layers(model)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=float(sparsity))


def make_pruning_permanent(model: nn.Module) -> None:
    """``prune.remove`` on every pruned layer: the zeros become part of the plain ``weight`` tensor."""
    for _, m in prunable_layers(model):
        if prune.is_pruned(m) and hasattr(m, "weight_mask"):
            prune.remove(m, "weight")


class ClusteredWeight(nn.Module):
    """Parametrization ``weight = centroids[assignment]``: weight sharing with trainable centroids (float32 [K])
    and a fixed assignment (int64, the weight's shape)."""

    def __init__(self, centroids: np.ndarray, assignment: np.ndarray) -> None:
        super().__init__()
        self.centroids = nn.Parameter(torch.as_tensor(centroids, dtype=torch.float32))
        self.register_buffer("assignment", torch.as_tensor(assignment, dtype=torch.int64))

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return self.centroids[self.assignment]


def apply_clustering(model: nn.Module, clusters: int, seed: int) -> None:
    """Per-layer k-means weight sharing (scikit-learn KMeans, k-means++ init) on every Conv2d/Linear weight.

    Each weight tensor gets at most ``clusters`` distinct values; the centroids become the only trainable part
    of that weight (the assignment is fixed). Call :func:`make_clustering_permanent` after fine-tuning.
    """
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    for _, m in prunable_layers(model):
        w = m.weight.detach().cpu().numpy().astype(np.float64).reshape(-1, 1)
        k = min(int(clusters), len(np.unique(w)))
        fit_on = w if len(w) <= _KMEANS_MAX_POINTS else w[rng.choice(len(w), _KMEANS_MAX_POINTS, replace=False)]
        km = KMeans(n_clusters=k, init="k-means++", n_init=1, random_state=seed).fit(fit_on)
        assignment = km.predict(w).reshape(m.weight.shape)
        parametrize.register_parametrization(
            m, "weight", ClusteredWeight(km.cluster_centers_.ravel(), assignment), unsafe=True
        )
        m.parametrizations.weight.original.requires_grad_(False)


def make_clustering_permanent(model: nn.Module) -> None:
    """Bake the centroids into plain ``weight`` tensors (values ``centroids[assignment]``)."""
    for _, m in prunable_layers(model):
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
            m.weight.requires_grad_(True)


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero values over all Conv2d/Linear weights."""
    zeros = sum(int((m.weight == 0).sum()) for _, m in prunable_layers(model))
    total = sum(m.weight.numel() for _, m in prunable_layers(model))
    return zeros / max(total, 1)


# =========================================================================== export


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("torch", "executorch", "torchao", "onnx", "onnxruntime", "onnxscript", "scikit-learn"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _io_spec(input_shape: tuple[int, int, int], n_classes: int) -> dict[str, Any]:
    c, h, w = input_shape
    return {
        "inputs": [{"name": "input", "shape": [-1, c, h, w], "dtype": "float32", "layout": "NCHW"}],
        "outputs": [{"name": "logits", "shape": [-1, n_classes], "dtype": "float32"}],
        "output_kind": "logits",
    }


def _batch_dim() -> dict[int, Any]:
    return {0: torch.export.Dim("batch", min=1, max=PTE_MAX_BATCH)}


_EXAMPLE_BATCH = 32  # export example batch; with a batch of 1 or 2 the XNNPACK lowering records a wrong batch bound


def _example(owner: OwnerData) -> torch.Tensor:
    """Export example input: float32 NCHW [_EXAMPLE_BATCH, C, H, W] from the owner's training data."""
    idx = np.arange(_EXAMPLE_BATCH) % len(owner.x_train)
    return _nchw(owner.x_train[idx])


def _check_pte_bound(buffer: bytes, path: Path) -> None:
    """Refuse a .pte whose recorded batch bound is not PTE_MAX_BATCH (it would reject ordinary batch sizes)."""
    from executorch.runtime import Runtime

    sizes = list(Runtime.get().load_program(buffer).metadata("forward").input_tensor_meta(0).sizes())
    if sizes[0] != PTE_MAX_BATCH:
        raise HarnessError(
            f"{path.name}: ExecuTorch lowering recorded batch bound {sizes[0]} instead of {PTE_MAX_BATCH}; "
            f"report this toolchain bug"
        )


def export_pte_fp32(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """ExecuTorch program with every supported op delegated to XNNPACK (fp32), dynamic batch 1..PTE_MAX_BATCH."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    ep = torch.export.export(model.eval(), (example,), dynamic_shapes=(_batch_dim(),))
    prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    _check_pte_bound(prog.buffer, path)
    atomic_write_bytes(path, prog.buffer)


def export_pte_int8(model: nn.Module, example: torch.Tensor, calibration: torch.Tensor, path: Path) -> int:
    """PT2E static int8 (XNNPACK quantizer, per-channel symmetric weights) calibrated on ``calibration``
    (float32 NCHW, the owner's training data), lowered to XNNPACK. Returns the number of calibration examples."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    captured = torch.export.export(model.eval(), (example,), dynamic_shapes=(_batch_dim(),)).module()
    prepared = prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        for i in range(0, len(calibration), 64):
            prepared(calibration[i : i + 64])
    converted = convert_pt2e(prepared)
    ep = torch.export.export(converted, (example,), dynamic_shapes=(_batch_dim(),))
    prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    _check_pte_bound(prog.buffer, path)
    atomic_write_bytes(path, prog.buffer)
    return len(calibration)


def export_pte_dynamic_int8(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """PT2E dynamic int8 of every Linear (XNNPACK quantizer, ``get_symmetric_quantization_config(
    is_per_channel=True, is_dynamic=True)``: per-channel symmetric int8 weights, activations quantized per batch at
    run time), lowered to XNNPACK; dynamic batch 1..PTE_MAX_BATCH. No calibration (nothing static to observe)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
    quantizer = XNNPACKQuantizer().set_module_type(nn.Linear, config)
    captured = torch.export.export(model.eval(), (example,), dynamic_shapes=(_batch_dim(),)).module()
    prepared = prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        prepared(example)  # dynamic observers record nothing; one pass completes the prepared graph
    converted = convert_pt2e(prepared)
    ep = torch.export.export(converted, (example,), dynamic_shapes=(_batch_dim(),))
    prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    _check_pte_bound(prog.buffer, path)
    atomic_write_bytes(path, prog.buffer)


@contextlib.contextmanager
def _warnings_to_log(what: str) -> Iterator[None]:
    """Run a block whose third-party warnings (deprecations of the eager ``torch.ao`` / TorchScript path) belong
    in the log, not on the terminal: each is recorded and logged once at INFO on this module's logger."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for msg in dict.fromkeys(f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught):
        _LOG.info("%s: %s", what, msg)


def quantize_dynamic_linear(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every Linear replaced by an eager dynamic int8 Linear (``torch.ao``
    ``quantize_dynamic``, per-tensor qint8 weights): the form the lite interpreter runs (``quantized::linear_dynamic``).
    torch deprecates this API in favour of torchao PT2E, which the lite interpreter cannot run; its warnings go
    to the log."""
    with _warnings_to_log("dynamic-int8 .ptl (eager torch.ao quantization)"):
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)


def export_ptl(model: nn.Module, example: torch.Tensor, path: Path, io_spec: dict[str, Any]) -> None:
    """Traced TorchScript saved for the lite interpreter, with ``compleak.json`` (I/O spec) as an extra file."""
    with _warnings_to_log("TorchScript .ptl export"):
        traced = torch.jit.trace(model.eval(), example)
        with atomic_path(path, keep_suffix=True) as tmp:
            traced._save_for_lite_interpreter(str(tmp), _extra_files={"compleak.json": json.dumps(io_spec)})


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """fp32 ONNX via the torch.export-based exporter, dynamic batch, input ``input`` (NCHW), output ``logits``.

    Models with BatchNorm are exported without the exporter's graph optimization, which would fold BatchNorm into
    the preceding conv and so rescale (un-share) clustered or quantized weights per channel; the file keeps the
    model's own weights and onnxruntime fuses Conv+BatchNorm when it loads the session.
    """
    import logging

    import onnx

    # the exporter logs one warning per torchvision op it cannot register (torchvision is not a dependency)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            model.eval(),
            (example,),
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            optimize=not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()),
            verbose=False,
        )
    proto = prog.model_proto
    onnx.helper.set_model_props(proto, {"compleak.input_layout": "NCHW", "compleak.output_kind": "logits"})
    onnx.checker.check_model(proto)
    atomic_write_bytes(path, proto.SerializeToString())


def quantize_onnx_dynamic(fp32_path: Path, path: Path) -> list[str]:
    """onnxruntime dynamic int8 quantization of the Linear layers (Gemm/MatMul; int8 weights, activations
    quantized at run time) of ``fp32_path``. Returns the names of the quantized weight initializers."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_path(path, keep_suffix=True) as tmp:
        quantize_dynamic(str(fp32_path), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, {"compleak.input_layout": "NCHW", "compleak.output_kind": "logits"})
        onnx.save(proto, str(tmp))
    return sorted(i.name for i in proto.graph.initializer if i.name.endswith("_quantized"))


def plan_formats(variant: str, formats: list[str]) -> tuple[list[str], dict[str, str]]:
    """Which of ``formats`` a variant is exported to, and why each of the others is not."""
    steps = parse_variant(variant)
    quant = steps[-1] if steps[-1] in ("int8", "dynamic-int8", "fp16", "qat-int8") else None
    if quant in ("fp16", "qat-int8"):
        return [], {f: f"'{quant}' exists only on the TF path" for f in formats}
    allowed = {None: ("pte", "ptl", "onnx"), "int8": ("pte",), "dynamic-int8": ("pte", "ptl", "onnx")}[quant]
    why = {"int8": "static int8 (PT2E, XNNPACK quantizer) is exported only as ExecuTorch .pte"}
    built = [f for f in formats if f in allowed]
    skipped = {f: why.get(str(quant), f"unknown format '{f}'") for f in formats if f not in allowed}
    return built, skipped


# =========================================================================== caching


def _data_digest(owner: OwnerData) -> str:
    return content_digest(owner.x_train, owner.y_train, owner.x_holdout, owner.y_holdout, owner.n_classes, owner.seed)


CACHE_FORMAT = "torch-state-dict"  # what a cache entry's sidecar records


def _save_state(path: Path, model: nn.Module, info: dict[str, Any]) -> None:
    """Write the state dict and ``info`` atomically, then the sha256 sidecar (``<file>.json``) with the cache key."""
    buf = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), "info": info}, buf)
    atomic_write_bytes(path, buf.getvalue())
    write_cache_record(path, str(info["key"]), CACHE_FORMAT)


def _load_state(
    path: Path, model: nn.Module, key: str, say: Callable[[str], None] = lambda m: None
) -> dict[str, Any] | None:
    """Load the cached state dict at ``path`` into ``model`` and return its info; None when there is none to use.

    The file is read only when its sha256 matches the digest recorded for cache ``key`` in its sidecar
    (:func:`harness.build.artifacts.check_cache_entry`), and then only with ``torch.load(weights_only=True)`` (tensors and
    plain containers; no pickled code). A tampered, foreign or unreadable entry is reported through ``say`` in one
    line and ignored, so the caller retrains and overwrites it. A folder in its place is a HarnessError.
    """
    for p in (path, cache_record_path(path)):
        if p.is_dir() and not p.is_symlink():
            raise HarnessError(
                f"{p}: a folder where the build cache keeps a file; delete it (or run compleak build --force)"
            )
    if not path.exists() and not path.is_symlink():
        return None
    why, _ = check_cache_entry(path, key, CACHE_FORMAT)
    if why is None:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(blob["state_dict"])
            if not isinstance(blob.get("info"), dict) or blob["info"].get("key") != key:
                raise ValueError("info")
            return dict(blob["info"])
        except Exception as exc:  # weights_only refusals, truncated or foreign files, other architectures
            why = f"not a state dict of this model ({exc.__class__.__name__})"
    say(f"{NOTICE} torch cache {path.name} refused ({why}); retraining")
    return None


def cache_path(out_dir: Path, tag: str, stage: str, key: str) -> Path:
    """``out_dir/torch-cache/{tag}-{stage}-{key[:16]}.pt``: one cached state dict."""
    return Path(out_dir) / CACHE_DIR / f"{tag}-{stage}-{key[:16]}.pt"


class _Builder:
    """One owner's models: the trained original and fp32 compression prefixes, cached in memory and on disk."""

    def __init__(self, exp: Experiment, owner: OwnerData, out_dir: Path, tag: str, say: Callable[[str], None]) -> None:
        self.exp, self.owner, self.out_dir, self.tag, self.say = exp, owner, Path(out_dir), tag, say
        self.input_shape = _check_owner(owner)
        self.base_key = exp.section_hash(
            "model", "train", extra={"data": _data_digest(owner), "torch": torch.__version__}
        )
        self._models: dict[tuple[str, ...], tuple[nn.Module, dict[str, Any]]] = {}

    def fresh(self) -> nn.Module:
        return build_model(self.exp.model.arch, self.input_shape, self.owner.n_classes)

    def original(self) -> tuple[nn.Module, dict[str, Any]]:
        if () in self._models:
            return self._models[()]
        path = cache_path(self.out_dir, self.tag, "original", self.base_key)
        model = self.fresh()
        info = _load_state(path, model, self.base_key, self.say)
        if info is None:
            self.say(f"training {self.exp.model.arch} on {len(self.owner.x_train)} examples")
            torch.manual_seed(self.owner.seed)
            model = self.fresh()
            res = train_model(
                model, self.owner, self.exp.train, epochs=self.exp.train.epochs, lr=self.exp.train.lr,
                seed=self.owner.seed, say=self.say,
            )  # fmt: skip
            info = {"key": self.base_key, "epochs_run": res.epochs_run, "best_epoch": res.best_epoch,
                    "train_seconds": res.seconds, "history": res.history}  # fmt: skip
            for old in path.parent.glob(f"{self.tag}-original-*.pt*"):  # older entries and their sidecars
                old.unlink(missing_ok=True)
            _save_state(path, model, info)
        else:
            self.say("reusing the cached trained model")
        model.eval()
        self._models[()] = (model, info)
        return model, info

    def fp32(self, steps: tuple[str, ...]) -> tuple[nn.Module, dict[str, Any]]:
        """The model after the fp32 compression ``steps`` (prune-S / cluster-K, in order), fine-tuned."""
        if steps in self._models:
            return self._models[steps]
        if not steps:
            return self.original()
        parent, parent_info = self.fp32(steps[:-1])
        step = steps[-1]
        cc = self.exp.compress
        key = content_digest(self.base_key, list(steps), cc.finetune_epochs, cc.finetune_lr)
        stage = "+".join(steps)
        path = cache_path(self.out_dir, self.tag, stage, key)
        model = self.fresh()
        info = _load_state(path, model, key, self.say)
        if info is None:
            model.load_state_dict(parent.state_dict())
            seed = self.owner.seed + 1 + len(steps)
            torch.manual_seed(seed)
            info = {"key": key}
            if step.startswith("prune-"):
                self.say(f"{stage}: global L1 pruning, fine-tuning {cc.finetune_epochs} epochs")
                apply_pruning(model, float(step.split("-", 1)[1]))
                res = None
                if cc.finetune_epochs:
                    res = train_model(model, self.owner, self.exp.train, epochs=cc.finetune_epochs, lr=cc.finetune_lr,
                                      seed=seed, schedule="constant", say=self.say)  # fmt: skip
                make_pruning_permanent(model)
            else:
                k = int(step.split("-", 1)[1])
                self.say(f"{stage}: k-means weight sharing (K={k}), fine-tuning centroids {cc.finetune_epochs} epochs")
                apply_clustering(model, k, seed)
                res = None
                if cc.finetune_epochs:
                    res = train_model(model, self.owner, self.exp.train, epochs=cc.finetune_epochs, lr=cc.finetune_lr,
                                      seed=seed, schedule="constant", say=self.say)  # fmt: skip
                make_clustering_permanent(model)
            info["finetune_epochs_run"] = res.epochs_run if res else 0
            for old in path.parent.glob(f"{self.tag}-{stage}-*.pt*"):
                old.unlink(missing_ok=True)
            _save_state(path, model, info)
            # prune.remove / remove_parametrizations re-register ``weight`` after ``bias``, and the exporters
            # follow parameter order: export from a fresh model, exactly what a cache hit (a retried unit) loads
            fresh = self.fresh()
            fresh.load_state_dict(model.state_dict())
            model = fresh
        model.eval()
        self._models[steps] = (model, info)
        return model, info


def trained_model(exp: Experiment, owner: OwnerData, out_dir: Path, tag: str, variant: str = "original") -> nn.Module:
    """The fp32 torch model behind ``variant`` (its prune/cluster steps applied and fine-tuned; quantization
    steps are not applied), in eval mode, taken from the cache that :func:`build_variants` fills (trained and
    cached if absent). Input float32 NCHW [N, C, H, W], output logits [N, n_classes]."""
    steps = tuple(s for s in parse_variant(variant) if s.startswith(("prune-", "cluster-")))
    with _torch_settings(train_threads(exp.train)):
        return _Builder(exp, owner, Path(out_dir), tag, lambda m: None).fp32(steps)[0]


def _compression(steps: list[str], model: nn.Module, exp: Experiment) -> dict[str, Any]:
    comp: dict[str, Any] = {"steps": steps}
    fp32_steps = [s for s in steps if s.startswith(("prune-", "cluster-"))]
    if fp32_steps:
        comp["finetune_epochs"] = exp.compress.finetune_epochs
        comp["finetune_lr"] = exp.compress.finetune_lr
    for s in fp32_steps:
        if s.startswith("prune-"):
            comp["sparsity"] = float(s.split("-", 1)[1])
            comp["pruning"] = "global L1 unstructured over Conv2d+Linear weights (torch.nn.utils.prune), permanent"
        else:
            comp["clusters"] = int(s.split("-", 1)[1])
            comp["clustering"] = "per-layer k-means (scikit-learn, k-means++) weight sharing, centroids fine-tuned"
    comp["measured_sparsity"] = round(weight_sparsity(model), 6)
    return comp


def build_variants(
    exp: Experiment,
    owner: OwnerData,
    variants: list[str],
    out_dir: Path,
    tag: str,
    formats: list[str] | None = None,
    progress: Any = None,
) -> list[BuiltArtifact]:
    """Train (or reuse) the owner's original torch model, compress it per variant and export each variant.

    Args:
        exp: the experiment (model.arch, train recipe, compress settings, export.torch_formats).
        owner: the owner's data; ``x_*`` float32 NHWC [N, H, W, C] (transposed here to NCHW).
        variants: labels such as ``original``, ``prune-0.8``, ``cluster-8``, ``int8``, ``prune-0.8+int8``.
        out_dir: folder for the artifacts (``torch-{tag}-{variant}.{format}``) and the ``torch-cache/`` folder.
        tag: owner tag, e.g. ``target`` or ``shadow0``.
        formats: subset of pte/ptl/onnx; default ``exp.export.torch_formats``.
        progress: None, a callable taking a one-line message, or a rich ``Progress``.

    Returns the artifacts written, in variant order. A variant/format pair that cannot exist (see
    :func:`plan_formats`) is not written; the reason is reported through ``progress``.
    """
    formats = list(formats if formats is not None else exp.export.torch_formats)
    bad = [f for f in formats if f not in ("pte", "ptl", "onnx")]
    if bad:
        raise HarnessError(f"torch build: format '{bad[0]}' is not a torch format; allowed: pte, ptl, onnx")
    plans: list[tuple[str, list[str], list[str]]] = []
    for v in variants:
        try:
            steps = parse_variant(v)
        except ValueError as exc:
            raise HarnessError(f"torch build: variant '{v}': {exc}") from None
        tf_only = [s for s in steps if s in ("fp16", "qat-int8")]
        if tf_only:
            raise HarnessError(
                f"torch build: variant '{v}': step '{tf_only[0]}' exists only on the TF path; "
                f"remove it from compress.torch"
            )
        plans.append((v, steps, plan_formats(v, formats)[0]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rep = _Progress(progress, tag)
    toolchain = _versions()
    built: list[BuiltArtifact] = []
    try:
        with _torch_settings(train_threads(exp.train)):
            b = _Builder(exp, owner, out_dir, tag, rep.say)
            example = _example(owner)
            spec = _io_spec(b.input_shape, owner.n_classes)
            for v, steps, fmts in plans:
                for f, why in plan_formats(v, formats)[1].items():
                    rep.say(f"{v}: no .{f} ({why})")
                if not fmts:
                    continue
                quant = steps[-1] if steps[-1] in ("int8", "dynamic-int8") else None
                fp32_steps = tuple(s for s in steps if s.startswith(("prune-", "cluster-")))
                model, info = b.fp32(fp32_steps)
                comp = _compression(steps, model, exp)
                if "finetune_epochs_run" in info:
                    comp["finetune_epochs_run"] = info["finetune_epochs_run"]
                comp["train"] = {
                    "epochs_run": b.original()[1].get("epochs_run"), "best_epoch": b.original()[1].get("best_epoch")
                }
                comp["input_layout"] = "NCHW"
                for f in fmts:
                    path = out_dir / artifact_id(FRAMEWORK, tag, v, f)
                    rep.say(f"exporting {path.name}")
                    c = dict(comp)
                    with _warnings_to_log(f"torch export {path.name}"):  # deprecations: log only
                        if quant == "int8":
                            n = min(exp.compress.representative_samples, len(owner.x_train))
                            pick = np.random.default_rng(owner.seed).choice(len(owner.x_train), n, replace=False)
                            export_pte_int8(model, example, _nchw(owner.x_train[np.sort(pick)]), path)
                            c.update(quantization="int8",
                                     quantizer="PT2E XNNPACKQuantizer, per-channel symmetric int8 weights, "
                                     "static int8 activations",
                                     calibration_samples=n, calibration_data="owner training data")  # fmt: skip
                        elif quant == "dynamic-int8" and f == "pte":
                            export_pte_dynamic_int8(model, example, path)
                            c.update(quantization="dynamic-int8",
                                     quantizer="PT2E (torchao prepare_pt2e/convert_pt2e) XNNPACKQuantizer "
                                     "dynamic config, Linear layers, per-channel symmetric int8 weights, "
                                     "int8 activations at run time",
                                     delegate="XnnpackPartitioner (dynamic int8)")  # fmt: skip
                        elif quant == "dynamic-int8" and f == "ptl":
                            export_ptl(quantize_dynamic_linear(model), example, path, spec)
                            c.update(quantization="dynamic-int8",
                                     quantizer="torch.ao quantize_dynamic (eager; the lite interpreter has no "
                                     "PT2E path), Linear layers, qint8 weights")  # fmt: skip
                        elif quant == "dynamic-int8":
                            fp32 = out_dir / CACHE_DIR / f"{tag}-{v}-fp32.onnx"
                            export_onnx(model, example, fp32)
                            qnames = quantize_onnx_dynamic(fp32, path)
                            fp32.unlink(missing_ok=True)
                            c.update(quantization="dynamic-int8",
                                     quantizer="onnxruntime quantize_dynamic, MatMul/Gemm, QInt8 weights",
                                     quantized_weights=qnames)  # fmt: skip
                        elif f == "pte":
                            export_pte_fp32(model, example, path)
                            c["delegate"] = "XnnpackPartitioner (fp32)"
                        elif f == "ptl":
                            export_ptl(model, example, path, spec)
                        else:
                            export_onnx(model, example, path)
                    if f == "pte":
                        c["max_batch"] = PTE_MAX_BATCH
                    built.append(BuiltArtifact(v, f, path, c, dict(toolchain), "logits"))
    except HarnessError:
        raise
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise HarnessError(f"torch build ({exp.model.arch}, {tag}): {exc.__class__.__name__}: {first[:300]}") from exc
    finally:
        rep.done()
    return built
