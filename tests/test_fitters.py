"""Every registered attack fitter (``compleak.fitters.FITTERS``) against the fitter contract, on one small synthetic
online run: rows of its own family with unique score keys, finite float64 [n] scores aligned with
``splits.candidates``, deterministic for a seed, blind to the target's membership, and the same rows whether it runs
alone or with every other fitter. A new family registered in the table is covered without touching this file."""

from __future__ import annotations

from dataclasses import replace
from functools import cache
from typing import Any

import numpy as np
import pytest

from compleak.engine import AttackConfig, FittedAttacks, fit_attacks
from compleak.fitters import FITTERS, Fitter
from compleak.fitters.baselines import METHODS
from compleak.samia import PerturbedBatch
from compleak.synthetic import VariantSpec as V
from compleak.synthetic import make_online_splits, synthetic_outputs, synthetic_perturbed
from rundir import OutputBatch, ResultRow, Splits
from rundir.vocabulary import BASELINE, BASELINES, FAMILIES, ROW_FAMILIES

SPECS = {"original": V(1.0, 0.0, member_sensitivity=0.5), "int8": V(1.6, 0.0, member_sensitivity=0.4),
         "fp16": V(1.3, 0.0)}
SPLITS = make_online_splits((40, 40), n_extra=40, n_references=3, n_population=30, n_classes=4, seed=3)
TARGET, SHADOW = synthetic_outputs(SPLITS, SPECS, n_classes=4, seed=3)
T_PERT, S_PERT = synthetic_perturbed(SPLITS, SPECS, TARGET, SHADOW, n_perturb=4, seed=3)

Scored = tuple[FittedAttacks, list[ResultRow], dict[str, np.ndarray]]


def _config(families: tuple[str, ...], baselines: tuple[str, ...]) -> AttackConfig:
    return AttackConfig(families, baselines, fprs=(0.05,), bootstrap=0, seed=5, nr_variants=("int8",))


def _alone(family: str) -> AttackConfig:
    """The config that asks for the rows of ``family`` only."""
    return _config(tuple(f for f in FAMILIES if f == family), BASELINES if family == BASELINE else ())


def _fit_score(splits: Splits, config: AttackConfig, target: dict[str, OutputBatch] = TARGET,
               target_pert: dict[str, PerturbedBatch] = T_PERT) -> Scored:
    fitted = fit_attacks(splits, SHADOW, config, S_PERT)
    rows, scores = fitted.score(target, target_pert)
    return fitted, rows, scores


@cache
def _scored_alone(family: str) -> Scored:
    return _fit_score(SPLITS, _alone(family))


def _dumps(rows: list[ResultRow]) -> list[str]:
    return [r.model_dump_json() for r in rows]


def _fit_fields(fitted: FittedAttacks) -> list[tuple[Any, ...]]:
    """What a fit decided, row by row (no metric: those read the target's membership)."""
    return [(f.family, f.method, f.variant, f.threshold, f.extra) for f in fitted.fits]


def _same_scores(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_the_table_is_the_vocabulary() -> None:
    assert set(FITTERS) == set(ROW_FAMILIES)
    for name, fitter in FITTERS.items():
        assert isinstance(fitter, Fitter) and fitter.family == name
    assert set(METHODS) == set(BASELINES)  # the baseline fitter knows every baseline name, and no other


@pytest.mark.parametrize("family", list(FITTERS))
def test_fitter_rows_and_scores(family: str) -> None:
    _, rows, scores = _scored_alone(family)
    assert rows, f"{family}: no rows on a run where every family applies"
    keys = [r.model_extra["score_key"] for r in rows]
    assert len(set(keys)) == len(keys) and list(scores) == keys
    n = len(SPLITS.candidates)
    for r, key in zip(rows, keys):
        assert r.family == family and r.family in ROW_FAMILIES
        variant = ",".join(r.variant) if isinstance(r.variant, list) else r.variant
        assert key == f"{r.family}|{r.method}|{variant}"
        s = scores[key]
        assert s.dtype == np.float64 and s.shape == (n,) and np.all(np.isfinite(s)), key
        assert r.n_members + r.n_nonmembers == n


@pytest.mark.parametrize("family", list(FITTERS))
def test_fitter_scores_follow_the_candidates_not_the_batch_order(family: str) -> None:
    fitted, rows, scores = _scored_alone(family)
    perm = np.random.default_rng(0).permutation
    target = {v: OutputBatch(b.index[p], b.values[p], b.kind) for v, b in TARGET.items()
              for p in [perm(len(b.index))]}
    t_pert = {v: PerturbedBatch(b.index[p], b.values[p], b.kind, b.epsilon) for v, b in T_PERT.items()
              for p in [perm(len(b.index))]}
    rows2, scores2 = fitted.score(target, t_pert)
    assert _same_scores(scores, scores2)
    assert _dumps(rows) == _dumps(rows2)


@pytest.mark.parametrize("family", list(FITTERS))
def test_fitter_is_deterministic_for_a_seed(family: str) -> None:
    _, rows, scores = _scored_alone(family)
    _, rows2, scores2 = _fit_score(SPLITS, _alone(family))
    assert _dumps(rows) == _dumps(rows2)
    assert _same_scores(scores, scores2)


@pytest.mark.parametrize("family", list(FITTERS))
def test_fitter_never_reads_target_membership(family: str) -> None:
    # the same candidates in the same order, but a third of the members relabelled non-members: a fit reads the
    # attacker's side only, so every fitted attack and every score is unchanged; only the metrics move
    fitted, _, scores = _scored_alone(family)
    cand = SPLITS.candidates
    m = len(SPLITS.target_in) * 2 // 3
    relabelled = replace(SPLITS, target_in=cand[:m], target_out=cand[m:])
    assert np.array_equal(relabelled.candidates, cand)
    fitted2, rows2, scores2 = _fit_score(relabelled, _alone(family))
    assert _fit_fields(fitted2) == _fit_fields(fitted)
    assert _same_scores(scores, scores2)
    assert [r.n_members for r in rows2] == [m] * len(rows2)


def test_a_fitter_alone_gives_its_rows_of_the_full_table() -> None:
    fitted, rows, scores = _fit_score(SPLITS, _config(FAMILIES, BASELINES))
    for family in FITTERS:
        _, alone, alone_scores = _scored_alone(family)
        mine = [r for r in rows if r.family == family]
        assert _dumps(mine) == _dumps(alone), family
        assert _same_scores({k: scores[k] for k in alone_scores}, alone_scores)
    assert not fitted.notes  # every reference was perturbed and queried on the candidates: nothing skipped
