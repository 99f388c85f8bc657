"""Session-scoped fixture: the tiny run of ``tests/data/tiny.toml``, built once per test session.

``tests/conftest.py`` lists this module in ``pytest_plugins``, so any test module can use it without importing it::

    def test_something(tiny_run):  # tiny_run is the run directory (Path)
        ...

The run is built into ``<pytest basetemp>/tiny_run``, or into ``$COMPLEAK_TINY_RUN`` when set (a developer's
reusable copy: a later session resumes it, so nothing is rebuilt while the build inputs stay the same);
``build_run``'s own resume makes a second request in the same session a no-op, so every module shares one build. It holds digits (8x8x1) splits of 300 per set, one shadow, and
artifacts of both frameworks: every TF variant kind as ``.tflite`` and every torch variant as
``.pte``/``.ptl``/``.onnx``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from rich.console import Console

TINY_TOML = Path(__file__).parent / "data" / "tiny.toml"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build (or reuse) the tiny run and return its directory."""
    from harness.build.stage import build_run

    cached = os.environ.get("COMPLEAK_TINY_RUN")
    out = Path(cached) if cached else tmp_path_factory.getbasetemp() / "tiny_run"
    return build_run(TINY_TOML, out=out, console=Console(quiet=True))
