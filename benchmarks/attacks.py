"""Benchmark of the attack engine: 10k members + 10k non-members per side, C = 10, the original plus K = 5
compressed variants, every family (NR, SR, MR with and without the original) and both baselines (RMIA, LiRA,
per-example references). Prints wall time, CPU time and peak memory (tracemalloc for Python/NumPy allocations,
ru_maxrss for the whole process). Targets: under 120 s and under 2 GiB on 2 cores.

    .venv/bin/python benchmarks/attacks.py [--n 10000] [--bootstrap 200]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import tracemalloc

from compleak.engine import run_attacks
from compleak.synthetic import VariantSpec, make_splits, synthetic_outputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="members (= non-members) per side")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--shadows", type=int, default=2, help="shadow models (reference models for RMIA/LiRA)")
    args = ap.parse_args()

    n = args.n
    # shadow models split n members + n non-members between them, so each side has n + n in total
    per = n // args.shadows
    splits = make_splits((n, n), (per, per), n_shadows=args.shadows, n_classes=10, seed=0)
    variants = {"original": VariantSpec(0.5, 0.0, noise=0.1)}
    for k, label in enumerate(["prune-0.5", "prune-0.8", "cluster-8", "int8", "fp16"]):
        variants[label] = VariantSpec(0.6 + 0.2 * k, 0.0, noise=0.5)
    target, shadow = synthetic_outputs(splits, variants, n_classes=10, seed=0, reference_on_target=True)

    tracemalloc.start()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    rows = run_attacks(splits, target, shadow, bootstrap=args.bootstrap, seed=0)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB

    for fam in ("NR", "SR", "MR", "baseline"):
        got = [r for r in rows if r.family == fam]
        best = max(got, key=lambda r: r.auc)
        print(f"{fam:9s} {len(got):3d} rows, best {best.method} {best.variant}: AUC {best.auc:.3f} "
              f"[{best.auc_ci[0]:.3f}, {best.auc_ci[1]:.3f}]")
    load = os.getloadavg()[0]
    print(f"attacks: {len(rows)} rows on {n}+{n} target and {n}+{n} shadow examples, C=10, "
          f"original + {len(variants) - 1} compressed variants, {args.shadows} shadow models, "
          f"{args.bootstrap} bootstrap resamples")
    print(f"wall time: {wall:.1f} s (target < 120 s)   CPU time: {cpu:.1f} s   load average at end: {load:.1f} "
          f"on {os.cpu_count()} cores")
    print(f"peak memory: {peak / 2**30:.3f} GiB traced (Python/NumPy), {rss:.3f} GiB max RSS (target < 2 GiB)")


if __name__ == "__main__":
    main()
