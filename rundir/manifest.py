"""``manifest.json``: every deployable artifact of a run (:class:`Manifest` of :class:`ArtifactRecord`, each with its
:class:`TensorSpec` inputs and outputs)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rundir.errors import ContractError, UnsafePathError
from rundir.files import atomic_write_json, contract_error, load_json
from rundir.names import NAME_HELP, check_name, inside_run, name_problem, relpath_problem


class TensorSpec(BaseModel):
    """One input or output tensor of an artifact, as read from the artifact file itself."""

    model_config = ConfigDict(extra="allow")

    name: str
    shape: list[int]  # -1 for a dynamic dimension
    dtype: str  # numpy dtype name: float32, int8, uint8 ...
    scale: float | None = None  # quantization: real = scale * (q - zero_point)
    zero_point: int | None = None


class ArtifactRecord(BaseModel):
    """One deployable artifact in ``manifest.json``.

    Records written by ``compleak build`` also carry (as extra fields) ``build_key`` (the cache key of the file),
    ``training`` (digests of what the owner trained on) and ``build``: what the bytes depended on besides the
    config's recipe and data, as applied in the build unit -- ``{"threads": int, "deterministic": bool, "device":
    "cpu"|"cuda"|"gpu"}`` (``[build]`` and ``train.device``; never where the unit ran).
    """

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
        why = relpath_problem(v)  # lying under artifacts/ is checked where the run is known (Manifest.load, RunDir)
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
        raw = load_json(path)
        try:
            m = cls.model_validate(raw)
        except ValidationError as exc:
            raise contract_error(exc, str(path)) from None
        ids = [a.id for a in m.artifacts]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ContractError(f"{path}: duplicate artifact ids {sorted(dup)}")
        root = Path(path).parent
        for a in m.artifacts:  # every path resolves inside the run's artifacts/, following links already there
            inside_run(root, a.path, "artifact path", f"{path} ({a.id})", under="artifacts")
        return m
