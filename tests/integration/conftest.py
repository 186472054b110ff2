"""Fixtures for integration tests: a real ``twistd -n peerit-tracker`` on loopback."""

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from peerit.addresses import TrackerAddress
from peerit.testing.processes import Process


def tracker_argv(*args: str) -> list[str]:
    """``twistd -n --pidfile= peerit-tracker ARGS`` run by this interpreter.

    (``python -m twisted`` is ``twist``, which has no ``-n``; twistd's module has no
    ``__main__``, hence ``-c``.)
    """
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "peerit-tracker", *args]


@dataclass
class RunningTracker:
    process: Process
    data_dir: Path
    address: TrackerAddress

    @property
    def endpoint_path(self) -> Path:
        return self.data_dir / "tracker.endpoint"


def start_tracker(directory: Path, *args: str, timeout: float = 30.0,
                  prefix: tuple = ()) -> RunningTracker:
    """Start a tracker on a free loopback port; return once tracker.endpoint is written.
    ``prefix``: a command that execs the tracker (``prlimit ... --``)."""
    data_dir = directory / "tracker-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    process = Process(
        [*prefix, *tracker_argv("--listen", "tcp:0:interface=127.0.0.1", "--data-dir",
                                str(data_dir), *args)],
        directory / "tracker.log")
    endpoint = data_dir / "tracker.endpoint"
    try:
        process.wait_for_path(endpoint, timeout)
    except BaseException:
        process.stop()
        raise
    return RunningTracker(process, data_dir, TrackerAddress.parse(endpoint.read_text()))


@pytest.fixture
def tracker_factory(tmp_path):
    """``tracker_factory(*options, prefix=())`` starts trackers that are all stopped after
    the test."""
    started = []

    def start(*args: str, prefix: tuple = ()) -> RunningTracker:
        running = start_tracker(tmp_path / f"tracker{len(started)}", *args, prefix=prefix)
        started.append(running)
        return running
    yield start
    for running in started:
        running.process.stop()


@pytest.fixture
def tracker(tracker_factory) -> RunningTracker:
    """A tracker with default limits; ``tracker.address`` is its HOST:PORT#FINGERPRINT."""
    return tracker_factory()
