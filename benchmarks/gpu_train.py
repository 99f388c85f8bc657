"""GPU training throughput of the paper protocol (issue 13): ResNet-18 on one GPU, and the projected build time.

Trains ``harness.build.torch_zoo.ResNet18`` with the recipe of ``experiments/paper-cifar10.toml`` (SGD 0.1, momentum
0.9, weight decay 5e-4, cosine schedule, batch 128) on as many examples as that protocol's target member set
(``target_in`` less its hold-out). Fashion-MNIST stands in for CIFAR-10 (no registry here ships CIFAR-10): each
28x28 grey image is padded to 32x32 and repeated to 3 channels, so the tensors are the CIFAR shape 32x32x3.

Prints epochs/s (after one warm-up epoch) and the projected torch training time of the full protocol, per owner
(``train.epochs`` + ``compress.finetune_epochs`` for each fine-tuning variant) and for 1 + K owners (the target
and K reference models); exports and the TF path are not included.

    .venv/bin/python benchmarks/gpu_train.py [--epochs 3] [--k 16,64,256] [--data-dir DIR]

On a machine without a CUDA GPU it stops with one line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "experiments" / "paper-cifar10.toml"


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up epoch)")
    ap.add_argument("--k", default="16,64,256", help="reference-model counts to project for")
    ap.add_argument("--data-dir", type=Path, default=None, help="folder with the Fashion-MNIST IDX files")
    a = ap.parse_args()

    import numpy as np
    import torch

    if not torch.cuda.is_available():
        fail(f"no CUDA GPU visible to torch {torch.__version__} on this machine; run this script on a GPU machine "
             "with a CUDA build of torch")  # fmt: skip

    from harness.build.torch_train import torch_settings, train_model
    from harness.build.torch_zoo import ResNet18
    from harness.config import load_experiment
    from harness.data import OwnerData, load_dataset
    from harness.errors import HarnessError

    exp = load_experiment(PROTOCOL)
    try:
        ds = load_dataset("fashion-mnist", data_dir=a.data_dir)
    except HarnessError as exc:
        fail(f"{exc}")
    n = int(exp.splits.target_in * (1 - exp.splits.holdout_fraction))
    rng = np.random.default_rng(0)
    ids = rng.choice(len(ds.y), size=min(n, len(ds.y)), replace=False)
    x = ds.x[ids].astype(np.float32) / 255.0  # [n, 28, 28, 1]
    x = np.repeat(np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))), 3, axis=3)  # [n, 32, 32, 3] NHWC
    x = (x - 0.5) / 0.25
    y = ds.y[ids].astype(np.int64)
    empty = np.zeros((0, 32, 32, 3), np.float32)
    owner = OwnerData(x_train=x, y_train=y, x_holdout=empty, y_holdout=np.zeros(0, np.int64), x_test=empty,
                      y_test=np.zeros(0, np.int64), n_classes=10, seed=0)  # fmt: skip
    train = exp.train.model_copy(update={"device": "cuda", "early_stopping_patience": 0})
    torch.manual_seed(0)
    model = ResNet18(3, 10)
    name = torch.cuda.get_device_name(0)
    print(f"ResNet-18, {len(y)} examples 32x32x3 (Fashion-MNIST for CIFAR-10), batch {train.batch_size}, "
          f"{train.optimizer} lr {train.lr} {train.lr_schedule}, on {name}")  # fmt: skip
    with torch_settings(max(1, torch.get_num_threads())):
        train_model(model, owner, train, epochs=1, lr=train.lr, seed=0)  # warm-up: cuDNN, allocator
        torch.cuda.synchronize()
        t = time.perf_counter()
        res = train_model(model, owner, train, epochs=a.epochs, lr=train.lr, seed=1)
        torch.cuda.synchronize()
        took = time.perf_counter() - t
    eps = res.epochs_run / took
    c = exp.compress
    finetuned = [v for v in c.torch if any(s.startswith(("prune-", "cluster-")) for s in v.split("+"))]
    per_owner_epochs = exp.train.epochs + c.finetune_epochs * len({v.split("+")[0] for v in finetuned})
    per_owner = per_owner_epochs / eps
    print(f"epochs/s: {eps:.3f}  ({took / res.epochs_run:.1f} s per epoch, last train loss "
          f"{res.history[-1]['train_loss']:.3f})")  # fmt: skip
    print(f"protocol per owner: {exp.train.epochs} training + {per_owner_epochs - exp.train.epochs} fine-tuning "
          f"epochs = {per_owner / 3600:.2f} GPU-hours (torch path, training only)")  # fmt: skip
    for k in [int(v) for v in a.k.split(",") if v.strip()]:
        print(f"K = {k:>4} references: {(1 + k) * per_owner / 3600:8.1f} GPU-hours on one such GPU")


if __name__ == "__main__":
    main()
