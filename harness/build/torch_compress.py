"""Compression of a torch model on the build's torch path: the fp32 steps (global L1 pruning, per-layer k-means
weight sharing; each fine-tuned by the caller) and the int8 quantization transforms (PT2E with the XNNPACK
quantizer, static or dynamic; the eager ``torch.ao`` dynamic quantization the lite interpreter runs)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from harness.build.torch_train import warnings_to_log
from harness.build.torch_zoo import prunable_layers

_KMEANS_MAX_POINTS = 200_000  # k-means is fitted on at most this many weights of a tensor, then assigns all


# =========================================================================== fp32 steps


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


def apply_clustering(model: nn.Module, clusters: int, seed: int, threads: int | None = None) -> None:
    """Per-layer k-means weight sharing (scikit-learn KMeans, k-means++ init) on every Conv2d/Linear weight.

    Each weight tensor gets at most ``clusters`` distinct values; the centroids become the only trainable part
    of that weight (the assignment is fixed). Call :func:`make_clustering_permanent` after fine-tuning.
    k-means runs on ``threads`` OpenMP threads (default: torch's intra-op threads, the unit's ``[build] threads``):
    its sums, so its centroids, depend on the count.
    """
    from sklearn.cluster import KMeans

    from harness.build.runtime import cpu_pool_limits

    rng = np.random.default_rng(seed)
    with cpu_pool_limits(threads or torch.get_num_threads()):  # after the import: scikit-learn's own OpenMP
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


# =========================================================================== int8 quantization


def pt2e_int8(
    model: nn.Module, example: torch.Tensor, dynamic_shapes: Any, calibration: torch.Tensor | None = None
) -> nn.Module:
    """PT2E int8 of ``model`` with the XNNPACK quantizer (per-channel symmetric int8 weights), not yet lowered.

    With ``calibration`` (float32 NCHW, the owner's training data): static int8 of every supported op, activation
    ranges observed on ``calibration`` in batches of 64. Without: dynamic int8 of every Linear
    (``get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)``: activations quantized per batch at
    run time; one pass of ``example`` completes the prepared graph, nothing static is observed). ``model`` is
    captured with ``torch.export`` and ``dynamic_shapes``.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if calibration is None:
        config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
        quantizer = XNNPACKQuantizer().set_module_type(nn.Linear, config)
    else:
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    captured = torch.export.export(model.eval(), (example,), dynamic_shapes=dynamic_shapes).module()
    prepared = prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        if calibration is None:
            prepared(example)  # dynamic observers record nothing; one pass completes the prepared graph
        else:
            for i in range(0, len(calibration), 64):
                prepared(calibration[i : i + 64])
    return convert_pt2e(prepared)


def quantize_dynamic_linear(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every Linear replaced by an eager dynamic int8 Linear (``torch.ao``
    ``quantize_dynamic``, per-tensor qint8 weights): the form the lite interpreter runs (``quantized::linear_dynamic``).
    torch deprecates this API in favour of torchao PT2E, which the lite interpreter cannot run; its warnings go
    to the log."""
    with warnings_to_log("dynamic-int8 .ptl (eager torch.ao quantization)"):
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
