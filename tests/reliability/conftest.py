"""Reliability suites: fault injection, fuzzing and abuse, each reporting figures.

The default run is the short form (CI). ``PEERIT_LONG=1`` selects the long form (the counts
the issue asks for); ``bench/reliability.py`` runs it and prints the figures. Every suite
records its figures with the ``figures`` fixture; they are appended as JSON lines to
``$PEERIT_FIGURES`` when that is set (the bench script sets it) and printed in the summary.
"""

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peerit.testing.localswarm import LocalSwarm  # noqa: E402
from reliability_kit import LONG  # noqa: E402

_collected: list[dict] = []


def pytest_configure(config):
    config.addinivalue_line("markers", "reliability: a reliability suite (tests/reliability)")


def pytest_collection_modifyitems(items):
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.reliability)
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter):
    if not _collected:
        return
    terminalreporter.section(f"reliability figures ({'long' if LONG else 'short'} form)")
    for entry in _collected:
        terminalreporter.write_line(json.dumps(entry, sort_keys=True))


@pytest.fixture
def figures(request):
    """``figures["name"] = value``: recorded for the report once the test passes."""
    values: dict = {}
    yield values
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.passed:
        return
    entry = {"suite": request.node.module.__name__.rsplit(".", 1)[-1],
             "test": request.node.name, "form": "long" if LONG else "short", **values}
    _collected.append(entry)
    path = os.environ.get("PEERIT_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report


@pytest.fixture
def swarm(tmp_path):
    local = LocalSwarm(tmp_path / "swarm")
    try:
        local.start_tracker()
        yield local
    finally:
        local.close()
        for process in local._others:
            process.stop()
