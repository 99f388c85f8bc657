"""The import's inputs: ``--target`` / ``--shadow`` arguments, the preprocessing file, and
:class:`ImportRequest`, every option of one ``compleak import`` in one checked value."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from harness.config import ARCHS, Preprocess, parse_variant
from harness.errors import HarnessError
from harness.importer.text import read_text, require_utf8


@dataclass(frozen=True)
class ArtifactArg:
    """One ``--target PATH[:VARIANT]`` or ``--shadow PATH[:VARIANT][@K]`` argument."""

    path: Path
    variant: str | None
    shadow: int | None
    option: str  # "--target" or "--shadow", for messages


def parse_artifact_arg(value: str, option: str) -> ArtifactArg:
    """Parse ``PATH[:VARIANT]`` (``--target``) or ``PATH[:VARIANT][@K]`` (``--shadow``); validate the label.

    A ``:`` belongs to the path when what follows it contains a path separator (``C:/x`` or ``dir:with/colon``).
    """
    text, shadow = value, None
    if option == "--shadow" and "@" in text:
        head, _, k = text.rpartition("@")
        if k.isdigit():
            text, shadow = head, int(k)
        elif "/" not in k:
            raise HarnessError(
                f"{option} {value}: '@{k}' is not a shadow index; use PATH[:VARIANT][@K] with K = 0, 1, ..."
            )
    variant: str | None = None
    head, sep, tail = text.rpartition(":")
    if sep and head and "/" not in tail and "\\" not in tail:
        text, variant = head, tail
        try:
            parse_variant(variant)
        except ValueError as exc:
            raise HarnessError(f"{option} {value}: {exc}") from None
    if option == "--shadow" and shadow is None:
        shadow = 0
    return ArtifactArg(Path(text), variant, shadow, option)


def load_preprocess(path: Path | None) -> tuple[Preprocess, bool]:
    """Read a preprocessing TOML (keys of :class:`harness.config.Preprocess`, top level or under ``[preprocess]``
    or ``[data.preprocess]``). Returns the spec and whether the layout was stated explicitly."""
    if path is None:
        return Preprocess(), False
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"{path}: preprocessing file not found")
    try:
        raw = tomllib.loads(read_text(path, "the preprocessing file"))
    except tomllib.TOMLDecodeError as exc:
        raise HarnessError(f"{path}: not valid TOML ({exc})") from None
    if "data" in raw and isinstance(raw["data"], dict):
        raw = raw["data"]
    if "preprocess" in raw and isinstance(raw["preprocess"], dict):
        raw = raw["preprocess"]
    try:
        pre = Preprocess.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key; allowed: {', '.join(Preprocess.model_fields)}"
        raise HarnessError(f"{path}: [{loc}] {msg}") from None
    if pre.resize is not None and (len(pre.resize) != 2 or min(pre.resize) < 1):
        raise HarnessError(f"{path}: resize must be [H, W] with positive sizes, got {pre.resize}")
    if pre.std is not None and any(v == 0 for v in pre.std):
        raise HarnessError(f"{path}: std must not contain 0")
    return pre, "layout" in pre.model_fields_set


def resolve_dataset_spec(spec: str) -> str:
    """``npz:PATH`` / ``imagefolder:PATH`` with an absolute path (the run records it); other specs unchanged."""
    for prefix in ("npz:", "imagefolder:"):
        if spec.startswith(prefix):
            return prefix + str(Path(spec[len(prefix) :]).expanduser().resolve())
    return spec


@dataclass(frozen=True)
class ImportRequest:
    """Every option of one import, as given (paths unresolved, as the run records them), and the parsed
    ``--target`` / ``--shadow`` arguments. Constructing it checks the options: one-line :class:`HarnessError`."""

    run: Path
    targets: tuple[str, ...]
    data: str
    members: Path
    nonmembers: Path | None = None
    shadows: tuple[str, ...] = ()
    shadow_arch: str | None = None
    preprocess: Path | None = None
    data_dir: Path | None = None
    shadow_members: tuple[Path, ...] = ()
    config: Path | None = None
    target_args: tuple[ArtifactArg, ...] = field(init=False)
    shadow_args: tuple[ArtifactArg, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_args", tuple(parse_artifact_arg(t, "--target") for t in self.targets))
        object.__setattr__(self, "shadow_args", tuple(parse_artifact_arg(s, "--shadow") for s in self.shadows))
        if not self.target_args:
            raise HarnessError("give at least one --target PATH[:VARIANT]")
        if self.shadow_args and self.shadow_arch:
            raise HarnessError("give either --shadow artifacts or --shadow-arch to train shadows, not both")
        if self.shadow_members and not (self.shadow_args or self.shadow_arch):
            raise HarnessError("--shadow-members needs --shadow artifacts or --shadow-arch")
        if self.shadow_arch is not None and self.shadow_arch not in ARCHS:
            raise HarnessError(
                f"--shadow-arch {self.shadow_arch}: not a zoo architecture; allowed: {', '.join(ARCHS)} "
                f"(training a user's own model file is not supported)"
            )
        for what, value in [
            ("the run directory", self.run), ("--data", self.data), ("--data-dir", self.data_dir),
            ("--members", self.members), ("--nonmembers", self.nonmembers), ("--preprocess", self.preprocess),
            ("--config", self.config), *[("--target", a.path) for a in self.target_args],
            *[("--shadow", a.path) for a in self.shadow_args], *[("--shadow-members", p) for p in self.shadow_members],
        ]:
            require_utf8(what, value)
