"""``compleak export``: a run's attack results (or per-example scores) as CSV, Parquet or JSON.

The tables are ``compleak.results.load_results`` (one row per attack result, flattened: ``tpr@<fpr>`` columns,
``auc_lo`` / ``auc_hi``; see that module) and ``compleak.results.load_all_scores`` (one row per device and scored
example, a column per attack). The file is written atomically; by default into ``RUN/report/`` beside the HTML
report (``results.csv``, ``scores.parquet``, ...), so a CI job that uploads the report uploads it too. ``-`` writes
CSV or JSON to standard output.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from compleak.results import load_all_scores, load_results
from rundir import RunDir, atomic_path
from harness.errors import HarnessError

if TYPE_CHECKING:
    import pandas as pd

Format = Literal["csv", "parquet", "json"]
FORMATS: tuple[str, ...] = ("csv", "parquet", "json")
SUFFIX = {"csv": ".csv", "parquet": ".parquet", "json": ".json"}


def export_table(run: Path | str, scores: bool = False) -> "pd.DataFrame":
    """The table ``compleak export`` writes: the results (default) or every device's per-example scores."""
    if not Path(run).is_dir():
        raise HarnessError(f"{run}: no such run directory; give the folder 'compleak audit' or 'compleak build' made")
    return load_all_scores(run) if scores else load_results(run)


def default_out(run: Path | str, fmt: str, scores: bool = False) -> Path:
    """``RUN/report/results.<ext>`` or ``RUN/report/scores.<ext>``."""
    return RunDir(run).report_dir / f"{'scores' if scores else 'results'}{SUFFIX[fmt]}"


def write_table(df: "pd.DataFrame", out: Path, fmt: str) -> None:
    """Write ``df`` to ``out`` atomically in ``fmt`` (csv: RFC 4180 with a header; parquet: pyarrow, no index;
    json: a list of records, NaN as null)."""
    with atomic_path(out, keep_suffix=True) as tmp:
        if fmt == "csv":
            df.to_csv(tmp, index=False)
        elif fmt == "json":
            df.to_json(tmp, orient="records", indent=2, force_ascii=False)
        else:
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise HarnessError("--format parquet needs pyarrow; install it with 'pip install pyarrow'") from None
            df.to_parquet(tmp, engine="pyarrow", index=False)
    out.chmod(0o644)


def export_run(
    run: Path | str, fmt: str = "csv", scores: bool = False, out: Path | str | None = None
) -> Path | None:
    """Export ``run``'s results (or, with ``scores``, its per-example scores) as ``fmt``; returns the file written,
    or None when ``out`` is ``-`` (standard output; csv and json only).

    Raises :class:`HarnessError` for an unknown format, parquet to standard output, or an ``out`` that is a folder;
    ``ContractError`` when the run has no results (or no scores) or a file in it is malformed."""
    if fmt not in FORMATS:
        raise HarnessError(f"--format {fmt!r} is not supported; use one of {', '.join(FORMATS)}")
    if str(out) == "-" and fmt == "parquet":
        raise HarnessError("--format parquet cannot go to standard output; give --out FILE.parquet")
    target = None if str(out) == "-" else Path(out) if out is not None else default_out(run, fmt, scores)
    if target is not None and target.is_dir():
        name = default_out(run, fmt, scores).name
        raise HarnessError(f"--out {target}: is a folder; give a file name such as {target / name}")
    df = export_table(run, scores)
    if target is None:
        text = df.to_csv(index=False) if fmt == "csv" else df.to_json(orient="records", indent=2, force_ascii=False)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return None
    if out is None:
        rd = RunDir(run)
        if rd.report_dir.is_symlink():  # a run is untrusted: its report folder must not lead outside it
            raise HarnessError(f"{rd.report_dir}: is a symbolic link; remove it, or give --out FILE")
        rd.require_writable("export", "report")
    write_table(df, target, fmt)
    return target
