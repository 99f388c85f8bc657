"""Membership files: reading them (id lists or CSVs with a membership column), checking that the sets are
disjoint, drawing missing non-members, balancing the sets and refusing ones too small for the lowest FPR."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.importer.text import read_text, shown

_TRUE = {"1", "true", "yes", "y", "member", "in", "train", "t"}
_FALSE = {"0", "false", "no", "n", "nonmember", "non-member", "non_member", "out", "test", "f"}
_ID_COLUMNS = ("id", "index", "idx", "example_id", "example", "sample_id")
_MEMBER_COLUMNS = ("member", "membership", "is_member", "in_training", "in_train", "split")
_MAX_ID_DIGITS = 18  # more digits than any dataset has examples (and than int64 holds)


def _parse_id(text: str, where: str, n: int) -> int:
    """One example id: plain ASCII decimal digits only (no sign, spaces, ``_``, ``.``, or non-ASCII digits such as
    full-width ``６``, all of which Python's ``int()`` would accept), within 0..n-1."""
    quoted = shown(text)
    if not text:
        raise HarnessError(f"{where}: empty example id; give one plain decimal id (0..{n - 1})")
    if not (text.isascii() and text.isdigit()):
        raise HarnessError(
            f"{where}: '{quoted}' is not a plain example id; ids are ASCII decimal digits only (no sign, spaces, "
            f"'_', '.', or other digit characters), 0..{n - 1}"
        )
    if len(text) > _MAX_ID_DIGITS or int(text) >= n:
        raise HarnessError(f"{where}: example id {quoted} is outside the dataset (0..{n - 1})")
    return int(text)


class _Ids:
    """Ids taken from one file, each once (a repeat names the line it was first on)."""

    def __init__(self, path: Path, n: int) -> None:
        self.path, self.n = path, n
        self.seen: dict[int, int] = {}

    def take(self, raw: str, k: int) -> int:
        i = _parse_id(raw, f"{self.path} line {k}", self.n)
        if i in self.seen:
            raise HarnessError(
                f"{self.path} line {k}: example id {i} is listed again (first on line {self.seen[i]}); "
                "list each id once"
            )
        self.seen[i] = k
        return i


def _read_csv(path: Path, lines: list[tuple[int, str]], ids: _Ids) -> tuple[np.ndarray, np.ndarray | None]:
    """(members, non-members or None) of a membership CSV's (line number, line) pairs, header first."""
    first = lines[0][1]
    delimiter = "\t" if "\t" in first else ","
    rows = [(k, next(csv.reader([ln], delimiter=delimiter), [])) for k, ln in lines]
    header = [c.strip().lower() for c in rows[0][1]]
    id_col = next((header.index(c) for c in _ID_COLUMNS if c in header), None)
    mem_col = next((header.index(c) for c in _MEMBER_COLUMNS if c in header), None)
    if id_col is None or mem_col is None:
        raise HarnessError(
            f"{path} line {rows[0][0]}: a membership CSV needs a header with an id column "
            f"({'/'.join(_ID_COLUMNS)}) and a membership column ({'/'.join(_MEMBER_COLUMNS)}); "
            f"found {[shown(c) for c in header]}"
        )
    mem: list[int] = []
    non: list[int] = []
    for k, row in rows[1:]:
        if len(row) <= max(id_col, mem_col):
            raise HarnessError(f"{path} line {k}: {len(row)} field(s), the header has {len(header)}")
        i = ids.take(row[id_col], k)
        flag = row[mem_col].strip().lower()
        if flag in _TRUE:
            mem.append(i)
        elif flag in _FALSE:
            non.append(i)
        else:
            raise HarnessError(
                f"{path} line {k}: membership '{shown(flag)}' is not one of 1/0, true/false, member/nonmember, "
                f"in/out"
            )
    return np.asarray(mem, dtype=np.int64), (np.asarray(non, dtype=np.int64) if non else None)  # members only: a list


def read_membership(path: Path, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Read membership from ``path``: one example id per line (members only), or a CSV with a header naming an id
    column (``id``/``index``/...) and a membership column (``member``/``membership``/``is_member``/``split``; values
    1/0, true/false, member/nonmember, in/out). Ids index the dataset (0..n-1) and are plain ASCII decimal digits;
    each id appears once. UTF-8 (with or without a byte-order mark) or UTF-16 with a BOM; blank lines and lines
    starting with ``#`` are skipped. Every refusal names the file and the line.

    Returns (members int64 [M], non-members int64 [K] or None for a plain list), in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"{path}: membership file not found")
    text = read_text(path, "a membership file")
    if "\x00" in text:
        raise HarnessError(f"{path}: contains NUL bytes; expected one example id per line or a CSV")
    lines = [
        (k, ln) for k, ln in enumerate(text.splitlines(), start=1) if ln.strip() and not ln.lstrip().startswith("#")
    ]
    if not lines:
        raise HarnessError(f"{path}: no example ids in the file")
    first = lines[0][1]
    ids = _Ids(path, n)
    if path.suffix.lower() in (".csv", ".tsv") or "," in first or "\t" in first:
        members, nonmembers = _read_csv(path, lines, ids)
    else:
        members, nonmembers = np.asarray([ids.take(ln, k) for k, ln in lines], dtype=np.int64), None
    if not len(members):
        raise HarnessError(f"{path}: no members listed")
    return members, nonmembers


def claimed_ids(paths: list[Path] | tuple[Path, ...], n: int) -> np.ndarray | None:
    """Every id the membership files ``paths`` list (members and non-members), None without files."""
    claimed = [np.concatenate([a for a in read_membership(p, n) if a is not None]) for p in paths]
    return np.concatenate(claimed) if claimed else None


def _overlap_error(a: np.ndarray, b: np.ndarray, what: str) -> None:
    both = np.intersect1d(a, b)
    if len(both):
        eg = ", ".join(str(int(i)) for i in both[:3])
        raise HarnessError(f"{what} share {len(both)} example ids (e.g. {eg}); membership sets must be disjoint")


def _subsample(ids: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` of ``ids`` chosen at random, kept in their original order."""
    keep = np.sort(rng.choice(len(ids), size=n, replace=False))
    return ids[keep]


def min_nonmembers(fpr: float) -> int:
    """Non-members needed to resolve TPR at false-positive rate ``fpr``: n >= 1/FPR (one false positive)."""
    return int(math.ceil(1.0 / fpr - 1e-9))


@dataclass
class Membership:
    """Target membership after checks: ids in file order, and what was done to balance them."""

    members: np.ndarray  # int64 [M]
    nonmembers: np.ndarray  # int64 [M]
    notes: list[str] = field(default_factory=list)

    @property
    def ids(self) -> np.ndarray:
        """Members then non-members."""
        return np.concatenate([self.members, self.nonmembers])


def _read_pair(members_file: Path, nonmembers_file: Path | None, n: int) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(members, non-members or None, the files named in messages) of one model, checked disjoint."""
    members, nonmembers = read_membership(members_file, n)
    source = f"{members_file}"
    if nonmembers_file is not None:
        if nonmembers is not None:
            raise HarnessError(
                f"{members_file}: already lists non-members; "
                f"drop --nonmembers {nonmembers_file} or the CSV's non-member rows"
            )
        listed, extra = read_membership(nonmembers_file, n)
        if extra is not None:
            raise HarnessError(f"{nonmembers_file}: give non-members as a plain id list (one per line), not a CSV")
        nonmembers, source = listed, f"{members_file} and {nonmembers_file}"
        _overlap_error(members, nonmembers, f"{members_file} and {nonmembers_file}")
    elif nonmembers is not None:
        _overlap_error(members, nonmembers, f"{members_file}: members and non-members")
    return members, nonmembers, source


def resolve_membership(
    members_file: Path,
    nonmembers_file: Path | None,
    n: int,
    lowest_fpr: float,
    seed: int,
    exclude: np.ndarray | None = None,
    what: str = "target",
    avoid: np.ndarray | None = None,
) -> Membership:
    """Read, check, balance and size-check one model's membership (see :func:`read_membership`).

    Without explicit non-members they are drawn at random from the ids that are neither members nor in ``exclude``
    (which must not overlap this model's sets) or ``avoid`` (ids claimed elsewhere, e.g. by shadow membership files).
    Unequal sets are balanced by subsampling the larger one (seeded). ``lowest_fpr`` > 0 enforces n >= 1/FPR.
    """
    rng = np.random.default_rng(seed)
    members, nonmembers, source = _read_pair(members_file, nonmembers_file, n)
    notes: list[str] = []
    if nonmembers is None:
        taken = np.concatenate([members, *(a for a in (exclude, avoid) if a is not None)])
        pool = np.setdiff1d(np.arange(n, dtype=np.int64), taken)
        k = min(len(members), len(pool))
        nonmembers = _subsample(rng.permutation(pool), k, rng)
        notes.append(f"{what} non-members: {k} ids drawn at random from the {len(pool)} ids not listed as members")
    if exclude is not None:
        _overlap_error(np.concatenate([members, nonmembers]), exclude, f"{source} and the target membership")
    if len(members) != len(nonmembers):
        m = min(len(members), len(nonmembers))
        notes.append(
            f"{what} sets balanced to {m} members and {m} non-members "
            f"(randomly subsampled from {len(members)} members and {len(nonmembers)} non-members)"
        )
        if len(members) > m:
            members = _subsample(members, m, rng)
        else:
            nonmembers = _subsample(nonmembers, m, rng)
    if lowest_fpr > 0:
        need = min_nonmembers(lowest_fpr)
        if len(nonmembers) < need:
            raise HarnessError(
                f"{source}: {len(nonmembers)} {what} non-members cannot resolve TPR at FPR {lowest_fpr:g}; the rule is "
                f"n_nonmembers >= 1/FPR, so {need} are needed (and as many members); give more ids or raise the lowest "
                f"FPR in attack.fprs of --config"
            )
    return Membership(members.astype(np.int64), nonmembers.astype(np.int64), notes)
