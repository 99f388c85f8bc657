"""Helpers for the hostile-input tests (issue 11): run the CLI, demand one clean line, prove nothing changed.

``tests/conftest.py`` lists this module in ``pytest_plugins``; test modules import the helpers by name::

    from hostile_fixtures import TreeState, cli_refuses, copy_run

    def test_bad_thing(tiny_run, tmp_path):
        run = copy_run(tiny_run, tmp_path / "run")
        ...plant the hostile input...
        with TreeState(run, tmp_path):          # run dir and its surroundings byte-identical afterwards
            cli_refuses(["collect", str(run), "--artifacts", "../.."], "artifact id", "../..")

Every case asserts the same four things: exit status 2, exactly one output line that starts with ``error:``
and names the thing (every ``expect`` substring, case-insensitive), no traceback, and the trees byte-identical.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

from typer.testing import CliRunner, Result


def tree_state(root: Path) -> dict[str, tuple]:
    """Relative path -> (kind, mode, sha256 or link target) of everything under ``root`` (links not followed)."""
    state: dict[str, tuple] = {}
    root = Path(root)
    if not root.exists() and not root.is_symlink():
        return state
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                state[rel] = ("link", st.st_mode, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                state[rel] = ("dir", st.st_mode, None)
            else:
                state[rel] = ("file", st.st_mode, hashlib.sha256(p.read_bytes()).hexdigest())
    return state


class TreeState:
    """Context manager: every given tree must be byte-identical (files, modes, links) on exit."""

    def __init__(self, *roots: Path) -> None:
        self.roots = [Path(r) for r in roots]
        self.before: list[dict[str, tuple]] = []

    def __enter__(self) -> "TreeState":
        self.before = [tree_state(r) for r in self.roots]
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            return
        for root, before in zip(self.roots, self.before):
            after = tree_state(root)
            added = sorted(set(after) - set(before))
            removed = sorted(set(before) - set(after))
            changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
            assert not (added or removed or changed), (
                f"{root} changed: added {added[:5]}, removed {removed[:5]}, changed {changed[:5]}"
            )


def cli(args: list[str], input: str | None = None, env: dict[str, str] | None = None) -> Result:
    """Invoke the ``compleak`` CLI in-process; stdout and stderr are both in ``result.output``."""
    from harness.cli.main import app

    return CliRunner().invoke(app, args, input=input, env=env)


def assert_one_line_error(result: Result, *expect: str) -> str:
    """Exit 2, one non-empty output line starting with ``error:`` containing every ``expect``; returns the line."""
    out = result.output
    assert "Traceback" not in out, out
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, f"exit {result.exit_code}: {out}"
    lines = [ln for ln in out.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, f"want exactly one error line, got: {out!r}"
    line = errors[0]
    for e in expect:
        assert e.lower() in line.lower(), f"{e!r} not in {line!r}"
    return line


def cli_refuses(args: list[str], *expect: str, input: str | None = None, env: dict[str, str] | None = None) -> str:
    """Run the CLI and assert a clean one-line refusal (see :func:`assert_one_line_error`); returns the line."""
    return assert_one_line_error(cli(args, input=input, env=env), *expect)


def copy_run(src: Path, dest: Path) -> Path:
    """A private copy of a built run directory (hostile tests plant files in it; the shared one stays clean)."""
    shutil.copytree(src, dest, symlinks=True)
    return dest
