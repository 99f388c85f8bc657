"""A run's attack results as tables: :func:`load_results` (one row per attack result) and :func:`load_scores`
(one row per scored example) as pandas DataFrames, for notebooks, exports (``compleak export``) and the CI gate.

Reads only the run directory's stable files (``attacks/<device>/results.json``, ``attacks/<device>/scores.npz``,
``outputs/<device>/*.json`` for device ids, and ``seeds/<seed>/`` for runs with several seeds); never imports the
harness. pandas is imported when a DataFrame is asked for; :func:`result_rows` and :func:`flatten_row` work without
it. Every file is untrusted input: folders that are symbolic links are skipped, ``scores.npz`` is read without
pickles after its declared size is checked, and a malformed file is a :class:`ContractError` naming it and the fix.

Columns of :func:`load_results` (:func:`flatten_row`), in this order:

- ``device`` (device id: ``local``, ``ssh://…``), ``seed`` (None unless the run has ``seeds/<seed>/``),
  ``family``, ``method``, ``variant`` (MR's several variants joined with ``+``), ``artifact_id``, ``framework``,
  ``format``, ``shadow_device`` (lists joined with ``+``);
- ``auc``, ``auc_lo``, ``auc_hi`` (the 95% bootstrap CI), ``balanced_accuracy``, ``eps`` (the ε lower bound),
  ``n_members``, ``n_nonmembers``, then ``tpr@<fpr>`` per false-positive level (``tpr@0.001``, ``tpr@0.01``; the
  names the ``--fail-on`` gate uses) and ``resolvable@<fpr>`` (whether the sample resolves that level);
- every other scalar field a row carries (``method``-specific settings, ``threshold``, ``score_key``, …); a dict of
  scalars as ``name.key`` columns (``eps_bound.tpr_lo``); anything else nested as a JSON string (``per_class``).
  The ROC points (``roc``) are left out: :func:`load_scores` has the scores they come from.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rundir import ContractError, ResultRow, RunDir, device_dirname
from rundir import load_npz as _load_npz
from rundir import load_results as _read_rows

if TYPE_CHECKING:
    import pandas as pd

SCORES_MAX_BYTES = 2 << 30  # uncompressed bytes of one scores.npz (a million examples x 250 attacks in float64)
IDENTITY_COLUMNS = ("device", "seed", "family", "method", "variant", "artifact_id", "framework", "format",
                    "shadow_device")  # fmt: skip
METRIC_COLUMNS = ("auc", "auc_lo", "auc_hi", "balanced_accuracy", "eps", "n_members", "n_nonmembers")
_DROPPED = {"roc", "eps_lower_bound", "tpr_at_fpr", "fpr_resolvable", "auc_ci"}


@dataclass(frozen=True)
class RunResult:
    """One result row of a run, with where it came from."""

    device: str  # the device id (from the device's provenance files; the folder name when there is none)
    dirname: str  # the folder under attacks/
    seed: int | None  # the seed of RUN/seeds/<seed>/ it belongs to; None for the run itself
    row: ResultRow
    source: Path  # the results.json it was read from
    baseline: ResultRow | None = None  # the same attack in a baseline run (``compleak diff``): delta_* metrics


def seed_dirs(run: Path | str) -> list[tuple[int, Path]]:
    """``RUN/seeds/<seed>/`` folders (experiment.seeds), by seed: plain folders named by a decimal seed only."""
    base = RunDir(run).seeds_dir
    if base.is_symlink() or not base.is_dir():
        return []
    out = []
    for d in base.iterdir():
        if d.is_symlink() or not d.is_dir() or not d.name.isascii() or not d.name.isdigit() or len(d.name) > 10:
            continue
        out.append((int(d.name), d))
    return sorted(out)


def _device_ids(rd: RunDir) -> dict[str, str]:
    """Folder name -> device id, from the devices' provenance (``RunDir.collected_devices``)."""
    try:
        return {d.name: device_id for device_id, d in rd.collected_devices()}
    except OSError:
        return {}


def _rows_of(root: Path, seed: int | None) -> list[RunResult]:
    rd = RunDir(root)
    folders = rd.attack_folders()
    ids = _device_ids(rd) if folders else {}
    out: list[RunResult] = []
    for name, res in folders:
        if res.is_symlink() or not res.is_file():
            continue
        rows = _read_rows(res)
        device = ids.get(name)
        if device is None:  # no outputs here (an imported or trimmed run): the rows may say, if it names this folder
            named = {(r.model_extra or {}).get("device") for r in rows}
            one = named.pop() if len(named) == 1 else None
            device = one if isinstance(one, str) and one and device_dirname(one) == name else name
        out += [RunResult(device, name, seed, r, res) for r in rows]
    return out


def result_rows(run: Path | str) -> list[RunResult]:
    """Every result row of ``run``: ``attacks/<device>/results.json`` of the run itself and of each
    ``seeds/<seed>/`` run, host first, then devices and seeds in order. Raises :class:`ContractError` when the run
    folder is missing or a results file is malformed; an empty list when nothing was attacked yet."""
    root = Path(run)
    if not root.is_dir():
        raise ContractError(f"{root}: no such run directory; give the folder 'compleak audit' or 'compleak build' made")
    out = _rows_of(root, None)
    for seed, d in seed_dirs(root):
        out += _rows_of(d, seed)
    return sorted(out, key=lambda r: (r.seed is not None, r.seed or 0, r.dirname != "local", r.dirname))


def _joined(v: Any) -> Any:
    return "+".join(map(str, v)) if isinstance(v, (list, tuple)) else v


def _finite(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def eps_of(row: ResultRow) -> float | None:
    """The row's ε lower bound (``eps_lower_bound``: a number, or a dict with ``eps``), None when it has none."""
    v = (row.model_extra or {}).get("eps_lower_bound")
    if isinstance(v, dict):
        v = v.get("eps")
    return _finite(v)


def fpr_level(key: str) -> float | None:
    """A ``tpr_at_fpr`` key as a float ('0.001' -> 0.001), None when it is not a rate in (0, 1]."""
    try:
        f = float(key)
    except (TypeError, ValueError):
        return None
    return f if 0.0 < f <= 1.0 else None


def tpr_at(row: ResultRow, level: float) -> tuple[float | None, bool]:
    """(TPR at false-positive rate ``level`` as the row stores it, whether the row's sample resolves that level:
    ``n_nonmembers * level >= 1``, ``compleak.metrics.fpr_resolvable``). The TPR is None when the row has no such
    level."""
    from compleak.metrics import fpr_resolvable

    for k, v in row.tpr_at_fpr.items():
        f = fpr_level(k)
        if f is not None and math.isclose(f, level, rel_tol=1e-9):
            return _finite(v), fpr_resolvable(row.n_nonmembers, level)
    return None, fpr_resolvable(row.n_nonmembers, level)


def _level_name(key: str) -> str:
    f = fpr_level(key)
    return key if f is None else f"{f:g}"


def flatten_row(r: RunResult) -> dict[str, Any]:
    """One result row as a flat dict of scalars (the columns listed in the module doc)."""
    row, extra = r.row, dict(r.row.model_extra or {})
    ci = list(row.auc_ci) + [None, None]
    flat: dict[str, Any] = {
        "device": r.device,
        "seed": r.seed,
        "family": row.family,
        "method": row.method,
        "variant": _joined(row.variant),
        "artifact_id": _joined(extra.get("artifact_id", extra.get("artifact"))),
        "framework": _joined(extra.get("framework")),
        "format": _joined(extra.get("format")),
        "shadow_device": _joined(extra.get("shadow_device")),
        "auc": _finite(row.auc),
        "auc_lo": _finite(ci[0]),
        "auc_hi": _finite(ci[1]),
        "balanced_accuracy": _finite(row.balanced_accuracy),
        "eps": eps_of(row),
        "n_members": row.n_members,
        "n_nonmembers": row.n_nonmembers,
    }
    from compleak.metrics import fpr_resolvable

    for k in sorted(row.tpr_at_fpr, key=lambda k: fpr_level(k) or math.inf):
        name = _level_name(k)
        flat[f"tpr@{name}"] = _finite(row.tpr_at_fpr[k])
        f = fpr_level(k)
        flat[f"resolvable@{name}"] = None if f is None else fpr_resolvable(row.n_nonmembers, f)
    for key in sorted(extra):
        if key in _DROPPED or key in flat or key in ("artifact", "device"):
            continue
        v = extra[key]
        if v is None or isinstance(v, (str, int, float, bool)):
            flat[key] = v
        elif isinstance(v, list) and all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in v):
            flat[key] = _joined(v)
        elif isinstance(v, dict) and all(x is None or isinstance(x, (str, int, float, bool)) for x in v.values()):
            flat.update({f"{key}.{k}": x for k, x in v.items() if f"{key}.{k}" not in flat})
        else:
            flat[key] = json.dumps(v, sort_keys=True, default=str)
    return flat


def _pandas() -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise ContractError("pandas is not installed; install it with 'pip install pandas pyarrow'") from None
    return pd


def _uniform(df: "pd.DataFrame") -> "pd.DataFrame":
    """Columns of mixed Python types (a hostile or hand-edited results.json) become JSON text, so every column has
    one type (Parquet needs that)."""
    for col in df.columns:
        if df[col].dtype != object:
            continue
        kinds = {type(v) for v in df[col] if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if len(kinds) > 1:
            df[col] = [None if v is None else v if isinstance(v, str) else json.dumps(v) for v in df[col]]
    return df


def results_frame(rows: list[RunResult]) -> "pd.DataFrame":
    """:func:`flatten_row` of each row as a DataFrame (identity and metric columns first)."""
    pd = _pandas()
    flat = [flatten_row(r) for r in rows]
    cols: list[str] = [*IDENTITY_COLUMNS, *METRIC_COLUMNS]
    for f in flat:
        cols += [k for k in f if k not in cols]
    df = pd.DataFrame(flat, columns=cols)
    if not any(r.seed is not None for r in rows):
        df = df.drop(columns=["seed"])
    return _uniform(df)


def load_results(run: Path | str) -> "pd.DataFrame":
    """Every attack result of ``run`` (and of its per-seed runs) as a pandas DataFrame, one row per result.

    Columns: see the module doc (``device``, ``family``, ``method``, ``variant``, ``auc``, ``auc_lo``, ``auc_hi``,
    ``balanced_accuracy``, ``eps``, ``tpr@0.001``, …). Raises :class:`ContractError` when the run has no attack
    results (naming the command that makes them) or a results file is malformed.
    """
    rows = result_rows(run)
    if not rows:
        raise ContractError(f"{run}: no attack results yet; run 'compleak attack {run}' (or 'compleak audit')")
    return results_frame(rows)


def _check_npz_size(path: Path, fix: str) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            total = sum(i.file_size for i in zf.infolist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise ContractError(f"{path}: not a readable .npz file ({type(exc).__name__}); {fix}") from None
    if total > SCORES_MAX_BYTES:
        raise ContractError(f"{path}: declares {total} bytes, more than {SCORES_MAX_BYTES >> 30} GiB; {fix}")


def load_scores(run: Path | str, device: str = "local", seed: int | None = None) -> "pd.DataFrame":
    """The per-example attack scores of one device (``attacks/<device>/scores.npz``, written by the attack stage)
    as a DataFrame with one row per scored candidate example:

    - ``example_id`` (int64, the id into ``splits.npz``'s ``labels``), ``member`` (bool: a target member),
      ``label`` (int64 class);
    - one float64 column per result row, named by the row's ``score_key`` (``FAMILY|METHOD|ARTIFACT``): higher
      means "more likely a member".

    ``device`` is the device id (``local``, ``ssh://user@host:22``) or its folder name; ``seed`` picks
    ``seeds/<seed>/`` of a run with several seeds. A missing or malformed file is a :class:`ContractError` naming
    it and the command that (re)writes it.
    """
    pd = _pandas()
    root = Path(run) if seed is None else RunDir(run).seed_dir(int(seed))
    if not root.is_dir():
        raise ContractError(f"{root}: no such run directory")
    rd = RunDir(root)
    path = rd.scores(device)
    fix = f"rerun 'compleak attack {root} --device {device}' (the attack stage writes per-example scores)"
    if path.is_symlink() or path.parent.is_symlink() or not path.is_file():
        have = [d for s, d in scored_devices(root) if s is None]
        where = f" (devices with scores: {', '.join(have)})" if have else ""
        raise ContractError(f"{path}: no per-example scores for device {device}{where}; {fix}")
    _check_npz_size(path, fix)
    z = _load_npz(path)
    for key in ("index", "y", "labels"):
        if key not in z:
            raise ContractError(f"{path}: array '{key}' is missing; {fix}")
    n = z["index"].shape[0] if z["index"].ndim == 1 else -1
    for key, arr in z.items():
        if arr.ndim != 1 or arr.shape[0] != n:
            raise ContractError(f"{path}: array '{key}' has shape {arr.shape}, expected ({max(n, 0)},); {fix}")
        numeric = np.issubdtype(arr.dtype, np.integer) if key in ("index", "labels") else (
            np.issubdtype(arr.dtype, np.number) or arr.dtype == bool)
        if not numeric:
            raise ContractError(f"{path}: array '{key}' has dtype {arr.dtype}, expected numbers; {fix}")
    data: dict[str, Any] = {
        "example_id": z.pop("index").astype(np.int64),
        "member": z.pop("y").astype(bool),
        "label": z.pop("labels").astype(np.int64),
    }
    data.update({k: z[k].astype(np.float64) for k in sorted(z)})
    return pd.DataFrame(data)


def scored_devices(run: Path | str) -> list[tuple[int | None, str]]:
    """(seed, device folder) of every ``attacks/<device>/scores.npz`` in ``run`` and its per-seed runs."""
    out: list[tuple[int | None, str]] = []
    for seed, root in [(None, Path(run)), *seed_dirs(run)]:
        base = root / "attacks"
        if base.is_dir() and not base.is_symlink():
            out += [(seed, p.parent.name) for p in sorted(base.glob("*/scores.npz")) if not p.parent.is_symlink()]
    return out


def load_all_scores(run: Path | str) -> "pd.DataFrame":
    """:func:`load_scores` of every scored device (and seed) of ``run``, stacked, with ``device`` (and ``seed``)
    columns first; score columns a device lacks are empty (NaN). Raises :class:`ContractError` when no device has
    per-example scores."""
    pd = _pandas()
    found = scored_devices(run)
    if not found:
        raise ContractError(
            f"{run}: no per-example scores (attacks/<device>/scores.npz); rerun 'compleak attack {run}'"
        )
    frames = []
    for seed, dirname in found:
        root = Path(run) if seed is None else RunDir(run).seed_dir(seed)
        ids = _device_ids(RunDir(root))
        df = load_scores(run, dirname, seed)
        df.insert(0, "device", ids.get(dirname, dirname))
        if any(s is not None for s, _ in found):
            df.insert(1, "seed", seed)
        frames.append(df)
    return pd.concat(frames, ignore_index=True, sort=False)
