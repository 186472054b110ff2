"""The lab's safety net: teardown after a failed setup, and cleanup of stale namespaces."""

import os
import subprocess

import pytest

import lab as natlab


def namespaces() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


def blackholes() -> str:
    return subprocess.run(["ip", "route", "show", "type", "blackhole"], capture_output=True,
                          text=True).stdout


def other_blackholes() -> list[str]:
    return [line for line in blackholes().splitlines()
            if not any(prefix in line for prefix in natlab.LAB_PREFIXES)]


def test_failed_setup_removes_everything_it_made(natlab_available, tmp_path, monkeypatch):
    """A router ruleset nft refuses makes setup fail halfway; nothing of the lab remains."""
    before_routes = other_blackholes()
    monkeypatch.setattr(natlab, "router_ruleset", lambda nat_type: "table ip broken {")
    lab = natlab.NatLab(tmp_path, r1="symmetric")
    with pytest.raises(RuntimeError, match="nft"):
        with lab:
            pass
    assert not {n for n in namespaces() if n.startswith(lab.run_id)}
    assert other_blackholes() == before_routes
    if not natlab.other_running_labs(lab.run_id):  # a benchmark's lab may run beside
        for prefix in natlab.LAB_PREFIXES:
            assert f"blackhole {prefix}" not in blackholes()


def test_stale_namespaces_of_dead_runs_are_removed(natlab_available):
    """Only this lab's names whose creating PID is gone are deleted; others are left alone."""
    finished = subprocess.Popen(["true"])
    finished.wait()
    stale = f"{natlab.PREFIX}-{finished.pid}-abcdef-pub"
    foreign = "pitlabother-test-ns"
    for name in (stale, foreign):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        removed = natlab.remove_stale_namespaces()
        assert stale in removed
        assert stale not in namespaces()
        assert foreign in namespaces()
    finally:
        for name in (stale, foreign):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_blackholes_stay_while_another_lab_runs(natlab_available, tmp_path, monkeypatch):
    """Labs running at once share the root's blackhole routes: one tearing down leaves them
    to the other; the last one out removes them."""
    monkeypatch.setattr(natlab, "router_ruleset", lambda nat_type: "table ip broken {")
    running = f"{natlab.PREFIX}-{os.getpid()}-0ther0-pub"  # as if a lab of this process ran
    subprocess.run(["ip", "netns", "add", running], check=True)
    try:
        with pytest.raises(RuntimeError, match="nft"):
            with natlab.NatLab(tmp_path / "first"):
                pass
        for prefix in natlab.LAB_PREFIXES:
            assert f"blackhole {prefix}" in blackholes()
    finally:
        subprocess.run(["ip", "netns", "del", running], capture_output=True)
    with pytest.raises(RuntimeError, match="nft"):
        with natlab.NatLab(tmp_path / "last"):
            pass
    if not natlab.other_running_labs(running):  # a benchmark's lab may run beside the tests
        for prefix in natlab.LAB_PREFIXES:
            assert f"blackhole {prefix}" not in blackholes()
