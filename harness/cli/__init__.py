"""The command line: the Typer app and its commands (:mod:`harness.cli.main`; ``compleak`` is
:func:`harness.cli.main.main`, ``python -m harness.cli`` the same), the quiet terminal (:mod:`harness.cli.quiet`) and
the ``devices`` / ``runners`` command groups (:mod:`harness.cli.devices`, :mod:`harness.cli.runners`)."""
