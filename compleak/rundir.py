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
from typing import Any, Iterator, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ContractError(ValueError):
    """A run-directory file breaks the contract. The message is one line naming the file."""


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


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}"


# --------------------------------------------------------------------------- splits


_SHADOW_KEY = re.compile(r"^shadow_(in|out)_(\d+)$")


@dataclass(frozen=True)
class Splits:
    """Membership splits of one dataset.

    Attributes:
        labels: int64 [N], the class label of every example id.
        target_in / target_out: int64 index arrays into ``labels`` (target members / non-members).
        shadow_in / shadow_out: one int64 index array per shadow model k (``shadow_in[k]``).
    All index arrays are pairwise disjoint, except that a shadow model's sets may overlap another shadow's.
    """

    labels: np.ndarray
    target_in: np.ndarray
    target_out: np.ndarray
    shadow_in: list[np.ndarray] = field(default_factory=list)
    shadow_out: list[np.ndarray] = field(default_factory=list)

    @property
    def n_shadows(self) -> int:
        return len(self.shadow_in)

    @property
    def n_classes(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.size else 0

    def members(self, role: str, shadow: int | None = None) -> np.ndarray:
        """Member ids of the target (``role='target'``) or of shadow model ``shadow``."""
        return self.target_in if role == "target" else self.shadow_in[int(shadow or 0)]

    def nonmembers(self, role: str, shadow: int | None = None) -> np.ndarray:
        """Non-member ids of the target or of shadow model ``shadow``."""
        return self.target_out if role == "target" else self.shadow_out[int(shadow or 0)]

    def query_ids(self, role: str, shadow: int | None = None) -> np.ndarray:
        """Ids an artifact of this role is queried on: its members then its non-members, int64 [M]."""
        return np.concatenate([self.members(role, shadow), self.nonmembers(role, shadow)]).astype(np.int64)

    def collected_ids(self, role: str, shadow: int | None = None) -> np.ndarray:
        """Ids an artifact of this role is collected on, int64 [M].

        A target artifact: its members then non-members. A shadow artifact: its own members and non-members, then
        the target candidates ``target_in ∪ target_out`` — shadow models are the attacker's reference models and
        RMIA / LiRA query them on the very examples under test (inputs only; no membership label is involved).
        """
        ids = self.query_ids(role, shadow)
        return ids if role == "target" else np.concatenate([ids, self.query_ids("target")])

    def validate(self, source: str = "splits") -> "Splits":
        """Check dtypes, ranges and disjointness; raise :class:`ContractError` naming ``source``."""
        n = len(self.labels)
        if self.labels.ndim != 1:
            raise ContractError(f"{source}: labels must be 1-D, got shape {self.labels.shape}")
        if not np.issubdtype(self.labels.dtype, np.integer):
            raise ContractError(f"{source}: labels must be integers, got {self.labels.dtype}")
        if n and self.labels.min() < 0:
            raise ContractError(f"{source}: labels must be >= 0")
        named = {"target_in": self.target_in, "target_out": self.target_out}
        if len(self.shadow_in) != len(self.shadow_out):
            raise ContractError(
                f"{source}: {len(self.shadow_in)} shadow_in arrays but {len(self.shadow_out)} shadow_out"
            )
        for k, (a, b) in enumerate(zip(self.shadow_in, self.shadow_out)):
            named[f"shadow_in_{k}"] = a
            named[f"shadow_out_{k}"] = b
        for name, idx in named.items():
            if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
                raise ContractError(f"{source}: {name} must be a 1-D integer array, got {idx.dtype} {idx.shape}")
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ContractError(f"{source}: {name} has ids outside [0, {n}) of labels")
            if len(np.unique(idx)) != len(idx):
                raise ContractError(f"{source}: {name} contains duplicate ids")
        target = np.concatenate([self.target_in, self.target_out])
        if len(np.intersect1d(self.target_in, self.target_out)):
            raise ContractError(f"{source}: target_in and target_out overlap; membership sets must be disjoint")
        for k in range(self.n_shadows):
            if len(np.intersect1d(self.shadow_in[k], self.shadow_out[k])):
                raise ContractError(f"{source}: shadow_in_{k} and shadow_out_{k} overlap")
            shadow = np.concatenate([self.shadow_in[k], self.shadow_out[k]])
            if len(np.intersect1d(shadow, target)):
                raise ContractError(
                    f"{source}: shadow split {k} overlaps the target split; the attacker must never see target data"
                )
        return self

    def save(self, path: Path) -> None:
        """Write ``splits.npz`` atomically (validates first)."""
        self.validate(str(path))
        arrays: dict[str, np.ndarray] = {
            "labels": self.labels.astype(np.int64),
            "target_in": self.target_in.astype(np.int64),
            "target_out": self.target_out.astype(np.int64),
        }
        for k, (a, b) in enumerate(zip(self.shadow_in, self.shadow_out)):
            arrays[f"shadow_in_{k}"] = a.astype(np.int64)
            arrays[f"shadow_out_{k}"] = b.astype(np.int64)
        if self.n_shadows:
            arrays["shadow_in"] = arrays["shadow_in_0"]
            arrays["shadow_out"] = arrays["shadow_out_0"]
        atomic_save_npz(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> "Splits":
        """Read and validate ``splits.npz``."""
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
        return cls(z["labels"], z["target_in"], z["target_out"], shadow_in, shadow_out).validate(str(path))


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

    @property
    def family_key(self) -> str:
        """Artifacts that share framework+format+variant are the 'same variant' for shadow matching."""
        return f"{self.framework}/{self.format}/{self.variant}"


class Manifest(BaseModel):
    """``manifest.json``: every artifact of the run, keyed by id (unique) and sha256."""

    model_config = ConfigDict(extra="allow")

    artifacts: list[ArtifactRecord] = Field(default_factory=list)

    def by_id(self, artifact_id: str) -> ArtifactRecord:
        for a in self.artifacts:
            if a.id == artifact_id:
                return a
        raise KeyError(artifact_id)

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
            raise ContractError(f"{path}: {_first_error(exc)}") from None
        ids = [a.id for a in m.artifacts]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ContractError(f"{path}: duplicate artifact ids {sorted(dup)}")
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
        if self.index.ndim != 1 or not np.issubdtype(self.index.dtype, np.integer):
            raise ContractError(
                f"{source}: index must be a 1-D integer array, got {self.index.dtype} {self.index.shape}"
            )
        if self.values.ndim != 2:
            raise ContractError(f"{source}: {self.kind} must be 2-D [M, C], got shape {self.values.shape}")
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
    """File-system name for a device URI: ``ssh://pi@host:22`` -> ``ssh_pi@host_22``; ``local`` -> ``local``."""
    name = re.sub(r"[^A-Za-z0-9@._-]+", "_", device_id.replace("://", "_"))
    return name.strip("_") or "device"


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

    def artifact_path(self, record: ArtifactRecord) -> Path:
        return self.root / record.path

    def outputs_dir(self, device_id: str) -> Path:
        return self.root / "outputs" / device_dirname(device_id)

    def output_npz(self, device_id: str, artifact_id: str) -> Path:
        return self.outputs_dir(device_id) / f"{artifact_id}.npz"

    def output_provenance(self, device_id: str, artifact_id: str) -> Path:
        return self.outputs_dir(device_id) / f"{artifact_id}.json"

    def attacks_dir(self, device_id: str) -> Path:
        return self.root / "attacks" / device_dirname(device_id)

    def results(self, device_id: str) -> Path:
        return self.attacks_dir(device_id) / "results.json"

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
                try:
                    device_id = json.loads(prov.read_text()).get("device", {}).get("id", d.name)
                except (OSError, json.JSONDecodeError):
                    pass
                break
            yield device_id, d

    def load_splits(self) -> Splits:
        return Splits.load(self.splits)

    def load_manifest(self) -> Manifest:
        return Manifest.load(self.manifest)

    def load_outputs(self, device_id: str, artifact_id: str) -> OutputBatch:
        return OutputBatch.load(self.output_npz(device_id, artifact_id))
