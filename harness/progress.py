"""The terminal's progress bars: one look for every stage (a description, a bar, done out of total, elapsed time and
an estimate of the time left), built in one place."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def stage_progress(console: Console, unit: str = "", spinner: bool = False, transient: bool = False,
                   bold: bool = False) -> Progress:
    """A stage's progress display: ``[spinner] description bar done/total [unit] elapsed ETA remaining``.

    ``unit`` names what is counted (``queries``); ``transient`` clears it when done (the stage prints a table
    instead)."""
    columns = [SpinnerColumn()] if spinner else []
    columns += [TextColumn("[bold]{task.description}" if bold else "{task.description}"), BarColumn(),
                MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(unit))
    columns += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*columns, console=console, transient=transient)
