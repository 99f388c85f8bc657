"""``compleak import``: audit artifacts built outside this tool (see docs/import.md).

An auditor holds the files an app really ships (``model_fp32.tflite``, ``model_int8.tflite``, a ``.pte`` ...) and
the owner's data with the membership of the target model. :func:`import_run` turns that into an ordinary run
directory, so that ``collect``, ``attack`` and ``report`` work on it unchanged:

- every ``--target PATH[:VARIANT]`` file is hashed, its format detected from its content, its input/output specs and
  quantization parameters read from the file itself, checked (readable, runs, one input the data can fill, the same
  class count as the other variants) and copied to ``RUN/artifacts/`` as a manifest record with ``role="target"``;
- the membership lists become ``splits.npz`` (``target_in`` / ``target_out``; shadow splits disjoint from every
  target id), after checking they are disjoint, balancing them, and refusing sets too small for the lowest FPR;
- the shadow side is either user-supplied artifacts (``--shadow PATH[:VARIANT][@K]`` with ``--shadow-members``) or
  shadow models trained here with a zoo architecture and compressed the way each target variant declares;
- ``RUN/experiment.toml`` records the dataset and preprocessing (collect rebuilds the query inputs from it) and
  ``RUN/threat_model.json`` states what the attacker was assumed to have.
"""

from __future__ import annotations

import codecs
import csv
import functools
import json
import math
import os
import shutil
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from pydantic import ValidationError
from rich.console import Console

from rundir import (
    ArtifactRecord,
    ContractError,
    Manifest,
    RunDir,
    Splits,
    TensorSpec,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    name_problem,
    sha256_file,
)
from harness.build.artifacts import artifact_id
from harness.config import ARCHS, Experiment, Preprocess, load_experiment, owner_seed, parse_variant
from harness.errors import HarnessError, esc
from harness.build.threat import owners_summary

FRAMEWORK = "external"  # framework field of every artifact in an imported run (targets and their shadows alike)
TF_FORMATS = ("tflite",)
TORCH_FORMATS = ("pte", "ptl", "onnx")
_QUANT_DTYPES = ("int8", "uint8", "int16")
_TRUE = {"1", "true", "yes", "y", "member", "in", "train", "t"}
_FALSE = {"0", "false", "no", "n", "nonmember", "non-member", "non_member", "out", "test", "f"}
_ID_COLUMNS = ("id", "index", "idx", "example_id", "example", "sample_id")
_MEMBER_COLUMNS = ("member", "membership", "is_member", "in_training", "in_train", "split")
_ACCURACY_SAMPLE = 500  # members and as many non-members run on the host per artifact (output kind, accuracy)


# --------------------------------------------------------------------------- arguments


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
        raw = tomllib.loads(_read_text(path, "the preprocessing file"))
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


# --------------------------------------------------------------------------- membership


_MAX_MEMBERSHIP_BYTES = 256 * 2**20  # a membership file larger than this is refused (reads are bounded)
_MAX_ID_DIGITS = 18  # more digits than any dataset has examples (and than int64 holds)


def _parse_id(text: str, where: str, n: int) -> int:
    """One example id: plain ASCII decimal digits only (no sign, spaces, ``_``, ``.``, or non-ASCII digits such as
    full-width ``６``, all of which Python's ``int()`` would accept), within 0..n-1."""
    shown = _shown(text)
    if not text:
        raise HarnessError(f"{where}: empty example id; give one plain decimal id (0..{n - 1})")
    if not (text.isascii() and text.isdigit()):
        raise HarnessError(
            f"{where}: '{shown}' is not a plain example id; ids are ASCII decimal digits only (no sign, spaces, "
            f"'_', '.', or other digit characters), 0..{n - 1}"
        )
    if len(text) > _MAX_ID_DIGITS or int(text) >= n:
        raise HarnessError(f"{where}: example id {shown} is outside the dataset (0..{n - 1})")
    return int(text)


def _shown(text: str, limit: int = 40) -> str:
    """A value from a user's file as a message may show it: one line, control characters escaped, bounded."""
    out = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])
    return out + ("…" if len(text) > limit else "")


def _read_text(path: Path, what: str) -> str:
    """``path`` as text: UTF-8 (a byte-order mark is dropped) or UTF-16 with a BOM; bounded; one-line errors."""
    try:
        size = path.stat().st_size
        if size > _MAX_MEMBERSHIP_BYTES:
            raise HarnessError(f"{path}: {size} bytes is too large for {what} (limit {_MAX_MEMBERSHIP_BYTES} bytes)")
        raw = path.read_bytes()
    except OSError as exc:
        raise HarnessError(f"{path}: cannot read {what} ({exc.strerror})") from None
    try:
        if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return raw.decode("utf-16")
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HarnessError(
            f"{path}: not UTF-8 text (undecodable byte at offset {exc.start}); save {what} as UTF-8"
        ) from None


def read_membership(path: Path, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Read membership from ``path``: one example id per line (members only), or a CSV with a header naming an id
    column (``id``/``index``/...) and a membership column (``member``/``membership``/``is_member``/``split``; values
    1/0, true/false, member/nonmember, in/out). Ids index the dataset (0..n-1) and are plain ASCII decimal digits;
    each id appears once. UTF-8 (with or without a byte-order mark) or UTF-16 with a BOM; blank lines and lines
    starting with ``#`` are skipped. Every refusal names the file and the line.

    Returns (members int64 [M], non-members int64 [K] or None for a plain list), in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"{path}: membership file not found")
    text = _read_text(path, "a membership file")
    if "\x00" in text:
        raise HarnessError(f"{path}: contains NUL bytes; expected one example id per line or a CSV")
    lines = [
        (k, ln) for k, ln in enumerate(text.splitlines(), start=1) if ln.strip() and not ln.lstrip().startswith("#")
    ]
    if not lines:
        raise HarnessError(f"{path}: no example ids in the file")
    first = lines[0][1]
    is_csv = path.suffix.lower() in (".csv", ".tsv") or "," in first or "\t" in first
    seen: dict[int, int] = {}

    def take(raw: str, k: int) -> int:
        i = _parse_id(raw, f"{path} line {k}", n)
        if i in seen:
            raise HarnessError(
                f"{path} line {k}: example id {i} is listed again (first on line {seen[i]}); list each id once"
            )
        seen[i] = k
        return i

    if not is_csv:
        members, nonmembers = np.asarray([take(ln, k) for k, ln in lines], dtype=np.int64), None
    else:
        delimiter = "\t" if "\t" in first else ","
        rows = [(k, next(csv.reader([ln], delimiter=delimiter), [])) for k, ln in lines]
        header = [c.strip().lower() for c in rows[0][1]]
        id_col = next((header.index(c) for c in _ID_COLUMNS if c in header), None)
        mem_col = next((header.index(c) for c in _MEMBER_COLUMNS if c in header), None)
        if id_col is None or mem_col is None:
            raise HarnessError(
                f"{path} line {rows[0][0]}: a membership CSV needs a header with an id column "
                f"({'/'.join(_ID_COLUMNS)}) and a membership column ({'/'.join(_MEMBER_COLUMNS)}); "
                f"found {[_shown(c) for c in header]}"
            )
        mem: list[int] = []
        non: list[int] = []
        for k, row in rows[1:]:
            if len(row) <= max(id_col, mem_col):
                raise HarnessError(f"{path} line {k}: {len(row)} field(s), the header has {len(header)}")
            i = take(row[id_col], k)
            flag = row[mem_col].strip().lower()
            if flag in _TRUE:
                mem.append(i)
            elif flag in _FALSE:
                non.append(i)
            else:
                raise HarnessError(
                    f"{path} line {k}: membership '{_shown(flag)}' is not one of 1/0, true/false, member/nonmember, "
                    f"in/out"
                )
        members = np.asarray(mem, dtype=np.int64)
        nonmembers = np.asarray(non, dtype=np.int64) if non else None  # members only: like a plain list
    if not len(members):
        raise HarnessError(f"{path}: no members listed")
    return members, nonmembers


def _overlap_error(a: np.ndarray, b: np.ndarray, what: str) -> None:
    both = np.intersect1d(a, b)
    if len(both):
        eg = ", ".join(str(int(i)) for i in both[:3])
        raise HarnessError(f"{what} share {len(both)} example ids (e.g. {eg}); membership sets must be disjoint")


def _subsample(ids: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` of ``ids`` chosen at random, kept in their original order."""
    keep = np.sort(rng.choice(len(ids), size=n, replace=False))
    return ids[keep]


def min_nonmembers(fpr: float) -> int:
    """Non-members needed to resolve TPR at false-positive rate ``fpr``: n >= 1/FPR (one false positive)."""
    return int(math.ceil(1.0 / fpr - 1e-9))


@dataclass
class Membership:
    """Target membership after checks: ids in file order, and what was done to balance them."""

    members: np.ndarray  # int64 [M]
    nonmembers: np.ndarray  # int64 [M]
    notes: list[str] = field(default_factory=list)


def resolve_membership(
    members_file: Path,
    nonmembers_file: Path | None,
    n: int,
    lowest_fpr: float,
    seed: int,
    exclude: np.ndarray | None = None,
    what: str = "target",
    avoid: np.ndarray | None = None,
) -> Membership:
    """Read, check, balance and size-check one model's membership (see :func:`read_membership`).

    Without explicit non-members they are drawn at random from the ids that are neither members nor in ``exclude``
    (which must not overlap this model's sets) or ``avoid`` (ids claimed elsewhere, e.g. by shadow membership files).
    Unequal sets are balanced by subsampling the larger one (seeded). ``lowest_fpr`` > 0 enforces n >= 1/FPR.
    """
    rng = np.random.default_rng(seed)
    members, nonmembers = read_membership(members_file, n)
    source = f"{members_file}"
    if nonmembers_file is not None:
        if nonmembers is not None:
            raise HarnessError(
                f"{members_file}: already lists non-members; "
                f"drop --nonmembers {nonmembers_file} or the CSV's non-member rows"
            )
        listed, extra = read_membership(nonmembers_file, n)
        if extra is not None:
            raise HarnessError(f"{nonmembers_file}: give non-members as a plain id list (one per line), not a CSV")
        nonmembers, source = listed, f"{members_file} and {nonmembers_file}"
        _overlap_error(members, nonmembers, f"{members_file} and {nonmembers_file}")
    elif nonmembers is not None:
        _overlap_error(members, nonmembers, f"{members_file}: members and non-members")
    notes: list[str] = []
    if nonmembers is None:
        taken = np.concatenate([members, *(a for a in (exclude, avoid) if a is not None)])
        pool = np.setdiff1d(np.arange(n, dtype=np.int64), taken)
        k = min(len(members), len(pool))
        nonmembers = _subsample(rng.permutation(pool), k, rng)
        notes.append(f"{what} non-members: {k} ids drawn at random from the {len(pool)} ids not listed as members")
    if exclude is not None:
        _overlap_error(np.concatenate([members, nonmembers]), exclude, f"{source} and the target membership")
    if len(members) != len(nonmembers):
        m = min(len(members), len(nonmembers))
        notes.append(
            f"{what} sets balanced to {m} members and {m} non-members "
            f"(randomly subsampled from {len(members)} members and {len(nonmembers)} non-members)"
        )
        if len(members) > m:
            members = _subsample(members, m, rng)
        else:
            nonmembers = _subsample(nonmembers, m, rng)
    if lowest_fpr > 0:
        need = min_nonmembers(lowest_fpr)
        if len(nonmembers) < need:
            raise HarnessError(
                f"{source}: {len(nonmembers)} {what} non-members cannot resolve TPR at FPR {lowest_fpr:g}; the rule is "
                f"n_nonmembers >= 1/FPR, so {need} are needed (and as many members); give more ids or raise the lowest "
                f"FPR in attack.fprs of --config"
            )
    return Membership(members.astype(np.int64), nonmembers.astype(np.int64), notes)


# --------------------------------------------------------------------------- artifacts


@dataclass
class Inspected:
    """What an artifact file says about itself, read from its content."""

    path: Path
    format: str
    sha256: str
    bytes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    n_classes: int
    runtime: dict[str, Any]
    output_kind: str = "logits"
    host_accuracy: dict[str, float | None] = field(default_factory=dict)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:300]


def _naming(path: Path, fallback: str, exc: BaseException) -> str:
    """The runtime's own one-line message when it already names ``path``, else ``path: fallback``."""
    line = _first_line(exc)
    return line if line.startswith(str(path)) else f"{path}: {fallback}"


def _runner():
    try:
        from devices.ondevice import compleak_runner
    except ImportError as exc:  # the devices colleague's module is missing or broken
        raise HarnessError(f"devices/ondevice/compleak_runner.py cannot be imported ({_first_line(exc)})") from None
    return compleak_runner


def describe_artifact(path: Path) -> Inspected:
    """Hash ``path``, detect its format from content and read its tensor specs; one-line error if unreadable.

    Raises :class:`HarnessError` naming the file for: missing/empty files, content that is no known model format,
    files the format's reader refuses (truncated, corrupt), more than one input, outputs that are not [N, C].
    """
    runner = _runner()
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"{path}: artifact file not found")
    size = path.stat().st_size
    if size == 0:
        raise HarnessError(f"{path}: empty file; re-copy the artifact")
    try:
        fmt = runner.detect_format(str(path))
    except Exception as exc:
        raise HarnessError(_naming(path, f"not a model artifact ({_first_line(exc)})", exc)) from None
    if fmt not in TF_FORMATS + TORCH_FORMATS:
        raise HarnessError(f"{path}: content is not TF-Lite, ONNX, ExecuTorch or PyTorch Mobile (detected {fmt!r})")
    try:
        desc = runner.describe(str(path))
    except Exception as exc:
        raise HarnessError(
            _naming(path, f"unreadable {fmt} file ({_first_line(exc)})", exc)
            + "; it may be truncated or corrupt, re-export or re-copy it"
        ) from None
    try:
        inputs = [TensorSpec.model_validate(t) for t in desc["inputs"]]
        outputs = [TensorSpec.model_validate(t) for t in desc["outputs"]]
    except (KeyError, TypeError, ValidationError) as exc:
        raise HarnessError(f"{path}: tensor details could not be read ({_first_line(exc)})") from None
    if len(inputs) != 1:
        raise HarnessError(f"{path}: has {len(inputs)} inputs; only single-input image classifiers can be audited")
    if not outputs or len(outputs[0].shape) != 2 or outputs[0].shape[-1] < 2:
        shape = outputs[0].shape if outputs else None
        raise HarnessError(f"{path}: first output has shape {shape}; expected class scores [N, C] with C >= 2")
    return Inspected(
        path=path,
        format=fmt,
        sha256=sha256_file(path),
        bytes=size,
        inputs=inputs,
        outputs=outputs,
        n_classes=int(outputs[0].shape[-1]),
        runtime=dict(desc.get("runtime") or {}),
    )


def check_input_shape(
    art: Inspected, sample: np.ndarray, pre: Preprocess, layout_explicit: bool, preprocess_file: Path | None
) -> str:
    """Check that query inputs (float32 NHWC ``sample`` [M, H, W, C]) fill the artifact's single input.

    Returns the layout the artifact takes (``NHWC`` or ``NCHW``; stated in the preprocessing file, or inferred
    from the file's input shape when not stated). Raises :class:`HarnessError` naming both files otherwise.
    """
    spec = art.inputs[0]
    want = list(spec.shape[1:])
    h, w, c = sample.shape[1:]
    nhwc, nchw = [h, w, c], [c, h, w]

    def fits(shape: list[int]) -> bool:
        return len(want) == 3 and all(a in (-1, b) for a, b in zip(want, shape))

    declared = pre.layout if layout_explicit else None
    if declared is None and fits(nhwc) and fits(nchw):  # ambiguous (e.g. dynamic dims): what the file says
        return "NCHW" if getattr(spec, "layout", None) == "NCHW" else "NHWC"
    if declared == "NCHW" and fits(nchw):
        return "NCHW"
    if declared in (None, "NHWC") and fits(nhwc):
        return "NHWC"
    if declared is None and fits(nchw):
        return "NCHW"
    src = str(preprocess_file) if preprocess_file else "the default preprocessing"
    hint = ""
    if len(want) == 3:
        chw = declared == "NCHW" or (declared is None and want[0] in (1, 3) and want[2] not in (1, 3))
        mc, mh, mw = (want[0], want[1], want[2]) if chw else (want[2], want[0], want[1])
        if (mh, mw) != (h, w) and mh > 0 and mw > 0:
            hint = f"; set resize = [{mh}, {mw}] in the preprocessing TOML"
        elif mc != c and mc > 0:
            hint = f"; the data has {c} channel(s), the model takes {mc}"
        elif declared:
            hint = f"; the file takes {'NHWC' if declared == 'NCHW' else 'NCHW'}, set layout accordingly"
    raise HarnessError(
        f"{art.path}: expects input {spec.shape}{' (' + declared + ')' if declared else ''} but {src} makes inputs "
        f"of shape [N, {h}, {w}, {c}] (NHWC){hint}"
    )


def probe_artifact(art: Inspected, x: np.ndarray, y: np.ndarray, n_members: int, layout: str = "auto") -> None:
    """Run ``art`` on the host on float32 NHWC ``x`` [M, H, W, C] (first ``n_members`` rows are members, labels
    ``y`` int64 [M]); set its output kind (probabilities when every row is non-negative and sums to 1) and host
    accuracy. Raises :class:`HarnessError` naming the file when the runtime cannot execute it."""
    runner = _runner()
    try:
        model = runner.load_model(str(art.path), layout=layout)
        out = np.asarray(model.predict(x.astype(np.float32)), dtype=np.float32)
    except Exception as exc:
        raise HarnessError(f"{art.path}: the host runtime cannot run it ({_first_line(exc)})") from None
    if out.ndim != 2 or out.shape[0] != len(x):
        raise HarnessError(
            f"{art.path}: produced outputs of shape {list(out.shape)} for {len(x)} inputs; expected [N, C]"
        )
    if not np.isfinite(out).all():
        raise HarnessError(
            f"{art.path}: produced NaN or Inf on valid inputs; check the preprocessing (scale, mean, std)"
        )
    probs = bool((out >= -1e-6).all() and np.allclose(out.sum(axis=1), 1.0, atol=0.05))
    art.output_kind = "probs" if probs else "logits"
    pred = out.argmax(axis=1)
    acc = lambda sl: float((pred[sl] == y[sl]).mean()) if len(pred[sl]) else None  # noqa: E731
    art.host_accuracy = {"train": acc(slice(0, n_members)), "test": acc(slice(n_members, None))}


def _default_variant(art: Inspected, taken: set[str], arg: ArtifactArg) -> str:
    if art.inputs[0].dtype in _QUANT_DTYPES:
        return "int8"
    if "original" not in taken:
        return "original"
    raise HarnessError(
        f"{arg.path}: say which compression it carries: {arg.option} {arg.path}:VARIANT "
        f"(original, prune-0.8, cluster-8, dynamic-int8, int8, fp16, ...)"
    )


def _copy_into(src: Path, dest: Path, sha256: str) -> None:
    """Copy ``src`` to ``dest`` atomically and verify the copy's sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and sha256_file(dest) == sha256:
        return
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
        if sha256_file(tmp) != sha256:
            raise HarnessError(f"{src}: changed while being copied into {dest.parent}; retry")


class _Staging:
    """Where an import writes: a private folder inside the run (``RUN/.import-staging-XXXXXXXX``, mode 0700).

    Everything the import produces (copied and trained artifacts, ``build/``, ``manifest.json``, ``splits.npz``,
    ``experiment.toml``, ``threat_model.json``) is written here, checked (:meth:`check`), and only then moved into
    the run with renames (:meth:`commit`; ``manifest.json`` last, a replaced file is put back if a rename fails).
    On any failure the folder is removed, and so is the run directory itself when this import created it: a failed
    import leaves the run exactly as it was.
    """

    def __init__(self, rd: RunDir) -> None:
        self.rd = rd
        self._dir: Path | None = None
        self._created: list[Path] = []  # folders this import created (removed again on failure)

    @property
    def dir(self) -> Path:
        """The staging folder, created (with the run directory when missing) on first use."""
        if self._dir is None:
            root = self.rd.root
            if root.exists() and not root.is_dir():
                raise HarnessError(f"{root}: exists and is not a folder; import into a run directory")
            missing: list[Path] = []
            probe = root
            while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
                missing.append(probe)
                probe = probe.parent
            for folder in reversed(missing):
                folder.mkdir()
                self._created.append(folder)
            self._dir = Path(tempfile.mkdtemp(prefix=".import-staging-", dir=root))
        return self._dir

    def __enter__(self) -> "_Staging":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        if exc_type is not None:
            for folder in reversed(self._created):
                try:
                    folder.rmdir()
                except OSError:
                    break

    def final_path(self, staged: str | Path) -> str:
        """Where a path inside the staging folder will be once committed (other paths unchanged)."""
        path = Path(staged)
        base = self.dir.resolve()
        if path.resolve().is_relative_to(base):
            return str(self.rd.root.resolve() / path.resolve().relative_to(base))
        return str(staged)

    def check(self, records: list[ArtifactRecord]) -> None:
        """Read back what was staged: manifest, splits, experiment, threat model, and each new artifact's sha256."""
        stage = RunDir(self.dir)
        try:
            manifest = Manifest.load(stage.manifest)
            Splits.load(stage.splits).validate("membership")
            json.loads((stage.root / "threat_model.json").read_text(encoding="utf-8"))
        except (ContractError, OSError, ValueError) as exc:
            raise HarnessError(f"{self.rd.root}: the import did not read back ({_first_line(exc)}); nothing was "
                               f"changed; please report this") from None
        load_experiment(stage.experiment)
        for rec in records:
            staged = stage.root / rec.path
            path = staged if staged.is_file() else self.rd.artifact_path(rec)
            listed = rec.id in {a.id for a in manifest.artifacts}
            if not listed or not path.is_file() or sha256_file(path) != rec.sha256:
                raise HarnessError(f"{path}: does not hold artifact {rec.id} (sha256 {rec.sha256[:12]}); retry")

    def commit(self) -> None:
        """Move every staged file to the same place in the run (renames; ``manifest.json`` last). Every destination
        is checked first (inside the run, not a folder); when a rename fails, what was already moved is undone."""
        stage = self.dir
        files = sorted(
            (p.relative_to(stage) for p in stage.rglob("*") if p.is_file() and not p.is_symlink()),
            key=lambda rel: (str(rel) == "manifest.json", str(rel)),
        )
        for rel in files:
            dest = self.rd.inside(rel.as_posix(), "imported file", "compleak import")
            if dest.is_dir() and not dest.is_symlink():
                raise HarnessError(f"{dest}: is a folder where the import must write a file; move it away and retry")
        backup = stage / ".replaced"
        done: list[tuple[Path, bool, list[Path]]] = []
        try:
            for rel in files:
                dest = self.rd.root / rel
                had = dest.exists() or dest.is_symlink()
                if had:
                    (backup / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(dest, backup / rel)
                made = [d for d in reversed(dest.parents) if d.is_relative_to(self.rd.root) and not d.exists()]
                for d in made:
                    d.mkdir()
                os.replace(stage / rel, dest)
                done.append((rel, had, made))
        except BaseException:
            for rel, had, made in reversed(done):
                dest = self.rd.root / rel
                if had:
                    os.replace(backup / rel, dest)
                else:
                    dest.unlink(missing_ok=True)
                for d in reversed(made):
                    try:
                        d.rmdir()
                    except OSError:
                        pass
            raise


def _staged(fn: Any) -> Any:
    """Run an import with a :class:`_Staging` of its run directory (passed as ``staging=``)."""

    @functools.wraps(fn)
    def wrapper(run: Path, *args: Any, **kwargs: Any) -> Any:
        with _Staging(RunDir(run)) as staging:
            return fn(run, *args, staging=staging, **kwargs)

    return wrapper


def _record(
    art: Inspected,
    role: str,
    variant: str,
    shadow: int | None,
    layout: str,
    compression: dict[str, Any],
    toolchain: dict[str, Any],
    **extra: Any,
) -> ArtifactRecord:
    tag = "target" if role == "target" else f"shadow{shadow}"
    aid = artifact_id(FRAMEWORK, tag, variant, art.format)
    inputs = [t.model_copy(update={"layout": layout}) if i == 0 else t for i, t in enumerate(art.inputs)]
    return ArtifactRecord(
        id=aid,
        role=role,  # type: ignore[arg-type]
        shadow=shadow,
        variant=variant,
        framework=FRAMEWORK,
        format=art.format,  # type: ignore[arg-type]
        path=f"artifacts/{aid}",
        sha256=art.sha256,
        bytes=art.bytes,
        inputs=inputs,
        outputs=art.outputs,
        output_kind=art.output_kind,  # type: ignore[arg-type]
        compression=compression,
        host_accuracy=art.host_accuracy,
        toolchain=toolchain,
        **extra,
    )


def _quantization(art: Inspected) -> dict[str, Any]:
    """Quantization parameters read from the file: I/O dtypes, scales and zero points."""
    q: dict[str, Any] = {}
    for kind, t in (("input", art.inputs[0]), ("output", art.outputs[0])):
        q[f"{kind}_dtype"] = t.dtype
        if t.scale is not None:
            q[f"{kind}_scale"], q[f"{kind}_zero_point"] = t.scale, t.zero_point
    return q


# --------------------------------------------------------------------------- experiment.toml


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):  # JSON escapes are TOML escapes, except that TOML also forbids a raw DEL
        return json.dumps(v).replace("\x7f", "\\u007f")
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_table(prefix: str, table: dict[str, Any], out: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if v is not None and not isinstance(v, dict) and not _is_table_list(v)}
    if prefix and scalars:
        out.append(f"\n[{prefix}]")
    for k, v in scalars.items():
        out.append(f"{k} = {_toml_value(v)}")
    for k, v in table.items():
        name = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            _toml_table(name, v, out)
        elif _is_table_list(v):
            for item in v:
                out.append(f"\n[[{name}]]")
                out.extend(f"{ik} = {_toml_value(iv)}" for ik, iv in item.items() if iv is not None)


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def experiment_toml(exp: Experiment, header: str) -> str:
    """``exp`` as TOML text that :func:`harness.config.load_experiment` reads back to an equal Experiment."""
    lines = [f"# {ln}" for ln in header.splitlines()]
    _toml_table("", exp.model_dump(mode="json"), lines)
    text = "\n".join(lines) + "\n"
    if Experiment.model_validate(tomllib.loads(text)) != exp:  # never write a config that reads back differently
        raise HarnessError("internal: the run's experiment.toml did not round-trip; please report this")
    return text


# --------------------------------------------------------------------------- shadows


def _draw_shadow_split(pool: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(pool)
    return perm[:n].astype(np.int64), perm[n : 2 * n].astype(np.int64)


def _builder(fmt: str):
    try:
        if fmt in TF_FORMATS:
            from harness.build.tf_pipeline import build_variants
        else:
            from harness.build.torch_pipeline import build_variants
    except ImportError as exc:
        raise HarnessError(f"training shadow models for {fmt} needs the builder ({_first_line(exc)})") from None
    return build_variants


# --------------------------------------------------------------------------- the stage


def _require_utf8(what: str, value: object) -> None:
    """Refuse a path that is not valid UTF-8 (bytes the file system encoding cannot decode): the run records paths
    as text in experiment.toml, manifest.json and threat_model.json. Any other non-ASCII path is supported."""
    if value is None:
        return
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise HarnessError(
            f"{_shown(text, 200)}: {what} path is not valid UTF-8; the run records it as text, so rename it "
            f"(or link it from a UTF-8 path) and retry"
        ) from None


def _resolve_dataset_spec(spec: str) -> str:
    for prefix in ("npz:", "imagefolder:"):
        if spec.startswith(prefix):
            return prefix + str(Path(spec[len(prefix) :]).expanduser().resolve())
    return spec


@_staged
def import_run(
    run: Path,
    targets: list[str],
    data: str,
    members: Path,
    nonmembers: Path | None = None,
    shadows: Iterable[str] = (),
    shadow_arch: str | None = None,
    preprocess: Path | None = None,
    data_dir: Path | None = None,
    console: Console | None = None,
    shadow_members: Iterable[Path] = (),
    config: Path | None = None,
    *,
    staging: _Staging | None = None,
) -> Path:
    """Create or extend the run directory ``run`` from artifacts built outside this tool; returns ``run``.

    Args:
        targets: ``PATH[:VARIANT]`` of each shipped artifact (the first fp32 one defaults to ``original``).
        data: dataset spec (``fashion-mnist``, ``npz:PATH``, ``imagefolder:PATH`` ...); ids index its examples.
        members / nonmembers: target membership (id lists, or one CSV with a membership column).
        shadows: ``PATH[:VARIANT][@K]`` user-supplied shadow artifacts; ``shadow_members`` gives, per K in order,
            the ids shadow K was trained on (same file formats as ``members``).
        shadow_arch: zoo architecture to train shadow models with instead (approximation of the target's training).
        preprocess: TOML with resize/scale/mean/std/layout; config: experiment.toml whose train, compress, attack
            and experiment sections apply (default: the run's own, else the defaults).
    Writes ``artifacts/``, ``manifest.json``, ``splits.npz``, ``experiment.toml`` and ``threat_model.json``,
    all staged and checked first (``staging``, supplied by the decorator): a failed import changes nothing.
    """
    assert staging is not None  # supplied by @_staged
    console = console or Console()
    rd = RunDir(run)
    rd.require_writable("import", "artifacts")
    shadows, shadow_members = list(shadows), [Path(p) for p in shadow_members]
    target_args = [parse_artifact_arg(t, "--target") for t in targets]
    shadow_args = [parse_artifact_arg(s, "--shadow") for s in shadows]
    if not target_args:
        raise HarnessError("give at least one --target PATH[:VARIANT]")
    if shadow_args and shadow_arch:
        raise HarnessError("give either --shadow artifacts or --shadow-arch to train shadows, not both")
    if shadow_members and not (shadow_args or shadow_arch):
        raise HarnessError("--shadow-members needs --shadow artifacts or --shadow-arch")
    if shadow_arch is not None and shadow_arch not in ARCHS:
        raise HarnessError(
            f"--shadow-arch {shadow_arch}: not a zoo architecture; allowed: {', '.join(ARCHS)} "
            f"(training a user's own model file is not supported)"
        )
    for what, value in [
        ("the run directory", run), ("--data", data), ("--data-dir", data_dir), ("--members", members),
        ("--nonmembers", nonmembers), ("--preprocess", preprocess), ("--config", config),
        *[("--target", a.path) for a in target_args], *[("--shadow", a.path) for a in shadow_args],
        *[("--shadow-members", p) for p in shadow_members],
    ]:
        _require_utf8(what, value)

    # ---- configuration: --config, else the run's own experiment.toml, else defaults
    if config is not None:
        base = load_experiment(config)
    elif rd.experiment.is_file():
        base = load_experiment(rd.experiment)
    else:
        base = Experiment()
    pre, layout_explicit = load_preprocess(preprocess)
    if preprocess is None and rd.experiment.is_file() and config is None:
        pre = base.data.preprocess
    seed = base.experiment.seed
    lowest_fpr = min(base.attack.fprs) if base.attack.fprs else 0.0

    # ---- data
    from harness.data import load_dataset, query_inputs

    spec = _resolve_dataset_spec(data)
    ddir = Path(data_dir).expanduser().resolve() if data_dir else None
    console.print(f"loading dataset [bold]{esc(data)}[/]")
    ds = load_dataset(spec, ddir)
    n = len(ds.y)
    labels = np.asarray(ds.y, dtype=np.int64)

    # ---- target membership
    claimed = [np.concatenate([a for a in read_membership(p, n) if a is not None]) for p in shadow_members]
    ms = resolve_membership(
        Path(members), Path(nonmembers) if nonmembers else None, n, lowest_fpr, seed,
        avoid=np.concatenate(claimed) if claimed else None,
    )
    for note in ms.notes:
        console.print(f"[yellow]note[/]: {esc(note)}")
    m_probe = ms.members[: _ACCURACY_SAMPLE]
    n_probe = ms.nonmembers[: _ACCURACY_SAMPLE]
    probe_ids = np.concatenate([m_probe, n_probe])
    try:
        probe_x = query_inputs(ds, pre, probe_ids)
    except (HarnessError, ContractError) as exc:
        raise HarnessError(f"{preprocess or 'default preprocessing'}: {exc}") from None
    except Exception as exc:
        raise HarnessError(
            f"{preprocess or 'default preprocessing'}: cannot preprocess {data} ({_first_line(exc)})"
        ) from None

    # ---- an existing run must hold the same target membership
    existing: Splits | None = rd.load_splits() if rd.splits.is_file() else None
    if existing is not None and not (
        np.array_equal(existing.target_in, ms.members) and np.array_equal(existing.target_out, ms.nonmembers)
    ):
        raise HarnessError(
            f"{rd.splits}: this run already holds a different target membership "
            f"({len(existing.target_in)} members); import into a new run directory"
        )
    old = rd.load_manifest() if rd.manifest.is_file() else Manifest()

    # ---- targets
    inspected: list[tuple[ArtifactArg, Inspected]] = []
    for arg in target_args:
        art = describe_artifact(arg.path)
        inspected.append((arg, art))
    classes = {art.n_classes for _, art in inspected}
    if len(classes) > 1:
        a, b = inspected[0][1], next(x for _, x in inspected if x.n_classes != inspected[0][1].n_classes)
        raise HarnessError(
            f"{b.path}: has {b.n_classes} classes but {a.path} has {a.n_classes}; "
            f"the variants of one target must share the output classes"
        )
    n_classes = classes.pop()
    if n_classes < int(labels.max()) + 1:
        raise HarnessError(
            f"{inspected[0][1].path}: outputs {n_classes} classes "
            f"but dataset {data} has labels up to {int(labels.max())}"
        )

    records: list[ArtifactRecord] = []
    taken: dict[tuple[str, str], Path] = {}
    variants: list[tuple[str, str]] = []  # (variant, format) of the targets
    for arg, art in inspected:
        layout = check_input_shape(art, probe_x, pre, layout_explicit, preprocess)
        probe_artifact(art, probe_x, labels[probe_ids], len(m_probe), layout)
        variant = arg.variant or _default_variant(art, {v for v, f in taken if f == art.format}, arg)
        if variant == "original" and art.inputs[0].dtype in _QUANT_DTYPES:
            raise HarnessError(
                f"{art.path}: declared 'original' but its input is {art.inputs[0].dtype}-quantized; label it :int8"
            )
        if (variant, art.format) in taken:
            raise HarnessError(
                f"{art.path}: variant '{variant}' ({art.format}) is already given by {taken[(variant, art.format)]}"
            )
        taken[(variant, art.format)] = art.path
        variants.append((variant, art.format))
        rec = _record(
            art,
            "target",
            variant,
            None,
            layout,
            compression={"steps": parse_variant(variant), "declared_by": "user", "quantization": _quantization(art)},
            toolchain={"built_by": "external", "host_runtime": art.runtime},
            source_path=str(art.path.resolve()),
        )
        records.append(rec)
        console.print(
            f"target [bold]{esc(rec.id)}[/]: {art.format}, input {art.inputs[0].shape} {art.inputs[0].dtype}, "
            f"{n_classes} classes, {art.output_kind}, sha256 {art.sha256[:12]}"
        )
    if not any(v == "original" for v, _ in variants):
        console.print("[yellow]note[/]: no target is labelled 'original'; SR and MR attacks need it, only NR will run")

    # ---- shadow side: covers every target of the run (earlier imports included)
    target_ids = np.concatenate([ms.members, ms.nonmembers])
    for a in old.targets():
        if a.framework == FRAMEWORK and (a.variant, a.format) not in variants:
            if int(a.outputs[0].shape[-1]) != n_classes:
                raise HarnessError(
                    f"{rd.manifest}: holds target {a.id} with {a.outputs[0].shape[-1]} classes, "
                    f"the new ones have {n_classes}"
                )
            variants.append((a.variant, a.format))
    shadow_in: list[np.ndarray] = []
    shadow_out: list[np.ndarray] = []
    shadow_records: list[ArtifactRecord] = []
    kept: Splits | None = None
    threat_shadow: dict[str, Any]
    if shadow_args:
        shadow_in, shadow_out, shadow_records, threat_shadow = _supplied_shadows(
            shadow_args, shadow_members, variants, n_classes, n, target_ids, seed, ds, pre, labels, layout_explicit,
            preprocess, query_inputs, console,
        )
    elif shadow_arch:
        k_total = max(len(shadow_members), base.splits.n_shadows if config is not None else 1)
        shadow_in, shadow_out = _shadow_splits(shadow_members, k_total, n, target_ids, len(ms.members), seed, console)
        exp_for_build = _experiment(base, spec, ddir, pre, ms, shadow_in, shadow_out, shadow_arch, variants, run)
        shadow_records, threat_shadow = _trained_shadows(
            exp_for_build, ds, Splits(labels, ms.members, ms.nonmembers, shadow_in, shadow_out), variants, n_classes,
            RunDir(staging.dir), pre, layout_explicit, preprocess, labels, query_inputs, console,
        )
    elif existing is not None and existing.n_shadows and all(
        any(a.role == "shadow" and a.variant == v and a.format == f for a in old.artifacts) for v, f in variants
    ):
        shadow_in, shadow_out = existing.shadow_in, existing.shadow_out
        kept = existing  # its hold-outs, population and threat model stay with its reference models
        threat_shadow = _load_threat(rd).get("shadow_models", {"mode": "kept from the existing run"})
    else:
        raise HarnessError(
            "no shadow side: give the shadow artifacts (--shadow PATH[:VARIANT][@K] with --shadow-members FILE) "
            "or let the tool train shadows (--shadow-arch cnn-small)"
        )

    differences = _io_differences(records + old.targets(), shadow_records)
    if differences:
        threat_shadow = {**threat_shadow, "differences": differences}
        for line in differences:
            console.print(f"[yellow]note[/]: {esc(line)}")
    splits = Splits(
        labels, ms.members, ms.nonmembers, shadow_in, shadow_out,
        **({} if kept is None else dict(target_val=kept.target_val, shadow_val=kept.shadow_val,
                                        population=kept.population, online=kept.online)),
    )  # fmt: skip
    try:
        splits.validate("membership")
    except ContractError as exc:
        raise HarnessError(str(exc)) from None

    # ---- write the run: staged inside it, read back, then committed with renames (see _Staging)
    stage = RunDir(staging.dir)
    for rec in records + shadow_records:
        src = getattr(rec, "source_path", None)
        if not src:
            continue
        final = rd.artifact_path(rec)
        if not (final.is_file() and sha256_file(final) == rec.sha256):  # unchanged files are not rewritten
            _copy_into(Path(src), stage.artifact_path(rec), rec.sha256)
        setattr(rec, "source_path", staging.final_path(src))  # a trained shadow's file moves into RUN/build
    exp = _experiment(base, spec, ddir, pre, ms, shadow_in, shadow_out, shadow_arch or base.model.arch, variants, run,
                      online=splits.online, population=len(splits.population_ids))
    atomic_write_bytes(
        stage.experiment, experiment_toml(exp, f"written by 'compleak import' for run {rd.root.name}").encode()
    )
    splits.save(stage.splits)
    manifest = old
    if shadow_args or shadow_arch:  # a new shadow side replaces the old one
        manifest.artifacts = [a for a in manifest.artifacts if a.role != "shadow"]
    for rec in records + shadow_records:
        manifest.upsert(rec)
    manifest.save(stage.manifest)
    threat = _threat_model(
        data, spec, pre, members, nonmembers, ms, lowest_fpr, manifest.targets(), threat_shadow, splits
    )
    threat.update(owners_summary(splits, seed))  # K, online/offline, the attacker's pool, sizes (harness.build.threat)
    atomic_write_json(stage.root / "threat_model.json", threat)
    staging.check(records + shadow_records)
    staging.commit()
    console.print(
        f"imported {len(records)} target and {len(shadow_records)} shadow artifacts into [bold]{esc(rd.root)}[/]: "
        f"{len(ms.members)} members / {len(ms.nonmembers)} non-members, {splits.n_shadows} shadow split(s)"
    )
    console.print(f"threat model: {esc(threat['summary'])}")
    return rd.root


def _io_differences(targets: list[ArtifactRecord], shadows: list[ArtifactRecord]) -> list[str]:
    """Where a shadow's input/output dtypes differ from its target variant's (e.g. int8 I/O versus float I/O)."""
    out: list[str] = []
    for sh in shadows:
        t = next((a for a in targets if a.variant == sh.variant and a.format == sh.format), None)
        if t is None:
            continue
        for kind, a, b in (("input", t.inputs[0], sh.inputs[0]), ("output", t.outputs[0], sh.outputs[0])):
            if a.dtype != b.dtype:
                out.append(f"{sh.id}: {kind} is {b.dtype} but target {t.id} has {a.dtype} {kind}")
    return out


def _shadow_splits(
    shadow_members: list[Path], k_total: int, n: int, target_ids: np.ndarray, size: int, seed: int, console: Console
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Shadow splits for trained shadows: the user's ``--shadow-members`` files, else drawn from non-target ids."""
    ins: list[np.ndarray] = []
    outs: list[np.ndarray] = []
    pool = np.setdiff1d(np.arange(n, dtype=np.int64), target_ids)
    for k in range(k_total):
        if k < len(shadow_members):
            sm = resolve_membership(
                shadow_members[k], None, n, 0.0, owner_seed(seed, "shadow", k), exclude=target_ids, what=f"shadow {k}"
            )
            ins.append(sm.members)
            outs.append(sm.nonmembers)
            continue
        m = min(size, len(pool) // 2)
        if m < 20:
            raise HarnessError(
                f"only {len(pool)} examples lie outside the target membership; training shadow models needs data "
                f"disjoint from every target id (give a larger dataset or fewer target ids)"
            )
        a, b = _draw_shadow_split(pool, m, owner_seed(seed, "shadow", k))
        console.print(f"shadow {k}: {m} members / {m} non-members drawn from the {len(pool)} non-target examples")
        ins.append(a)
        outs.append(b)
    return ins, outs


def _supplied_shadows(
    shadow_args: list[ArtifactArg],
    shadow_members: list[Path],
    variants: list[tuple[str, str]],
    n_classes: int,
    n: int,
    target_ids: np.ndarray,
    seed: int,
    ds: Any,
    pre: Preprocess,
    labels: np.ndarray,
    layout_explicit: bool,
    preprocess: Path | None,
    query_inputs: Any,
    console: Console,
) -> tuple[list[np.ndarray], list[np.ndarray], list[ArtifactRecord], dict[str, Any]]:
    """Check and record user-supplied shadow artifacts; every shadow K needs every target variant and a
    ``--shadow-members`` file (the K-th) with the ids it was trained on."""
    k_total = max(a.shadow or 0 for a in shadow_args) + 1
    if len(shadow_members) != k_total:
        raise HarnessError(
            f"--shadow artifacts name {k_total} shadow model(s) (@0..@{k_total - 1}) but {len(shadow_members)} "
            f"--shadow-members file(s) were given; give one per shadow model, in order, with the ids it was trained on"
        )
    ins, outs = [], []
    for k, path in enumerate(shadow_members):
        sm = resolve_membership(path, None, n, 0.0, owner_seed(seed, "shadow", k), exclude=target_ids, what=f"shadow {k}")
        for note in sm.notes:
            console.print(f"[yellow]note[/]: {esc(note)}")
        ins.append(sm.members)
        outs.append(sm.nonmembers)
    records: list[ArtifactRecord] = []
    seen: dict[tuple[int, str, str], Path] = {}
    for arg in shadow_args:
        k = int(arg.shadow or 0)
        art = describe_artifact(arg.path)
        if art.n_classes != n_classes:
            raise HarnessError(f"{art.path}: shadow has {art.n_classes} classes but the targets have {n_classes}")
        ids = np.concatenate([ins[k][:_ACCURACY_SAMPLE], outs[k][:_ACCURACY_SAMPLE]])
        x = query_inputs(ds, pre, ids)
        layout = check_input_shape(art, x, pre, layout_explicit, preprocess)
        probe_artifact(art, x, labels[ids], min(len(ins[k]), _ACCURACY_SAMPLE), layout)
        variant = arg.variant or _default_variant(art, {v for (kk, v, f) in seen if kk == k and f == art.format}, arg)
        if (variant, art.format) not in variants:
            raise HarnessError(
                f"{art.path}: shadow variant '{variant}' ({art.format}) matches no --target variant "
                f"({', '.join(f'{v} ({f})' for v, f in variants)})"
            )
        if (k, variant, art.format) in seen:
            raise HarnessError(
                f"{art.path}: shadow {k} variant '{variant}' is already given by {seen[(k, variant, art.format)]}"
            )
        seen[(k, variant, art.format)] = art.path
        records.append(
            _record(
                art, "shadow", variant, k, layout,
                compression={
                    "steps": parse_variant(variant), "declared_by": "user", "quantization": _quantization(art)
                },
                toolchain={"built_by": "external", "host_runtime": art.runtime},
                source_path=str(art.path.resolve()),
            )
        )
    for k in range(k_total):
        for v, f in variants:
            if (k, v, f) not in seen:
                raise HarnessError(
                    f"shadow {k} has no artifact for target variant '{v}' ({f}); add --shadow PATH:{v}@{k}"
                )
    return ins, outs, records, {
        "mode": "supplied",
        "n_shadows": k_total,
        "approximation": False,
        "note": "shadow artifacts supplied by the user; assumed trained and compressed like the targets",
        "artifacts": [
            {"id": r.id, "sha256": r.sha256, "source_path": r.source_path}  # type: ignore[attr-defined]
            for r in records
        ],
    }


def _trained_shadows(
    exp: Experiment,
    ds: Any,
    splits: Splits,
    variants: list[tuple[str, str]],
    n_classes: int,
    rd: RunDir,
    pre: Preprocess,
    layout_explicit: bool,
    preprocess: Path | None,
    labels: np.ndarray,
    query_inputs: Any,
    console: Console,
) -> tuple[list[ArtifactRecord], dict[str, Any]]:
    """Train shadow models with the zoo architecture of ``exp`` on each shadow split and compress them the way each
    target variant declares (the framework builders' ``build_variants``); record them as the targets' shadows."""
    by_format: dict[str, list[str]] = {}
    for v, f in variants:
        by_format.setdefault(f, []).append(v)
    from harness.data import owner_data

    records: list[ArtifactRecord] = []
    for k, (a, b) in enumerate(zip(splits.shadow_in, splits.shadow_out)):
        owner = owner_data(ds, splits, pre, "shadow", k, exp.splits.holdout_fraction, exp.owner_seed("shadow", k))
        for fmt, labels_v in by_format.items():
            build_variants = _builder(fmt)
            what = esc(f"shadow {k}: training {exp.model.arch}, then {', '.join(labels_v)} ({fmt})")
            with console.status(what) as status:
                built = build_variants(
                    exp, owner, labels_v, rd.root / "build", f"shadow{k}", formats=[fmt],
                    progress=lambda msg: status.update(esc(msg)),
                )
            for ba in built:
                if ba.variant not in labels_v or ba.format != fmt:
                    continue
                art = describe_artifact(Path(ba.path))
                if art.n_classes != n_classes:
                    raise HarnessError(
                        f"{ba.path}: the trained shadow has {art.n_classes} classes, the targets {n_classes}"
                    )
                ids = np.concatenate([a[:_ACCURACY_SAMPLE], b[:_ACCURACY_SAMPLE]])
                x = query_inputs(ds, pre, ids)
                layout = check_input_shape(art, x, pre, layout_explicit, preprocess)
                probe_artifact(art, x, labels[ids], min(len(a), _ACCURACY_SAMPLE), layout)
                records.append(
                    _record(
                        art, "shadow", ba.variant, k, layout,
                        compression=dict(ba.compression), toolchain=dict(ba.toolchain),
                        source_path=str(Path(ba.path).resolve()), trained_by="compleak", arch=exp.model.arch,
                        approximation=True,
                    )
                )
            missing = set(labels_v) - {r.variant for r in records if r.shadow == k and r.format == fmt}
            if missing:
                raise HarnessError(f"the {fmt} builder produced no shadow artifact for {sorted(missing)}")
    return records, {
        "mode": "trained",
        "n_shadows": splits.n_shadows,
        "arch": exp.model.arch,
        "approximation": True,
        "note": (
            f"shadow models trained here ({exp.model.arch}, [train] of experiment.toml) on data disjoint from the "
            f"target ids and compressed as each target variant declares; the target's real architecture, training "
            f"and compression toolchain are unknown, so the shadow side approximates them"
        ),
    }


def _experiment(
    base: Experiment,
    spec: str,
    data_dir: Path | None,
    pre: Preprocess,
    ms: Membership,
    shadow_in: list[np.ndarray],
    shadow_out: list[np.ndarray],
    arch: str,
    variants: list[tuple[str, str]],
    run: Path,
    online: bool = False,
    population: int = 0,
) -> Experiment:
    """The run's experiment.toml: ``base`` with the imported data, split sizes, shadow arch and variants."""
    tf_v = [v for v, f in variants if f in TF_FORMATS]
    torch_v = [v for v, f in variants if f in TORCH_FORMATS]
    torch_f = sorted({f for _, f in variants if f in TORCH_FORMATS})
    raw = base.model_dump(mode="json")
    if name_problem(Path(run).name) is None:  # a run folder such as "rün" keeps the config's name instead
        raw["experiment"]["name"] = Path(run).name
    raw["data"] = {"dataset": spec, "data_dir": str(data_dir) if data_dir else None, "download": False,
                   "preprocess": pre.model_dump(mode="json")}
    raw["splits"].update(
        target_in=len(ms.members),
        target_out=len(ms.nonmembers),
        shadow_in=max(1, max((len(a) for a in shadow_in), default=1)),
        shadow_out=max(1, max((len(b) for b in shadow_out), default=1)),
        n_shadows=max(1, len(shadow_in)),
        pool=None,
        population=population,
    )
    raw["attack"].update(reference_models=max(1, len(shadow_in)), threat_model="online" if online else "offline")
    raw["model"]["arch"] = arch
    raw["compress"]["tf"] = tf_v or base.compress.tf
    raw["compress"]["torch"] = torch_v or base.compress.torch
    raw["export"]["frameworks"] = [f for f, vs in (("tf", tf_v), ("torch", torch_v)) if vs] or base.export.frameworks
    if torch_f:
        raw["export"]["torch_formats"] = torch_f
    try:
        return Experiment.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise HarnessError(f"the imported variants do not form a valid experiment: [{loc}] {err['msg']}") from None


def _load_threat(rd: RunDir) -> dict[str, Any]:
    path = rd.root / "threat_model.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _threat_model(
    data: str,
    spec: str,
    pre: Preprocess,
    members: Path,
    nonmembers: Path | None,
    ms: Membership,
    lowest_fpr: float,
    records: list[ArtifactRecord],
    shadow: dict[str, Any],
    splits: Splits,
) -> dict[str, Any]:
    """``RUN/threat_model.json``: what the attacker was assumed to have (the report shows ``summary``)."""
    mode = shadow.get("mode", "unknown")
    how = {
        "supplied": "shadow models supplied by the auditor (trained like the targets)",
        "trained": f"shadow models trained by this tool with {shadow.get('arch')} and compressed as each variant "
        f"declares (an approximation of the target's training)",
    }.get(mode, str(shadow.get("note", mode)))
    variants = sorted({r.variant for r in records})
    knowledge = {
        "supplied": "Shadow data from the same distribution, disjoint from the target's members and non-members, and "
        "shadow models the auditor supplied for every variant, trained and compressed like the targets.",
        "trained": f"Shadow data from the same distribution, disjoint from the target's members and non-members; "
        f"NOT the target's architecture or training recipe: shadow models are {shadow.get('arch')} trained by this "
        f"tool and compressed as each variant's label declares, so the shadow side approximates the real pipeline.",
    }.get(mode, str(shadow.get("note", mode)))
    return {
        "source": "compleak import (artifacts built outside this tool)",
        "summary": (
            f"black-box queries to the shipped artifacts ({', '.join(variants)}) returning raw scores; knowledge of "
            f"which compression each variant carries; {splits.n_shadows} {how}; attacker data from the same "
            f"distribution, disjoint from every target member and non-member"
        ),
        "attacker_knowledge": knowledge,
        "attacker_access": (
            "Black-box: the raw output vector (logits or probabilities, dequantized) of each imported artifact, as the "
            "device runtime produced it, and the compression label of each variant. NR uses one artifact; SR also "
            "uses the 'original' artifact; MR uses several variants."
        ),
        "never_used_by_attacker": "Target members or non-members, for training or model selection.",
        "shadow_models": shadow,
        "membership": {
            "members_file": str(members),
            "nonmembers_file": str(nonmembers) if nonmembers else None,
            "n_members": int(len(ms.members)),
            "n_nonmembers": int(len(ms.nonmembers)),
            "notes": ms.notes,
            "lowest_fpr": lowest_fpr,
            "rule": "n_nonmembers >= 1/FPR for the lowest reported FPR",
        },
        "target_artifacts": [
            {"id": r.id, "variant": r.variant, "format": r.format, "sha256": r.sha256,
             "source_path": getattr(r, "source_path", None)}
            for r in records
        ],
        "data": {"dataset": data, "resolved": spec, "preprocess": pre.model_dump(mode="json"),
                 "shadow_split_sizes": [
                     [int(len(a)), int(len(b))] for a, b in zip(splits.shadow_in, splits.shadow_out)
                 ]},
    }
