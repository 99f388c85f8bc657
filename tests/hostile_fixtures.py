"""Helpers for the hostile-input tests (issues 11 and 25): run the CLI or a stage, demand one clean line, prove
nothing changed.

``tests/conftest.py`` lists this module in ``pytest_plugins``; test modules import the helpers by name.

**One shared check** (:func:`check`) for every hostile case (issue 25, item 5)::

    from hostile_fixtures import check, copy_run, make_site

    def test_bad_thing(tiny_run, tmp_path):
        site = make_site(copy_run(tiny_run, tmp_path / "run"))   # the run and a sentinel folder beside it
        ...plant the hostile input...
        check(["collect", str(site.run), "--artifacts", "../.."], "artifact id", "../..", site=site)

asserts all five, every time:

1. the exit status is 2 (or the command's documented one, given with ``status=`` and a reason in ``why=``);
2. exactly one output line starts with ``error:`` and holds every ``expect`` substring (case-insensitive), and it
   is not an ``internal error`` (an unexpected exception the last-resort handler caught); a stage's error message
   is one line itself (not only once the CLI has flattened it);
3. no ``Traceback`` in stdout or stderr, and no exception escaped;
4. the run tree is byte-for-byte unchanged (contents, modes, owners, links; a run that did not exist still does
   not);
5. the sentinel folder beside the run (:func:`make_site` plants it) is untouched.

The action is a CLI argument list (run in-process), or a callable: a stage, called under the CLI's own
``friendly`` handler so that its error is judged exactly as the CLI would print it (a callable returning a
:class:`subprocess.CompletedProcess` is a process the case ran: its status and output are judged).

A case that legitimately cannot meet one of the checks says so in its parameters, with the reason in ``why=``:
``status=0, errors=0`` (the point is that the command succeeds safely), ``writes=("report",)`` (these run paths
may change; everything else stays byte-identical), ``status=3`` (the gate's documented status). The traceback and
sentinel checks have no waiver. A hostile case that is no refusal at all (a control with intact input, a unit test
of a pure function) is marked ``@pytest.mark.hostile_exempt("reason")``.

Every test in ``tests/test_hostile_*.py`` and every test marked ``@pytest.mark.hostile`` elsewhere must go
through :func:`check` at least once or carry ``hostile_exempt``; otherwise it fails. The terminal summary counts
the cases and how many went through all five checks with no deviation; ``COMPLEAK_HOSTILE_LEDGER=FILE`` also
writes one JSON line per case.

The older helpers (:class:`TreeState`, :func:`cli_refuses`, :func:`assert_one_line_error`) stay for the other
test modules that use them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result


def _entry(p: Path, strict: bool) -> tuple:
    st = p.lstat()
    owner = (st.st_uid, st.st_gid) if strict else ()
    if stat.S_ISLNK(st.st_mode):
        return ("link", st.st_mode, os.readlink(p), *owner)
    if stat.S_ISDIR(st.st_mode):
        return ("dir", st.st_mode, None, *owner)
    if stat.S_ISREG(st.st_mode):
        return ("file", st.st_mode, hashlib.sha256(p.read_bytes()).hexdigest(), *owner)
    return ("special", st.st_mode, st.st_rdev, *owner)  # a FIFO, socket or device node: never opened (a FIFO blocks)


def tree_state(root: Path, *, strict: bool = False) -> dict[str, tuple]:
    """Relative path -> (kind, mode, sha256 or link target) of everything under ``root`` (links not followed);
    ``strict``: also ``root`` itself (as ``.``) and every entry's owner and group."""
    state: dict[str, tuple] = {}
    root = Path(root)
    if not root.exists() and not root.is_symlink():
        return state
    if strict:
        state["."] = _entry(root, strict)
        if root.is_symlink():
            return state
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            state[str(p.relative_to(root))] = _entry(p, strict)
    return state


def _diff(before: dict[str, tuple], after: dict[str, tuple]) -> tuple[list[str], list[str], list[str]]:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return added, removed, changed


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
            added, removed, changed = _diff(before, tree_state(root))
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


# --------------------------------------------------------------------------- the one shared check (issue 25)

SENTINEL_FILES = {"important.txt": b"must survive\n", "nested/data.bin": bytes(range(256))}


def plant_sentinel(folder: Path) -> Path:
    """Fill ``folder`` (made if missing) with a sentinel: a text file, a nested folder with binary data, a link, a
    private mode. Nothing a hostile case does may change any of it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for rel, data in SENTINEL_FILES.items():
        p = folder / rel
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
    link = folder / "link-to-important"
    if not link.is_symlink():
        link.symlink_to("important.txt")
    os.chmod(folder, 0o750)
    return folder


@dataclass(frozen=True)
class Site:
    """Where a hostile case acts. ``run``: the run directory (or where one would be made: a case that must not make
    it leaves it absent); ``sentinel``: a folder beside it that nothing may touch; ``also``: further trees that must
    stay byte-identical (a working directory, a shared temp folder, a folder holding the hostile input)."""

    run: Path
    sentinel: Path
    also: tuple[Path, ...] = ()

    def plus(self, *trees: Path) -> Site:
        """The same site with more trees that must stay byte-identical."""
        return Site(self.run, self.sentinel, self.also + tuple(Path(t) for t in trees))


def make_site(run: Path, sentinel: Path | None = None, also: Sequence[Path] = ()) -> Site:
    """A :class:`Site` for ``run`` with a freshly planted sentinel folder (default: ``victim`` beside the run)."""
    run = Path(run)
    return Site(run, plant_sentinel(sentinel or run.parent / "victim"), tuple(Path(t) for t in also))


@dataclass
class Outcome:
    """What :func:`check` saw: the exit status, stdout and stderr together, and the error line (or None)."""

    status: int
    output: str
    line: str | None


# the checks a case went through, per running test (see the hooks below); None outside a hostile test
_CALLS: list[dict[str, Any]] | None = None
_LEDGER: dict[str, dict[str, Any]] = {}


def _run_action(action: Sequence[str] | Callable[[], Any], input: str | None, env: dict[str, str] | None,
                app: Any) -> tuple[int, str, BaseException | None, BaseException | None]:
    """(exit status, output, exception that escaped, exception a stage raised)."""
    if not callable(action):
        args = [str(a) for a in action]
        result = cli(args, input=input, env=env) if app is None else CliRunner().invoke(app, args, input=input, env=env)
        return result.exit_code, result.output, result.exception, None
    import typer

    from harness.cli.main import friendly

    done: dict[str, Any] = {}
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.command()
    @friendly
    def stage() -> None:
        try:
            done["value"] = action()
        except BaseException as exc:
            done["raised"] = exc
            raise

    @app.command()
    def other() -> None:  # a second command, so 'stage' is a sub-command as in compleak
        pass

    result = CliRunner().invoke(app, ["stage"])
    value = done.get("value")
    if isinstance(value, subprocess.CompletedProcess):  # a process the case ran: judge it
        out = (value.stdout or "") + (value.stderr or "")
        out = out if isinstance(out, str) else out.decode(errors="replace")
        return value.returncode, out, None, None
    return result.exit_code, result.output, result.exception, done.get("raised")


def _without(state: dict[str, tuple], prefixes: Sequence[str]) -> dict[str, tuple]:
    """``state`` less the entries at or under each of ``prefixes`` (``*``: all of them)."""
    if "*" in prefixes:
        return {}
    return {k: v for k, v in state.items() if not any(k == p or k.startswith(f"{p}/") for p in prefixes)}


def check(action: Sequence[str] | Callable[[], Any], *expect: str, site: Site, status: int = 2, errors: int = 1,
          writes: Sequence[str] = (), why: str = "", prefix: str = "error:", input: str | None = None,
          env: dict[str, str] | None = None, app: Any = None) -> Outcome:
    """Run ``action`` against ``site`` and assert the five hostile-input checks (module docstring).

    ``status``: the exit status wanted (2 unless the command documents another); ``errors``: how many ``prefix``
    lines (1, or 0 for a case whose point is that the command succeeds safely: then every ``expect`` must appear
    somewhere in the output); ``writes``: run-relative paths that may change (everything else in the run stays
    byte-identical; ``("*",)``: a case whose point is to make or replace the run). Any of these away from its
    default needs ``why``, the case's reason. The traceback and the sentinel checks are never waived. ``app``: a
    Typer app to run the arguments against instead of ``compleak``'s (the last-resort handler's own tests)."""
    __tracebackhide__ = True
    deviations = {k: v for k, v in (("status", status != 2), ("errors", errors != 1), ("writes", bool(writes))) if v}
    assert not deviations or why.strip(), f"check(): {sorted(deviations)} differ from the shared checks: say why"
    assert errors in (0, 1), errors
    run = Path(site.run)
    trees = [run, Path(site.sentinel), *site.also]
    assert site.sentinel.is_dir() and tree_state(site.sentinel), f"no sentinel planted in {site.sentinel}"
    before = [tree_state(t, strict=True) for t in trees]

    code, out, exc, raised = _run_action(action, input, env, app)

    # 3. no traceback, nothing escaped
    assert "Traceback" not in out, out
    assert exc is None or isinstance(exc, SystemExit), repr(exc)
    if raised is not None:  # a stage's error is one line itself, not only as the CLI prints it (logs, provenance)
        assert "\n" not in str(raised) and "Traceback" not in str(raised), repr(str(raised))
    # 1. the exit status
    assert code == status, f"exit {code}, want {status}: {out}"
    # 2. one error line naming the thing
    lines = [ln for ln in out.splitlines() if ln.strip()]
    found = [ln for ln in lines if ln.startswith(prefix)]
    assert len(found) == errors, f"want {errors} {prefix!r} line(s), got: {out!r}"
    line = found[0] if found else None
    where = line if line is not None else out
    for e in expect:
        assert e.lower() in where.lower(), f"{e!r} not in {where!r}"
    if line is not None and not any("internal error" in e.lower() for e in expect):
        assert "internal error" not in line.lower(), f"an unexpected exception, not a refusal: {line}"
    # 4. the run byte-identical (but for ``writes``); 5. the sentinel and the other trees untouched
    for tree, old in zip(trees, before):
        new = tree_state(tree, strict=True)
        if tree == run:
            skip = ["*"] if "*" in writes else list(writes)
        else:  # the run has its own check (with its allowed writes): leave it out of a tree that holds it
            inner = str(run.relative_to(tree)) if run.is_relative_to(tree) else "."
            skip = [] if inner == "." else [inner]
        old, new = _without(old, skip), _without(new, skip)
        added, removed, changed = _diff(old, new)
        what = "the sentinel" if tree == site.sentinel else "the run" if tree == run else "a tree that must not change"
        assert not (added or removed or changed), (
            f"{what} {tree} changed: added {added[:5]}, removed {removed[:5]}, changed {changed[:5]}"
        )
    if _CALLS is not None:
        _CALLS.append({"deviations": {k: why for k in deviations}})
    return Outcome(code, out, line)


# --------------------------------------------------------------------------- enforcement and the count (pytest hooks)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hostile: a hostile-input case: must go through hostile_fixtures.check")
    config.addinivalue_line("markers", "hostile_exempt(reason): a case in a hostile module that is no refusal "
                                       "(a control, a unit test of a pure function): says why")


def _is_hostile(item: pytest.Item) -> bool:
    return Path(str(item.fspath)).name.startswith("test_hostile_") or item.get_closest_marker("hostile") is not None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):  # type: ignore[no-untyped-def]
    global _CALLS
    if not _is_hostile(item):
        return (yield)
    _CALLS = calls = []
    try:
        result = yield
    finally:
        _CALLS = None
    exempt = item.get_closest_marker("hostile_exempt")
    reason = (exempt.args[0] if exempt and exempt.args else "") if exempt else ""
    if exempt is not None and not str(reason).strip():
        pytest.fail("hostile_exempt needs a reason", pytrace=False)
    if not calls and exempt is None:
        pytest.fail(f"{item.nodeid} is a hostile case but never went through hostile_fixtures.check (the shared "
                    "checks); use check(), or mark it hostile_exempt('reason')", pytrace=False)
    deviations = {k: v for c in calls for k, v in c["deviations"].items()}
    _LEDGER[item.nodeid] = {"checks": len(calls), "deviations": deviations, "exempt": reason or None}
    return result


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _LEDGER:
        return
    n = len(_LEDGER)
    full = sum(1 for r in _LEDGER.values() if r["checks"] and not r["deviations"] and not r["exempt"])
    dev = sum(1 for r in _LEDGER.values() if r["checks"] and r["deviations"] and not r["exempt"])
    exempt = sum(1 for r in _LEDGER.values() if r["exempt"])
    terminalreporter.write_line(f"hostile cases that passed: {n}; through all five shared checks: {full}; through "
                                f"them with a stated deviation: {dev}; exempt with a reason: {exempt}")
    path = os.environ.get("COMPLEAK_HOSTILE_LEDGER")
    if path:
        with open(path, "a") as f:
            f.writelines(json.dumps({"nodeid": nodeid, **rec}) + "\n" for nodeid, rec in sorted(_LEDGER.items()))
