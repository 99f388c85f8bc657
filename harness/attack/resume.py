"""What the attack stage keeps, skips and refuses, so that ``compleak attack`` never loses results.

Beside ``attacks/<device>/results.json`` and ``scores.npz`` the stage writes ``state.json``: the families those rows
were computed for and a fingerprint of every input (the outputs of the device and of the host, whose shadows a
device may use; ``splits.npz``, ``manifest.json``, ``experiment.toml``) plus the stage's version. Before computing:

- the same inputs and no family beyond those computed: **skip** (``--force`` recomputes);
- a subset of the families computed from the same inputs (with or without ``--force``): compute that subset and
  **keep** the other families' rows and scores (a merge, never a silent drop);
- a subset when the inputs changed (or the rows predate ``state.json``): **refuse** in one line naming the rows it
  would drop and the two ways on (every family, or ``--force`` to replace them, which a note then says). When
  the families are the run's configured ones (no explicit subset: ``audit``, ``attack`` without ``--families``),
  rows of a family the config no longer lists are replaced, and a note says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from harness.errors import HarnessError
from rundir.errors import ContractError
from rundir.files import atomic_write_json, inputs_fingerprint, load_json
from rundir.layout import RunDir
from rundir.results import ResultRow, load_results
from rundir.vocabulary import BASELINE, ROW_FAMILIES

#: bump when the stage computes different rows from the same inputs (older states are then recomputed)
STATE_VERSION = 1
STATE_FILE = "state.json"
HOST = "local"


class AttackState(BaseModel):
    """``attacks/<device>/state.json``: what the rows beside it were computed from."""

    model_config = ConfigDict(extra="forbid")
    version: int
    fingerprint: str
    families: list[str]


@dataclass
class Resume:
    """The decision for one device: ``skip`` (rows: the kept ones), or compute ``families`` and add ``keep_rows`` /
    ``keep_scores`` (float64 arrays of shape [n_candidates] by score_key) of the other families."""

    skip: bool
    fingerprint: str
    keep_rows: list[ResultRow] = field(default_factory=list)
    keep_scores: dict[str, np.ndarray] = field(default_factory=dict)
    note: str | None = None  # what the user should know (rows replaced because the config changed)


def state_path(rd: RunDir, device: str) -> Path:
    return rd.attacks_dir(device) / STATE_FILE


def fingerprint(rd: RunDir, device: str) -> str:
    """The identity of every input of ``device``'s attack stage (module doc), with :data:`STATE_VERSION`."""
    files = [rd.splits, rd.manifest, rd.experiment]
    for dev in dict.fromkeys((device, HOST)):
        folder = rd.outputs_dir(dev)
        if folder.is_dir() and not folder.is_symlink():
            files += sorted(p for p in folder.glob("*.npz") if p.is_file())
    return f"v{STATE_VERSION}:{inputs_fingerprint(files, rd.root)}"


def _load_state(rd: RunDir, device: str) -> AttackState | None:
    path = state_path(rd, device)
    if not path.is_file():
        return None
    try:
        return AttackState.model_validate(load_json(path, 1 << 16))
    except (ContractError, ValidationError):  # unreadable: as if absent (the rows are then treated as unknown)
        return None


def _row_families(fams: list[str]) -> set[str]:
    """The row families a run of ``fams`` writes: those families and the baselines (computed with any of them)."""
    return {*fams, BASELINE}


def _current(state: AttackState | None, fp: str, fams: list[str]) -> bool:
    return state is not None and state.fingerprint == fp and set(fams) <= set(state.families)


def up_to_date(rd: RunDir, device: str, fams: list[str]) -> bool:
    """True when ``device``'s rows were computed from the inputs of now and hold every family of ``fams``."""
    return rd.results(device).is_file() and _current(_load_state(rd, device), fingerprint(rd, device), fams)


def plan_resume(rd: RunDir, device: str, fams: list[str], force: bool, explicit: bool,
                load_scores: Callable[[Path], dict[str, np.ndarray]]) -> Resume:
    """Decide what to do for ``device`` (module doc); ``explicit``: ``fams`` is a subset the user asked for, not
    the run's configured families. ``load_scores``: the stage's reader of ``scores.npz``. Raises
    :class:`HarnessError` (one line) when computing ``fams`` would drop rows it cannot keep."""
    fp = fingerprint(rd, device)
    results = rd.results(device)
    if not results.is_file():
        return Resume(False, fp)
    state = _load_state(rd, device)
    if not force and _current(state, fp, fams):
        return Resume(True, fp, keep_rows=load_results(results))
    same = state is not None and state.fingerprint == fp
    old = load_results(results)
    dropped = sorted({r.family for r in old} - _row_families(fams), key=ROW_FAMILIES.index)
    if not dropped:
        return Resume(False, fp)
    n = sum(1 for r in old if r.family in dropped)
    if not same and not explicit:
        return Resume(False, fp, note=f"{n} {', '.join(dropped)} rows replaced: the run's [attack] families are now "
                                      f"{', '.join(fams)}")
    if not same and force:
        return Resume(False, fp, note=f"{n} {', '.join(dropped)} rows of other inputs replaced (--force)")
    if not same:
        why = "were computed from other inputs" if state is not None else "predate attacks/<device>/state.json"
        raise HarnessError(
            f"{results}: its {n} {', '.join(dropped)} rows {why}; computing only {', '.join(fams)} would drop them "
            f"or mix inputs: run 'compleak attack {rd.root}' for every family, or add --force to replace them"
        )
    keep = [r for r in old if r.family in dropped]
    scores = load_scores(rd.scores(device)) if rd.scores(device).is_file() else {}
    keys = [(r.model_extra or {}).get("score_key") for r in keep]
    missing = [k for k in keys if k not in scores]
    if missing:
        raise HarnessError(f"{rd.scores(device)}: no scores for {len(missing)} kept rows (e.g. {missing[0]}); "
                           f"run 'compleak attack {rd.root} --force' to recompute every family")
    return Resume(False, fp, keep_rows=keep, keep_scores={k: scores[k] for k in keys})


def families_after(fams: list[str], resume: Resume) -> list[str]:
    """The families ``state.json`` records after computing ``fams`` and keeping ``resume.keep_rows``."""
    kept = {r.family for r in resume.keep_rows}
    return [f for f in ROW_FAMILIES if f != BASELINE and (f in fams or f in kept)]


def write_state(rd: RunDir, device: str, fp: str, families: list[str]) -> None:
    """Write ``state.json`` last, after the rows and scores it describes."""
    atomic_write_json(state_path(rd, device), AttackState(version=STATE_VERSION, fingerprint=fp,
                                                          families=families).model_dump())
