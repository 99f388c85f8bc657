"""ONNX exports are bit-identical whether a variant's weights were just computed or read back from the cache.

A retried build unit (its worker killed after the fine-tuned ``prune-0.5`` was cached, before its ``.onnx`` was
written; issue 13) exports from the cache entry, loaded into a fresh model. ``prune.remove`` and
``remove_parametrizations`` re-register ``weight`` after ``bias``, the exporter follows parameter order, and so
the first attempt's (and the serial build's) file had other bytes than the retry's. The builder now exports
computed variants from a fresh model too. Also checked: the same weights exported in another process (another
hash seed and thread count) give the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from harness.build import torch_pipeline as tb  # noqa: E402
from harness.build.torch_compress import apply_pruning, make_pruning_permanent  # noqa: E402
from harness.build.torch_export import export_onnx  # noqa: E402
from harness.build.torch_zoo import build_model  # noqa: E402
from harness.config import Experiment  # noqa: E402
from harness.data import OwnerData  # noqa: E402

pytestmark = pytest.mark.slow

VARIANTS = ["original", "prune-0.5", "cluster-4"]


def _owner() -> OwnerData:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]  # NHWC [N, 8, 8, 1]
    y = d.target.astype(np.int64)
    p = np.random.default_rng(0).permutation(len(x))
    tr, ho, te = p[:300], p[300:400], p[400:500]
    return OwnerData(x[tr], y[tr], x[ho], y[ho], x[te], y[te], n_classes=10, seed=0)


def _experiment() -> Experiment:
    return Experiment.model_validate(
        {
            "model": {"arch": "cnn-small"},
            "train": {"epochs": 1, "batch_size": 64, "threads": 1},
            "compress": {"finetune_epochs": 1, "torch": VARIANTS},
        }
    )


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.onnx"))}


def test_export_from_cache_equals_export_after_compression(tmp_path: Path) -> None:
    exp, owner = _experiment(), _owner()
    tb.build_variants(exp, owner, VARIANTS, tmp_path, "target", formats=["onnx"])
    first = _digests(tmp_path)
    assert len(first) == len(VARIANTS)
    for name in first:  # what a retried unit finds: every model cached, no artifact written yet
        (tmp_path / name).unlink()
    cached = sorted((tmp_path / tb.CACHE_DIR).glob("target-*.pt"))
    mtimes = [p.stat().st_mtime_ns for p in cached]
    tb.build_variants(exp, owner, VARIANTS, tmp_path, "target", formats=["onnx"])
    assert [p.stat().st_mtime_ns for p in cached] == mtimes  # really read back from the cache, not recomputed
    assert _digests(tmp_path) == first


def test_export_is_identical_in_another_process(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("cnn-small", (1, 8, 8), 10)
    apply_pruning(model, 0.5)
    make_pruning_permanent(model)
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    fresh = build_model("cnn-small", (1, 8, 8), 10)
    fresh.load_state_dict(torch.load(weights, weights_only=True))
    export_onnx(fresh, torch.zeros(1, 1, 8, 8), tmp_path / "here.onnx")
    script = (
        "import sys, torch\n"
        "from harness.build.torch_export import export_onnx\n"
        "from harness.build.torch_zoo import build_model\n"
        "torch.set_num_threads(2)\n"
        "m = build_model('cnn-small', (1, 8, 8), 10)\n"
        "m.load_state_dict(torch.load(sys.argv[1], weights_only=True))\n"
        "export_onnx(m, torch.zeros(1, 1, 8, 8), __import__('pathlib').Path(sys.argv[2]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", script, str(weights), str(tmp_path / "there.onnx")],
                   check=True, env=env, capture_output=True, timeout=300)  # fmt: skip
    assert (tmp_path / "here.onnx").read_bytes() == (tmp_path / "there.onnx").read_bytes()
