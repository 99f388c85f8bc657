"""The data-level attack API: fit on the reference (shadow) side once, score any target's outputs.

- :func:`fit_attacks` (splits + reference/shadow outputs -> :class:`FittedAttacks`) fits NR, SAMIA, SR, MR and the
  LiRA / RMIA baselines of one group of variants of one model family (an ``original`` plus compressed variants).
  It reads the attacker's side only: shadow models' outputs and their exact membership (``shadow_in`` /
  ``shadow_out``), the population, and the candidates' *ids* (the references are queried on them).
- :meth:`FittedAttacks.score` (target outputs -> rows, per-example scores) applies them to one device's target
  outputs; target membership (``target_in`` / ``target_out``) is used by the metrics and nothing else.
- :func:`run_attacks` is both in one call.

The shadow-side and target-side batches are independent, so an attack fitted on host shadow outputs scores device
target outputs, and one fit scores every device. Memory: reference outputs stay float32 in their batches; per
variant only per-reference signals [K, n] (scaled logit, true-class probability) are formed, and the references'
per-candidate statistics are kept, never [K, n, C] float64.

Rows carry the DESIGN.md fields plus: ``fpr_resolvable``, ``threshold`` (+ ``threshold_source``), ``selected``,
``shadow_val_auc``, ``n_shadow_examples``, ``n_bootstrap``, ``roc``, ``eps_lower_bound`` (+ ``eps_bound``),
``per_class``, ``score_key`` (the row's array in the per-example scores), ``reference`` / ``n_reference_models`` /
``n_population`` / ``population`` (baselines), ``original`` (SR/MR). docs/attacks.md defines each.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compleak import samia as sam
from compleak import signals as sig
from compleak.attacks import FusionAttack, LearnedAttack, ThresholdAttack
from compleak.baselines import RMIA, LiRA, LiRAOffline, RMIAOffline, calibrate_rmia_a
from compleak.metrics import best_threshold, evaluate
from rundir import ContractError, OutputBatch, ResultRow, Splits
from rundir.vocabulary import BASELINES, FAMILIES

#: Learned attacks train on the first reference models' own examples, adding models until this many examples.
LEARNED_MAX_EXAMPLES = 20_000

Progress = Callable[[str], None]


@dataclass(frozen=True)
class AttackConfig:
    """What to fit and how to report it (see :func:`fit_attacks`)."""

    families: tuple[str, ...] = FAMILIES
    baselines: tuple[str, ...] = BASELINES
    fprs: tuple[float, ...] = (0.001, 0.01)
    bootstrap: int = 200
    seed: int = 0
    original: str = "original"
    nr_variants: tuple[str, ...] | None = None
    learned_max_examples: int = LEARNED_MAX_EXAMPLES
    rmia_gamma: float = 1.0


# --------------------------------------------------------------------------- reading batches


def _name(batch: Any, fallback: str) -> str:
    return getattr(batch, "source", None) or fallback


def _take(batch: OutputBatch, ids: np.ndarray, src: str) -> np.ndarray:
    """Rows of ``batch`` for ``ids`` in that order, float32 [len(ids), C] (vectorised ``OutputBatch.rows``)."""
    order = np.argsort(batch.index, kind="stable")
    sorted_idx = batch.index[order]
    pos = np.minimum(np.searchsorted(sorted_idx, ids), max(len(order) - 1, 0))
    found = sorted_idx[pos] == ids if len(order) else np.zeros(len(ids), bool)
    if not found.all():
        missing = [int(i) for i in ids[~found][:3]]
        raise ContractError(
            f"{src}: {int((~found).sum())} required example ids missing (e.g. {missing}); re-run collect"
        )
    return batch.values[order[pos]]


def _covers(batch: Any, ids: np.ndarray) -> bool:
    return bool(np.all(np.isin(ids, batch.index)))


class _Classes:
    """Checks every batch once and that all share one class count matching the labels."""

    def __init__(self, splits: Splits) -> None:
        self.labels = splits.labels.astype(np.int64)
        self.n: int | None = None
        self.first = ""

    def check(self, batch: OutputBatch, what: str) -> str:
        src = _name(batch, what)
        batch.validate(src)
        if batch.index.size and (batch.index.min() < 0 or batch.index.max() >= len(self.labels)):
            raise ContractError(f"{src}: index has example ids outside [0, {len(self.labels)}) of the splits' labels; "
                                "outputs and splits.npz do not belong together")
        c = batch.values.shape[1]
        if self.n is None:
            self.n, self.first = c, src
            if self.labels.size and self.labels.max() >= c:
                raise ContractError(
                    f"{src}: {c} output classes but splits labels go up to {int(self.labels.max())}; "
                    "outputs and splits.npz do not belong together"
                )
        elif c != self.n:
            raise ContractError(f"{src}: {c} classes but {self.first} has {self.n}; all variants must share classes")
        return src

    def log_p(self, batch: OutputBatch, ids: np.ndarray, what: str) -> np.ndarray:
        src = self.check(batch, what)
        return sig.log_posterior(_take(batch, ids, src), batch.kind, src)


@dataclass
class _Side:
    """Signals of one side (shadow pooled over the learned references, or target) for one variant."""

    log_p: np.ndarray  # float64 [n, C]
    labels: np.ndarray  # int64 [n]
    y: np.ndarray  # int64 [n], 1 member (shadow side: the reference's own membership)
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    owner: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # reference index per row

    @property
    def p(self) -> np.ndarray:
        return np.exp(self.log_p)

    def p_y(self) -> np.ndarray:
        return np.exp(self.log_p[np.arange(len(self.labels)), self.labels])


def _learned_refs(splits: Splits, max_examples: int) -> list[int]:
    refs, total = [], 0
    for k in range(splits.n_shadows):
        refs.append(k)
        total += len(splits.shadow_in[k]) + len(splits.shadow_out[k])
        if total >= max_examples:
            break
    return refs


def _ref_masks(splits: Splits, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(IN, OUT) bool [K, len(ids)]: reference k trained on the id / never saw it (not in its hold-out either)."""
    ids = np.asarray(ids, np.int64)
    ins = np.array([np.isin(ids, a) for a in splits.shadow_in], dtype=bool).reshape(splits.n_shadows, len(ids))
    held = np.zeros_like(ins)
    for k, v in enumerate(getattr(splits, "shadow_val", []) or []):
        held[k] = np.isin(ids, np.asarray(v, np.int64))
    return ins, ~ins & ~held


def _population(splits: Splits) -> np.ndarray:
    pop = getattr(splits, "population", None)
    return np.zeros(0, np.int64) if pop is None else np.asarray(pop, dtype=np.int64)


def _key(family: str, method: str, variant: str | list[str]) -> str:
    v = ",".join(variant) if isinstance(variant, list) else variant
    return f"{family}|{method}|{v}"


# --------------------------------------------------------------------------- fitted pieces


@dataclass
class _Fit:
    """One fitted attack: what it is and how to score a target (``scorer(target) -> (scores, decisions|None)``)."""

    family: str
    method: str
    variant: str | list[str]
    scorer: Callable[["_Target"], tuple[np.ndarray, np.ndarray | None]]
    threshold: float
    extra: dict[str, Any]


class _Target:
    """Target-side signals of one scoring call, computed lazily per variant."""

    def __init__(self, fitted: "FittedAttacks", outputs: Mapping[str, OutputBatch],
                 perturbed: Mapping[str, Any] | None) -> None:
        self.f = fitted
        self.outputs = outputs
        self.perturbed = perturbed or {}
        self._side: dict[str, _Side] = {}
        self._pop: dict[str, np.ndarray] = {}

    def side(self, v: str) -> _Side:
        if v not in self._side:
            if v not in self.outputs:
                raise ContractError(f"variant '{v}': no target outputs given, but the attacks were fitted for it")
            lp = self.f._classes.log_p(self.outputs[v], self.f.t_ids, f"target outputs of '{v}'")
            self._side[v] = _Side(lp, self.f.t_labels, self.f.t_y)
        return self._side[v]

    def pop_p_y(self, v: str) -> np.ndarray:
        """The target's true-class probability on the population ids [m]."""
        if v not in self._pop:
            b = self.outputs[v]
            src = _name(b, f"target outputs of '{v}'")
            if not _covers(b, self.f.pop_ids):
                raise ContractError(f"{src}: the target was not queried on the population ids of splits.npz "
                                    "(RMIA's z set); re-run collect")
            lp = self.f._classes.log_p(b, self.f.pop_ids, src)
            self._pop[v] = np.exp(lp[np.arange(len(self.f.pop_ids)), self.f.pop_labels])
        return self._pop[v]


class FittedAttacks:
    """Attacks fitted on the reference side of one variant group; :meth:`score` applies them to target outputs.

    ``planned``: (family, method, variant) of every row :meth:`score` produces, in order. ``notes``: attacks that
    were skipped and why (e.g. SAMIA without perturbed outputs)."""

    def __init__(self, splits: Splits, config: AttackConfig, classes: _Classes) -> None:
        self.splits = splits
        self.config = config
        self._classes = classes
        self.t_ids = splits.candidates if hasattr(splits, "candidates") else np.concatenate(
            [splits.target_in, splits.target_out]).astype(np.int64)
        self.t_labels = splits.labels.astype(np.int64)[self.t_ids]
        # target membership: used by the metrics only (never by a fit)
        self.t_y = np.r_[np.ones(len(splits.target_in)), np.zeros(len(splits.target_out))].astype(np.int64)
        self.pop_ids = np.zeros(0, np.int64)
        self.pop_labels = np.zeros(0, np.int64)
        self.fits: list[_Fit] = []
        self.notes: list[str] = []
        self.variants: list[str] = []

    @property
    def planned(self) -> list[tuple[str, str, str | list[str]]]:
        return [(f.family, f.method, f.variant) for f in self.fits]

    @property
    def n_rows(self) -> int:
        return len(self.fits)

    def score(
        self,
        target_outputs: Mapping[str, OutputBatch],
        target_perturbed: Mapping[str, Any] | None = None,
        on_row: Callable[[ResultRow], None] | None = None,
    ) -> tuple[list[ResultRow], dict[str, np.ndarray]]:
        """Score the target's outputs (variant -> batch covering ``target_in ∪ target_out``, and the population
        when RMIA uses it). Returns (rows, per-example scores keyed by each row's ``score_key``, float64 [n] in the
        order of ``splits.candidates``). ``target_perturbed``: variant -> :class:`compleak.samia.PerturbedBatch`."""
        check_target(self.splits, target_outputs, self.variants, self._classes)
        tgt = _Target(self, target_outputs, target_perturbed)
        cfg = self.config
        rows: list[ResultRow] = []
        scores: dict[str, np.ndarray] = {}
        for f in self.fits:
            s, dec = f.scorer(tgt)
            m = evaluate(self.t_y, s, f.threshold, cfg.fprs, cfg.bootstrap, cfg.seed, decisions=dec,
                         labels=self.t_labels)
            key = _key(f.family, f.method, f.variant)
            row = ResultRow(
                family=f.family, method=f.method, variant=f.variant, auc=m.auc,  # type: ignore[arg-type]
                balanced_accuracy=m.balanced_accuracy, tpr_at_fpr=m.tpr_at_fpr, auc_ci=list(m.auc_ci),
                n_members=m.n_members, n_nonmembers=m.n_nonmembers, fpr_resolvable=m.fpr_resolvable,
                threshold=m.threshold, n_bootstrap=m.n_bootstrap, roc=m.roc,
                eps_lower_bound=m.eps_lower_bound["eps"], eps_bound=m.eps_lower_bound, per_class=m.per_class,
                score_key=key, **f.extra,
            )
            rows.append(row)
            scores[key] = np.asarray(s, np.float64)
            if on_row is not None:
                on_row(row)
        return rows, scores


# --------------------------------------------------------------------------- checks


def check_target(splits: Splits, target_outputs: Mapping[str, OutputBatch], variants: Sequence[str] | None = None,
                 classes: _Classes | None = None) -> None:
    """Validate target outputs: every batch valid, covering the candidates, one class count; names the file."""
    classes = classes or _Classes(splits)
    t_ids = np.concatenate([splits.target_in, splits.target_out]).astype(np.int64)
    for v in variants if variants is not None else list(target_outputs):
        if v not in target_outputs:
            raise ContractError(f"variant '{v}': no target outputs given, but the attacks were fitted for it")
        b = target_outputs[v]
        src = classes.check(b, f"target outputs of '{v}'")
        _take(b, t_ids, src)


def check_inputs(
    splits: Splits, target_outputs: Mapping[str, OutputBatch], shadow_outputs: Mapping[str, Sequence[OutputBatch]]
) -> None:
    """Validate inputs as :func:`run_attacks` would (splits, ids, labels, class counts, NaN) without attacking;
    raise :class:`~rundir.ContractError` naming the offending file. Lets a caller fail fast before
    hours of attacks on other groups."""
    splits.validate("splits passed to run_attacks")
    classes = _Classes(splits)
    check_target(splits, target_outputs, None, classes)
    _check_shadows(splits, shadow_outputs, list(target_outputs), classes)


def _check_shadows(splits: Splits, shadow: Mapping[str, Sequence[OutputBatch]], variants: Sequence[str],
                   classes: _Classes) -> None:
    if splits.n_shadows == 0:
        raise ContractError("splits: no shadow split; the attacks need at least one shadow model")
    for v in variants:
        if v not in shadow or not shadow[v]:
            raise ContractError(f"variant '{v}': no shadow-model outputs given; collect the shadow artifacts first")
        sb = list(shadow[v])
        if len(sb) != splits.n_shadows:
            raise ContractError(
                f"variant '{v}': outputs for {len(sb)} shadow models but splits have {splits.n_shadows}; "
                "collect every shadow artifact"
            )
        for k, b in enumerate(sb):
            src = classes.check(b, f"shadow {k} outputs of '{v}'")
            _take(b, np.concatenate([splits.shadow_in[k], splits.shadow_out[k]]).astype(np.int64), src)


# --------------------------------------------------------------------------- fitting


def fit_attacks(
    splits: Splits,
    shadow_outputs: Mapping[str, Sequence[OutputBatch]],
    config: AttackConfig | None = None,
    shadow_perturbed: Mapping[str, Sequence[Any]] | None = None,
    progress: Progress | None = None,
) -> FittedAttacks:
    """Fit every configured attack on the reference side of one variant group.

    Args:
        splits: membership splits. Reference (shadow) model ``k`` trained on exactly ``shadow_in[k]`` and not on
            ``shadow_out[k]``; in the online threat model these overlap the candidates ``target_in ∪ target_out``.
            ``population`` (optional): attacker-held ids, RMIA's z set.
        shadow_outputs: variant label -> one batch per reference model ``k``, covering its own ``shadow_in[k] ∪
            shadow_out[k]``; when they also cover the candidates (and the population), LiRA / RMIA run per
            example (online when the candidates are IN for some references), otherwise per class.
        config: families, baselines, FPRs, bootstrap, seed, the ``original`` label, ``nr_variants``.
        shadow_perturbed: variant -> per reference model a :class:`compleak.samia.PerturbedBatch` or None (SAMIA
            trains on the learned references that have one).
        progress: called with a short description before each fit.
    """
    cfg = config or AttackConfig()
    bad = [f for f in cfg.families if f not in FAMILIES] + [b for b in cfg.baselines if b not in BASELINES]
    if bad:
        raise ValueError(f"unknown attack families/baselines {bad}; allowed: {FAMILIES + BASELINES}")
    splits.validate("splits passed to run_attacks")
    classes = _Classes(splits)
    variants = list(shadow_outputs)
    _check_shadows(splits, shadow_outputs, variants, classes)
    note = progress or (lambda _msg: None)
    fa = FittedAttacks(splits, cfg, classes)
    fa.variants = variants
    C = int(classes.n or 0)
    labels = splits.labels.astype(np.int64)
    K = splits.n_shadows
    refs = _learned_refs(splits, cfg.learned_max_examples)
    original = cfg.original
    compressed = [v for v in variants if v != original]
    has_original = original in shadow_outputs
    seed = cfg.seed

    pop = _population(splits)
    fa.pop_ids, fa.pop_labels = pop, labels[pop]

    shadow_sides: dict[str, _Side] = {}

    def shadow_side(v: str) -> _Side:
        if v not in shadow_sides:
            lps, ids, ys, owner = [], [], [], []
            for k in refs:
                kid = np.concatenate([splits.shadow_in[k], splits.shadow_out[k]]).astype(np.int64)
                lps.append(classes.log_p(shadow_outputs[v][k], kid, f"shadow {k} outputs of '{v}'"))
                ids.append(kid)
                ys.append(np.r_[np.ones(len(splits.shadow_in[k])), np.zeros(len(splits.shadow_out[k]))])
                owner.append(np.full(len(kid), k))
            all_ids = np.concatenate(ids)
            shadow_sides[v] = _Side(np.concatenate(lps), labels[all_ids], np.concatenate(ys).astype(np.int64),
                                    all_ids, np.concatenate(owner).astype(np.int64))
        return shadow_sides[v]

    def add(family: str, method: str, variant: str | list[str], scorer: Callable, threshold: float,
            **extra: Any) -> None:
        fa.fits.append(_Fit(family, method, variant, scorer, float(threshold), extra))

    def learned(family: str, method: str, variant: str | list[str], model: str, Xs: np.ndarray, ys: np.ndarray,
                target_X: Callable[[_Target], np.ndarray], fit_row: bool = True, **extra: Any) -> LearnedAttack:
        note(f"{family} {method} {variant}")
        est = LearnedAttack(model, seed=seed).fit(Xs, ys)
        if fit_row:
            add(family, method, variant, lambda t: (est.score(target_X(t)), None), est.threshold_,
                selected=est.selected_, shadow_val_auc=est.val_auc_, n_shadow_examples=len(ys),
                threshold_source="shadow validation", **extra)
        return est

    # ---------------------------------------------------------------- NR, SAMIA and baselines
    nr_variants = variants if cfg.nr_variants is None else [x for x in variants if x in cfg.nr_variants]
    for v in nr_variants:
        S = shadow_side(v)
        if "NR" in cfg.families:
            Ps = S.p
            for feat, build in (
                ("posterior", lambda p, lab: sig.raw_features(p)),
                ("posterior-label", lambda p, lab: sig.raw_features(p, lab)),
                ("sorted-posterior", lambda p, lab: sig.sorted_features(p)),
                ("sorted-posterior-label", lambda p, lab: sig.sorted_features(p, labels=lab)),
            ):
                Xs = build(Ps, S.labels)
                for model in ("lr", "rf"):
                    learned("NR", f"{feat}-{model}", v, model, Xs, S.y,
                            lambda t, v=v, build=build: build(t.side(v).p, t.side(v).labels))
            for name, fn in (("entropy", lambda s: sig.entropy(s.log_p)),
                             ("mentropy", lambda s: sig.modified_entropy(s.log_p, s.labels))):
                note(f"NR {name}-threshold {v}")
                th = ThresholdAttack(C).fit(fn(S), S.labels, S.y)
                add("NR", f"{name}-threshold", v,
                    lambda t, v=v, th=th, fn=fn: (th.score(fn(t.side(v))), th.decide(fn(t.side(v)), t.side(v).labels)),
                    th.threshold_, selected=th.selected_, n_shadow_examples=len(S.y),
                    threshold_source="shadow, per class")
            _fit_samia(fa, v, S, splits, refs, shadow_perturbed, seed, note, add)
        if cfg.baselines:
            _fit_baselines(fa, v, S, splits, shadow_outputs[v], classes, cfg, C, K, note, add)

    # ---------------------------------------------------------------- SR
    sr2: dict[str, tuple[LearnedAttack, np.ndarray, Callable]] = {}  # variant -> (best SR2 model, Xs, target X)
    need_sr2 = has_original and "MR" in cfg.families and len(compressed) >= 2
    if has_original and ("SR" in cfg.families or need_sr2):
        O_s = shadow_side(original)
        for v in compressed:
            S = shadow_side(v)
            for feat, with_label in (("sr1", False), ("sr2", True)):
                if "SR" not in cfg.families and feat == "sr1":
                    continue
                Xs = sig.sorted_features(O_s.p, [S.p], S.labels if with_label else None)

                def tx(t: _Target, v: str = v, with_label: bool = with_label) -> np.ndarray:
                    T = t.side(v)
                    return sig.sorted_features(t.side(original).p, [T.p], T.labels if with_label else None)

                for model in ("lr", "rf", "mlp"):
                    if "SR" in cfg.families:
                        est = learned("SR", f"{feat}-{model}", v, model, Xs, S.y, tx, original=original)
                    else:
                        est = learned("SR", f"{feat}-{model}", v, model, Xs, S.y, tx, fit_row=False)
                    if feat == "sr2" and (v not in sr2 or est.val_auc_ > sr2[v][0].val_auc_):
                        sr2[v] = (est, Xs, tx)

    # ---------------------------------------------------------------- MR
    if "MR" in cfg.families and len(compressed) >= 2:
        y_s = shadow_side(compressed[0]).y
        loss_s = np.stack([sig.loss(shadow_side(v).log_p, shadow_side(v).labels) for v in compressed], axis=1)

        def loss_t(t: _Target) -> np.ndarray:
            return np.stack([sig.loss(t.side(v).log_p, t.side(v).labels) for v in compressed], axis=1)

        if has_original:
            note(f"MR fusion over {len(compressed)} variants")
            A_s = np.stack([sr2[v][0].out_of_sample_scores(sr2[v][1], y_s) for v in compressed], axis=1)
            fu = FusionAttack(seed=seed).fit(A_s, loss_s, y_s)
            add("MR", "mr-fusion", list(compressed),
                lambda t, fu=fu: (fu.score(np.stack([sr2[v][0].score(sr2[v][2](t)) for v in compressed], axis=1),
                                           loss_t(t)), None),
                fu.threshold_,
                selected={**fu.selected_,
                          "sr2_models": {v: {"model": sr2[v][0].model, **sr2[v][0].selected_} for v in compressed}},
                shadow_val_auc=fu.val_auc_, n_shadow_examples=len(y_s), original=original,
                threshold_source="shadow validation")
        note(f"MR without original over {len(compressed)} variants")
        A_s = np.concatenate([sig.sorted_features(shadow_side(v).p) for v in compressed], axis=1)
        fu2 = FusionAttack(seed=seed).fit(A_s, loss_s, y_s)
        add("MR", "mr-no-original", list(compressed),
            lambda t, fu=fu2: (fu.score(np.concatenate([sig.sorted_features(t.side(v).p) for v in compressed], axis=1),
                                        loss_t(t)), None),
            fu2.threshold_, selected=fu2.selected_, shadow_val_auc=fu2.val_auc_, n_shadow_examples=len(y_s),
            original=None, threshold_source="shadow validation")
    return fa


def _fit_samia(fa: FittedAttacks, v: str, S: _Side, splits: Splits, refs: list[int],
               shadow_perturbed: Mapping[str, Sequence[Any]] | None, seed: int, note: Progress,
               add: Callable) -> None:
    """SAMIA (NR row ``samia``), trained on the learned references that have perturbed outputs (the collect stage
    perturbs reference 0 only); a note when none has."""
    pert = list((shadow_perturbed or {}).get(v) or [])
    pert += [None] * (splits.n_shadows - len(pert))
    if not any(pert[k] is not None for k in refs):
        fa.notes.append(f"samia {v}: no perturbed outputs of the reference models (collect with perturbations)")
        return
    keep = np.zeros(len(S.y), dtype=bool)
    sens = np.zeros(S.log_p.shape)
    P = S.p
    eps = None
    for k in refs:
        rows = np.nonzero(S.owner == k)[0]
        pb = pert[k]
        if pb is None:
            continue
        ok = np.isin(S.ids[rows], pb.index)
        rows = rows[ok]
        if rows.size:
            src = _name(pb, f"perturbed shadow {k} outputs of '{v}'")
            if pb.values.shape[2] != S.log_p.shape[1]:
                raise ContractError(f"{src}: {pb.values.shape[2]} classes but the outputs have {S.log_p.shape[1]}")
            sens[rows] = sam.sensitivity(P[rows], pb.rows(S.ids[rows]), pb.kind, pb.epsilon, src)
            keep[rows] = True
            eps = pb.epsilon
    ys = S.y[keep]
    if not (np.any(ys == 1) and np.any(ys == 0)):
        fa.notes.append(f"samia {v}: perturbed reference outputs cover no members or no non-members")
        return
    Xs = sam.features(P[keep], sens[keep], S.labels[keep])
    note(f"NR samia {v}")
    est = LearnedAttack("mlp", seed=seed).fit(Xs, ys)

    def scorer(t: _Target, v: str = v) -> tuple[np.ndarray, None]:
        pb = t.perturbed.get(v)
        T = t.side(v)
        if pb is None or not pb.covers(fa.t_ids):
            raise ContractError(
                f"{_name(pb, 'target perturbed outputs of ' + repr(v)) if pb is not None else repr(v)}: SAMIA "
                "needs the target's perturbed outputs on every candidate; re-run collect with perturbations"
            )
        s = sam.sensitivity(T.p, pb.rows(fa.t_ids), pb.kind, pb.epsilon, _name(pb, v))
        return est.score(sam.features(T.p, s, T.labels)), None

    add("NR", "samia", v, scorer, est.threshold_, selected={**est.selected_, "epsilon": eps},
        shadow_val_auc=est.val_auc_, n_shadow_examples=int(keep.sum()), threshold_source="shadow validation",
        needs_perturbed=True)


def _ref_signals(batches: Sequence[OutputBatch], ids: np.ndarray, labels: np.ndarray, classes: _Classes,
                 v: str) -> tuple[np.ndarray, np.ndarray]:
    """(scaled logit, true-class probability) float64 [K, len(ids)] of every reference, one reference at a time."""
    phi = np.empty((len(batches), len(ids)))
    py = np.empty((len(batches), len(ids)))
    rows = np.arange(len(ids))
    for k, b in enumerate(batches):
        lp = classes.log_p(b, ids, f"shadow {k} outputs of '{v}'")
        phi[k] = sig.scaled_logit(lp, labels)
        py[k] = np.exp(lp[rows, labels])
    return phi, py


def _fit_baselines(fa: FittedAttacks, v: str, S: _Side, splits: Splits, batches: Sequence[OutputBatch],
                   classes: _Classes, cfg: AttackConfig, C: int, K: int, note: Progress, add: Callable) -> None:
    t_ids, t_lab = fa.t_ids, fa.t_labels
    per_example = all(_covers(b, t_ids) for b in batches)
    # per-class statistics of the learned references' own examples: the 1-reference spread and the fallback threshold
    s_phi = sig.scaled_logit(S.log_p, S.labels)
    lira_pc = LiRAOffline(C).fit(s_phi, S.labels, S.y)
    common = {"n_reference_models": K}
    if not per_example:
        if "lira" in cfg.baselines:
            add("baseline", "lira-offline-per-class", v,
                lambda t, v=v: (lira_pc.score(sig.scaled_logit(t.side(v).log_p, t.side(v).labels), t.side(v).labels),
                                None),
                lira_pc.threshold_, reference="per-class", n_shadow_examples=len(S.y),
                threshold_source="shadow, per class", **common)
        if "rmia" in cfg.baselines:
            rm = RMIAOffline(C).fit(S.p_y(), S.labels, S.y)
            add("baseline", "rmia-offline-per-class", v,
                lambda t, v=v, rm=rm: (rm.score(t.side(v).p_y(), t.side(v).labels, t.side(v).p_y(),
                                                t.side(v).labels), None),
                rm.threshold_, reference="per-class", n_population=len(t_ids), population="candidates",
                n_shadow_examples=len(S.y), threshold_source="shadow, per class", **common)
        fa.notes.append(f"baselines {v}: reference models were not queried on the candidates; per-class fallbacks")
        return

    note(f"baseline references {v}")
    phi_x, py_x = _ref_signals(batches, t_ids, t_lab, classes, v)
    in_x, out_x = _ref_masks(splits, t_ids)
    pop = fa.pop_ids
    use_pop = len(pop) > 0
    if use_pop:
        missing = [b for b in batches if not _covers(b, pop)]
        if missing:
            raise ContractError(f"{_name(missing[0], v)}: the reference model was not queried on the population ids "
                                "of splits.npz (RMIA's z set); re-run collect")
        _, py_z = _ref_signals(batches, pop, fa.pop_labels, classes, v)
        in_z, out_z = _ref_masks(splits, pop)
    else:
        py_z, in_z, out_z = py_x, in_x, out_x
    online = K >= 2 and bool(np.any(in_x.any(axis=0) & out_x.any(axis=0)))
    # the reference-side threshold: reference 0 plays the target, the others are its references
    pseudo = K >= 2 and bool(np.any(in_x[0])) and bool(np.any(out_x[0]))
    y0, keep0, others = in_x[0], in_x[0] | out_x[0], list(range(1, K))
    suffix = "-1ref" if K == 1 else ""
    zsuffix = "" if use_pop else "-cand-z"
    modes = (["online"] if online else []) + ["offline"]

    def threshold_from(scores0: np.ndarray) -> float:
        return best_threshold(y0[keep0].astype(np.int64), scores0[keep0])

    if "lira" in cfg.baselines:
        for mode in modes:
            note(f"baseline lira-{mode} {v}")
            is_on = mode == "online"
            att = LiRA(online=is_on).fit(phi_x, in_x, out_x, fallback_sd=lira_pc.sigma_)
            if pseudo:
                sub = LiRA(online=is_on, fixed_variance=att.variance_ == "global").fit(
                    phi_x[others], in_x[others], out_x[others], fallback_sd=lira_pc.sigma_)
                thr, src = threshold_from(sub.score(phi_x[0])), "reference 0 as pseudo-target"
            else:
                thr, src = lira_pc.threshold_ if not is_on else 0.0, (
                    "shadow, per class" if not is_on else "likelihood ratio 0")
            add("baseline", f"lira-{mode}{suffix if not is_on else ''}", v,
                lambda t, v=v, att=att: (att.score(sig.scaled_logit(t.side(v).log_p, t.side(v).labels)), None),
                thr, reference="per-example", variance=att.variance_, threshold_source=src,
                n_shadow_examples=len(S.y), **common)
    if "rmia" in cfg.baselines:
        for mode in modes:
            note(f"baseline rmia-{mode} {v}")
            is_on = mode == "online"
            a, a_src = 0.5, "default (cannot calibrate: no reference has both IN and OUT candidates)"
            if not is_on:
                cal = calibrate_rmia_a(py_x, in_x, out_x, py_z, in_z, out_z, cfg.rmia_gamma)
                if cal is not None:
                    a, a_src = cal[0], f"reference 0 as pseudo-target (AUC {cal[1]:.4f})"
            att2 = RMIA(online=is_on, a=a, gamma=cfg.rmia_gamma).fit(py_x, in_x, out_x, py_z, in_z, out_z)
            if pseudo:
                sub2 = RMIA(online=is_on, a=a, gamma=cfg.rmia_gamma).fit(
                    py_x[others], in_x[others], out_x[others], py_z[others], in_z[others], out_z[others])
                thr, src = threshold_from(sub2.score(py_x[0], py_z[0])), "reference 0 as pseudo-target"
            else:
                rm = RMIAOffline(C, a=a, gamma=cfg.rmia_gamma).fit(S.p_y(), S.labels, S.y)
                thr, src = rm.threshold_, "shadow, per class"

            def scorer(t: _Target, v: str = v, att2: RMIA = att2) -> tuple[np.ndarray, None]:
                T = t.side(v)
                pz = t.pop_p_y(v) if use_pop else T.p_y()
                return att2.score(T.p_y(), pz), None

            extra: dict[str, Any] = {"gamma": cfg.rmia_gamma}
            if not is_on:
                extra.update(a=a, a_source=a_src)
            add("baseline", f"rmia-{mode}{suffix if not is_on else ''}{zsuffix}", v, scorer, thr,
                reference="per-example", n_population=int(len(pop) if use_pop else len(t_ids)),
                population="splits.population" if use_pop else "candidates", threshold_source=src,
                n_shadow_examples=len(S.y), **extra, **common)


# --------------------------------------------------------------------------- one call


def run_attacks(
    splits: Splits,
    target_outputs: Mapping[str, OutputBatch],
    shadow_outputs: Mapping[str, Sequence[OutputBatch]],
    families: Sequence[str] = FAMILIES,
    baselines: Sequence[str] = BASELINES,
    fprs: Sequence[float] = (0.001, 0.01),
    bootstrap: int = 200,
    seed: int = 0,
    original: str = "original",
    nr_variants: Sequence[str] | None = None,
    progress: Progress | None = None,
    shadow_perturbed: Mapping[str, Sequence[Any]] | None = None,
    target_perturbed: Mapping[str, Any] | None = None,
    return_scores: bool = False,
) -> Any:
    """Fit on ``shadow_outputs`` (:func:`fit_attacks`) and score ``target_outputs`` (:meth:`FittedAttacks.score`).

    ``target_outputs`` / ``shadow_outputs``: variant label -> the target's batch / one batch per reference model.
    Returns the rows (one per attack, deterministic order), or (rows, scores) with ``return_scores``."""
    check_inputs(splits, target_outputs, shadow_outputs)
    shadow = {v: shadow_outputs[v] for v in target_outputs}
    cfg = AttackConfig(tuple(families), tuple(baselines), tuple(fprs), bootstrap, seed, original,
                       None if nr_variants is None else tuple(nr_variants))
    fitted = fit_attacks(splits, shadow, cfg, shadow_perturbed, progress)
    rows, scores = fitted.score(target_outputs, target_perturbed)
    return (rows, scores) if return_scores else rows
