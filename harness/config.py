"""``experiment.toml``: the validated configuration of one run.

Every error is a :class:`ConfigError` with one line naming the file, the key and the allowed values.
See ``experiments/*.toml`` for complete examples and docs/configuration.md for every key.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rundir import NAME_HELP, name_problem
from rundir.vocabulary import BASELINES, FAMILIES

ARCHS = ("cnn-small", "resnet18", "vgg16-bn", "mobilenetv2")
FRAMEWORKS = ("tf", "torch")
FORMATS = {"tf": ("tflite",), "torch": ("pte", "ptl", "onnx")}

# one compression step; a variant is steps joined with "+", e.g. "prune-0.8+int8"
_STEP = re.compile(r"^(original|prune-(0?\.\d+)|cluster-(\d+)|qat-int8|int8|dynamic-int8|fp16)$")
VARIANT_HELP = "original, prune-S (0<S<1), cluster-K (K>=2), qat-int8, int8, dynamic-int8, fp16, or steps joined by '+'"
_TF_ONLY = ("qat-int8", "fp16")
_QUANT = ("qat-int8", "int8", "dynamic-int8", "fp16")


class ConfigError(ValueError):
    """A bad experiment config; the message is a single line naming file, key and fix."""


def parse_variant(label: str) -> list[str]:
    """Split a variant label into its steps, validating each. ``"prune-0.8+int8"`` -> ``["prune-0.8", "int8"]``."""
    steps = label.split("+")
    for s in steps:
        m = _STEP.match(s)
        if not m:
            raise ValueError(f"unknown variant step '{s}'; allowed: {VARIANT_HELP}")
        if m.group(2) is not None and not 0.0 < float(m.group(2)) < 1.0:
            raise ValueError(f"sparsity in '{s}' must be between 0 and 1")
        if m.group(3) is not None and int(m.group(3)) < 2:
            raise ValueError(f"cluster count in '{s}' must be >= 2")
    if "original" in steps and len(steps) > 1:
        raise ValueError(f"'original' cannot be combined with other steps in '{label}'")
    quant = [s for s in steps if s in _QUANT]
    if len(quant) > 1 or (quant and steps[-1] not in _QUANT):
        raise ValueError(f"'{label}': at most one quantization step, and it must come last")
    return steps


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExperimentSection(_Strict):
    name: str = "experiment"  # becomes the folder runs/<name>: a checked name (rundir.check_name)
    seed: int = Field(0, ge=0, lt=2**31)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        why = name_problem(v)
        if why is not None:
            raise ValueError(f"'{v[:80]}' {why}; {NAME_HELP}")
        return v
    # repeat target and reference training once per seed: one complete run per seed in RUN/seeds/<seed>/ (audit,
    # demo); the top-level report shows mean ± sd across seeds. None: one run with ``seed``.
    seeds: list[int] | None = None

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if not v:
                raise ValueError("seeds must list at least one seed (or be left out)")
            if len(set(v)) != len(v):
                raise ValueError("seeds must be unique")
            if any(s < 0 for s in v):
                raise ValueError("seeds must be >= 0")
        return v


class Preprocess(_Strict):
    """How raw examples become model inputs (recorded so device queries are reproducible)."""

    resize: list[int] | None = None  # [H, W]
    scale: float = 1.0 / 255.0  # multiply raw pixel values by this
    mean: list[float] | None = None  # per channel, after scaling
    std: list[float] | None = None
    layout: Literal["NHWC", "NCHW"] = "NHWC"  # layout of the stored query inputs; frameworks transpose as needed


class DataSection(_Strict):
    dataset: str = "fashion-mnist"  # fashion-mnist | cifar10 | cifar100 | digits | npz:PATH | imagefolder:PATH
    data_dir: str | None = None
    download: bool = False  # only fashion-mnist/cifar, and only when online
    preprocess: Preprocess = Field(default_factory=Preprocess)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        if v in ("fashion-mnist", "cifar10", "cifar100", "digits") or v.startswith(("npz:", "imagefolder:")):
            return v
        raise ValueError(
            f"'{v}' is not a dataset; allowed: fashion-mnist, cifar10, cifar100, digits, npz:PATH, imagefolder:PATH"
        )


class SplitsSection(_Strict):
    target_in: int = Field(2000, gt=0)
    target_out: int = Field(2000, gt=0)
    shadow_in: int = Field(2000, gt=0)  # offline reference model k's members / non-members (online: half the pool)
    shadow_out: int = Field(2000, gt=0)
    # the old name of attack.reference_models (K); attack.reference_models wins when both are given. After loading
    # both hold the resolved K, so either may be read.
    n_shadows: int | None = Field(None, ge=1, le=4096)
    # each owner's own validation hold-out (early stopping only: never trained on, never scored), as a fraction of
    # its training-set size, drawn OUTSIDE its members (splits.npz: target_val, shadow_val_k)
    holdout_fraction: float = Field(0.1, ge=0.0, lt=0.5)
    # online threat model: the attacker's pool, target candidates (target_in + target_out) included; each reference
    # model trains on a random half of it. None: max(target_in + target_out, 2 * target_in), so a reference trains on
    # as many examples as the target. Not used offline.
    pool: int | None = Field(None, gt=0)
    # attacker population ids (RMIA's z set): target non-members outside the candidates and outside every
    # reference model's training data, queried on every target and reference artifact. 0: none.
    population: int = Field(0, ge=0)


class ModelSection(_Strict):
    arch: str = "cnn-small"

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str) -> str:
        if v not in ARCHS:
            raise ValueError(f"'{v}' is not a model; allowed: {', '.join(ARCHS)}")
        return v


class TrainSection(_Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine", "step"] = "constant"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    early_stopping_patience: int = Field(0, ge=0)  # 0: off. Uses only the owner's own hold-out.
    # where to train (an execution setting: excluded from model_dump, so from every cache key; docs/scale.md).
    # auto = CUDA when torch sees a GPU (TF uses its GPU when present); cpu = never a GPU.
    device: Literal["auto", "cpu", "cuda"] = Field("auto", exclude=True)
    # older spelling of build.threads (which see); when set, build.threads takes its value
    threads: int | None = Field(None, ge=1, le=1024, exclude=True)


class CompressSection(_Strict):
    finetune_epochs: int = Field(2, ge=0)
    finetune_lr: float = Field(1e-4, gt=0)
    representative_samples: int = Field(200, ge=1)  # for full-integer int8, drawn from the owner's training data
    tf: list[str] = Field(
        default_factory=lambda: ["original", "prune-0.8", "cluster-8", "dynamic-int8", "int8", "fp16"]
    )
    torch: list[str] = Field(default_factory=lambda: ["original", "prune-0.8", "cluster-8", "int8", "dynamic-int8"])

    @field_validator("tf", "torch")
    @classmethod
    def _variants(cls, v: list[str]) -> list[str]:
        for label in v:
            parse_variant(label)
        if len(set(v)) != len(v):
            raise ValueError("variant labels must be unique")
        return v

    @model_validator(mode="after")
    def _torch_steps(self) -> "CompressSection":
        for label in self.torch:
            bad = [s for s in parse_variant(label) if s in _TF_ONLY]
            if bad:
                raise ValueError(f"torch variant '{label}': step '{bad[0]}' exists only for tf")
        return self


class ExportSection(_Strict):
    frameworks: list[Literal["tf", "torch"]] = Field(default_factory=lambda: ["tf", "torch"])
    torch_formats: list[Literal["pte", "ptl", "onnx"]] = Field(default_factory=lambda: ["pte", "ptl", "onnx"])


class AttackSection(_Strict):
    families: list[Literal[FAMILIES]] = Field(default_factory=lambda: list(FAMILIES))  # type: ignore[valid-type]
    baselines: list[Literal[BASELINES]] = Field(default_factory=lambda: list(BASELINES))  # type: ignore[valid-type]
    fprs: list[float] = Field(default_factory=lambda: [0.001, 0.01])
    bootstrap: int = Field(200, ge=0)
    seed: int = Field(0, ge=0, lt=2**31)
    # K reference (shadow) models, each trained and compressed exactly like the target; wins over splits.n_shadows.
    # None: splits.n_shadows, else 1.
    reference_models: int | None = Field(None, ge=1, le=4096)
    # online: references train on random halves of the attacker's pool, which holds the target candidates (each
    # candidate IN for about half of them; online LiRA / RMIA; needs K >= 2). offline: references never see a
    # candidate (their data is disjoint from every target set).
    threat_model: Literal["online", "offline"] = "offline"

    @field_validator("fprs")
    @classmethod
    def _fprs(cls, v: list[float]) -> list[float]:
        bad = [f for f in v if not 0.0 < f < 1.0]
        if bad:
            raise ValueError(f"{bad[0]} is not a false-positive rate; each must lie strictly between 0 and 1, "
                             "e.g. [0.001, 0.01] for 0.1 % and 1 %")
        return v
    # SAMIA: perturbed copies per queried example sent through the device at collect time (0: off), and the
    # standard deviation of the Gaussian input perturbation in preprocessed input units
    samia_perturbations: int = Field(0, ge=0, le=256)
    samia_epsilon: float = Field(0.05, gt=0)


class DeviceEntry(_Strict):
    uri: str
    identity: str | None = None  # ssh private key path
    known_hosts: str | None = None
    trust_new_host: bool = False  # never silently: printed when used
    password_env: str | None = None  # name of an env var holding a password; the password itself never in config
    binaries: str | None = None  # folder with benchmark_model / executor_runner for adb devices
    # Ray custom resource the device's collect actor is pinned to (the host its USB hub hangs on: that node is
    # started with `ray start --resources '{"NAME": 1}'`); docs/scale.md
    resource: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")


class AuditSection(_Strict):
    devices: list[DeviceEntry] = Field(default_factory=list)  # 'local' is always added


class BuildSection(_Strict):
    """What a build unit's result depends on besides the model recipe and the data, applied identically wherever
    the unit runs (serially, on an embedded Ray, on a cluster worker), part of every build and model cache key, and
    recorded in each artifact's manifest record (``build``); docs/scale.md, "Results independent of where they ran"."""

    # CPU threads of every build unit (training, compression, export, calibration): torch intra-/inter-op, TF
    # intra-/inter-op, OpenMP/BLAS pools (k-means). CPU kernels split their sums by thread count, so it shapes the
    # bytes; a Ray unit asks for this many CPUs (at most a node's). Replaces train.threads (its older spelling).
    threads: int = Field(1, ge=1, le=1024)
    # deterministic ops: torch use_deterministic_algorithms + cuDNN deterministic, TF enable_op_determinism
    deterministic: bool = True


def owner_seed(seed: int, role: str, shadow: int | None = None) -> int:
    """The seed of one model owner from the experiment's ``seed``: ``seed`` for the target, ``seed + 1 + k`` for
    reference (shadow) model k (:meth:`Experiment.owner_seed`)."""
    return int(seed) + (0 if role == "target" else 1 + int(shadow or 0))


class Experiment(_Strict):
    experiment: ExperimentSection = Field(default_factory=ExperimentSection)
    data: DataSection = Field(default_factory=DataSection)
    splits: SplitsSection = Field(default_factory=SplitsSection)
    model: ModelSection = Field(default_factory=ModelSection)
    train: TrainSection = Field(default_factory=TrainSection)
    compress: CompressSection = Field(default_factory=CompressSection)
    export: ExportSection = Field(default_factory=ExportSection)
    attack: AttackSection = Field(default_factory=AttackSection)
    audit: AuditSection = Field(default_factory=AuditSection)
    build: BuildSection = Field(default_factory=BuildSection)

    @model_validator(mode="after")
    def _threads(self) -> "Experiment":
        """``train.threads`` (the older spelling) sets ``build.threads``; both given and different is an error."""
        old = self.train.threads
        if old is not None:
            if "threads" in self.build.model_fields_set and self.build.threads != old:
                raise ValueError(
                    f"train.threads = {old} and build.threads = {self.build.threads} disagree; give build.threads "
                    "only (train.threads is its older spelling)"
                )
            self.build.threads = old
        return self

    @model_validator(mode="after")
    def _owners(self) -> "Experiment":
        """Resolve K (attack.reference_models, else splits.n_shadows, else 1) into both keys; check the threat model."""
        s, a = self.splits, self.attack
        k = a.reference_models if a.reference_models is not None else (s.n_shadows or 1)
        a.reference_models = s.n_shadows = k
        if a.threat_model == "online":
            if k < 2:
                raise ValueError(
                    f"attack.threat_model = 'online' needs attack.reference_models >= 2 (16 or more recommended; "
                    f"got {k}): each candidate must be IN for some references and OUT for others"
                )
            candidates = s.target_in + s.target_out
            if s.pool is not None and s.pool < candidates:
                raise ValueError(
                    f"splits.pool = {s.pool} is smaller than the target candidates (target_in + target_out = "
                    f"{candidates}); the online pool contains them: raise splits.pool or leave it out"
                )
        elif s.pool is not None:
            raise ValueError(
                "splits.pool is the online attacker's pool; set attack.threat_model = 'online' or remove splits.pool"
            )
        return self

    @property
    def reference_models(self) -> int:
        """K, the number of reference (shadow) models (resolved from attack.reference_models / splits.n_shadows)."""
        return int(self.attack.reference_models or 1)

    def owner_seed(self, role: str, shadow: int | None = None) -> int:
        """The seed of one model owner (its training, its drawn membership): the target trains with
        ``experiment.seed``, reference (shadow) model k with ``seed + 1 + k``. The one place this rule lives."""
        return owner_seed(self.experiment.seed, role, shadow)

    def section_hash(self, *sections: str, extra: Any = None) -> str:
        """sha256 over the JSON of the named sections (and ``extra``): the cache key of a build step."""
        payload = {s: getattr(self, s).model_dump(mode="json") for s in sections}
        payload["_extra"] = extra
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _format_error(path: Path, exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        section = err["loc"][0] if len(err["loc"]) > 1 else None
        model: type[BaseModel] = Experiment
        if section is not None and section in Experiment.model_fields:
            model = Experiment.model_fields[str(section)].annotation  # type: ignore[assignment]
        allowed = ", ".join(model.model_fields) if hasattr(model, "model_fields") else ""
        msg = f"unknown key; allowed keys here: {allowed}"
    else:  # "Input should be greater than or equal to 0" -> "must be greater than or equal to 0"
        msg = msg.replace("Input should be", "must be")
    return f"{path}: [{loc}] {msg}"


def load_experiment(path: Path | str) -> Experiment:
    """Read and validate an experiment TOML file; raise :class:`ConfigError` (one line) on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; see experiments/ for examples")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; expected TOML") from None
    try:
        return Experiment.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(path, exc)) from None
