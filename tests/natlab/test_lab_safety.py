"""The lab's safety net: teardown after a failed setup, and cleanup of stale namespaces."""

import subprocess

import pytest

import lab as natlab


def namespaces() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


def blackholes() -> str:
    return subprocess.run(["ip", "route", "show", "type", "blackhole"], capture_output=True,
                          text=True).stdout


def test_failed_setup_removes_everything_it_made(natlab_available, tmp_path, monkeypatch):
    """A router ruleset nft refuses makes setup fail halfway; nothing of the lab remains."""
    before_routes = blackholes()
    monkeypatch.setattr(natlab, "router_ruleset", lambda nat_type: "table ip broken {")
    lab = natlab.NatLab(tmp_path, r1="symmetric")
    with pytest.raises(RuntimeError, match="nft"):
        with lab:
            pass
    assert not {n for n in namespaces() if n.startswith(lab.run_id)}
    assert blackholes() == before_routes


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
