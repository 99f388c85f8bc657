"""Code that executes on the device. ``compleak_runner.py`` is copied there as a single file."""

from __future__ import annotations

from pathlib import Path

RUNNER_FILENAME = "compleak_runner.py"


def runner_path() -> Path:
    """Host path of the single-file on-device runner."""
    return Path(__file__).with_name(RUNNER_FILENAME)


def runner_source() -> str:
    """Source text of the on-device runner."""
    return runner_path().read_text()
