"""Synthetic model outputs with known membership truth, for tests and benchmarks of the attacks.

A simulated model's logits for example ``i`` with label ``y_i`` are ``N(0, 1)`` noise per class, plus on the true
class a margin ``base + d_i + shift + eps``: ``d_i ~ N(0, hardness)`` is the example's intrinsic difficulty (the
same for every model, so it makes a single model's confidence an ambiguous signal), ``shift`` is the variant's
``member_shift`` when the example is a member of that model and ``nonmember_shift`` otherwise, and
``eps ~ N(0, noise)`` is independent per model, variant and example. The per-class noise belongs to the model
*lineage* (the target, or shadow model k): all variants compressed from one trained model share it, as a
compressed model's outputs stay close to its original's.

:func:`make_online_splits` builds the online threat model: K reference models, each trained on a random half of
the attacker's pool (which contains the target candidates) plus an attacker population (RMIA's z set).
:func:`synthetic_perturbed` simulates SAMIA's perturbed queries: the logits of ``x + eps * u`` are the clean logits
plus ``eps * sensitivity * N(0, 1)`` per class, the sensitivity being the variant's ``member_sensitivity`` for
the model's members and ``nonmember_sensitivity`` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import softmax

from compleak.samia import PerturbedBatch
from rundir import OutputBatch, Splits


@dataclass(frozen=True)
class VariantSpec:
    """How one simulated variant treats members versus non-members (see module doc)."""

    member_shift: float = 0.0
    nonmember_shift: float = 0.0
    noise: float = 0.3
    member_sensitivity: float = 1.0
    nonmember_sensitivity: float = 1.0


def make_splits(
    n_target: tuple[int, int] = (500, 500),
    n_shadow: tuple[int, int] = (500, 500),
    n_shadows: int = 1,
    n_classes: int = 10,
    seed: int = 0,
    n_population: int = 0,
) -> Splits:
    """Disjoint splits (the offline threat model): target (in, out), ``n_shadows`` shadow models with disjoint
    (in, out) each, and ``n_population`` further ids as the attacker's population (none when 0)."""
    rng = np.random.default_rng(seed)
    n = sum(n_target) + n_shadows * sum(n_shadow) + n_population
    ids = rng.permutation(n).astype(np.int64)
    labels = rng.integers(0, n_classes, size=n).astype(np.int64)
    a, b = n_target
    t_in, t_out, pos = ids[:a], ids[a : a + b], a + b
    s_in, s_out = [], []
    for _ in range(n_shadows):
        s_in.append(ids[pos : pos + n_shadow[0]])
        s_out.append(ids[pos + n_shadow[0] : pos + sum(n_shadow)])
        pos += sum(n_shadow)
    population = ids[pos : pos + n_population] if n_population else None
    return Splits(labels, t_in, t_out, s_in, s_out, population=population)


def make_online_splits(
    n_target: tuple[int, int] = (500, 500),
    n_extra: int = 0,
    n_references: int = 8,
    n_population: int = 500,
    n_classes: int = 10,
    seed: int = 0,
) -> Splits:
    """The online threat model: target (in, out); the attacker's pool = the candidates plus ``n_extra`` other ids;
    reference k trained on a random half of the pool (``shadow_in[k]``), the other half its ``shadow_out[k]``;
    ``n_population`` further ids as the population. ``online=True``."""
    rng = np.random.default_rng(seed)
    n = sum(n_target) + n_extra + n_population
    ids = rng.permutation(n).astype(np.int64)
    labels = rng.integers(0, n_classes, size=n).astype(np.int64)
    a, b = n_target
    t_in, t_out = ids[:a], ids[a : a + b]
    pool = ids[: a + b + n_extra]
    population = ids[a + b + n_extra :]
    s_in, s_out = [], []
    for _ in range(n_references):
        perm = rng.permutation(len(pool))
        half = len(pool) // 2
        s_in.append(np.sort(pool[perm[:half]]))
        s_out.append(np.sort(pool[perm[half:]]))
    return Splits(labels, t_in, t_out, s_in, s_out, population=population, online=True)


def _unique_keep_order(ids: np.ndarray) -> np.ndarray:
    _, first = np.unique(ids, return_index=True)
    return ids[np.sort(first)].astype(np.int64)


def simulate(
    splits: Splits,
    ids: np.ndarray,
    members: np.ndarray,
    spec: VariantSpec,
    n_classes: int,
    model_seed: int,
    lineage_seed: int,
    base: float = 2.0,
    hardness: float = 1.5,
    kind: str = "logits",
) -> OutputBatch:
    """Outputs of one simulated model on example ``ids``; ``members`` are the ids it was trained on.

    ``lineage_seed`` fixes the per-class noise (shared by the variants of one trained model, indexed by example
    id), ``model_seed`` the variant's own noise."""
    n = len(splits.labels)
    d = np.random.default_rng(12345).normal(0.0, hardness, size=n)[ids]
    z = np.random.default_rng(lineage_seed).normal(0.0, 1.0, size=(n, n_classes))[ids]
    rng = np.random.default_rng(model_seed)
    is_in = np.isin(ids, members)
    shift = np.where(is_in, spec.member_shift, spec.nonmember_shift)
    z[np.arange(len(ids)), splits.labels[ids]] += base + d + shift + rng.normal(0.0, spec.noise, size=len(ids))
    values = softmax(z, axis=1) if kind == "probs" else z
    return OutputBatch(ids.astype(np.int64), values.astype(np.float32), kind)  # type: ignore[arg-type]


def synthetic_outputs(
    splits: Splits,
    variants: dict[str, VariantSpec],
    n_classes: int = 10,
    seed: int = 0,
    reference_on_target: bool = False,
    kind: str = "logits",
) -> tuple[dict[str, OutputBatch], dict[str, list[OutputBatch]]]:
    """(target outputs, shadow outputs per shadow model) for every variant of a simulated model family.

    With ``reference_on_target`` (implied by ``splits.online``) each shadow model is also queried on the target ids
    and the population (per-example RMIA/LiRA); the target is queried on the candidates and the population. The
    variants of one model share its lineage noise; everything else is independent.
    """
    target: dict[str, OutputBatch] = {}
    shadow: dict[str, list[OutputBatch]] = {}
    pop = np.zeros(0, np.int64) if splits.population is None else np.asarray(splits.population, np.int64)
    t_ids = np.concatenate([splits.target_in, splits.target_out])
    reference_on_target = reference_on_target or bool(splits.online)
    for j, (v, spec) in enumerate(variants.items()):
        target[v] = simulate(
            splits, np.concatenate([t_ids, pop]), splits.target_in, spec, n_classes, seed * 1000 + 10 * j,
            seed * 1000 + 999, kind=kind
        )
        shadow[v] = []
        for k in range(splits.n_shadows):
            ids = np.concatenate([splits.shadow_in[k], splits.shadow_out[k]])
            if reference_on_target:
                ids = _unique_keep_order(np.concatenate([ids, t_ids, pop]))
            b = simulate(
                splits, ids, splits.shadow_in[k], spec, n_classes, seed * 1000 + 10 * j + k + 1, seed * 1000 + 990 + k,
                kind=kind,
            )
            shadow[v].append(b)
    return target, shadow


def _perturb(splits: Splits, batch: OutputBatch, members: np.ndarray, spec: VariantSpec, n_perturb: int,
             epsilon: float, seed: int) -> PerturbedBatch:
    rng = np.random.default_rng(seed)
    z = batch.values.astype(np.float64)
    sens = np.where(np.isin(batch.index, members), spec.member_sensitivity, spec.nonmember_sensitivity)
    noise = rng.normal(0.0, 1.0, size=(len(z), n_perturb, z.shape[1])) * (epsilon * sens)[:, None, None]
    return PerturbedBatch(batch.index.copy(), (z[:, None, :] + noise).astype(np.float32), "logits", float(epsilon))


def synthetic_perturbed(
    splits: Splits,
    variants: dict[str, VariantSpec],
    target: dict[str, OutputBatch],
    shadow: dict[str, list[OutputBatch]],
    n_perturb: int = 8,
    epsilon: float = 0.05,
    seed: int = 0,
) -> tuple[dict[str, PerturbedBatch], dict[str, list[PerturbedBatch]]]:
    """SAMIA's perturbed outputs (logits [M, P, C]) for the batches of :func:`synthetic_outputs` (see module doc)."""
    t_pert: dict[str, PerturbedBatch] = {}
    s_pert: dict[str, list[PerturbedBatch]] = {}
    for j, (v, spec) in enumerate(variants.items()):
        if target[v].kind != "logits":
            raise ValueError("synthetic_perturbed simulates logits outputs only")
        t_pert[v] = _perturb(splits, target[v], splits.target_in, spec, n_perturb, epsilon, seed * 7919 + j)
        s_pert[v] = [
            _perturb(splits, b, splits.shadow_in[k], spec, n_perturb, epsilon, seed * 7919 + 100 * (k + 1) + j)
            for k, b in enumerate(shadow[v])
        ]
    return t_pert, s_pert
