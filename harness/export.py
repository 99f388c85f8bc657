"""``compleak export``: a run's attack results (or per-example scores) as CSV, Parquet or JSON.

The tables are ``compleak.results.load_results`` (one row per attack result, flattened: ``tpr@<fpr>`` columns,
``auc_lo`` / ``auc_hi``; see that module) and ``compleak.results.load_all_scores`` (one row per device and scored
example, a column per attack). The file is written atomically; by default into ``RUN/report/`` beside the HTML
report (``results.csv``, ``scores.parquet``, ...), so a CI job that uploads the report uploads it too. ``-`` writes
CSV or JSON to standard output.

An export never destroys (docs/ci.md, "Exports"): ``--out`` must be a new file or a regular file (never a device, a
FIFO, a socket or a symbolic link), outside the run or inside ``RUN/exports/`` (a run's own files are never
replaced); CSV follows RFC 4180 (CRLF rows, every field holding a CR or LF quoted) and a text cell a spreadsheet
would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, a tab or a CR: OWASP's list) is prefixed with
``'``; files are created with the user's umask.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from compleak.results import load_all_scores, load_results
from harness.errors import HarnessError
from rundir import RunDir, atomic_path

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


#: the first characters that make a spreadsheet evaluate a cell (OWASP, "CSV Injection")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralised(df: "pd.DataFrame") -> "pd.DataFrame":
    """``df`` with every text cell that starts like a formula (:data:`FORMULA_START`) prefixed with ``'``; numbers
    are left alone (a negative AUC delta stays a number)."""
    from pandas.api.types import is_numeric_dtype

    out = df.copy()
    for col in out.columns:
        if not is_numeric_dtype(out[col].dtype):
            out[col] = [f"'{v}" if isinstance(v, str) and v.startswith(FORMULA_START) else v for v in out[col]]
    return out


def write_table(df: "pd.DataFrame", out: Path, fmt: str) -> None:
    """Write ``df`` to ``out`` atomically in ``fmt`` (csv: RFC 4180 with a header, CRLF rows, formula cells
    neutralised; parquet: pyarrow, no index; json: a list of records, NaN as null). The file gets the user's
    umask."""
    with atomic_path(out, keep_suffix=True) as tmp:
        if fmt == "csv":
            neutralised(df).to_csv(tmp, index=False, lineterminator="\r\n")
        elif fmt == "json":
            df.to_json(tmp, orient="records", indent=2, force_ascii=False)
        else:
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise HarnessError("--format parquet needs pyarrow; install it with 'pip install pyarrow'") from None
            df.to_parquet(tmp, engine="pyarrow", index=False)


_KINDS = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO",
          stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symbolic link"}


def check_out(run: Path | str, target: Path, default: Path) -> None:
    """Refuse an ``--out`` that an export could destroy: anything but a new file or a regular file; a folder; a file
    inside the run other than the default export and ``RUN/exports/*``."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise HarnessError(f"--out {target}: cannot be checked ({exc.strerror}); give a new file") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise HarnessError(f"--out {target}: is a folder; give a file name such as {target / default.name}")
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise HarnessError(f"--out {target}: is {kind}; an export writes a new file or replaces a regular one")
    root = Path(run).resolve()
    where = target.parent.resolve() / target.name
    exports = RunDir(root).exports_dir
    if where.is_relative_to(root) and where != default.resolve() and not where.is_relative_to(exports):
        raise HarnessError(f"--out {target}: lies inside the run {run}, whose own files are never replaced; export "
                           f"outside the run or into {exports}/")


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
    default = default_out(run, fmt, scores)
    target = None if str(out) == "-" else Path(out) if out is not None else default
    if target is not None and out is not None:
        check_out(run, target, default)
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
