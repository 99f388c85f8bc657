"""Benchmark of the attack engine in the online threat model: ``n`` members + ``n`` non-members under test, K
reference models each trained on a random half of the attacker's pool (the candidates plus ``n`` more ids),
``n`` population ids, C classes, the original plus 5 compressed variants; every family (NR, SR, MR), LiRA and
RMIA online and offline. Fits once (:func:`compleak.engine.fit_attacks`), scores once, and prints wall time,
CPU time and memory: peak RSS of the process (inputs included), the float32 size of the simulated outputs, and
the peak of Python/NumPy allocations during fit + score (tracemalloc), i.e. what the attacks add to the inputs.

    .venv/bin/python benchmarks/attacks.py                      # one configuration (default: the issue's 10k/16/10)
    .venv/bin/python benchmarks/attacks.py --n 1000 --refs 4    # a small one
    .venv/bin/python benchmarks/attacks.py --sweep              # K in (16, 64) x C in (10, 100), one process each

Targets (issue 12): the 10k + 10k, C = 10, K = 16, 5 variants configuration under 5 min and 4 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc

VARIANTS = ["prune-0.5", "prune-0.8", "cluster-8", "int8", "fp16"]


def run_one(n: int, refs: int, classes: int, bootstrap: int, n_variants: int) -> dict:
    from compleak.engine import AttackConfig, fit_attacks
    from compleak.synthetic import VariantSpec, make_online_splits, synthetic_outputs

    splits = make_online_splits((n, n), n_extra=n, n_references=refs, n_population=n, n_classes=classes, seed=0)
    variants = {"original": VariantSpec(0.5, 0.0, noise=0.1)}
    for k, label in enumerate(VARIANTS[:n_variants]):
        variants[label] = VariantSpec(0.6 + 0.2 * k, 0.0, noise=0.5)
    target, shadow = synthetic_outputs(splits, variants, n_classes=classes, seed=0)
    input_bytes = sum(b.values.nbytes for bs in shadow.values() for b in bs) + sum(
        b.values.nbytes for b in target.values())

    tracemalloc.start()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    fitted = fit_attacks(splits, shadow, AttackConfig(bootstrap=bootstrap, seed=0))
    fit_wall = time.perf_counter() - wall0
    rows, _ = fitted.score(target)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    best = {}
    for fam in ("NR", "SR", "MR", "baseline"):
        got = [r for r in rows if r.family == fam]
        if got:
            b = max(got, key=lambda r: r.auc)
            best[fam] = f"{b.method} {b.auc:.3f}"
    return {
        "n": n, "K": refs, "C": classes, "variants": n_variants, "rows": len(rows), "wall_s": round(wall, 1),
        "fit_s": round(fit_wall, 1), "cpu_s": round(cpu, 1), "input_gib": round(input_bytes / 2**30, 3),
        "traced_peak_gib": round(peak / 2**30, 3),
        "max_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3), "best": best,
    }


def _table(results: list[dict]) -> str:
    head = f"{'n+n':>12} {'K':>4} {'C':>4} {'rows':>5} {'wall s':>8} {'fit s':>7} {'CPU s':>8} " \
           f"{'inputs GiB':>10} {'attack GiB':>10} {'max RSS GiB':>11}  best AUC per family"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r['n']:>6}+{r['n']:<5} {r['K']:>4} {r['C']:>4} {r['rows']:>5} {r['wall_s']:>8} {r['fit_s']:>7} "
            f"{r['cpu_s']:>8} {r['input_gib']:>10} {r['traced_peak_gib']:>10} {r['max_rss_gib']:>11}  "
            + "; ".join(f"{k}: {v}" for k, v in r["best"].items())
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="members (= non-members) under test")
    ap.add_argument("--refs", type=int, default=16, help="reference models K")
    ap.add_argument("--classes", type=int, default=10, help="classes C")
    ap.add_argument("--variants", type=int, default=5, help="compressed variants (at most 5)")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--sweep", action="store_true", help="K in (16, 64) x C in (10, 100), each in its own process")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.sweep:
        results = []
        for k in (16, 64):
            for c in (10, 100):
                cmd = [sys.executable, __file__, "--json", "--n", str(args.n), "--refs", str(k), "--classes", str(c),
                       "--variants", str(args.variants), "--bootstrap", str(args.bootstrap)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                results.append(json.loads(out.strip().splitlines()[-1]))
                print(_table(results[-1:]).splitlines()[-1], flush=True)
    else:
        results = [run_one(args.n, args.refs, args.classes, args.bootstrap, min(args.variants, 5))]
        if args.json:
            print(json.dumps(results[0]))
            return
    print(_table(results))
    print(f"load average at end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; targets for n=10000, K=16, C=10: "
          "wall < 300 s, max RSS < 4 GiB")


if __name__ == "__main__":
    main()
