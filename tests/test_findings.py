"""docs/findings.md is regenerated from committed results (issue 25): its tables equal what `just findings` renders
from docs/findings/, and every figure its prose quotes is in one of its tables."""

from __future__ import annotations

import importlib.util

import pytest
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _findings():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("findings_script", ROOT / "scripts" / "findings.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["findings_script"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_every_table_equals_the_committed_results() -> None:
    f = _findings()
    doc = f.DOC.read_text()
    keys = [m.group("key") for m in f.MARK.finditer(doc)]
    assert keys, "docs/findings.md has no generated table"
    for key in keys:
        assert (f.FINDINGS / key.split("/")[0] / "study.json").is_file(), key
    assert f.render(doc) == doc, "docs/findings.md differs from its results: run `just findings`"
    assert f.main(["--check"]) == 0


def test_a_changed_result_changes_the_page(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    f = _findings()
    doc = f.DOC.read_text()
    real = f.Study.__init__

    def shifted(self, name):  # type: ignore[no-untyped-def]
        real(self, name)
        for rows in self.rows.values():
            for r in rows:
                r["auc"] = min(1.0, r["auc"] + 0.01)

    monkeypatch.setattr(f.Study, "__init__", shifted)
    assert f.render(doc) != doc


def _prose_and_tables(doc: str) -> tuple[str, str]:
    tables = "".join(m.group("body") for m in _findings().MARK.finditer(doc))
    prose = _findings().MARK.sub("", doc)
    prose = re.sub(r"`[^`]*`", "", prose)  # code spans: commands, versions, file names
    return prose, tables


def test_every_figure_in_the_prose_is_in_a_table() -> None:
    doc = (ROOT / "docs" / "findings.md").read_text()
    prose, tables = _prose_and_tables(doc)
    figures = re.findall(r"(?<![\w.])\d+\.\d+(?![\d.])", prose)
    assert figures, "the prose quotes no figure at all; is the page empty?"
    missing = sorted({x for x in figures if x not in tables})
    assert not missing, f"figures in docs/findings.md's prose that no table holds: {missing}"


def test_benchmark_blocks_render_what_the_benchmark_prints(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A ``<!-- table: bench/farm -->`` block is what ``benchmarks/scale.py --show FILE`` prints for the committed
    JSON (here a --smoke result kept as test data: its figures are labelled not quotable)."""
    import json
    import shutil
    import subprocess

    f = _findings()
    shutil.copy(ROOT / "tests" / "data" / "bench-farm-smoke.json", tmp_path / "farm.json")
    monkeypatch.setattr(f, "BENCH", tmp_path)
    block = f.bench_block("farm")
    script = ROOT / "benchmarks" / "scale.py"
    shown = subprocess.run([sys.executable, str(script), "--show", str(tmp_path / "farm.json")],
                           capture_output=True, text=True, check=True).stdout
    assert block.startswith("```text\n$ .venv/bin/python benchmarks/scale.py --show ")
    assert block.endswith(shown + "```\n")
    assert "NOT A QUOTABLE FIGURE" in block
    median = json.loads((tmp_path / "farm.json").read_text())["farm"]["seconds"]["sequential"]["median"]
    assert f"{median:.1f} [" in block
    doc = "intro\n<!-- table: bench/farm -->\nstale\n<!-- end table -->\n"
    assert f.render(doc) == "intro\n<!-- table: bench/farm -->\n" + block + "<!-- end table -->\n"
    with pytest.raises(SystemExit, match="no committed benchmark results"):
        f.bench_block("attacks")  # none in tmp_path
