"""docs/findings.md from committed results: every table of it is rendered by this script from docs/findings/; the
benchmark figures of docs/scale.md and docs/attacks.md from benchmarks/results/.

    .venv/bin/python scripts/findings.py save RUN --study NAME   # keep RUN's compact results in docs/findings/NAME/
    .venv/bin/python scripts/findings.py                         # rewrite every generated table in docs/findings.md
    .venv/bin/python scripts/findings.py --check                 # exit 1 (and show the difference) if one differs
    just findings                                                # the same as the second line

A study folder holds ``study.json`` (what was run: title, command, config, date, machine) and one folder per seed,
``seed-<s>/``, with the run's ``results.json`` (every row, without its ROC points and per-class AUCs), its target and
reference artifacts (``artifacts.json``: id, role, variant, framework, format, host accuracy, bytes, sha256) and its
``summary.json``, each gzip-compressed with no timestamp (the same results give the same bytes).

In docs/findings.md a generated table sits between ``<!-- table: STUDY/KIND -->`` and ``<!-- end table -->``;
the text outside those markers is written by hand and quotes only figures that are in a table
(``tests/test_findings.py`` checks both). KIND is one of :data:`TABLES`.

``<!-- table: bench/NAME -->`` (in any of :data:`DOCS`) is the block a benchmark's ``--show`` prints for
``benchmarks/results/NAME.json``; :data:`BENCHMARKS` names the script of each.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import gzip
import importlib
import io
import json
import re
import statistics
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FINDINGS = ROOT / "docs" / "findings"
DOC = ROOT / "docs" / "findings.md"
#: every page with generated blocks
DOCS = (DOC, ROOT / "docs" / "scale.md", ROOT / "docs" / "attacks.md")
BENCH = ROOT / "benchmarks" / "results"
#: benchmarks/results/NAME.json -> the benchmark script whose ``print_result`` renders it
BENCHMARKS = {"farm": "scale", "attacks": "attacks"}
MARK = re.compile(r"(<!-- table: (?P<key>[\w.-]+/[\w-]+) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S)
DROP = ("roc", "per_class")  # large and not quoted: the committed rows keep everything else
#: the methods of the fixed-method table, in this order: the paper's rows first, then the strongest baselines
FIXED = ("posterior-lr", "sorted-posterior-rf", "samia", "mentropy-threshold", "sr2-rf", "mr-fusion",
         "lira-online", "lira-offline", "rmia-online", "rmia-offline", "lira-offline-1ref",
         "rmia-offline-1ref-cand-z")
#: formats shown per framework: pte / ptl / onnx of one torch model give the same outputs, so .pte speaks for them
SHOWN = {("tf", "tflite"), ("torch", "pte")}


# --------------------------------------------------------------------------------------------------------- storage

def _gz_json(path: Path, value: Any) -> None:
    raw = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as z:
        z.write(raw)
    path.write_bytes(buf.getvalue())


def _read_gz_json(path: Path) -> Any:
    with gzip.open(path, "rb") as z:
        return json.loads(z.read(64 << 20))


def _seed_roots(run: Path) -> list[tuple[int, Path]]:
    seeds = run / "seeds"
    if seeds.is_dir():
        return sorted((int(d.name), d) for d in seeds.iterdir() if d.name.isdigit())
    toml = (run / "experiment.toml").read_text()
    m = re.search(r"^\s*seed\s*=\s*(\d+)", toml, re.M)
    return [(int(m.group(1)) if m else 0, run)]


def save(run: Path, study: str, meta: dict[str, Any]) -> Path:
    """Keep ``run``'s compact results (every seed, device ``local``) in ``docs/findings/<study>/``."""
    dest = FINDINGS / study
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("seed-*/*.json.gz"):
        old.unlink()
    seeds = []
    for seed, root in _seed_roots(run):
        out = dest / f"seed-{seed}"
        out.mkdir(exist_ok=True)
        rows = json.loads((root / "attacks" / "local" / "results.json").read_text())
        _gz_json(out / "results.json.gz", [{k: v for k, v in r.items() if k not in DROP} for r in rows])
        arts = json.loads((root / "manifest.json").read_text())["artifacts"]
        keep = ("id", "role", "shadow", "variant", "framework", "format", "host_accuracy", "bytes", "sha256")
        _gz_json(out / "artifacts.json.gz", [{k: a.get(k) for k in keep} for a in arts])
        summary = json.loads((root / "report" / "summary.json").read_text())
        summary.pop("run", None)  # the folder it ran in, not a result
        _gz_json(out / "summary.json.gz", summary)
        seeds.append(seed)
    meta = dict(meta, seeds=seeds)
    (dest / "study.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return dest


class Study:
    """The committed results of one study: rows and target artifacts per seed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dir = FINDINGS / name
        self.meta = json.loads((self.dir / "study.json").read_text())
        self.seeds: list[int] = list(self.meta["seeds"])
        self.rows = {s: _read_gz_json(self.dir / f"seed-{s}" / "results.json.gz") for s in self.seeds}
        self.artifacts = {s: _read_gz_json(self.dir / f"seed-{s}" / "artifacts.json.gz") for s in self.seeds}

    def targets(self) -> list[tuple[str, str, str]]:
        """(framework, format, variant) of the shown target artifacts, framework then variant order."""
        attacked = {(r.get("framework"), r.get("format"), r["variant"]) for s in self.seeds for r in self.rows[s]
                    if isinstance(r["variant"], str)}
        keys = {(a["framework"], a["format"], a["variant"]) for a in self.artifacts[self.seeds[0]]
                if a["role"] == "target" and (a["framework"], a["format"]) in SHOWN
                and (a["framework"], a["format"], a["variant"]) in attacked}
        return sorted(keys, key=lambda k: (k[0], variant_order(k[2])))

    def row(self, seed: int, fw: str, fmt: str, variant: str | list[str], method: str) -> dict[str, Any] | None:
        for r in self.rows[seed]:
            if r["method"] == method and r.get("framework") == fw and r.get("format") == fmt \
                    and r["variant"] == variant and r.get("device", "local") == "local":
                return r
        return None

    def accuracy(self, seed: int, fw: str, fmt: str, variant: str) -> float | None:
        for a in self.artifacts[seed]:
            if a["role"] == "target" and (a["framework"], a["format"], a["variant"]) == (fw, fmt, variant):
                return (a.get("host_accuracy") or {}).get("test")
        return None


def variant_order(v: str) -> tuple[int, str]:
    return (0 if v == "original" else 1, v)


# ------------------------------------------------------------------------------------------------------ formatting

def _f3(x: float) -> str:
    return f"{x:.3f}"


def cell(values: list[float], cis: list[list[float]] | None = None, pct: bool = False) -> str:
    """One seed: ``v [lo, hi]`` (the row's 95 % bootstrap CI); several: ``mean ± sd`` (sample sd over seeds)."""
    fmt = (lambda x: f"{100 * x:.1f} %") if pct else _f3
    if not values:
        return "—"
    if len(values) == 1:
        if cis and cis[0]:
            return f"{fmt(values[0])} [{fmt(cis[0][0])}, {fmt(cis[0][1])}]"
        return fmt(values[0])
    sd = statistics.stdev(values)
    return f"{fmt(statistics.fmean(values))} ± {fmt(sd)}"


def tpr1(r: dict[str, Any]) -> float | None:
    v = (r.get("tpr_at_fpr") or {}).get("0.01")
    return None if v is None else float(v)


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------- tables

def table_accuracy(st: Study) -> str:
    """Target test accuracy (host, fp32 reference runtime) per variant and framework."""
    fws = sorted({fw for fw, _, _ in st.targets()})
    variants = sorted({v for _, _, v in st.targets()}, key=variant_order)
    out = []
    for v in variants:
        line = [v]
        for fw in fws:
            fmt = next(f for w, f, _ in st.targets() if w == fw)
            accs = [a for s in st.seeds if (a := st.accuracy(s, fw, fmt, v)) is not None]
            line.append(cell(accs))
        out.append(line)
    return _table(["variant"] + [f"{fw} test accuracy" for fw in fws], out)


def _best(st: Study, seed: int, fw: str, fmt: str, v: str, family: str) -> dict[str, Any] | None:
    rows = [r for r in st.rows[seed] if r["family"] == family and r.get("framework") == fw
            and r.get("format") == fmt and r["variant"] == v and r.get("device", "local") == "local"]
    return max(rows, key=lambda r: (r["auc"], r["method"])) if rows else None


def table_best(st: Study) -> str:
    """Best AUC per family (NR, SR, baseline) per target variant, chosen after the fact; the method named when one
    seed, the TPR at 1 % FPR of the best row overall."""
    out = []
    for fw, fmt, v in st.targets():
        line = [f"{fw}/{fmt}", v]
        best_all: list[dict[str, Any]] = []
        for fam in ("NR", "SR", "baseline"):
            picks = [b for s in st.seeds if (b := _best(st, s, fw, fmt, v, fam)) is not None]
            if not picks:
                line.append("—")
                continue
            text = cell([p["auc"] for p in picks], [p["auc_ci"] for p in picks])
            methods = sorted({p["method"] for p in picks})
            line.append(f"{text} ({', '.join(methods)})")
        for s in st.seeds:
            cands = [b for fam in ("NR", "SR", "baseline") if (b := _best(st, s, fw, fmt, v, fam)) is not None]
            if cands:
                best_all.append(max(cands, key=lambda r: (r["auc"], r["method"])))
        tprs = [t for b in best_all if (t := tpr1(b)) is not None]
        line.append(cell(tprs, pct=True))
        out.append(line)
    return _table(["framework/format", "variant", "best NR (method)", "best SR (method)", "best baseline (method)",
                   "TPR@1% FPR of best overall"], out)


def _methods(st: Study) -> list[str]:
    have = {r["method"] for s in st.seeds for r in st.rows[s]}
    return [m for m in FIXED if m in have and not m.startswith("mr-")]


def _fixed(st: Study, metric: Callable[[dict[str, Any]], float | None], pct: bool) -> str:
    methods = _methods(st)
    out = []
    for fw, fmt, v in st.targets():
        line = [f"{fw}/{fmt}", v]
        for m in methods:
            rs = [r for s in st.seeds if (r := st.row(s, fw, fmt, v, m)) is not None]
            vals = [x for r in rs if (x := metric(r)) is not None]
            cis = [r["auc_ci"] for r in rs] if not pct else None
            line.append(cell(vals, cis, pct=pct) if vals or not rs else "n/r")  # n/r: the sample cannot resolve it
        out.append(line)
    return _table(["framework/format", "variant"] + [f"`{m}`" for m in methods], out)


def table_auc(st: Study) -> str:
    """AUC of fixed methods (not chosen after the fact) per target variant."""
    return _fixed(st, lambda r: r["auc"], pct=False)


def table_tpr(st: Study) -> str:
    """TPR at 1 % FPR of the fixed methods per target variant (n/r where the sample cannot resolve it)."""
    return _fixed(st, tpr1, pct=True)


def table_mr(st: Study) -> str:
    """MR rows (every compressed variant of one model together) per framework."""
    out = []
    for fw, fmt in sorted(SHOWN):
        for m in ("mr-fusion", "mr-no-original"):
            rs = [r for s in st.seeds for r in st.rows[s]
                  if r["method"] == m and r.get("framework") == fw and r.get("format") == fmt]
            if rs:
                out.append([f"{fw}/{fmt}", f"`{m}`", cell([r["auc"] for r in rs], [r["auc_ci"] for r in rs]),
                            cell([t for r in rs if (t := tpr1(r)) is not None], pct=True)])
    return _table(["framework/format", "method", "AUC", "TPR@1% FPR"], out)


def table_run(st: Study) -> str:
    """What was run: the study's record."""
    m = st.meta
    rows = [[k, str(m[k])] for k in ("command", "config", "date", "machine", "device", "wall_time") if k in m]
    rows.append(["seeds", ", ".join(str(s) for s in st.seeds)])
    rows.append(["result rows per seed", ", ".join(str(len(st.rows[s])) for s in st.seeds)])
    rows.append(["target artifacts per seed", str(sum(1 for a in st.artifacts[st.seeds[0]] if a["role"] == "target"))])
    return _table(["", ""], rows)


TABLES: dict[str, Callable[[Study], str]] = {
    "run": table_run,
    "accuracy": table_accuracy,
    "best": table_best,
    "auc": table_auc,
    "tpr": table_tpr,
    "mr": table_mr,
}


# ---------------------------------------------------------------------------------------------------------- render

def bench_block(name: str) -> str:
    """What ``benchmarks/<script>.py --show benchmarks/results/NAME.json`` prints, as a fenced text block."""
    if name not in BENCHMARKS:
        raise SystemExit(f"unknown benchmark block {name!r} (known: {', '.join(BENCHMARKS)})")
    result = BENCH / f"{name}.json"
    shown = result.relative_to(ROOT) if result.is_relative_to(ROOT) else result
    if not result.is_file():
        raise SystemExit(f"no committed benchmark results {shown}")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        module = importlib.import_module(BENCHMARKS[name])
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        module.print_result(json.loads(result.read_text()))
    return f"```text\n$ .venv/bin/python benchmarks/{BENCHMARKS[name]}.py --show {shown}\n" \
           f"{out.getvalue()}```\n"  # fmt: skip


def render(doc: str) -> str:
    """``doc`` with every generated table rewritten from docs/findings/ and every benchmark block from
    benchmarks/results/."""
    studies: dict[str, Study] = {}

    def one(m: re.Match[str]) -> str:
        name, kind = m.group("key").split("/")
        if name == "bench":
            return m.group(1) + bench_block(kind) + m.group(4)
        if kind not in TABLES:
            raise SystemExit(f"docs/findings.md: unknown table kind {kind!r} (known: {', '.join(TABLES)})")
        if name not in studies:
            if not (FINDINGS / name / "study.json").is_file():
                raise SystemExit(f"docs/findings.md: no committed results for study {name!r} in {FINDINGS / name}")
            studies[name] = Study(name)
        return m.group(1) + TABLES[kind](studies[name]) + m.group(4)

    return MARK.sub(one, doc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    sv = sub.add_parser("save", help="keep a run's compact results as a study")
    sv.add_argument("run", type=Path)
    sv.add_argument("--study", required=True)
    sv.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                    help="what was run: title, command, config, date, machine, device, wall_time")
    ap.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = ap.parse_args(argv)
    if args.cmd == "save":
        meta = dict(kv.split("=", 1) for kv in args.meta)
        print(save(args.run, args.study, meta))
        return 0
    differs = 0
    for page in DOCS:
        doc = page.read_text()
        new = render(doc)
        if args.check:
            if new != doc:
                sys.stdout.writelines(difflib.unified_diff(doc.splitlines(True), new.splitlines(True),
                                                           str(page.relative_to(ROOT)), "rendered"))
                differs += 1
            continue
        if new != doc:
            page.write_text(new)
        print(f"{page.relative_to(ROOT)}: {len(MARK.findall(new))} generated blocks")
    return 1 if differs else 0

if __name__ == "__main__":
    sys.exit(main())
