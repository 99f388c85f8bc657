"""Orchestration and the CLI of compleak-harness: config, data, build, collect, attack stage, compare, report.

The public Python API is the stage functions the CLI commands call, re-exported here (imported lazily, PEP 562, so
``import harness`` stays light and an optional extra only matters to the stage that needs it). Each works on a run
directory, resumes what is already done, takes an optional ``console`` (a ``rich.console.Console``; pass
``Console(quiet=True)`` in a notebook to silence it) and raises the project's one-line error types
(``harness.errors.HarnessError``, ``rundir.ContractError``, ``devices.errors.DeviceError``,
``harness.config.ConfigError``). ``examples/python_api.py`` runs them end to end; docs/ci.md lists them.

Unlike the CLI, the functions run their units serially in the calling process unless given
``execution=harness.execution.ExecOptions()`` (embedded Ray) or ``ExecOptions(address=...)`` (a cluster): a library
call should not start a Ray instance its caller did not ask for. The results are the same either way (docs/ci.md,
"Serial by default, unlike the CLI").

- :func:`build_run` (experiment.toml -> run directory), :func:`import_run` (artifacts built elsewhere -> run)
- :func:`collect_run` (run, device URI -> {artifact id: outputs .npz})
- :func:`attack_run` (run -> {device id: result rows}; writes results.json and per-example scores.npz)
- :func:`compare_run` (run -> comparison files, one per device besides the host)
- :func:`write_report` (run -> report/index.html; also summary.json)
- :func:`audit_run` (experiment.toml, device URIs -> report/index.html: every stage above in order)
- :func:`check_run` (run, ``--fail-on`` expressions -> :class:`harness.gate.GateOutcome`), :func:`parse_rule`
- :func:`export_run` (run -> a CSV / Parquet / JSON file)
- :func:`load_results` / :func:`load_scores` (run -> pandas DataFrames; the same as ``compleak.load_results`` /
  ``compleak.load_scores``)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_run": "harness.build.stage",
    "import_run": "harness.importer.stage",
    "collect_run": "harness.collect.stage",
    "attack_run": "harness.attack.stage",
    "compare_run": "harness.compare",
    "write_report": "harness.report.stage",
    "audit_run": "harness.audit",
    "check_run": "harness.gate",
    "parse_rule": "harness.gate",
    "export_run": "harness.export",
    "load_results": "compleak.results",
    "load_scores": "compleak.results",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
