"""The attack vocabulary, defined once: the CompLeak families, the baseline attacks, and the ``family`` field of a
result row. Config validation, the attack engine, the attack stage, the gate, the report and the CLI all read it
from here, so a new family is one fitter file in ``compleak/fitters/`` plus one name here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

#: CompLeak's attack families (arXiv 2507.16872): NR (one compressed model), SR (original + one compressed model),
#: MR (several compressed models)
FAMILIES: tuple[str, ...] = ("NR", "SR", "MR")
#: the reference-model baselines (``[attack] baselines``)
BASELINES: tuple[str, ...] = ("rmia", "lira")
#: the ``family`` of a baseline's result row
BASELINE = "baseline"
#: every value of a result row's ``family`` field
ROW_FAMILIES: tuple[str, ...] = (*FAMILIES, BASELINE)
RowFamily = Literal["NR", "SR", "MR", "baseline"]
assert get_args(RowFamily) == ROW_FAMILIES  # the Literal spells ROW_FAMILIES (pydantic needs it written out)


def unknown(values: Iterable[str], known: tuple[str, ...]) -> list[str]:
    """The entries of ``values`` that are not in ``known`` (in order; empty when all are)."""
    return [v for v in values if v not in known]


def families_problem(values: Iterable[str], what: str = "--families") -> str | None:
    """One line saying which of ``values`` are not attack families, or None when all are: the one check of a
    family list, wherever it comes from (``--families``, ``[attack] families``)."""
    bad = unknown(values, FAMILIES)
    if bad:
        return f"{what}: unknown attack families {bad}; choose from {', '.join(FAMILIES)}"
    return None


def baselines_problem(values: Iterable[str], what: str = "[attack] baselines") -> str | None:
    """One line saying which of ``values`` are not baseline names, or None when all are."""
    bad = unknown(values, BASELINES)
    if bad:
        return f"{what}: unknown baselines {bad}; choose from {', '.join(BASELINES)}"
    return None
