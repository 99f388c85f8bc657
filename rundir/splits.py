"""``splits.npz``: who (which owner) trained on which example ids (:class:`Splits`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rundir.errors import ContractError
from rundir.files import atomic_save_npz, load_npz

_SHADOW_KEY = re.compile(r"^shadow_(in|out)_(\d+)$")
_SHADOW_VAL_KEY = re.compile(r"^shadow_val_(\d+)$")
_EMPTY = np.zeros(0, dtype=np.int64)


def _first_seen(ids: np.ndarray) -> np.ndarray:
    """``ids`` without repeats, keeping each id's first position (int64 [M'])."""
    ids = np.asarray(ids, dtype=np.int64)
    _, first = np.unique(ids, return_index=True)
    return ids[np.sort(first)]


@dataclass(frozen=True)
class Splits:
    """Membership splits of one dataset: who (which owner) trained on which example ids.

    Every owner (the target, and each reference/shadow model ``k``) has three sets of int64 ids into ``labels``:
    ``*_in`` = EXACTLY the ids its weights were trained on (scored as members), ``*_out`` = ids it never saw (scored
    as non-members), ``*_val`` = its own validation hold-out (used only for early stopping / selection: never
    trained on, never scored). ``population`` (optional) is attacker-held data disjoint from every target set,
    queried on the target and on every reference model (RMIA's z set).

    Attributes:
        labels: int64 [N], the class label of every example id.
        target_in / target_out / target_val: int64 id arrays of the target owner.
        shadow_in / shadow_out / shadow_val: one int64 id array per reference model k (``shadow_in[k]``);
            ``shadow_val`` may be empty (no hold-outs, e.g. an older ``splits.npz``).
        population: int64 [m] attacker population ids, or None.
        online: the online threat model: reference models are trained on random halves of the attacker's pool,
            which contains the target candidates ``target_in ∪ target_out``, so ``shadow_*[k]`` may overlap them.

    Invariants (:meth:`validate`): ``target_in``, ``target_out``, ``target_val`` pairwise disjoint; each reference's
    in/out/val pairwise disjoint; no reference set and no population id is in ``target_val`` (the target owner's
    private hold-out is never the attacker's); ``population`` disjoint from every target set; offline (``online``
    false) reference sets are also disjoint from the target candidates. Reference models may overlap each other.
    """

    labels: np.ndarray
    target_in: np.ndarray
    target_out: np.ndarray
    shadow_in: list[np.ndarray] = field(default_factory=list)
    shadow_out: list[np.ndarray] = field(default_factory=list)
    target_val: np.ndarray = field(default_factory=lambda: _EMPTY.copy())
    shadow_val: list[np.ndarray] = field(default_factory=list)
    population: np.ndarray | None = None
    online: bool = False

    @property
    def n_shadows(self) -> int:
        return len(self.shadow_in)

    @property
    def n_references(self) -> int:
        """The number of reference models K (the same models as the shadows)."""
        return len(self.shadow_in)

    @property
    def n_classes(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.size else 0

    @property
    def threat_model(self) -> str:
        """``"online"`` or ``"offline"``."""
        return "online" if self.online else "offline"

    @property
    def candidates(self) -> np.ndarray:
        """The target candidates under test: ``target_in`` then ``target_out``, int64 [n]."""
        return np.concatenate([self.target_in, self.target_out]).astype(np.int64)

    @property
    def population_ids(self) -> np.ndarray:
        """``population`` as int64 [m] (empty when the run has none)."""
        return _EMPTY.copy() if self.population is None else np.asarray(self.population, dtype=np.int64)

    def members(self, role: str, shadow: int | None = None) -> np.ndarray:
        """Ids the target (``role='target'``) or reference model ``shadow`` was trained on, exactly."""
        return self.target_in if role == "target" else self.shadow_in[int(shadow or 0)]

    def nonmembers(self, role: str, shadow: int | None = None) -> np.ndarray:
        """Non-member ids of the target or of reference model ``shadow`` (never seen in training or selection)."""
        return self.target_out if role == "target" else self.shadow_out[int(shadow or 0)]

    def holdout(self, role: str, shadow: int | None = None) -> np.ndarray:
        """The owner's validation hold-out (early stopping / selection only; never trained on, never scored)."""
        if role == "target":
            return np.asarray(self.target_val, dtype=np.int64)
        k = int(shadow or 0)
        return np.asarray(self.shadow_val[k], dtype=np.int64) if k < len(self.shadow_val) else _EMPTY.copy()

    def reference_membership(self, ids: np.ndarray) -> np.ndarray:
        """Which reference models trained on which ids: bool [K, len(ids)], ``[k, j]`` = ids[j] in shadow_in[k].

        The online attacks' IN/OUT assignment (a candidate is OUT for reference k only where
        :meth:`reference_nonmembership` is true; ids in a reference's hold-out are neither).
        """
        ids = np.asarray(ids, dtype=np.int64)
        return np.array([np.isin(ids, a) for a in self.shadow_in], dtype=bool).reshape(self.n_shadows, len(ids))

    def reference_nonmembership(self, ids: np.ndarray) -> np.ndarray:
        """bool [K, len(ids)]: ``[k, j]`` = ids[j] in shadow_out[k] (reference k never saw it)."""
        ids = np.asarray(ids, dtype=np.int64)
        return np.array([np.isin(ids, b) for b in self.shadow_out], dtype=bool).reshape(self.n_shadows, len(ids))

    def query_ids(self, role: str, shadow: int | None = None) -> np.ndarray:
        """Ids an artifact of this role is scored on: its members then its non-members, int64 [M]."""
        return np.concatenate([self.members(role, shadow), self.nonmembers(role, shadow)]).astype(np.int64)

    def collected_ids(self, role: str, shadow: int | None = None) -> np.ndarray:
        """Ids an artifact of this role is collected on, int64 [M], without repeats.

        A target artifact: its members, its non-members, then the population. A reference (shadow) artifact: its own
        members and non-members, then the target candidates ``target_in ∪ target_out`` (reference models are the
        attacker's; RMIA / LiRA query them on the very examples under test: inputs only, no membership label), then
        the population. In the online threat model a reference's own sets overlap the candidates; each id is
        queried once. Hold-outs are not queried, except that a candidate in an online reference's hold-out is still
        queried on it as a candidate (it is neither IN nor OUT for that reference: :meth:`reference_membership`).
        """
        if role == "target":
            return _first_seen(np.concatenate([self.query_ids("target"), self.population_ids]))
        return _first_seen(np.concatenate([self.query_ids(role, shadow), self.candidates, self.population_ids]))

    def validate(self, source: str = "splits") -> "Splits":
        """Check dtypes, ranges and the invariants of the class docstring; raise :class:`ContractError` naming
        ``source``."""
        n = len(self.labels)
        if self.labels.ndim != 1:
            raise ContractError(f"{source}: labels must be 1-D, got shape {self.labels.shape}")
        if not np.issubdtype(self.labels.dtype, np.integer):
            raise ContractError(f"{source}: labels must be integers, got {self.labels.dtype}")
        if n and self.labels.min() < 0:
            raise ContractError(f"{source}: labels must be >= 0")
        named = {"target_in": self.target_in, "target_out": self.target_out, "target_val": self.target_val}
        if len(self.shadow_in) != len(self.shadow_out):
            raise ContractError(
                f"{source}: {len(self.shadow_in)} shadow_in arrays but {len(self.shadow_out)} shadow_out"
            )
        if self.shadow_val and len(self.shadow_val) != len(self.shadow_in):
            raise ContractError(
                f"{source}: {len(self.shadow_val)} shadow_val arrays but {len(self.shadow_in)} reference models; "
                "give one hold-out per reference model (empty when it has none)"
            )
        for k, (a, b) in enumerate(zip(self.shadow_in, self.shadow_out)):
            named[f"shadow_in_{k}"] = a
            named[f"shadow_out_{k}"] = b
        for k, v in enumerate(self.shadow_val):
            named[f"shadow_val_{k}"] = v
        if self.population is not None:
            named["population"] = self.population
        for name, idx in named.items():
            if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
                if not (idx.size == 0 and idx.ndim == 1):  # an empty float array (np.array([])) is an empty set
                    raise ContractError(
                        f"{source}: {name} must be a 1-D integer array, got {idx.dtype} {idx.shape}"
                    )
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ContractError(f"{source}: {name} has ids outside [0, {n}) of labels")
            if len(np.unique(idx)) != len(idx):
                raise ContractError(f"{source}: {name} contains duplicate ids")

        def overlap(a: np.ndarray, b: np.ndarray) -> bool:
            return bool(len(np.intersect1d(a, b)))

        if overlap(self.target_in, self.target_out):
            raise ContractError(f"{source}: target_in and target_out overlap; membership sets must be disjoint")
        for other in ("target_in", "target_out"):
            if overlap(named[other], self.target_val):
                raise ContractError(
                    f"{source}: target_val overlaps {other}; the hold-out is its own split (never trained on, "
                    "never scored)"
                )
        target = self.candidates
        for k in range(self.n_shadows):
            own = [(f"shadow_in_{k}", self.shadow_in[k]), (f"shadow_out_{k}", self.shadow_out[k])]
            if k < len(self.shadow_val):
                own.append((f"shadow_val_{k}", self.shadow_val[k]))
            for i in range(len(own)):
                for j in range(i + 1, len(own)):
                    if overlap(own[i][1], own[j][1]):
                        raise ContractError(f"{source}: {own[i][0]} and {own[j][0]} overlap")
            mine = np.concatenate([v for _, v in own])
            if overlap(mine, self.target_val):
                raise ContractError(
                    f"{source}: reference model {k} uses ids of target_val; the target's hold-out is never the "
                    "attacker's"
                )
            if not self.online and overlap(mine, target):
                raise ContractError(
                    f"{source}: shadow split {k} overlaps the target split; the attacker must never see target data "
                    "in the offline threat model (set online for references trained on the candidates)"
                )
        if self.population is not None and overlap(self.population, np.concatenate([target, self.target_val])):
            raise ContractError(
                f"{source}: population overlaps the target's sets; population ids must be target non-members "
                "outside the candidates"
            )
        return self

    def save(self, path: Path) -> None:
        """Write ``splits.npz`` atomically (validates first)."""
        self.validate(str(path))
        arrays: dict[str, np.ndarray] = {
            "labels": self.labels.astype(np.int64),
            "target_in": self.target_in.astype(np.int64),
            "target_out": self.target_out.astype(np.int64),
            "target_val": np.asarray(self.target_val, dtype=np.int64),
            "online": np.array(bool(self.online)),
        }
        for k, (a, b) in enumerate(zip(self.shadow_in, self.shadow_out)):
            arrays[f"shadow_in_{k}"] = a.astype(np.int64)
            arrays[f"shadow_out_{k}"] = b.astype(np.int64)
            arrays[f"shadow_val_{k}"] = self.holdout("shadow", k)
        if self.n_shadows:
            arrays["shadow_in"] = arrays["shadow_in_0"]
            arrays["shadow_out"] = arrays["shadow_out_0"]
        if self.population is not None:
            arrays["population"] = self.population_ids
        atomic_save_npz(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> "Splits":
        """Read and validate ``splits.npz``; older files (no hold-outs, population or ``online``) still load."""
        z = load_npz(path)
        for key in ("labels", "target_in", "target_out"):
            if key not in z:
                raise ContractError(f"{path}: missing array '{key}'")
        ks = sorted({int(m.group(2)) for k in z if (m := _SHADOW_KEY.match(k))})
        if not ks and "shadow_in" in z and "shadow_out" in z:
            shadow_in, shadow_out = [z["shadow_in"]], [z["shadow_out"]]
        else:
            if ks != list(range(len(ks))):
                raise ContractError(f"{path}: shadow splits must be numbered 0..K-1, found {ks}")
            for k in ks:
                if f"shadow_in_{k}" not in z or f"shadow_out_{k}" not in z:
                    raise ContractError(f"{path}: shadow split {k} needs both shadow_in_{k} and shadow_out_{k}")
            shadow_in = [z[f"shadow_in_{k}"] for k in ks]
            shadow_out = [z[f"shadow_out_{k}"] for k in ks]
        vs = sorted(int(m.group(1)) for k in z if (m := _SHADOW_VAL_KEY.match(k)))
        if vs and vs != list(range(len(shadow_in))):
            raise ContractError(
                f"{path}: shadow_val_K arrays {vs} do not match the {len(shadow_in)} reference models; "
                "give one per model (0..K-1) or none"
            )
        shadow_val = [z[f"shadow_val_{k}"] for k in vs]
        online = z.get("online")
        if online is not None and (online.shape != () or online.dtype != np.bool_):
            raise ContractError(f"{path}: 'online' must be a boolean scalar, got {online.dtype} {online.shape}")
        return cls(
            z["labels"], z["target_in"], z["target_out"], shadow_in, shadow_out,
            target_val=z.get("target_val", _EMPTY.copy()), shadow_val=shadow_val, population=z.get("population"),
            online=bool(online) if online is not None else False,
        ).validate(str(path))
