"""Benchmark of the attack engine in the online threat model: ``n`` members + ``n`` non-members under test, K
reference models each trained on a random half of the attacker's pool (the candidates plus ``n`` more ids),
``n`` population ids, C classes, the original plus 5 compressed variants; every family (NR, SR, MR), LiRA and
RMIA online and offline. Fits once (:func:`compleak.engine.fit_attacks`), scores once, and records wall time,
CPU time and memory: peak RSS of the process (inputs included), the float32 size of the simulated outputs, and
the peak of Python/NumPy allocations during fit + score (tracemalloc), i.e. what the attacks add to the inputs.

Each configuration runs ``--repeats`` times (default 3), every repetition in a fresh process (so max RSS is its
own), one after another; every figure is printed as median [min, max] over the repetitions, with the 1-minute
load average before and after each. Fewer than 3 repetitions are labelled "not a quotable figure". ``--json FILE``
writes every figure and repetition, the date and the command (rewritten after each repetition, so an interrupted
benchmark keeps what finished); ``--show FILE`` prints such a file again (docs quote benchmarks/results/).

    .venv/bin/python benchmarks/attacks.py                      # the issue's 10k/16/10, 3 repetitions
    .venv/bin/python benchmarks/attacks.py --json benchmarks/results/attacks.json
    .venv/bin/python benchmarks/attacks.py --n 1000 --refs 4 --repeats 1    # a small one (not a quotable figure)
    .venv/bin/python benchmarks/attacks.py --sweep              # K in (16, 64) x C in (10, 100)
    .venv/bin/python benchmarks/attacks.py --show benchmarks/results/attacks.json

Targets (issue 12): the 10k + 10k, C = 10, K = 16, 5 variants configuration under 5 min and 4 GiB.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["prune-0.5", "prune-0.8", "cluster-8", "int8", "fp16"]
QUOTABLE = 3  # the project's standard: a figure in the docs is a median of at least 3 runs, with min and max
MEASURES = [("wall_s", "wall s"), ("fit_s", "fit s"), ("cpu_s", "CPU s"),
            ("traced_peak_gib", "attack allocations GiB (tracemalloc peak)"), ("max_rss_gib", "max RSS GiB")]
TARGET = {"n": 10_000, "K": 16, "C": 10, "variants": 5, "wall_s": 300.0, "max_rss_gib": 4.0}


def source_state(root: Path, paths: tuple[str, ...]) -> dict:
    """The code measured: git HEAD, and the uncommitted changes under ``paths`` (file names and a digest of the
    diff), so a figure can be tied to the source it timed."""
    import hashlib

    def git(*args: str) -> str:
        r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
        return r.stdout if r.returncode == 0 else ""

    diff = git("diff", "HEAD", "--", *paths)
    return {"head": git("rev-parse", "HEAD").strip() or None,
            "uncommitted": sorted(git("diff", "HEAD", "--name-only", "--", *paths).split()),
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:16] if diff else None}  # fmt: skip


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


def figure(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values), "each": values}


def fmt(fig: dict, digits: int = 1) -> str:
    return f"{fig['median']:.{digits}f} [{fig['min']:.{digits}f}, {fig['max']:.{digits}f}]"


def summarise(reps: list[dict]) -> dict:
    """One configuration's repetitions -> its figures (median, min, max, each) and the load around each."""
    first = reps[0]
    out = {key: first[key] for key in ("n", "K", "C", "variants", "rows", "input_gib")}
    out |= {"repeats": len(reps), "quotable": len(reps) >= QUOTABLE}
    out |= {key: figure([r[key] for r in reps]) for key, _ in MEASURES}
    out["load1"] = [r["load1"] for r in reps]
    out["best"] = first["best"]
    if any(r["best"] != first["best"] for r in reps):
        out["best_differs"] = [r["best"] for r in reps]
    if (first["n"], first["K"], first["C"], first["variants"]) == tuple(TARGET[k] for k in ("n", "K", "C", "variants")):
        out["targets"] = {"wall_s < 300": out["wall_s"]["median"] < TARGET["wall_s"],
                          "max_rss_gib < 4": out["max_rss_gib"]["median"] < TARGET["max_rss_gib"]}  # fmt: skip
    return out


def print_config(c: dict) -> None:
    rep = f"{c['repeats']} repetition(s), each in its own process"
    if not c["quotable"]:
        rep += "  -- NOT A QUOTABLE FIGURE (fewer than 3 repetitions)"
    what = f"n = {c['n']} + {c['n']}, K = {c['K']}, C = {c['C']}, original + {c['variants']} variants"
    print(f"{what}, {c['rows']} rows; median [min, max] of {rep}")
    for key, label in MEASURES:
        print(f"  {label:<44} {fmt(c[key], 3 if key.endswith('gib') else 1):>26}   each: "
              + " ".join(f"{v:g}" for v in c[key]["each"]))
    print(f"  {'inputs GiB (float32, simulated outputs)':<44} {c['input_gib']:>26}")
    print("  load average (1 min) before -> after each repetition: "
          + ", ".join(f"{ld['before']:.1f} -> {ld['after']:.1f}" for ld in c["load1"]))
    print("  best AUC per family: " + "; ".join(f"{k}: {v}" for k, v in c["best"].items())
          + ("  (differs between repetitions)" if "best_differs" in c else ""))
    if "targets" in c:
        print("  targets (issue 12), on the medians: " + "; ".join(
            f"{k}: {'met' if ok else 'NOT met'}" for k, ok in c["targets"].items()))


def print_result(res: dict) -> None:
    print(f"{res['date']}  {res['command']}  ({res['cpus']} CPUs, shared with other jobs)"
          + ("" if res.get("complete", True) else "  -- INCOMPLETE: interrupted"))
    for c in res["configs"]:
        print_config(c)


def child(args: argparse.Namespace, n: int, refs: int, classes: int) -> dict:
    """One repetition of one configuration in a fresh process; its result with the load around it."""
    before = round(os.getloadavg()[0], 2)
    cmd = [sys.executable, __file__, "--child", "--n", str(n), "--refs", str(refs), "--classes", str(classes),
           "--variants", str(args.variants), "--bootstrap", str(args.bootstrap)]  # fmt: skip
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"error: n = {n}, K = {refs}, C = {classes} failed (exit {done.returncode}): {last}")
    got = json.loads(done.stdout.strip().splitlines()[-1])
    got["load1"] = {"before": before, "after": round(os.getloadavg()[0], 2)}
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="members (= non-members) under test")
    ap.add_argument("--refs", type=int, default=16, help="reference models K")
    ap.add_argument("--classes", type=int, default=10, help="classes C")
    ap.add_argument("--variants", type=int, default=5, help="compressed variants (at most 5)")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=QUOTABLE,
                    help=f"repetitions per configuration, each in its own process (default {QUOTABLE})")
    ap.add_argument("--sweep", action="store_true", help="K in (16, 64) x C in (10, 100)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    ap.add_argument("--show", type=Path, default=None, help="print the figures of a --json file and exit")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.variants = min(args.variants, 5)

    if args.show:
        print_result(json.loads(args.show.read_text()))
        return
    if args.child:
        print(json.dumps(run_one(args.n, args.refs, args.classes, args.bootstrap, args.variants)))
        return
    if args.repeats < 1:
        raise SystemExit(f"error: --repeats must be >= 1 (got {args.repeats})")
    configs = [(k, c) for k in (16, 64) for c in (10, 100)] if args.sweep else [(args.refs, args.classes)]
    res = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
           "command": " ".join(["benchmarks/attacks.py", *sys.argv[1:]]), "cpus": os.cpu_count(),
           "bootstrap": args.bootstrap, "source": source_state(ROOT, ("compleak",)), "complete": False,
           "configs": []}  # fmt: skip
    for k, c in configs:
        reps: list[dict] = []
        for r in range(args.repeats):
            reps.append(child(args, args.n, k, c))
            print(f"n = {args.n}, K = {k}, C = {c}: repetition {r + 1}/{args.repeats}: wall {reps[-1]['wall_s']} s, "
                  f"CPU {reps[-1]['cpu_s']} s, max RSS {reps[-1]['max_rss_gib']} GiB, load "
                  f"{reps[-1]['load1']['before']:.1f} -> {reps[-1]['load1']['after']:.1f}", flush=True)  # fmt: skip
            if args.json:
                partial = res | {"configs": [*res["configs"], summarise(reps)]}
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(partial, indent=1) + "\n")
        res["configs"].append(summarise(reps))
    res["complete"] = True
    print_result(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
