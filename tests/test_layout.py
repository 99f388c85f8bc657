"""The house keeps its floors (docs/DESIGN.md, "The house"): who may import whom, no import circle, and the size
limits of issue 20. Read from the source with ``ast`` (nothing is imported or run)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rundir", "compleak", "devices", "harness")
#: what each package may import of the project (besides itself)
ALLOWED = {
    "rundir": set(),
    "compleak": {"rundir"},
    "devices": {"rundir"},
    "harness": {"rundir", "compleak", "devices"},
}
#: the single self-contained file executed on a device (docs/architecture.md) may be longer
LONG_FILE_EXCEPTIONS = {"devices/ondevice/compleak_runner.py"}
MAX_FILE_LINES = 700
MAX_FUNCTION_LINES = 80
MAX_LONG_FUNCTIONS = 4


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the four packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


def _imports(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports (module level or inside functions), resolved to the longest known
    module name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            for n in range(len(parts), 0, -1):
                if ".".join(parts[:n]) in known:
                    found.add(".".join(parts[:n]))
                    break
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {m: _imports(p, known) - {m} for m, p in modules.items()}


def test_each_package_imports_only_the_floors_below_it() -> None:
    bad = [f"{m} imports {d}" for m, deps in _graph().items() for d in deps
           if d.split(".")[0] != m.split(".")[0] and d.split(".")[0] not in ALLOWED[m.split(".")[0]]]
    assert not bad, bad


def test_no_import_circle() -> None:
    graph = _graph()
    # a package's __init__ that re-exports its own modules is not a circle with them
    edges = {m: {d for d in deps if not (m in d and d.startswith(m + "."))} for m, deps in graph.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(edges):
        if m not in state:
            circle = visit(m)
            assert circle is None, " -> ".join(circle)


def test_the_execution_layer_sits_low_and_the_orchestrator_high() -> None:
    graph = _graph()
    layer = [m for m in graph if m == "harness.execution" or m.startswith("harness.execution.")]
    uses = {d for m in layer for d in graph[m] if d.startswith("harness.") and not d.startswith("harness.execution")}
    assert uses <= {"harness.errors"}, uses
    users_of_audit = sorted(m for m, deps in graph.items() if "harness.audit" in deps)
    assert set(users_of_audit) <= {"harness", "harness.cli.main"}, users_of_audit


def test_files_and_functions_stay_small() -> None:
    long_files, long_functions = [], []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            text = path.read_text(encoding="utf-8")
            if rel not in LONG_FILE_EXCEPTIONS and len(text.splitlines()) > MAX_FILE_LINES:
                long_files.append(f"{rel}: {len(text.splitlines())} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                    if n > MAX_FUNCTION_LINES:
                        long_functions.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    assert not long_files, long_files
    assert len(long_functions) <= MAX_LONG_FUNCTIONS, long_functions


def test_harness_top_floor_holds_few_modules() -> None:
    top = sorted(p.name for p in (ROOT / "harness").glob("*.py"))
    assert len(top) <= 10, top  # the rest lives in the stage subpackages
