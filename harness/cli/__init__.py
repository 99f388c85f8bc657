"""The command line: the Typer app (:mod:`harness.cli.main`), the quiet terminal (:mod:`harness.cli.quiet`) and the
``devices`` / ``runners`` command groups. ``compleak`` is :func:`harness.cli.main.main`."""

from harness.cli.main import app, main

__all__ = ["app", "main"]
