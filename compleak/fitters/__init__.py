"""The attack fitters: one per family of result rows, behind one table.

:data:`FITTERS` maps each ``family`` of ``rundir.vocabulary.ROW_FAMILIES`` to its :class:`~compleak.fitters.base.Fitter`
(NR with SAMIA, SR, MR, the LiRA / RMIA baselines); :func:`compleak.engine.fit_attacks` runs them in this order
(per NR variant the per-variant fitters, then the group fitters; see :class:`~compleak.fitters.base.Fitter`). A new
family is one module here with its ``Fitter``, one entry below, and its name in ``rundir/vocabulary.py``;
``tests/test_fitters.py`` checks every registered fitter against the contract.
"""

from __future__ import annotations

from compleak.fitters.base import FitContext, Fitter
from compleak.fitters.baselines import BaselineFitter
from compleak.fitters.mr import MRFitter
from compleak.fitters.nr import NRFitter
from compleak.fitters.sr import SRFitter
from rundir.vocabulary import ROW_FAMILIES

#: row family -> its fitter, in the order they run (a fitter's ``needs`` come before it)
FITTERS: dict[str, Fitter] = {f.family: f for f in (NRFitter(), SRFitter(), MRFitter(), BaselineFitter())}

_unknown = [name for name in FITTERS if name not in ROW_FAMILIES]
if _unknown:
    raise ImportError(f"compleak.fitters: fitters for {_unknown}, not row families of rundir.vocabulary")


def active(ctx: FitContext) -> list[Fitter]:
    """The fitters that run for ``ctx``, in table order: those whose rows the config asks for, and those they
    need (which then fit without rows of their own unless asked)."""
    run = {name for name, f in FITTERS.items() if f.wanted(ctx)}
    todo = list(run)
    while todo:
        for need in FITTERS[todo.pop()].needs(ctx):
            if need not in run:
                run.add(need)
                todo.append(need)
    return [f for name, f in FITTERS.items() if name in run]


__all__ = ["FITTERS", "FitContext", "Fitter", "active"]
