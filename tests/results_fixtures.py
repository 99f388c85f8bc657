"""Session-scoped fixture ``attacked_run``: a small synthetic run directory put through the real attack stage.

``tests/test_report.py``'s :func:`make_synthetic_run` writes splits, a manifest, outputs on ``local`` and on an SSH
device id (``DEVICE``) that differs slightly, and hand-made result rows; the attack stage
(:func:`harness.attack.stage.attack_run`) then replaces those rows with real ones (ε lower bound, per-class AUC,
score keys) and writes ``attacks/<device>/scores.npz``. 60 members and 60 non-members per model, three variants, fast
attack settings: about half a minute on 2 cores. Tests must not modify it (copy it with ``copy_run`` first).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console


@pytest.fixture(scope="session")
def attacked_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_report import FAST_ATTACKS, make_synthetic_run

    from harness.attack.stage import attack_run

    root = tmp_path_factory.mktemp("attacked") / "run"
    root.mkdir()
    make_synthetic_run(root, n=60, variants=["original", "prune-0.8", "int8"], extra_toml=FAST_ATTACKS)
    attack_run(root, console=Console(quiet=True))
    return root
