# %% [markdown]
# # compleak-harness from Python: build, collect, attack, compare, report, gate, tables
#
# The same stages as the `compleak` commands, as functions on a run directory (`harness/__init__.py` lists them).
# Run it as a script or cell by cell (VS Code / Jupyter understand the `# %%` markers):
#
#     .venv/bin/python examples/python_api.py                  # the tiny digits config, into runs/python-api
#     .venv/bin/python examples/python_api.py --out RUN --device ssh://pi@board.lan:22
#
# It uses `tests/data/tiny.toml` (scikit-learn's digits: no download, a couple of minutes to build on 2 cores) and
# only the TF-Lite artifacts below, so that every stage runs in minutes. Every stage resumes: run it twice and the
# second run redoes nothing.

# %%
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

import compleak
import harness

ROOT = Path(__file__).resolve().parents[1]
parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--experiment", type=Path, default=ROOT / "tests" / "data" / "tiny.toml")
parser.add_argument("--out", type=Path, default=Path("runs/python-api"))
parser.add_argument("--device", action="append", default=[], help="a device besides the host (URI); repeat")
args, _ = parser.parse_known_args(None if "ipykernel" not in sys.modules else [])  # a notebook passes its own argv

console = Console()  # Console(quiet=True) silences the stages' progress
# the target and reference (shadow) artifacts this walk-through collects; None collects every artifact
ARTIFACTS = [f"tf-{owner}-{v}.tflite" for owner in ("target", "shadow0") for v in ("original", "prune-0.8", "int8")]

# %% [markdown]
# ## 1. Build: train, compress and export every artifact of the experiment (skipped when nothing changed)

# %%
run = harness.build_run(args.experiment, out=args.out, console=console)
print("run directory:", run)

# %% [markdown]
# ## 2. Collect: run the artifacts on the host (`local`, always the reference) and on each device

# %%
written = harness.collect_run(run, "local", artifacts=ARTIFACTS, console=console)
for uri in args.device:  # a device runs the target artifacts; the attack stage takes the shadows' from the host
    harness.collect_run(run, uri, artifacts=[a for a in ARTIFACTS if "-target-" in a], console=console)
print(f"{len(written)} artifacts collected on the host")

# %% [markdown]
# ## 3. Attack: NR / SR / MR and the baselines on every collected device (`results.json` and `scores.npz`)

# %%
rows = harness.attack_run(run, console=console)
print({device: len(r) for device, r in rows.items()})

# %% [markdown]
# ## 4. Compare each device with the host, then write the report (`report/index.html`, `report/summary.json`)

# %%
compared = harness.compare_run(run, console=console)  # [] when only the host was collected
index = harness.write_report(run, console=console)
print("report:", index.resolve().as_uri())

# %% [markdown]
# ## 5. The results as a DataFrame: one row per attack result; `tpr@<fpr>` and `auc_lo` / `auc_hi` columns

# %%
df = compleak.load_results(run)
best = df.sort_values("auc", ascending=False).groupby(["device", "variant"]).head(1)
print(best[["device", "variant", "family", "method", "auc", "auc_lo", "auc_hi", "eps"]].to_string(index=False))

# %% [markdown]
# ## 6. Per-example scores of one device: one row per candidate, a column per attack (its `score_key`)

# %%
scores = compleak.load_scores(run, "local")
top = df[df.device == "local"].sort_values("auc").iloc[-1]
ranked = scores.sort_values(top.score_key, ascending=False)
print(f"{top.family} {top.method} on {top.variant}: members among its 20 most confident guesses:",
      int(ranked.member.head(20).sum()))

# %% [markdown]
# ## 7. The CI gate, as `compleak check RUN --fail-on ...` (exit status 3 when a rule trips; docs/ci.md)

# %%
from harness.gate import print_outcome  # noqa: E402 (a notebook cell)

outcome = harness.check_run(run, ["auc_lo>0.9", "NR,variant=int8:auc>0.95"])
print_outcome(outcome, console)
print("exit status compleak check would give:", outcome.exit_code)

# %% [markdown]
# ## 8. Export for a spreadsheet or a data warehouse (CSV, Parquet, JSON), as `compleak export`

# %%
csv = harness.export_run(run, "csv")
parquet = harness.export_run(run, "parquet", scores=True)
print("exported:", csv, parquet)
