"""PyTorch path of the build stage: one owner's models from training to the exported files.

The path in modules: :mod:`harness.build.torch_zoo` (the nn.Module architectures), :mod:`harness.build.torch_train`
(deterministic settings, training), :mod:`harness.build.torch_compress` (pruning, clustering, PT2E / eager int8),
:mod:`harness.build.torch_export` (formats, the ``.pte``/``.ptl``/``.onnx`` writers) and this module (the cache of
trained and compressed models, and the pipeline over the variants).

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

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.build import artifacts as art
from harness.build.torch_compress import (
    apply_clustering,
    apply_pruning,
    make_clustering_permanent,
    make_pruning_permanent,
    weight_sparsity,
)
from harness.build.torch_export import PTE_MAX_BATCH, ExportInputs, plan_formats, toolchain_versions, write_format
from harness.build.torch_train import settings_in_effect, torch_settings, train_model, train_threads
from harness.build.torch_zoo import build_model
from harness.config import Experiment, parse_variant
from harness.data import OwnerData
from harness.errors import HarnessError
from rundir import atomic_write_bytes

FRAMEWORK = "torch"
CACHE_DIR = art.CACHE_DIRS[FRAMEWORK]
CACHE_FORMAT = "torch-state-dict"  # what a cache entry's sidecar records
_FP32_STEPS = ("prune-", "cluster-")  # the compression steps applied to the torch model itself (then fine-tuned)
__all__ = [
    "CACHE_DIR", "CACHE_FORMAT", "FRAMEWORK", "PTE_MAX_BATCH", "build_model", "build_variants",
    "cache_path", "plan_formats", "train_model", "trained_model",
]


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


# =========================================================================== caching


def _data_digest(owner: OwnerData) -> str:
    return art.content_digest(owner.x_train, owner.y_train, owner.x_holdout, owner.y_holdout, owner.n_classes,
                              owner.seed)


def _save_state(path: Path, model: nn.Module, info: dict[str, Any]) -> None:
    """Write the state dict and ``info`` atomically, then the sha256 sidecar (``<file>.json``) with the cache key."""
    buf = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), "info": info}, buf)
    atomic_write_bytes(path, buf.getvalue())
    art.write_cache_record(path, str(info["key"]), CACHE_FORMAT)


def _load_state(
    path: Path, model: nn.Module, key: str, say: Callable[[str], None] = lambda m: None
) -> dict[str, Any] | None:
    """Load the cached state dict at ``path`` into ``model`` and return its info; None when there is none to use.

    The file is read only when its sha256 matches the digest recorded for cache ``key`` in its sidecar
    (:func:`harness.build.artifacts.check_cache_entry`), and then only with ``torch.load(weights_only=True)``
    (tensors and plain containers; no pickled code). A tampered, foreign or unreadable entry is reported through
    ``say`` in one line and ignored, so the caller retrains and overwrites it. A folder in its place is a HarnessError.
    """

    def read(p: Path) -> dict[str, Any]:
        why, _ = art.check_cache_entry(p, key, CACHE_FORMAT)
        if why is not None:
            raise ValueError(why)
        try:
            blob = torch.load(p, map_location="cpu", weights_only=True)
            model.load_state_dict(blob["state_dict"])
            if not isinstance(blob.get("info"), dict) or blob["info"].get("key") != key:
                raise ValueError("info")
            return dict(blob["info"])
        except Exception as exc:  # weights_only refusals, truncated or foreign files, other architectures
            raise ValueError(f"not a state dict of this model ({exc.__class__.__name__})") from None

    return art.read_cache_entry(path, read, say, "torch cache {name} refused ({why}); retraining")


def cache_path(out_dir: Path, tag: str, stage: str, key: str) -> Path:
    """``out_dir/torch-cache/{tag}-{stage}-{key[:16]}.pt``: one cached state dict."""
    return Path(out_dir) / CACHE_DIR / f"{art.cache_entry_prefix(FRAMEWORK, tag)}{stage}-{key[:16]}.pt"



class _Builder:
    """One owner's models: the trained original and fp32 compression prefixes, cached in memory and on disk."""

    def __init__(self, exp: Experiment, owner: OwnerData, out_dir: Path, tag: str, say: Callable[[str], None]) -> None:
        self.exp, self.owner, self.out_dir, self.tag, self.say = exp, owner, Path(out_dir), tag, say
        self.input_shape = _check_owner(owner)
        self.base_key = exp.section_hash(
            "model", "train", "build", extra={"data": _data_digest(owner), "torch": torch.__version__}
        )
        self._models: dict[tuple[str, ...], tuple[nn.Module, dict[str, Any]]] = {}

    def fresh(self) -> nn.Module:
        return build_model(self.exp.model.arch, self.input_shape, self.owner.n_classes)

    def _store(self, path: Path, stage: str, model: nn.Module, info: dict[str, Any]) -> None:
        """Cache ``model`` at ``path`` in place of every older entry of this owner's ``stage`` (and its sidecar)."""
        for old in path.parent.glob(f"{self.tag}-{stage}-*.pt*"):
            old.unlink(missing_ok=True)
        _save_state(path, model, info)

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
            self._store(path, "original", model, info)
        else:
            self.say("reusing the cached trained model")
        model.eval()
        self._models[()] = (model, info)
        return model, info

    def _compress(self, model: nn.Module, steps: tuple[str, ...], key: str) -> dict[str, Any]:
        """Apply the last of ``steps`` (prune-S / cluster-K) to ``model``, which holds the model after the others;
        fine-tune it and make the step permanent. Returns the cache entry's info."""
        step, stage, cc = steps[-1], "+".join(steps), self.exp.compress
        seed = self.owner.seed + 1 + len(steps)
        torch.manual_seed(seed)
        pruning = step.startswith("prune-")
        if pruning:
            self.say(f"{stage}: global L1 pruning, fine-tuning {cc.finetune_epochs} epochs")
            apply_pruning(model, float(step.split("-", 1)[1]))
        else:
            k = int(step.split("-", 1)[1])
            self.say(f"{stage}: k-means weight sharing (K={k}), fine-tuning centroids {cc.finetune_epochs} epochs")
            apply_clustering(model, k, seed, train_threads(self.exp))
        res = None
        if cc.finetune_epochs:
            res = train_model(model, self.owner, self.exp.train, epochs=cc.finetune_epochs, lr=cc.finetune_lr,
                              seed=seed, schedule="constant", say=self.say)  # fmt: skip
        (make_pruning_permanent if pruning else make_clustering_permanent)(model)
        return {"key": key, "finetune_epochs_run": res.epochs_run if res else 0}

    def fp32(self, steps: tuple[str, ...]) -> tuple[nn.Module, dict[str, Any]]:
        """The model after the fp32 compression ``steps`` (prune-S / cluster-K, in order), fine-tuned."""
        if steps in self._models:
            return self._models[steps]
        if not steps:
            return self.original()
        parent, _ = self.fp32(steps[:-1])
        cc = self.exp.compress
        key = art.content_digest(self.base_key, list(steps), cc.finetune_epochs, cc.finetune_lr)
        stage = "+".join(steps)
        path = cache_path(self.out_dir, self.tag, stage, key)
        model = self.fresh()
        info = _load_state(path, model, key, self.say)
        if info is None:
            model.load_state_dict(parent.state_dict())
            info = self._compress(model, steps, key)
            self._store(path, stage, model, info)
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
    steps = tuple(s for s in parse_variant(variant) if s.startswith(_FP32_STEPS))
    with torch_settings(train_threads(exp), exp.build.deterministic):
        return _Builder(exp, owner, Path(out_dir), tag, lambda m: None).fp32(steps)[0]


# =========================================================================== the pipeline


def _plans(variants: list[str], formats: list[str]) -> list[tuple[str, list[str], list[str]]]:
    """(variant, its steps, the formats it is written to) per variant; a one-line error for a format or step the
    torch path does not have."""
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
    return plans


def _compression(
    steps: list[str], model: nn.Module, info: dict[str, Any], trained: dict[str, Any], exp: Experiment
) -> dict[str, Any]:
    """The compression record of a variant whose fp32 ``model`` (cache ``info``) comes from the original trained as
    ``trained`` says; each export adds what it did."""
    comp: dict[str, Any] = {"steps": steps}
    fp32_steps = [s for s in steps if s.startswith(_FP32_STEPS)]
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
    if "finetune_epochs_run" in info:
        comp["finetune_epochs_run"] = info["finetune_epochs_run"]
    comp["train"] = {"epochs_run": trained.get("epochs_run"), "best_epoch": trained.get("best_epoch")}
    comp["input_layout"] = "NCHW"
    return comp


def build_variants(
    exp: Experiment,
    owner: OwnerData,
    variants: list[str],
    out_dir: Path,
    tag: str,
    formats: list[str] | None = None,
    progress: Any = None,
) -> list[art.BuiltArtifact]:
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
    plans = _plans(variants, formats)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rep = _Progress(progress, tag)
    toolchain = toolchain_versions()
    built: list[art.BuiltArtifact] = []
    try:
        with torch_settings(train_threads(exp), exp.build.deterministic):
            settings = settings_in_effect(exp)
            b = _Builder(exp, owner, out_dir, tag, rep.say)
            inputs = ExportInputs.of(exp, owner, tag, b.input_shape, out_dir / CACHE_DIR)
            for v, steps, fmts in plans:
                for f, why in plan_formats(v, formats)[1].items():
                    rep.say(f"{v}: no .{f} ({why})")
                if not fmts:
                    continue
                model, info = b.fp32(tuple(s for s in steps if s.startswith(_FP32_STEPS)))
                comp = _compression(steps, model, info, b.original()[1], exp)
                for f in fmts:
                    path = out_dir / art.artifact_id(FRAMEWORK, tag, v, f)
                    rep.say(f"exporting {path.name}")
                    compression = {**comp, **write_format(model, v, f, path, inputs)}
                    built.append(art.BuiltArtifact(v, f, path, compression, dict(toolchain), "logits", dict(settings)))
    except HarnessError:
        raise
    except (RuntimeError, ValueError) as exc:
        raise HarnessError(
            f"torch build ({exp.model.arch}, {tag}): {exc.__class__.__name__}: {art.first_line(exc)[:300]}"
        ) from exc
    finally:
        rep.done()
    return built
