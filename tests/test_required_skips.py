"""CI cannot skip what it claims (issue 25): under COMPLEAK_TEST_REQUIRE a test that would skip for a missing tool
fails, naming it. Run as a child pytest on a real test of this suite with `adb` taken off PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ADB_TEST = "test_adb.py::test_run_returns_exit_code_stdout_stderr_and_stdin"


def _path_without(tool: str, where: Path) -> str:
    """A PATH whose directories hold everything of this PATH but ``tool`` (symlinks in ``where``)."""
    where.mkdir(parents=True)
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not d or not Path(d).is_dir():
            continue
        for f in Path(d).iterdir():
            if f.name != tool and not (where / f.name).exists():
                (where / f.name).symlink_to(f)
    assert shutil.which(tool, path=str(where)) is None
    return str(where)


def _child(tmp_path: Path, require: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=_path_without("adb", tmp_path / "bin"))
    env.pop("COMPLEAK_TEST_REQUIRE", None)
    if require is not None:
        env["COMPLEAK_TEST_REQUIRE"] = require
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", ADB_TEST],
                          cwd=TESTS, env=env, capture_output=True, text=True, timeout=300)


def test_missing_tool_fails_under_require_all(tmp_path: Path) -> None:
    cp = _child(tmp_path, "all")
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert "COMPLEAK_TEST_REQUIRE=all requires it to run" in cp.stdout and "apt install adb" in cp.stdout, cp.stdout


def test_a_subset_fails_only_its_words(tmp_path: Path) -> None:
    cp = _child(tmp_path, "podman,root")  # adb not named: its skip stays a skip
    assert cp.returncode == 0 and "1 skipped" in cp.stdout, cp.stdout + cp.stderr
    cp = _child(tmp_path / "again", "podman,ADB")
    assert cp.returncode == 1 and "apt install adb" in cp.stdout, cp.stdout + cp.stderr


def test_without_require_a_missing_tool_skips(tmp_path: Path) -> None:
    cp = _child(tmp_path, None)
    assert cp.returncode == 0 and "the adb client is not installed" in cp.stdout, cp.stdout + cp.stderr
