"""Synthetic model outputs with known membership truth, for tests and benchmarks of the attacks.

A simulated model's logits for example ``i`` with label ``y_i`` are ``N(0, 1)`` noise per class, plus on the true
class a margin ``base + d_i + shift + eps``: ``d_i ~ N(0, hardness)`` is the example's intrinsic difficulty (the
same for every model, so it makes a single model's confidence an ambiguous signal), ``shift`` is the variant's
``member_shift`` when the example is a member of that model and ``nonmember_shift`` otherwise, and
``eps ~ N(0, noise)`` is independent per model, variant and example. The per-class noise belongs to the model
*lineage* (the target, or shadow model k): all variants compressed from one trained model share it, as a
compressed model's outputs stay close to its original's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import softmax

from compleak.rundir import OutputBatch, Splits


@dataclass(frozen=True)
class VariantSpec:
    """How one simulated variant treats members versus non-members (see module doc)."""

    member_shift: float = 0.0
    nonmember_shift: float = 0.0
    noise: float = 0.3


def make_splits(
    n_target: tuple[int, int] = (500, 500),
    n_shadow: tuple[int, int] = (500, 500),
    n_shadows: int = 1,
    n_classes: int = 10,
    seed: int = 0,
) -> Splits:
    """Disjoint splits: target (in, out) and ``n_shadows`` shadow models with disjoint (in, out) each."""
    rng = np.random.default_rng(seed)
    n = sum(n_target) + n_shadows * sum(n_shadow)
    ids = rng.permutation(n).astype(np.int64)
    labels = rng.integers(0, n_classes, size=n).astype(np.int64)
    a, b = n_target
    t_in, t_out, pos = ids[:a], ids[a : a + b], a + b
    s_in, s_out = [], []
    for _ in range(n_shadows):
        s_in.append(ids[pos : pos + n_shadow[0]])
        s_out.append(ids[pos + n_shadow[0] : pos + sum(n_shadow)])
        pos += sum(n_shadow)
    return Splits(labels, t_in, t_out, s_in, s_out)


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

    With ``reference_on_target`` each shadow model is also queried on the target ids (for per-example
    RMIA/LiRA). The variants of one model share its lineage noise; everything else is independent.
    """
    target: dict[str, OutputBatch] = {}
    shadow: dict[str, list[OutputBatch]] = {}
    t_ids = np.concatenate([splits.target_in, splits.target_out])
    for j, (v, spec) in enumerate(variants.items()):
        target[v] = simulate(
            splits, t_ids, splits.target_in, spec, n_classes, seed * 1000 + 10 * j, seed * 1000 + 999, kind=kind
        )
        shadow[v] = []
        for k in range(splits.n_shadows):
            ids = np.concatenate([splits.shadow_in[k], splits.shadow_out[k]])
            if reference_on_target:
                ids = np.concatenate([ids, t_ids])
            b = simulate(
                splits, ids, splits.shadow_in[k], spec, n_classes, seed * 1000 + 10 * j + k + 1, seed * 1000 + 990 + k,
                kind=kind,
            )
            shadow[v].append(b)
    return target, shadow
