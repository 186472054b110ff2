"""Helpers shared by the reliability suites (data files, hashes, processes, waiting)."""

import json
import os
import sys
import time
from pathlib import Path

from peerit.testing.localswarm import LocalSwarm
from peerit.testing.processes import Process
from peerit.testing.files import random_file, sha256_of  # noqa: F401

LONG = os.environ.get("PEERIT_LONG", "") not in ("", "0")
MiB = 1 << 20


def pick(short, long):
    """The short-form value, or the long-form one under PEERIT_LONG=1."""
    return long if LONG else short


# -- data and processes ---------------------------------------------------------------------





def differing_bytes(a: Path, b: Path) -> int:
    """How many byte positions differ (plus any length difference)."""
    diff = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(MiB), fb.read(MiB)
            if not x and not y:
                return diff
            if x != y:
                n = min(len(x), len(y))
                diff += sum(1 for i in range(n) if x[i] != y[i]) + abs(len(x) - len(y))


def peak_rss_kib(pid: int) -> int:
    """VmHWM (peak resident set) of a live process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met in {timeout}s")
        time.sleep(interval)


def share(swarm: LocalSwarm, name: str, path: Path) -> dict:
    p2p = swarm.workdir / f"{path.name}.p2p"
    return swarm.ctl_json(name, "share", str(path), "-o", str(p2p))


def start_badpeer(swarm: LocalSwarm, name: str, behaviour: str, p2p: str, data: Path,
                  *args: str) -> tuple[Process, Path]:
    """A ``peerit.testing.badpeers`` process registered with the swarm's tracker; returns
    it and its report path once it is registered."""
    report = swarm.workdir / f"{name}.report.json"
    if report.exists():
        report.unlink()
    process = Process([sys.executable, "-m", "peerit.testing.badpeers", "--behaviour",
                       behaviour, "--p2p", p2p, "--data", str(data), "--data-dir",
                       str(swarm.workdir / name), "--tracker", swarm.tracker_endpoint,
                       "--report", str(report), *args], swarm.workdir / f"{name}.log")
    swarm._others.append(process)

    def registered():
        try:
            return json.loads(report.read_text()).get("registered")
        except (OSError, ValueError):
            if not process.alive():
                raise RuntimeError(f"badpeer {name} died:\n{process.log()[-3000:]}")
            return False
    wait_until(registered, 30, what=f"badpeer {name} registered")
    return process, report


