"""``compleak check`` and ``compleak diff``: the CI gate over one run, and over the change from a baseline run
(docs/ci.md). ``harness/cli/main.py`` registers them with :func:`register_gate`; the work is in
:mod:`harness.gate` and :mod:`harness.diff`."""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable

import typer

from harness.cli.examples import EPILOG

FAIL_ON_HELP = (
    "fail (exit status 3) when a result row crosses this threshold; repeat. [SCOPE:]METRIC OP NUMBER, METRIC one of "
    "auc, auc_lo, auc_hi, bacc, eps, tpr@FPR; NUMBER a fraction or a percentage (5%); e.g. 'auc>0.6', "
    "'tpr@0.01>5%', 'NR,device=local:auc_lo>0.55' (docs/ci.md)"
)
FORMAT_HELP = "text | json (one object) | github (annotations, and the job summary)"


def gate_exit(run: Path, rules: Sequence[Any], fmt: str, console: Any) -> None:
    """Evaluate parsed ``--fail-on`` rules over RUN (``check``, ``audit --fail-on``), print the verdict (text, json
    or github), exit 3 when a rule trips."""
    from harness.gate import check_run, print_verdict

    outcome = check_run(run, rules)
    print_verdict(outcome, fmt, console)
    if not outcome.passed:
        raise typer.Exit(outcome.exit_code)


def register_gate(app: typer.Typer, friendly: Callable[[Any], Any], console: Any) -> None:
    """Add ``check`` and ``diff`` to ``app``."""

    @app.command(epilog=EPILOG["check"])
    @friendly
    def check(
        run: Path = typer.Argument(..., help="run directory with attack results (audit, or attack + report)"),
        fail_on: list[str] = typer.Option(..., "--fail-on", metavar="EXPR", help=FAIL_ON_HELP),
        fmt: str = typer.Option("text", "--format", "-f", metavar="FORMAT", help=FORMAT_HELP),
    ) -> None:
        """CI gate on a finished run: exit 0 when every --fail-on rule holds, 3 when a result row trips one, 2 on
        bad input. Prints the offending rows."""
        from harness.gate import check_format, parse_rules

        gate_exit(run, parse_rules(fail_on), check_format(fmt), console)

    @app.command("diff", epilog=EPILOG["diff"])
    @friendly
    def diff(
        baseline: Path = typer.Argument(..., metavar="BASELINE_RUN", help="the run to compare against"),
        run: Path = typer.Argument(..., metavar="RUN", help="the run under test"),
        fail_on: list[str] = typer.Option(
            [], "--fail-on", metavar="EXPR", help="gate rule; delta_METRIC is RUN's value minus the baseline's, "
            "e.g. 'delta_auc>0.02', 'NR:delta_tpr@0.01>0.01'; other metrics read RUN's rows (docs/ci.md)"),
        fmt: str = typer.Option("text", "--format", "-f", metavar="FORMAT", help=FORMAT_HELP),
    ) -> None:
        """Compare two runs attack by attack; with --fail-on, exit 3 when a change crosses a threshold."""
        from harness.diff import diff_json, diff_runs, gate_diff, print_diff
        from harness.gate import check_format, parse_rules, print_verdict

        fmt, rules = check_format(fmt), parse_rules(fail_on)
        d = diff_runs(baseline, run)
        outcome = gate_diff(d, rules) if rules else None
        if fmt == "json":
            typer.echo(json.dumps(diff_json(d, outcome), indent=1))
        else:
            if fmt == "text":
                print_diff(d, console)
            if outcome is not None:
                print_verdict(outcome, fmt, console)
        if outcome is not None and not outcome.passed:
            raise typer.Exit(outcome.exit_code)
