"""What every fitter shares: the fitting context of one variant group, a fitted row, the target side a row scores,
and the :class:`Fitter` contract (one family of rows; registered in :data:`compleak.fitters.FITTERS`).

A fitter reads the attacker's side only (the reference models' outputs and exact membership, the population, the
candidates' ids) through :class:`FitContext`, and leaves one :class:`Fit` per result row in it: what the row is
and a scorer, ``TargetView -> (scores float64 [n], decisions bool [n] | None)`` in the order of the candidates.
The target's membership never reaches a fitter or a scorer (:class:`TargetView` has none): only the metrics read
it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from compleak.attacks import AuthorsAttack, LearnedAttack
from compleak.fitters.inputs import Classes, ShadowSide, Signals, covers, source_name
from rundir import ContractError, OutputBatch, Splits
from rundir.vocabulary import BASELINES, FAMILIES

Progress = Callable[[str], None]

#: Learned attacks train on the first reference models' own examples, adding models until this many examples.
LEARNED_MAX_EXAMPLES = 20_000


@dataclass(frozen=True)
class AttackConfig:
    """What to fit and how to report it (see :func:`compleak.engine.fit_attacks`, which exports it)."""

    families: tuple[str, ...] = FAMILIES
    baselines: tuple[str, ...] = BASELINES
    fprs: tuple[float, ...] = (0.001, 0.01)
    bootstrap: int = 200
    seed: int = 0
    original: str = "original"
    nr_variants: tuple[str, ...] | None = None
    learned_max_examples: int = LEARNED_MAX_EXAMPLES
    rmia_gamma: float = 1.0


def candidates_of(splits: Splits) -> np.ndarray:
    """The candidates under test, int64 [n]: ``target_in`` then ``target_out``."""
    if hasattr(splits, "candidates"):
        return splits.candidates
    return np.concatenate([splits.target_in, splits.target_out]).astype(np.int64)


def population_of(splits: Splits) -> np.ndarray:
    """The attacker's population ids, int64 [m] (empty without one)."""
    pop = getattr(splits, "population", None)
    return np.zeros(0, np.int64) if pop is None else np.asarray(pop, dtype=np.int64)


def learned_refs(splits: Splits, max_examples: int) -> list[int]:
    """The references the learned attacks train on: the first ones, adding models until ``max_examples``."""
    refs, total = [], 0
    for k in range(splits.n_shadows):
        refs.append(k)
        total += len(splits.shadow_in[k]) + len(splits.shadow_out[k])
        if total >= max_examples:
            break
    return refs


class TargetView:
    """The target side of one scoring call: its signals per variant on the candidates, computed lazily. No
    membership: a scorer sees the target's outputs and the candidates' ids and labels, nothing else."""

    def __init__(self, outputs: Mapping[str, OutputBatch], perturbed: Mapping[str, Any] | None, classes: Classes,
                 ids: np.ndarray, labels: np.ndarray, pop_ids: np.ndarray, pop_labels: np.ndarray) -> None:
        self.outputs = outputs
        self.perturbed = perturbed or {}
        self.classes = classes
        self.ids, self.labels = ids, labels  # the candidates int64 [n] and their labels int64 [n]
        self.pop_ids, self.pop_labels = pop_ids, pop_labels  # the population int64 [m] and its labels
        self._side: dict[str, Signals] = {}
        self._pop: dict[str, np.ndarray] = {}

    def side(self, v: str) -> Signals:
        """The target variant ``v``'s signals on the candidates (log-posterior float64 [n, C])."""
        if v not in self._side:
            if v not in self.outputs:
                raise ContractError(f"variant '{v}': no target outputs given, but the attacks were fitted for it")
            lp = self.classes.log_p(self.outputs[v], self.ids, f"target outputs of '{v}'")
            self._side[v] = Signals(lp, self.labels)
        return self._side[v]

    def pop_p_y(self, v: str) -> np.ndarray:
        """The target's true-class probability on the population ids, float64 [m]."""
        if v not in self._pop:
            b = self.outputs[v]
            src = source_name(b, f"target outputs of '{v}'")
            if not covers(b, self.pop_ids):
                raise ContractError(f"{src}: the target was not queried on the population ids of splits.npz "
                                    "(RMIA's z set); re-run collect")
            lp = self.classes.log_p(b, self.pop_ids, src)
            self._pop[v] = np.exp(lp[np.arange(len(self.pop_ids)), self.pop_labels])
        return self._pop[v]


#: how a fitted row scores a target: (scores float64 [n], hard decisions bool [n] or None) on the candidates
Scorer = Callable[[TargetView], tuple[np.ndarray, np.ndarray | None]]
#: the features a learned attack reads from a target, float64 [n, d]
TargetFeatures = Callable[[TargetView], np.ndarray]


def authors_scorer(est: AuthorsAttack, features: TargetFeatures) -> Scorer:
    """Scores and decisions of a fitted :class:`~compleak.attacks.AuthorsAttack` (the paper's NR and SR rows) on the
    target's features: (membership probability float64 [n], the model's own decision bool [n])."""
    def scorer(t: TargetView) -> tuple[np.ndarray, np.ndarray]:
        X = features(t)
        return est.score(X), est.decide(X)

    return scorer


@dataclass
class Fit:
    """One fitted attack, one result row: what it is, its threshold and row fields, and how to score a target."""

    family: str
    method: str
    variant: str | list[str]
    scorer: Scorer
    threshold: float
    extra: dict[str, Any]

    @property
    def key(self) -> str:
        """The row's ``score_key``: ``family|method|variant`` (variants joined by commas)."""
        v = ",".join(self.variant) if isinstance(self.variant, list) else self.variant
        return f"{self.family}|{self.method}|{v}"


class SR2Choice(NamedTuple):
    """SR's best sr2 model of one compressed variant (by validation AUC), which MR's fusion reads."""

    model: LearnedAttack
    shadow_X: np.ndarray  # float64 [n_shadow, d], the features it was fitted on
    target_X: TargetFeatures


class FitContext:
    """The shared state of fitting one variant group: inputs, the reference side per variant, and what the fitters
    leave behind (:attr:`fits` in row order, :attr:`notes`, :attr:`best_sr2`)."""

    def __init__(self, splits: Splits, shadow_outputs: Mapping[str, Sequence[OutputBatch]], config: AttackConfig,
                 classes: Classes, shadow_perturbed: Mapping[str, Sequence[Any]] | None = None,
                 progress: Progress | None = None) -> None:
        self.splits = splits
        self.shadow_outputs = shadow_outputs  # variant -> one checked batch per reference model
        self.config = config
        self.classes = classes
        self.shadow_perturbed = shadow_perturbed or {}  # variant -> per reference a PerturbedBatch or None
        self.note: Progress = progress or (lambda _msg: None)  # called with a short description before each fit
        self.variants = list(shadow_outputs)
        self.labels = splits.labels.astype(np.int64)
        self.refs = learned_refs(splits, config.learned_max_examples)
        self.candidates = candidates_of(splits)
        self.candidate_labels = self.labels[self.candidates]
        self.pop_ids = population_of(splits)
        self.pop_labels = self.labels[self.pop_ids]
        self.fits: list[Fit] = []
        self.notes: list[str] = []  # attacks skipped and why
        #: compressed variant -> SR's best sr2 model; written by the SR fitter, read by MR (which ``needs`` SR)
        self.best_sr2: dict[str, SR2Choice] = {}
        self._sides: dict[str, ShadowSide] = {}

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def n_classes(self) -> int:
        return int(self.classes.n or 0)

    @property
    def n_refs(self) -> int:
        """K, the number of reference models."""
        return self.splits.n_shadows

    @property
    def original(self) -> str:
        return self.config.original

    @property
    def has_original(self) -> bool:
        return self.original in self.shadow_outputs

    @property
    def compressed(self) -> list[str]:
        """The group's variants other than the original, in order."""
        return [v for v in self.variants if v != self.original]

    @property
    def nr_variants(self) -> list[str]:
        """The variants the per-variant fitters (NR, SAMIA, baselines) run on, in order."""
        nr = self.config.nr_variants
        return self.variants if nr is None else [x for x in self.variants if x in nr]

    def wants(self, family: str) -> bool:
        """Whether the config asks for the rows of attack ``family``."""
        return family in self.config.families

    def shadow_side(self, v: str) -> ShadowSide:
        """The learned references of variant ``v`` pooled (computed once): each on its own examples."""
        if v not in self._sides:
            lps, ids, ys, owner = [], [], [], []
            for k in self.refs:
                kid = np.concatenate([self.splits.shadow_in[k], self.splits.shadow_out[k]]).astype(np.int64)
                lps.append(self.classes.log_p(self.shadow_outputs[v][k], kid, f"shadow {k} outputs of '{v}'"))
                ids.append(kid)
                ys.append(np.r_[np.ones(len(self.splits.shadow_in[k])), np.zeros(len(self.splits.shadow_out[k]))])
                owner.append(np.full(len(kid), k))
            all_ids = np.concatenate(ids)
            self._sides[v] = ShadowSide(np.concatenate(lps), self.labels[all_ids], np.concatenate(ys).astype(np.int64),
                                        all_ids, np.concatenate(owner).astype(np.int64))
        return self._sides[v]

    def add(self, family: str, method: str, variant: str | list[str], scorer: Scorer, threshold: float,
            **extra: Any) -> None:
        """Add one fitted row; ``extra`` are its further row fields, in order."""
        self.fits.append(Fit(family, method, variant, scorer, float(threshold), extra))

    def fit_learned(self, what: str, model: str, Xs: np.ndarray, ys: np.ndarray) -> LearnedAttack:
        """Fit a :class:`LearnedAttack` (``model``: lr / rf / mlp, its hyper-parameters selected out of sample on
        the shadow side) on ``Xs`` [n, d] with membership ``ys`` [n], after the progress note ``what``; no row."""
        self.note(what)
        return LearnedAttack(model, seed=self.seed).fit(Xs, ys)

    def learned(self, family: str, method: str, variant: str, model: str, Xs: np.ndarray, ys: np.ndarray,
                target_X: TargetFeatures, **extra: Any) -> LearnedAttack:
        """:meth:`fit_learned` and add its row, which scores ``target_X(t)`` [n, d]."""
        est = self.fit_learned(f"{family} {method} {variant}", model, Xs, ys)

        def scorer(t: TargetView) -> tuple[np.ndarray, None]:
            return est.score(target_X(t)), None

        self.add(family, method, variant, scorer, est.threshold_, selected=est.selected_, shadow_val_auc=est.val_auc_,
                 n_shadow_examples=len(ys), threshold_source="shadow validation", **extra)
        return est

    def skip(self, why: str) -> None:
        """Note an attack that was not fitted, and why (:attr:`FittedAttacks.notes`)."""
        self.notes.append(why)


class Fitter:
    """One family of result rows (a value of ``rundir.vocabulary.ROW_FAMILIES``), fitted on the reference side.

    ``fit_attacks`` runs the registered fitters in the table's order, in two phases: first, per NR variant,
    :meth:`fit_variant` of every fitter (so one variant's rows stay together); then :meth:`fit_group` of every
    fitter once. A fitter overrides the phase(s) it uses, adds its rows with :meth:`FitContext.add` /
    :meth:`FitContext.learned` (each with its ``family``, a unique ``score_key``), and reads nothing of the
    target but the candidates' ids and labels."""

    #: the ``family`` of its rows, its key in the table
    family: ClassVar[str]

    def wanted(self, ctx: FitContext) -> bool:
        """Whether the config asks for this fitter's rows (default: its family is in ``config.families``)."""
        return ctx.wants(self.family)

    def needs(self, ctx: FitContext) -> tuple[str, ...]:
        """The fitters (table keys, earlier in the table) whose results in ``ctx`` this one reads; they run even
        when their own rows are not asked for."""
        return ()

    def fit_variant(self, ctx: FitContext, variant: str) -> None:
        """Fit this family's rows of one NR variant (phase 1)."""

    def fit_group(self, ctx: FitContext) -> None:
        """Fit this family's rows over the whole group (phase 2)."""
