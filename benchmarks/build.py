"""Build-stage timings for the default config (``just bench-build``): wall seconds per stage, printed as a table.

Stages, for ONE model owner (the target; every shadow costs the same again):
  data             load Fashion-MNIST, draw splits, preprocess the owner's data
  tf train         train the original Keras model
  tf <step>        each model-level compression step with its fine-tuning (prune-S, cluster-K)
  tf convert <v>   TF-Lite conversion of each variant (incl. post-training quantization)
  tf host eval     run every .tflite on the host runtime over the owner's members + non-members
  torch <v>        the torch builder per variant (the first includes training; exports every format)
  torch host eval  run every torch artifact on the host runtime
Each stage prints wall seconds and process CPU seconds (all threads); on a shared machine the CPU figure is the
steadier one. The last lines estimate the whole build: data + (n_shadows + 1) x the owner's total.

Usage: python benchmarks/build.py [--config experiments/fashion-default.toml] [--frameworks tf,torch]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "experiments" / "fashion-default.toml")
    ap.add_argument("--frameworks", default=None, help="comma-separated subset of tf,torch (default: the config's)")
    ap.add_argument("--data-dir", type=Path, default=None)
    args = ap.parse_args()

    from devices.ondevice.compleak_runner import load_model
    from harness.config import load_experiment
    from harness.data import load_dataset, make_splits, owner_data, query_inputs

    exp = load_experiment(args.config)
    frameworks = args.frameworks.split(",") if args.frameworks else list(exp.export.frameworks)
    times: list[tuple[str, float]] = []

    cpu: list[float] = []

    def timed(label: str, fn, *a, **k):
        t, c = time.perf_counter(), time.process_time()
        out = fn(*a, **k)
        times.append((label, time.perf_counter() - t))
        cpu.append(time.process_time() - c)
        print(f"{label:<34} {times[-1][1]:8.2f} s wall {cpu[-1]:8.2f} s cpu", flush=True)
        return out

    def data_stage():
        ds = load_dataset(exp.data.dataset, args.data_dir, exp.data.download)
        splits = make_splits(exp, ds.y)
        owner = owner_data(
            ds, splits, exp.data.preprocess, "target", None, exp.splits.holdout_fraction, exp.experiment.seed
        )
        ids = splits.query_ids("target")
        return owner, query_inputs(ds, exp.data.preprocess, ids)

    owner, x_eval = timed("data", data_stage)

    def host_eval(paths: list[Path]) -> None:
        for p in paths:
            load_model(str(p)).predict(x_eval)

    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        out = Path(tmp)
        if "tf" in frameworks:
            from harness.build.tf_pipeline import apply_step, convert, train_model
            from harness.config import parse_variant

            original = timed("tf train", train_model, exp, owner)
            models = {"original": original}
            paths = []
            for v in exp.compress.tf:
                steps = parse_variant(v)
                model, applied = original, []
                for s in steps:
                    if s.startswith(("prune-", "cluster-")) or s == "qat-int8":
                        key = "+".join([*applied, s])
                        if key not in models:
                            models[key] = timed(f"tf {key}", apply_step, model, s, applied, exp, owner)
                        model = models[key]
                        applied.append(s)
                quant = steps[-1] if steps[-1] in ("int8", "dynamic-int8", "fp16", "qat-int8") else None
                data = timed(f"tf convert {v}", convert, model, quant, owner, exp)
                p = out / f"tf-{v}.tflite"
                p.write_bytes(data)
                paths.append(p)
            timed(f"tf host eval ({len(paths)} files)", host_eval, paths)
        if "torch" in frameworks:
            from harness.build.torch_pipeline import build_variants

            built = []
            for v in exp.compress.torch:
                built += timed(f"torch {v}", build_variants, exp, owner, [v], out, "target")
            timed(f"torch host eval ({len(built)} files)", host_eval, [b.path for b in built])

    data_s, data_c = times[0][1], cpu[0]
    owner_s, owner_c = sum(t for _, t in times[1:]), sum(cpu[1:])
    owners = exp.splits.n_shadows + 1
    print(f"{'one owner total':<34} {owner_s:8.2f} s wall {owner_c:8.2f} s cpu")
    label = f"estimated build ({owners} owners)"
    print(f"{label:<34} {data_s + owners * owner_s:8.2f} s wall {data_c + owners * owner_c:8.2f} s cpu")
    print(f"load average while measuring: {' '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
