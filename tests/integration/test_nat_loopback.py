"""NAT traversal paths end to end on loopback: the real tracker (STUN, punch coordination,
relay) and two real daemons whose direct TCP path is switched off with ``--paths``, so the
downloader must reach the seeder over punched QUIC, or through the tracker's relay.

``--paths`` only limits what a daemon dials (the seeder still accepts anything), which is how
these tests make the TCP path unusable on loopback, where nothing can be firewalled off.
"""

import json
import socket

import pytest

from peerit.testing.localswarm import LocalSwarm

from test_daemon import MiB, random_file, sha256_of, share

pytestmark = pytest.mark.integration


def free_port(kind=socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tracker_nat_options(stun: int, stun_alt: int, relay: int) -> list[str]:
    """The tracker's STUN (two UDP ports) and relay (TCP) on loopback."""
    return ["--stun", f"udp:{stun}:interface=127.0.0.1", "--stun-alt-port", str(stun_alt),
            "--relay", f"tcp:{relay}:interface=127.0.0.1"]


@pytest.fixture
def nat_swarm(tmp_path):
    with LocalSwarm(tmp_path / "swarm") as swarm:
        swarm.start_tracker(*tracker_nat_options(
            free_port(), free_port(), free_port(socket.SOCK_STREAM)))
        yield swarm


def peers(swarm, name, info_hash) -> list[dict]:
    return json.loads(swarm.ctl(name, "peers", info_hash, "--json").stdout)["peers"]


@pytest.mark.parametrize("path", ["quic", "relay"])
def test_sixteen_mib_over_a_nat_path(nat_swarm, tmp_path, path):
    """With TCP dialing off, 16 MiB arrive intact over the one path allowed; both daemons
    list the peer on that path, and the downloader says how long connecting took."""
    src = random_file(tmp_path / "src" / f"{path}.bin", 16 * MiB, seed=11)
    udp = "udp:0:interface=127.0.0.1"
    # Rate-limited so that the link is still up when we look (links close once both sides
    # are complete).
    nat_swarm.start_daemon("seed", "--udp", udp, "--max-upload-rate", "2M")
    nat_swarm.start_daemon("dl", "--udp", udp, "--paths", path)
    shared = share(nat_swarm, "seed", src)
    nat_swarm.ctl("dl", "download", shared["metainfo"], "--to", str(tmp_path / "out"),
                  "--detach")
    nat_swarm.wait_for("dl", shared["info_hash"], lambda s: s["peers"] > 0, timeout=60)
    seen = peers(nat_swarm, "dl", shared["info_hash"])
    assert [p["path"] for p in seen] == [path], seen
    assert 0 < seen[0]["connect_seconds"] < 20, seen
    assert [p["path"] for p in peers(nat_swarm, "seed", shared["info_hash"])] == [path]
    nat_swarm.wait_complete("dl", shared["info_hash"], timeout=120)
    assert sha256_of(tmp_path / "out" / src.name) == sha256_of(src)
    log = nat_swarm.daemons["dl"].process.log()
    assert "Traceback" not in log, log[-3000:]


def test_netcheck_on_loopback_sees_no_nat(nat_swarm):
    """netcheck against the tracker's STUN ports: UDP works, the public address is our own
    (no NAT), and the tracker's round trip is measured."""
    nat_swarm.start_daemon("solo", "--udp", "udp:0:interface=127.0.0.1")
    report = nat_swarm.ctl_json("solo", "netcheck", timeout=60)
    assert report["udp_works"] is True, report
    assert report["public_address"].startswith("127.0.0.1:"), report
    assert report["port_preserved"] is True, report
    assert report["mapping"] == "endpoint-independent", report
    assert report["tracker_rtt"] is not None and report["tracker_rtt"] < 1, report


def test_two_shares_between_the_same_two_daemons_both_use_punched_quic(nat_swarm, tmp_path):
    """Two shares from one seeder to one downloader that may dial only QUIC: both swarms'
    links are on the punched path (one QUIC connection each on the same pair of UDP
    sockets), not the relay, and both files arrive intact."""
    udp = "udp:0:interface=127.0.0.1"
    nat_swarm.start_daemon("seed", "--udp", udp, "--max-upload-rate", "2M")
    nat_swarm.start_daemon("dl", "--udp", udp, "--paths", "quic")
    shares = []
    for i in range(2):
        src = random_file(tmp_path / "src" / f"share{i}.bin", 6 * MiB, seed=40 + i)
        shares.append((src, share(nat_swarm, "seed", src)))
    for _, shared in shares:
        nat_swarm.ctl("dl", "download", shared["metainfo"], "--to", str(tmp_path / "out"),
                      "--detach")
    for _, shared in shares:
        nat_swarm.wait_for("dl", shared["info_hash"], lambda s: s["peers"] > 0, timeout=60)
    for _, shared in shares:
        assert [p["path"] for p in peers(nat_swarm, "dl", shared["info_hash"])] == ["quic"]
        assert [p["path"] for p in peers(nat_swarm, "seed", shared["info_hash"])] == ["quic"]
    for src, shared in shares:
        nat_swarm.wait_complete("dl", shared["info_hash"], timeout=120)
        assert sha256_of(tmp_path / "out" / src.name) == sha256_of(src)
    log = nat_swarm.daemons["dl"].process.log()
    assert "Traceback" not in log, log[-3000:]
    assert "already exists" not in log
