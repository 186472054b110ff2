"""Metrics behind real NAT: a punched download counts one punch success for its NAT pair, and
a metrics port bound to a public address serves loopback (or allowed) clients only."""

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lab import ROUTER_PUBLIC, TRACKER_IP
from peerit.testing.files import random_file, sha256_of
from peerit.testing.metrics import metrics_url, parse_samples, total
from test_nat_matrix import LabPeers

MiB = 1 << 20
FETCH = ("import sys, urllib.request\n"
         "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())")


def scrape_in(lab, role: str, url: str, check: bool = True):
    """The page as seen from inside ``role``'s namespace (its loopback is its own)."""
    result = lab.exec(role, [sys.executable, "-c", FETCH, url], timeout=30, check=check)
    return parse_samples(result.stdout) if result.returncode == 0 else None


def test_punched_download_counts_one_punch_success_for_its_nat_pair(make_lab, tmp_path):
    """a1 (port-restricted) downloads from b1 (full-cone) over punched QUIC: each daemon
    counts one successful punch for the pair independent-independent, the tracker one
    coordination for it, and the downloader's bytes arrive on the quic path."""
    payload = random_file(tmp_path / "payload.bin", 6 * MiB, seed=21)
    with make_lab(r1="port-restricted", r2="full-cone") as lab:
        peers = LabPeers(lab, tmp_path)
        peers.start_tracker("--metrics", "tcp:9464")
        tracker_url = metrics_url(peers.workdir.joinpath("tracker.log").read_text())
        urls = {}
        for name, host in (("seed", "b1"), ("dl", "a1")):
            extra = ("--metrics", "tcp:9465", "--paths", "quic")
            process = peers.start_daemon(name, host, *extra)
            urls[name] = metrics_url(process.wait_for_log("serving Prometheus"))
        shared = peers.share("seed", payload)
        result = peers.download("dl", shared, tmp_path / "out")
        assert sha256_of(tmp_path / "out" / payload.name) == sha256_of(payload)
        assert [p["path"] for p in result["peers"]] == ["quic"]
        dl, seed = scrape_in(lab, "a1", urls["dl"]), scrape_in(lab, "b1", urls["seed"])
        tracker = scrape_in(lab, "pub", tracker_url)
    for samples in (dl, seed):
        assert total(samples, "peerit_daemon_punches_total",
                     nat_pair="independent-independent", outcome="success") == 1
        assert total(samples, "peerit_daemon_punches_total", outcome="failure") == 0
    assert total(tracker, "peerit_tracker_punches_total",
                 nat_pair="independent-independent") == 1
    assert total(dl, "peerit_daemon_received_bytes_total", path="quic") == payload.stat().st_size
    assert total(dl, "peerit_daemon_connections_total", path="quic") == 1


def test_metrics_port_serves_loopback_and_allowed_clients_only(make_lab, tmp_path):
    """Bound to every address of the tracker's namespace: its own loopback is served, a
    host behind r1 (seen as r1's public address) is refused at accept, unless that address
    is given with --metrics-allow."""
    with make_lab(r1="full-cone") as lab:
        peers = LabPeers(lab, tmp_path)
        peers.start_tracker("--metrics", "tcp:9464:interface=0.0.0.0")
        assert scrape_in(lab, "pub", "http://127.0.0.1:9464/metrics") is not None
        refused = scrape_in(lab, "a1", f"http://{TRACKER_IP}:9464/metrics", check=False)
        assert refused is None
        log = peers.workdir.joinpath("tracker.log").read_text()
        assert f"metrics: refused a connection from {ROUTER_PUBLIC['r1']}" in log
    with make_lab(r1="full-cone") as lab:
        peers = LabPeers(lab, tmp_path / "allowed")
        peers.start_tracker("--metrics", "tcp:9464:interface=0.0.0.0",
                            "--metrics-allow", ROUTER_PUBLIC["r1"])
        deadline = time.monotonic() + 10
        samples = None
        while samples is None and time.monotonic() < deadline:
            samples = scrape_in(lab, "a1", f"http://{TRACKER_IP}:9464/metrics", check=False)
        assert samples is not None
        assert total(samples, "peerit_tracker_sessions", state="active") == 0
