"""Training on the torch path of the build: where and with how many threads it runs, deterministic settings, the
NHWC -> NCHW conversion of the owner's arrays, and :func:`train_model` (the recipe of ``[train]``, early stopping on
the owner's own hold-out)."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.config import Experiment, TrainSection
from harness.data import OwnerData
from harness.errors import HarnessError

# the torch build's one logger (docs/torch-build.md): third-party warnings of the exporters and the eager
# quantization end up here, not on the terminal
LOG = logging.getLogger("harness.build.torch_pipeline")


# =========================================================================== runtime settings


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


def train_threads(exp: Experiment) -> int:
    """CPU threads of a torch build unit: ``[build] threads`` (the same wherever the unit runs; docs/scale.md)."""
    return int(exp.build.threads)


@contextlib.contextmanager
def torch_settings(threads: int, deterministic: bool = True) -> Iterator[None]:
    """Run with ``threads`` intra-op (and, where torch still allows it, inter-op) threads and, when
    ``deterministic``, deterministic algorithms (CPU and CUDA); restore the caller's settings afterwards."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (read at CUDA start-up)
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # settable once per process, before any inter-op work; eager ops
        torch.set_num_interop_threads(threads)  # (all the build runs) do not use that pool
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, deterministic
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = old_cudnn


def settings_in_effect(exp: Experiment) -> dict[str, Any]:
    """The ``build`` record of a torch artifact (:func:`harness.build.runtime.settings_record`), read inside
    :func:`torch_settings`."""
    from harness.build.runtime import settings_record

    return settings_record(torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                           train_device(exp.train).type)


@contextlib.contextmanager
def warnings_to_log(what: str) -> Iterator[None]:
    """Run a block whose third-party warnings (deprecations of the eager ``torch.ao`` / TorchScript path) belong
    in the log, not on the terminal: each is recorded and logged once at INFO on the torch build's logger."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for msg in dict.fromkeys(f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught):
        LOG.info("%s: %s", what, msg)


def nchw(x: np.ndarray) -> torch.Tensor:
    """float32 NHWC [N, H, W, C] -> float32 NCHW tensor [N, C, H, W] with standard contiguous strides.

    (For C == 1 NumPy calls the transposed view contiguous although its strides are channels-last; torch.export
    would then record a channels-last dim order and the .pte would reject ordinary NCHW inputs. Hence the copy.)
    """
    t = torch.from_numpy(np.transpose(np.asarray(x, dtype=np.float32), (0, 3, 1, 2)))
    return t.clone(memory_format=torch.contiguous_format)


# =========================================================================== training


@dataclass
class TrainResult:
    """What a training run did: epochs actually run, the epoch kept, per-epoch mean losses, wall seconds."""

    epochs_run: int
    best_epoch: int
    history: list[dict[str, float]]
    seconds: float


@dataclass
class _EarlyStopping:
    """The best epoch so far by hold-out loss and its weights; ``patience`` 0 watches nothing."""

    patience: int
    loss: float = float("inf")
    epoch: int = 0
    state: dict[str, Any] | None = None
    waited: int = 0

    def stop(self, model: nn.Module, epoch: int, loss: float) -> bool:
        """Record ``epoch``'s hold-out ``loss``; True when ``patience`` epochs went by without a better one."""
        if loss < self.loss:
            self.loss, self.epoch, self.waited = loss, epoch, 0
            self.state = copy.deepcopy(model.state_dict())
            return False
        self.waited += 1
        return self.waited >= self.patience


def _holdout_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> tuple[float, float]:
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = model(x[i : i + batch])
            loss += float(nn.functional.cross_entropy(out, y[i : i + batch], reduction="sum"))
            correct += int((out.argmax(1) == y[i : i + batch]).sum())
    return loss / max(len(x), 1), correct / max(len(x), 1)


def _optimizer(params: list[nn.Parameter], cfg: TrainSection, lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _scheduler(opt: torch.optim.Optimizer, kind: str, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, epochs // 3), gamma=0.1)
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


def _train_epoch(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer, order: torch.Tensor, batch: int,
    dev: torch.device,
) -> float:  # fmt: skip
    """One pass over ``x`` in ``order``; returns the summed training loss."""
    model.train()
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    total = 0.0
    for i in range(0, len(x), batch):
        idx = order[i : i + batch].to(dev)
        if len(idx) < 2 and has_bn:
            continue  # BatchNorm cannot train on a single example
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
    return total


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
    x, y = nchw(owner.x_train).to(dev), torch.from_numpy(np.asarray(owner.y_train, dtype=np.int64)).to(dev)
    xh, yh = nchw(owner.x_holdout).to(dev), torch.from_numpy(np.asarray(owner.y_holdout, dtype=np.int64)).to(dev)
    opt = _optimizer([p for p in model.parameters() if p.requires_grad], cfg, lr)
    sched = _scheduler(opt, schedule or cfg.lr_schedule, epochs)
    gen = torch.Generator().manual_seed(seed)
    best = _EarlyStopping(cfg.early_stopping_patience if len(xh) else 0)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        total = _train_epoch(model, x, y, opt, torch.randperm(len(x), generator=gen), cfg.batch_size, dev)
        sched.step()
        row = {"epoch": float(epoch), "train_loss": total / len(x)}
        if len(xh):
            row["holdout_loss"], row["holdout_accuracy"] = _holdout_loss(model, xh, yh, 512)
        history.append(row)
        say(
            f"epoch {epoch}/{epochs} loss {row['train_loss']:.4f}"
            + (f" hold-out acc {row['holdout_accuracy']:.3f}" if len(xh) else "")
        )
        if best.patience and best.stop(model, epoch, row["holdout_loss"]):
            break
    if best.state is not None:
        model.load_state_dict(best.state)
    model.to("cpu")
    model.eval()
    best_epoch = best.epoch if best.state is not None else len(history)
    return TrainResult(len(history), best_epoch, history, time.perf_counter() - t0)
