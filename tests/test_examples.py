"""The examples run as users run them (issue 25): examples/python_api.py as a script on a copy of the tiny run,
every stage of it (build up to date, collect, attack, compare, report, gate, export), then again: nothing redone."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_python_api_example_runs_on_the_tiny_run(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "python-api"
    shutil.copytree(tiny_run, run)
    cmd = [sys.executable, str(ROOT / "examples" / "python_api.py"), "--out", str(run)]
    first = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout
    assert "6 artifacts collected on the host" in out, out[-3000:]
    assert "report: file://" in out and (run / "report" / "index.html").is_file()
    assert "exit status compleak check would give:" in out
    exported = [Path(p) for p in out.split("exported:", 1)[1].split()[:2]]
    assert [p.suffix for p in exported] == [".csv", ".parquet"] and all(p.is_file() for p in exported), exported
    assert "Traceback" not in first.stderr
    # every stage resumes: the second run collects nothing and rebuilds nothing
    artifacts = {p.name: p.stat().st_mtime_ns for p in (run / "artifacts").iterdir()}
    outputs = {p.name: p.stat().st_mtime_ns for p in (run / "outputs" / "local").iterdir()}
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "artifacts collected on the host" in again.stdout, again.stdout[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in (run / "artifacts").iterdir()} == artifacts
    assert {p.name: p.stat().st_mtime_ns for p in (run / "outputs" / "local").iterdir()} == outputs
