"""Session-scoped fixture: the tiny run of ``tests/data/tiny.toml``, built once per test session.

``tests/conftest.py`` lists this module in ``pytest_plugins``, so any test module can use it without importing it::

    def test_something(tiny_run):  # tiny_run is the run directory (Path)
        ...

The run is built into ``<pytest basetemp>/tiny_run``, or into ``$COMPLEAK_TINY_RUN`` when set (a developer's
reusable copy: a later session resumes it, so nothing is rebuilt while the build inputs stay the same);
``build_run``'s own resume makes a second request in the same session a no-op, so every module shares one build.
It holds digits (8x8x1) splits of 300 per set, one shadow, and
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


def digits_toml(name: str, seed: int = 3, n: int = 100, shadows: int = 1, epochs: int = 1, tf: tuple[str, ...] = (),
                torch: tuple[str, ...] = ("original",), formats: tuple[str, ...] = ("pte",), extra: str = "") -> str:
    """A small experiment.toml on scikit-learn's digits (8x8x1) with cnn-small: ``n`` examples per split set,
    ``shadows`` reference models, the given TF / torch variants and torch formats, one training thread (the same
    bytes serially and on a worker), plus ``extra`` TOML. For tests that need a quick real build."""
    frameworks = [f for f, v in (("tf", tf), ("torch", torch)) if v]
    q = lambda items: "[" + ", ".join(f'"{i}"' for i in items) + "]"  # noqa: E731
    return f"""
[experiment]
name = "{name}"
seed = {seed}

[data]
dataset = "digits"

[splits]
target_in = {n}
target_out = {n}
shadow_in = {n}
shadow_out = {n}
n_shadows = {shadows}

[model]
arch = "cnn-small"

[train]
epochs = {epochs}
batch_size = 32
threads = 1

[compress]
finetune_epochs = 1
tf = {q(tf)}
torch = {q(torch)}

[export]
frameworks = {q(frameworks)}
torch_formats = {q(formats)}
{extra}"""
