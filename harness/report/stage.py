"""The report stage: ``RUN/report/index.html`` (one self-contained page), ``RUN/report/summary.json`` and a table
in the terminal; for a run with ``[experiment] seeds`` the same across its per-seed runs.

By job: :mod:`~harness.report.load` reads the run, :mod:`~harness.report.summary` (and
:mod:`~harness.report.seeds` across seeds) computes the results, :mod:`~harness.report.charts` draws the figures,
:mod:`~harness.report.html` fills the Jinja2 templates and :mod:`~harness.report.terminal` prints the table. How
to read the page: docs/report.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from harness.compare import load_compare
from harness.errors import HarnessError
from harness.report.html import render_html, render_seed_html
from harness.report.load import load_devices, load_manifest
from harness.report.seeds import build_seed_summary, seed_runs
from harness.report.summary import build_summary
from harness.report.terminal import print_seed_terminal, print_terminal
from rundir import RunDir, atomic_write_bytes, atomic_write_json


def _write(rd: RunDir, summary: dict[str, Any], page: str) -> Path:
    """Write ``report/summary.json`` and ``report/index.html`` (atomically, readable by all); returns index.html."""
    atomic_write_json(rd.summary, summary)
    atomic_write_bytes(rd.report_index, page.encode("utf-8"))
    for f in (rd.report_index, rd.summary):
        f.chmod(0o644)  # a report is meant to be read and served: not the private 0600 of a temp file
    return rd.report_index


def write_report(run: Path, console: Console | None = None) -> Path:
    """Write ``RUN/report/index.html`` and ``RUN/report/summary.json``; print the terminal table. Returns index.html."""
    console = console or Console()
    rd = RunDir(run)
    if not rd.root.is_dir():
        raise HarnessError(f"{run}: no such run directory; create one with 'compleak build' or 'compleak import'")
    rd.require_writable("report", rd.report_dir.name)
    runs = seed_runs(rd)
    if runs and not rd.manifest.is_file():  # experiment.seeds: one run per seed under seeds/
        seed_summary = build_seed_summary(rd, runs)
        index = _write(rd, seed_summary, render_seed_html(rd, seed_summary))
        print_seed_terminal(seed_summary, console)
        return index
    manifest = load_manifest(rd)
    devices = load_devices(rd)
    if manifest is None and not devices:
        raise HarnessError(f"{run}: no manifest.json and no results; run 'compleak build' (or audit) first")
    compare = load_compare(rd.root)
    summary = build_summary(rd, devices, manifest, compare)
    index = _write(rd, summary, render_html(rd, summary, devices, manifest, compare))
    print_terminal(summary, console)
    return index
