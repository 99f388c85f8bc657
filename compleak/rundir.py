"""The run-directory contract shared by every stage (see docs/architecture.md).

This module is the single place that reads and writes the stable files between stages:

- ``splits.npz``      -> :class:`Splits`
- ``manifest.json``   -> :class:`Manifest` of :class:`ArtifactRecord`
- ``outputs/<device>/<artifact>.npz`` -> :class:`OutputBatch`
- ``attacks/<device>/results.json``   -> list of :class:`ResultRow`

It depends only on NumPy and pydantic, so ``compleak`` stays usable without the harness.
Every validation failure raises :class:`ContractError` whose message names the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ContractError(ValueError):
    """A run-directory file breaks the contract. The message is one line naming the file."""


class UnsafePathError(ContractError):
    """A name or path from a run file or the user that would become a path outside the run (hostile, not merely
    corrupt: stages refuse it instead of repairing around it)."""


# --------------------------------------------------------------------------- atomic writes


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's content, read in 1 MiB chunks: the key every stage uses for an artifact."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_path(path: Path | str, mode: int | None = None, *, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temp path in ``path``'s folder (hidden name, same file system); on normal exit fsync it and
    ``os.replace`` it onto ``path`` (chmod to ``mode`` first when given); on an exception remove the temp file
    and re-raise.

    The folder is created when missing. The temp file exists (empty) when the block starts, created like any new
    file (0666 less the umask) unless ``mode`` is given; write it by name (``open(tmp, "wb")``, a saver given
    ``str(tmp)``). The temp name is ``.<name>.<random>.tmp``; ``keep_suffix=True`` makes it end with ``path``'s
    suffix (``.<name>.<random>.tmp.h5``) for savers that pick the format from the file name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = f".tmp{path.suffix}" if keep_suffix else ".tmp"
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
        try:  # O_EXCL: never an existing file or a planted symlink; mode 0o600 until the block is done if asked
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if mode is not None else 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Serialise ``obj`` as indented JSON and write it atomically."""
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` to ``path`` atomically, so a crash never leaves a half-written file."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(Path(path), buf.getvalue())


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise ContractError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError ...
        raise ContractError(f"{path}: not a readable .npz file ({exc.__class__.__name__}: {exc})") from None


def _load_json(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ContractError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ContractError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def _contract_error(exc: ValidationError, prefix: str) -> ContractError:
    """One-line :class:`ContractError` (:class:`UnsafePathError` when a name/path check failed) for ``exc``."""
    unsafe = any(isinstance((e.get("ctx") or {}).get("error"), UnsafePathError) for e in exc.errors())
    return (UnsafePathError if unsafe else ContractError)(f"{prefix}: {_first_error(exc)}")


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


# --------------------------------------------------------------------------- names and paths (untrusted input)

NAME_MAX = 160  # characters; leaves room for suffixes such as ".npz" within a 255-byte file name
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@=-]*")
NAME_HELP = (
    "use letters, digits and . _ + @ = - only, starting with a letter or digit, without '..', "
    f"at most {NAME_MAX} characters"
)


def name_problem(value: object) -> str | None:
    """Why ``value`` cannot be used as a file or folder name, or None when it can."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value:
        return "must not be empty"
    if len(value) > NAME_MAX:
        return f"is {len(value)} characters long"
    if not _NAME.fullmatch(value) or ".." in value:
        return "contains characters or a '..' that are not allowed in a name"
    return None


def check_name(value: object, what: str, source: object) -> str:
    """The one rule for every identifier that becomes a file or folder name (artifact id, device folder,
    experiment name): ``[A-Za-z0-9][A-Za-z0-9._+@=-]*``, no ``..``, at most :data:`NAME_MAX` characters.

    Raises :class:`ContractError` ``"<source>: <what> '<value>' ...; <fix>"``; returns ``value``.
    """
    why = name_problem(value)
    if why is not None:
        raise UnsafePathError(f"{source}: {what} {str(value)[:80]!r} {why}; {NAME_HELP}")
    return value  # type: ignore[return-value]


def _relpath_problem(rel: object, under: str | None = None) -> str | None:
    """Why ``rel`` is not a plain relative POSIX path (inside ``under``/ when given), or None when it is."""
    if not isinstance(rel, str) or not rel:
        return "must be a non-empty relative path"
    if "\\" in rel or "\x00" in rel or rel.startswith("/") or re.match(r"^[A-Za-z]:", rel):
        return "must be a relative path with '/' separators"
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "must not contain empty, '.' or '..' components"
    if under is not None and (parts[0] != under or len(parts) < 2):
        return f"must lie under {under}/"
    return None


# --------------------------------------------------------------------------- splits


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
        z = _load_npz(path)
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


# --------------------------------------------------------------------------- manifest


class TensorSpec(BaseModel):
    """One input or output tensor of an artifact, as read from the artifact file itself."""

    model_config = ConfigDict(extra="allow")

    name: str
    shape: list[int]  # -1 for a dynamic dimension
    dtype: str  # numpy dtype name: float32, int8, uint8 ...
    scale: float | None = None  # quantization: real = scale * (q - zero_point)
    zero_point: int | None = None


class ArtifactRecord(BaseModel):
    """One deployable artifact in ``manifest.json``."""

    model_config = ConfigDict(extra="allow")

    id: str
    role: Literal["target", "shadow"]
    shadow: int | None = None
    variant: str  # "original" or a compression label: prune-0.8, cluster-8, int8, dynamic-int8, fp16, ...
    framework: str  # tf | torch | external
    format: Literal["tflite", "ptl", "pte", "onnx"]
    path: str  # relative to the run directory
    sha256: str
    bytes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    output_kind: Literal["logits", "probs"] = "logits"
    compression: dict[str, Any] = Field(default_factory=dict)
    host_accuracy: dict[str, float | None] = Field(default_factory=dict)  # {"train": ..., "test": ...}
    toolchain: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _safe_id(cls, v: str) -> str:
        why = name_problem(v)
        if why is not None:
            raise UnsafePathError(f"artifact id {v[:80]!r} {why}; {NAME_HELP}")
        return v

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, v: str) -> str:  # also part of paths (collect's resumable chunks): never free text
        if not re.fullmatch(r"[0-9a-f]{64}", v):
            raise UnsafePathError(
                f"sha256 {v[:80]!r} is not 64 lowercase hex digits; rebuild or re-import the artifact"
            )
        return v

    @field_validator("path")
    @classmethod
    def _safe_path(cls, v: str) -> str:
        why = _relpath_problem(v)  # lying under artifacts/ is checked where the run is known (Manifest.load, RunDir)
        if why is not None:
            raise UnsafePathError(f"artifact path {v[:120]!r} {why}; artifact paths are relative to the run, e.g. "
                             "artifacts/<file>")
        return v

    @property
    def family_key(self) -> str:
        """Artifacts that share framework+format+variant are the 'same variant' for shadow matching."""
        return f"{self.framework}/{self.format}/{self.variant}"


class Manifest(BaseModel):
    """``manifest.json``: every artifact of the run, keyed by id (unique) and sha256."""

    model_config = ConfigDict(extra="allow")

    artifacts: list[ArtifactRecord] = Field(default_factory=list)

    def by_id(self, artifact_id: str) -> ArtifactRecord:
        """The record with this id; KeyError when there is none (ids are checked names, see :func:`check_name`)."""
        for a in self.artifacts:
            if a.id == artifact_id:
                return a
        raise KeyError(artifact_id)

    def select(self, ids: "Iterable[str]", source: object = "manifest.json") -> list[ArtifactRecord]:
        """Records of ``ids`` (user input, in manifest order); :class:`ContractError` naming the first id that is not
        a valid name or not in the manifest, with the ids that are."""
        wanted = list(ids)
        known = {a.id for a in self.artifacts}
        for i in wanted:
            check_name(i, "artifact id", source)
            if i not in known:
                raise ContractError(
                    f"{source}: no artifact {i!r}; available: {', '.join(sorted(known)) or 'none (run compleak build)'}"
                )
        return [a for a in self.artifacts if a.id in set(wanted)]

    def targets(self) -> list[ArtifactRecord]:
        return [a for a in self.artifacts if a.role == "target"]

    def shadows_of(self, target: ArtifactRecord) -> list[ArtifactRecord]:
        """Shadow artifacts built with the same framework, format and variant as ``target``, by shadow index."""
        return sorted(
            (a for a in self.artifacts if a.role == "shadow" and a.family_key == target.family_key),
            key=lambda a: a.shadow or 0,
        )

    def upsert(self, record: ArtifactRecord) -> None:
        """Insert ``record`` or replace the one with the same id."""
        self.artifacts = [a for a in self.artifacts if a.id != record.id] + [record]

    def save(self, path: Path) -> None:
        atomic_write_json(Path(path), self.model_dump(mode="json"))

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        raw = _load_json(path)
        try:
            m = cls.model_validate(raw)
        except ValidationError as exc:
            raise _contract_error(exc, str(path)) from None
        ids = [a.id for a in m.artifacts]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ContractError(f"{path}: duplicate artifact ids {sorted(dup)}")
        run = RunDir(Path(path).parent)
        for a in m.artifacts:  # every path resolves inside the run's artifacts/, following links already there
            run.inside(a.path, "artifact path", f"{path} ({a.id})", under="artifacts")
        return m


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class OutputBatch:
    """Raw outputs of one artifact on one device.

    Attributes:
        index: int64 [M], example ids into ``Splits.labels``.
        values: float32 [M, C], dequantized raw outputs.
        kind: ``"logits"`` or ``"probs"`` (the model ends in softmax).
        source: where the batch was read from (set by :meth:`load`), used to name the file in errors.
    """

    index: np.ndarray
    values: np.ndarray
    kind: Literal["logits", "probs"] = "logits"
    source: str | None = field(default=None, compare=False, repr=False)

    def validate(self, source: str = "outputs") -> "OutputBatch":
        """Check dtypes and shapes: ``index`` 1-D integers, values a finite float [M, C] with C >= 2 classes."""
        if self.index.ndim != 1 or not np.issubdtype(self.index.dtype, np.integer):
            raise ContractError(
                f"{source}: index must be a 1-D integer array, got {self.index.dtype} {self.index.shape}"
            )
        if not np.issubdtype(self.values.dtype, np.floating):
            raise ContractError(
                f"{source}: {self.kind} must be a float array, got {self.values.dtype}; delete the file and re-collect"
            )
        if self.values.ndim != 2:
            raise ContractError(f"{source}: {self.kind} must be 2-D [M, C], got shape {self.values.shape}")
        if self.values.shape[1] < 2:
            raise ContractError(
                f"{source}: {self.kind} has {self.values.shape[1]} classes, need at least 2; delete the file and "
                "re-collect"
            )
        if len(self.index) != len(self.values):
            raise ContractError(f"{source}: index has {len(self.index)} rows but {self.kind} has {len(self.values)}")
        if len(np.unique(self.index)) != len(self.index):
            raise ContractError(f"{source}: index contains duplicate example ids")
        if not np.all(np.isfinite(self.values)):
            bad = int(np.sum(~np.isfinite(self.values).all(axis=1)))
            raise ContractError(f"{source}: {bad} rows of {self.kind} contain NaN or Inf; re-collect this artifact")
        return self

    def rows(self, ids: np.ndarray, source: str = "outputs") -> np.ndarray:
        """Values for example ``ids`` in that order, float32 [len(ids), C]; error if any id is missing."""
        pos = {int(i): p for p, i in enumerate(self.index)}
        missing = [int(i) for i in ids if int(i) not in pos]
        if missing:
            raise ContractError(
                f"{source}: {len(missing)} required example ids missing (e.g. {missing[:3]}); re-run collect"
            )
        return self.values[[pos[int(i)] for i in ids]]

    def save(self, path: Path) -> None:
        self.validate(str(path))
        atomic_save_npz(Path(path), index=self.index.astype(np.int64), **{self.kind: self.values.astype(np.float32)})

    @classmethod
    def load(cls, path: Path) -> "OutputBatch":
        z = _load_npz(path)
        if "index" not in z:
            raise ContractError(f"{path}: missing array 'index'")
        if "logits" in z:
            kind, values = "logits", z["logits"]
        elif "probs" in z:
            kind, values = "probs", z["probs"]
        else:
            raise ContractError(f"{path}: needs an array 'logits' or 'probs'")
        if not np.issubdtype(values.dtype, np.floating):  # strings and booleans would convert silently
            raise ContractError(
                f"{path}: {kind} must be a float array, got {values.dtype}; delete the file and re-collect"
            )
        return cls(z["index"], values.astype(np.float32), kind, str(path)).validate(str(path))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- results


class ResultRow(BaseModel):
    """One attack result row of ``attacks/<device>/results.json``."""

    model_config = ConfigDict(extra="allow")

    family: Literal["NR", "SR", "MR", "baseline"]
    method: str
    variant: str | list[str]
    auc: float
    balanced_accuracy: float
    tpr_at_fpr: dict[str, float | None]  # {"0.001": ..., "0.01": ...}; None when not resolvable
    auc_ci: list[float]
    n_members: int
    n_nonmembers: int


def save_results(path: Path, rows: list[ResultRow]) -> None:
    atomic_write_json(Path(path), [r.model_dump(mode="json") for r in rows])


def load_results(path: Path) -> list[ResultRow]:
    raw = _load_json(path)
    if not isinstance(raw, list):
        raise ContractError(f"{path}: expected a JSON list of result rows")
    try:
        return [ResultRow.model_validate(r) for r in raw]
    except ValidationError as exc:
        raise ContractError(f"{path}: {_first_error(exc)}") from None


# --------------------------------------------------------------------------- the directory


def device_dirname(device_id: str) -> str:
    """File-system name for a device URI: ``ssh://pi@host:22`` -> ``ssh_pi@host_22``; ``local`` -> ``local``.

    Always a valid :func:`check_name` (never ``.``, ``..``, a path or an option-like ``-x``): runs of other
    characters become ``_``, runs of dots become one dot, the ends are trimmed, a long name is cut and given a hash.
    """
    name = re.sub(r"[^A-Za-z0-9@._-]+", "_", str(device_id).replace("://", "_"))
    name = re.sub(r"\.{2,}", ".", name)
    name = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", name) or "device"
    if len(name) > NAME_MAX:
        name = f"{name[: NAME_MAX - 17]}_{hashlib.sha256(str(device_id).encode()).hexdigest()[:16]}"
    return check_name(name, "device folder", device_id)


class RunDir:
    """Paths of a run directory ``RUN/`` (nothing is created until a stage writes)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @property
    def experiment(self) -> Path:
        return self.root / "experiment.toml"

    @property
    def splits(self) -> Path:
        return self.root / "splits.npz"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    def inside(self, rel: str, what: str, source: object, under: str | None = None) -> Path:
        """``root / rel`` after checking that it stays inside the run: the one check for every path read from a
        run file.

        ``rel`` must be relative, ``/``-separated, without ``.``/``..`` components, and its resolved location
        (following any symlink already on disk) must lie under ``root`` (under ``root/under`` when given).
        Raises :class:`ContractError` ``"<source>: <what> '<rel>' ..."``.
        """
        why = _relpath_problem(rel, under)
        if why is None:
            root = self.root.resolve()
            base = root / under if under else root
            if not (self.root / rel).resolve().is_relative_to(base):
                why = f"resolves outside {base} (through a symbolic link)"
        if why is not None:
            raise UnsafePathError(
                f"{source}: {what} {str(rel)[:120]!r} {why}; a run may only refer to files inside itself"
            )
        return self.root / rel

    def artifact_path(self, record: ArtifactRecord) -> Path:
        """The artifact's file, checked with :meth:`inside` at use time (links planted after loading count too)."""
        return self.inside(record.path, "artifact path", f"{self.manifest} ({record.id})", under="artifacts")

    def outputs_dir(self, device_id: str) -> Path:
        return self.root / "outputs" / device_dirname(device_id)

    def output_npz(self, device_id: str, artifact_id: str) -> Path:
        return self.outputs_dir(device_id) / f"{check_name(artifact_id, 'artifact id', self.manifest)}.npz"

    def output_provenance(self, device_id: str, artifact_id: str) -> Path:
        return self.outputs_dir(device_id) / f"{check_name(artifact_id, 'artifact id', self.manifest)}.json"

    def require_writable(self, stage: str, *subdirs: str) -> None:
        """Fail fast, before any computing, when ``stage`` could not store its results.

        Checks the run root (or, when it does not exist yet, the nearest existing folder above it, where it will be
        created) and each existing ``root/<subdir>`` for write access (``os.access``: mode bits, ACLs, read-only
        mounts). Raises :class:`ContractError` naming the folder, the stage and the fix.
        """
        folders = [self.root] + [self.root / d for d in subdirs]
        for folder in folders:
            probe = folder
            while not probe.exists() and probe != probe.parent and folder is self.root:
                probe = probe.parent
            if not probe.exists():
                continue
            if not probe.is_dir():
                raise ContractError(
                    f"{probe}: not a folder, so `compleak {stage}` cannot write there; pick another path"
                )
            if not os.access(probe, os.W_OK | os.X_OK):
                raise ContractError(
                    f"{probe}: folder is read-only, so `compleak {stage}` could not store its results; make it "
                    "writable (chmod u+w, or remount read-write) or work on a copy of the run"
                )

    def attacks_dir(self, device_id: str) -> Path:
        return self.root / "attacks" / device_dirname(device_id)

    def results(self, device_id: str) -> Path:
        return self.attacks_dir(device_id) / "results.json"

    def scores(self, device_id: str) -> Path:
        """``attacks/<device>/scores.npz``: the attack stage's per-example scores (``compleak.results.load_scores``)."""
        return self.attacks_dir(device_id) / "scores.npz"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def collected_devices(self) -> Iterator[tuple[str, Path]]:
        """(device id, outputs folder) for every device with outputs; the id is read from provenance."""
        base = self.root / "outputs"
        if not base.is_dir():
            return
        for d in sorted(p for p in base.iterdir() if p.is_dir()):
            device_id = d.name
            for prov in sorted(d.glob("*.json")):
                try:  # untrusted: anything but {"device": {"id": "<str>"}} keeps the folder name
                    found = json.loads(prov.read_text(encoding="utf-8"))["device"]["id"]
                    device_id = found if isinstance(found, str) and found else d.name
                except (OSError, ValueError, KeyError, TypeError):
                    pass
                break
            yield device_id, d

    def load_splits(self) -> Splits:
        return Splits.load(self.splits)

    def load_manifest(self) -> Manifest:
        return Manifest.load(self.manifest)

    def load_outputs(self, device_id: str, artifact_id: str) -> OutputBatch:
        return OutputBatch.load(self.output_npz(device_id, artifact_id))
