"""Shared pytest configuration: fixture modules made available to every test module.

``tests/`` has no ``__init__.py``, so pytest puts it on ``sys.path`` before importing this file and the plugin
names below resolve as top-level modules.
"""

pytest_plugins = [
    "build_fixtures",  # tiny_run
    "sshd_fixtures",  # sshd_server
    "hostile_fixtures",  # TreeState, cli_refuses, copy_run (issue 11)
    "results_fixtures",  # attacked_run: a synthetic run through the real attack stage (gate, export, action tests)
]


# --- Skips that CI does not allow (issue 25) -------------------------------------------------------------------------
# A test skips when a tool, privilege or package it needs is missing. On a developer's machine that is a convenience;
# on CI it would hide a missing install step, so `.ci/run` sets COMPLEAK_TEST_REQUIRE=all and every such skip becomes
# a failure that names what is missing. A comma-separated list (e.g. "adb,podman,root") turns only the skips whose
# reason mentions one of its words into failures; unset or empty keeps skips as skips.

import os  # noqa: E402

import pytest  # noqa: E402

REQUIRE_ENV = "COMPLEAK_TEST_REQUIRE"


def required_words() -> list[str] | None:
    """None when skips are allowed; [] for "all"; otherwise the lower-case words a skip reason is matched against."""
    value = os.environ.get(REQUIRE_ENV, "").strip().lower()
    if not value:
        return None
    if value == "all":
        return []
    return [w.strip() for w in value.split(",") if w.strip()]


def skip_reason(longrepr: object) -> str:
    """The reason pytest recorded for a skip: a (file, line, reason) tuple or a text form."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def must_not_skip(reason: str) -> bool:
    words = required_words()
    if words is None:
        return False
    return not words or any(w in reason.lower() for w in words)


def _fail_instead(report: pytest.TestReport | pytest.CollectReport, where: str) -> None:
    reason = skip_reason(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (f"{where} would be skipped, but {REQUIRE_ENV}={os.environ.get(REQUIRE_ENV)} requires it to run: "
                       f"{reason.removeprefix('Skipped: ')}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    if not report.skipped:
        return
    if hasattr(report, "wasxfail"):  # an expected failure hides a claim as well as a skip does
        if required_words() == []:
            report.outcome = "failed"
            report.longrepr = f"{item.nodeid} is marked as an expected failure ({report.wasxfail}); " \
                              f"{REQUIRE_ENV}=all requires every test to pass"
            del report.wasxfail
        return
    if must_not_skip(skip_reason(report.longrepr)):
        _fail_instead(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> object:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and must_not_skip(skip_reason(report.longrepr)):
        _fail_instead(report, collector.nodeid or "collection")
