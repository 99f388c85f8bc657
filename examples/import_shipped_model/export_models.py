"""Train a small Fashion-MNIST classifier with plain TensorFlow and export it the way an app would ship it.

This script deliberately does NOT use compleak: it stands for the model owner's own pipeline. It writes, into --out:

- ``data.npz``          the owner's data: ``x`` uint8 [N, 28, 28, 1], ``y`` int64 [N] (ids below index it)
- ``members.txt``       ids the model was trained on, one per line
- ``nonmembers.txt``    ids it never saw (as many as members), one per line
- ``model_fp32.tflite`` the float model
- ``model_int8.tflite`` full-integer int8 (int8 input and output, calibrated on training data)
- ``preprocess.toml``   how raw pixels become model inputs (scale 1/255, NHWC)

The remaining ids of ``data.npz`` are neither members nor non-members: the auditor's shadow models train on them.
Run it with the project's venv: ``.venv/bin/python examples/import_shipped_model/export_models.py --out shipped``.
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np
import tensorflow as tf

FASHION = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a NumPy array."""
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(data_dir: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    raise SystemExit(f"{data_dir}: {stem}[.gz] not found; pass --data-dir with the Fashion-MNIST IDX files")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder to write the shipped files into")
    ap.add_argument("--data-dir", type=Path, default=FASHION, help="folder with the Fashion-MNIST IDX files")
    ap.add_argument("--members", type=int, default=1000, help="training-set size (and number of non-members)")
    ap.add_argument("--examples", type=int, default=6000, help="examples kept in data.npz")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if args.examples < 2 * args.members:
        raise SystemExit("--examples must be at least twice --members")

    x = read_idx(find(args.data_dir, "train-images-idx3-ubyte"))[: args.examples, :, :, None]
    y = read_idx(find(args.data_dir, "train-labels-idx1-ubyte"))[: args.examples].astype(np.int64)
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(y))
    members, nonmembers = perm[: args.members], perm[args.members : 2 * args.members]

    tf.keras.utils.set_random_seed(args.seed)
    model = tf.keras.Sequential(
        [
            tf.keras.Input((28, 28, 1)),
            tf.keras.layers.Conv2D(16, 3, activation="relu"),
            tf.keras.layers.MaxPooling2D(),
            tf.keras.layers.Conv2D(32, 3, activation="relu"),
            tf.keras.layers.MaxPooling2D(),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(64, activation="relu"),
            tf.keras.layers.Dense(10),  # logits
        ]
    )
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    x_train = x[members].astype(np.float32) / 255.0
    model.fit(x_train, y[members], epochs=args.epochs, batch_size=64, verbose=2)
    x_test = x[nonmembers].astype(np.float32) / 255.0
    print("test accuracy", model.evaluate(x_test, y[nonmembers], verbose=0)[1])

    args.out.mkdir(parents=True, exist_ok=True)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    (args.out / "model_fp32.tflite").write_bytes(converter.convert())

    def representative():
        for i in range(min(200, len(x_train))):
            yield [x_train[i : i + 1]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    (args.out / "model_int8.tflite").write_bytes(converter.convert())

    np.savez(args.out / "data.npz", x=x, y=y)
    (args.out / "members.txt").write_text("".join(f"{i}\n" for i in members))
    (args.out / "nonmembers.txt").write_text("".join(f"{i}\n" for i in nonmembers))
    (args.out / "preprocess.toml").write_text(
        '# raw uint8 pixels -> float32 in [0, 1], NHWC\n'
        'scale = 0.00392156862745098\n'
        'layout = "NHWC"\n'
    )
    print(f"wrote {sorted(p.name for p in args.out.iterdir())} to {args.out}")


if __name__ == "__main__":
    main()
