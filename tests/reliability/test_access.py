"""Suite 7, access control: nobody gets in where they do not belong.

- Another local user cannot use the control socket even when the data directory was left
  open by mistake (the socket itself is 0600).
- A man in the middle with its own certificate on a peer link (the address the tracker
  gave is hijacked) or on the tracker link (an impostor at the tracker's address) is refused
  during the TLS handshake: it never sees a protocol message.
- Punch probes without the attempt's nonce are ignored, however many arrive.
- One tracker client cannot announce, update or remove another's entries.
- Paths in a .p2p never write outside the target directory, with ``..`` or absolute paths
  smuggled into the file or symlinks planted in the target directory.
"""

import json
import os
import pwd
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from reliability_kit import MiB, pick, random_file, share, wait_until
from test_tracker_loss import peers_in_table

from peerit.addresses import TrackerAddress
from peerit.identity import Identity
from peerit.nat.punch import PunchAttempt
from peerit.testing.badpeers import BlockingTlsClient, announce_blocking
from peerit.testing.localswarm import LocalSwarm
from peerit.testing.processes import Process, ctl_argv, environment, twistd_argv
from peerit.wire import probe
from peerit.wire import tracker as wire
from peerit.wire.framing import frame


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a command as another user")
def test_other_user_is_refused_by_the_socket_itself_when_the_directory_is_open(figures):
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="peerit-acl-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        with LocalSwarm(base / "swarm") as local:
            os.chmod(local.workdir, 0o755)
            local.start_tracker()
            handle = local.start_daemon("owner")
            os.chmod(handle.data_dir, 0o755)  # the user opened the directory by mistake
            mode = (handle.data_dir / "control.sock").stat().st_mode & 0o777
            as_nobody = ("setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                         "--clear-groups")
            result = subprocess.run(
                ctl_argv("list", "--control", handle.control, prefix=as_nobody),
                capture_output=True, text=True, env=environment({"HOME": "/tmp"}), timeout=60)
            assert result.returncode == 7, result.stderr
            assert mode == 0o600, oct(mode)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    figures.update({"socket_mode": "0600", "other_user_exit_code": 7})


def test_man_in_the_middle_on_a_peer_link_is_refused(swarm, tmp_path, figures):
    """The seeder advertises a LAN address that an attacker took over (127.0.0.77) with its
    own certificate. The downloader's TLS pin refuses it; the download goes on over the
    seeder's other (public) address, and the attacker never reads a protocol message."""
    src = random_file(tmp_path / "src" / "mitm.bin", 4 * MiB, seed=71)
    swarm.start_daemon("seed", advertise="127.0.0.77")
    s = share(swarm, "seed", src)
    seed_port = int(swarm.daemons["seed"].process.log().split(
        "listening for peers on port ")[1].split(",")[0])
    report = swarm.workdir / "mitm.report.json"
    mitm = Process([sys.executable, "-m", "peerit.testing.badpeers", "--behaviour", "honest",
                    "--p2p", s["metainfo"], "--data", str(src), "--data-dir",
                    str(swarm.workdir / "mitm"), "--listen-host", "127.0.0.77", "--port",
                    str(seed_port), "--report", str(report)], swarm.workdir / "mitm.log")
    swarm._others.append(mitm)
    wait_until(lambda: report.exists(), 30, what="mitm listening")
    swarm.start_daemon("dl")
    swarm.ctl("dl", "download", s["metainfo"], "--to", str(tmp_path / "out"), "--detach")
    swarm.wait_complete("dl", s["info_hash"], timeout=120)
    assert (tmp_path / "out" / "mitm.bin").read_bytes() == src.read_bytes()
    # The report is rewritten twice a second: wait (bounded) for the attempt to show.
    wait_until(lambda: json.loads(report.read_text())["links"] >= 1, 10,
               what="the downloader's TLS attempt at the hijacked address in the report")
    seen = json.loads(report.read_text())
    assert seen["links"] >= 1, seen  # the downloader did try the hijacked address...
    assert seen["handshakes"] == 0 and seen["requests"] == [], seen  # ...and said nothing
    figures.update({"mitm_tls_attempts": seen["links"], "mitm_messages_read": 0})


def test_man_in_the_middle_on_the_tracker_link_is_refused(tmp_path, figures):
    """An impostor tracker (its own key) at the address a daemon expects: the daemon pins
    the real fingerprint, so it never says Hello and never counts as connected."""
    real = Identity.load_or_create(str(tmp_path / "real"), common_name="peer-it tracker")
    impostor = Process(twistd_argv("peerit-tracker", "--listen",
                                   "tcp:0:interface=127.0.0.1", "--data-dir",
                                   str(tmp_path / "impostor"), "--stun", "none",
                                   "--relay", "none"),
                       tmp_path / "impostor.log")
    try:
        impostor.wait_for_path(tmp_path / "impostor" / "tracker.endpoint", 30)
        address = TrackerAddress.parse(
            (tmp_path / "impostor" / "tracker.endpoint").read_text())
        local = LocalSwarm(tmp_path / "swarm")
        local.tracker_endpoint = str(TrackerAddress(address.host, address.port, real.peer_id))
        try:
            local.start_daemon("victim")
            time.sleep(3)
            info = local.ctl_json("victim", "status")
            log = local.daemons["victim"].process.log()
        finally:
            local.close()
        impostor_log = impostor.log()
    finally:
        impostor.stop()
    assert len(info["daemon"]["trackers"]) == 1, info
    assert info["daemon"]["trackers_connected"] == [], info
    assert "did not welcome us" in log or "cannot reach tracker" in log, log[-2000:]
    assert "Hello" not in impostor_log and "session up" not in impostor_log
    figures.update({"impostor_sessions": 0, "daemon_connected_to_impostor": False})


def test_probes_without_the_nonce_are_ignored_in_bulk(figures):
    count = pick(2000, 100_000)
    sent = []

    class Socket:
        def send(self, data, addr):
            sent.append(addr)

        def close(self):
            pass

    attempt_id, me, them = b"\x01" * 16, b"\x0a" * 32, b"\x0b" * 32
    successes = []
    attempt = PunchAttempt(
        Clock(), random.Random(1), attempt_id=attempt_id, nonce=b"N" * 32, my_peer_id=me,
        their_peer_id=them, role="controlled", their_candidates=[("198.51.100.2", 5000,
                                                                   "public")],
        my_mapping="independent", their_mapping="independent", main_socket=Socket(),
        on_success=successes.append, on_failure=lambda *a: None)
    attempt.start()
    rng = random.Random(2)
    attacker = ("192.0.2.66", 6666)
    for i in range(count):
        kind = probe.KINDS[i % len(probe.KINDS)]
        forged = probe.encode(kind, attempt_id, them, rng.randbytes(12), rng.randbytes(32))
        attempt.datagram_received(Socket(), forged, attacker)
    assert successes == []
    assert attacker not in sent
    assert attempt.stats.bad_mac == count, attempt.stats
    figures.update({"forged_probes": count, "accepted": 0, "replies_to_attacker": 0})


def test_one_client_cannot_touch_another_clients_entries(swarm, tmp_path, figures):
    tracker = TrackerAddress.parse(swarm.tracker_endpoint)
    info_hash = os.urandom(32)
    alice = BlockingTlsClient(Identity.generate(), str(tmp_path / "alice"))
    mallory = BlockingTlsClient(Identity.generate(), str(tmp_path / "mallory"))
    observer = BlockingTlsClient(Identity.generate(), str(tmp_path / "observer"))
    session = announce_blocking(alice, tracker, info_hash, tcp_port=4001)
    try:
        session.sendall(frame(wire.build(wire.Announce(info_hash, "update", 1000))))
        attack = announce_blocking(mallory, tracker, info_hash, tcp_port=6666)
        for event in ("update", "completed", "stopped"):
            attack.sendall(frame(wire.build(wire.Announce(info_hash, event, 0))))
        time.sleep(0.5)
        listed = peers_in_table(observer, tracker, info_hash)
        assert alice.identity.peer_id in listed
        attack.close()
        time.sleep(0.5)
        listed = peers_in_table(observer, tracker, info_hash)
        assert alice.identity.peer_id in listed
        assert mallory.identity.peer_id not in listed
    finally:
        session.close()
    figures.update({"foreign_events_tried": 3, "entries_changed": 0})


def _smuggle(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1 and len(old) == len(new)
    return data.replace(old, new)


def test_p2p_paths_never_write_outside_the_target(swarm, tmp_path, figures):
    tree = tmp_path / "src" / "album"
    random_file(tree / "aa" / "song.bin", 300_000, seed=72)
    random_file(tree / "top.bin", 50_000, seed=73)
    swarm.start_daemon("seed")
    swarm.start_daemon("dl")
    s = share(swarm, "seed", tree)
    good = Path(s["metainfo"]).read_bytes()
    outside = tmp_path / "outside"
    outside.mkdir()
    refused = {}
    # 1. ``..`` and an absolute path smuggled into the file list (hash and all rewritten
    #    by hand, as an attacker would): the .p2p itself is refused.
    for label, old, new in (("dotdot", b"aa/song.bin", b"../song.bin"),
                            ("absolute", b"aa/song.bin", b"/tmp/x.binn")):
        bad = tmp_path / f"{label}.p2p"
        bad.write_bytes(_smuggle(good, old, new))
        result = swarm.ctl("dl", "download", str(bad), "--to", str(tmp_path / label),
                           check=False)
        assert result.returncode == 5, (label, result.stderr)
        refused[label] = result.stderr.strip()
    # 2. Symlinks planted in the target: on the share's own name, and on a folder in it.
    for label in ("name", "folder"):
        target = tmp_path / f"t-{label}"
        target.mkdir()
        if label == "name":
            (target / "album").symlink_to(outside)
        else:
            (target / "album").mkdir()
            (target / "album" / "aa").symlink_to(outside)
        result = swarm.ctl("dl", "download", s["metainfo"], "--to", str(target), check=False)
        assert result.returncode != 0, (label, result.stdout)
        assert "symlink" in result.stderr, (label, result.stderr)
        refused[f"symlink_{label}"] = result.stderr.strip()
    assert list(outside.iterdir()) == []
    assert swarm.ctl_json("dl", "list") == []
    figures.update({"refused": len(refused), "files_written_outside": 0})


def test_relay_connections_without_a_valid_token_are_closed_unheard(swarm, figures):
    """Connections to the tracker's relay with made-up tokens (or no hello at all) get no
    byte back and are closed; none is ever spliced to another."""
    from peerit.tracker.relay import relay_hello
    from peerit.wire.tracker import RELAY_TOKEN_SIZE
    from test_fuzz import _relay_port

    port = _relay_port(swarm)
    if port is None:
        pytest.skip("this tracker runs no relay")
    count = pick(200, 2000)
    rng = random.Random(8)
    replies = still_open = 0
    held = []
    for i in range(count):
        sock = socket_connect(port)
        if i % 4 == 3:
            sock.sendall(rng.randbytes(rng.randrange(1, 80)))  # not a hello at all
        else:
            sock.sendall(relay_hello(rng.randbytes(RELAY_TOKEN_SIZE)) + b"payload")
        held.append(sock)
        if len(held) >= 50:
            r, o = _settle(held)
            replies, still_open = replies + r, still_open + o
            held = []
    r, o = _settle(held)
    replies, still_open = replies + r, still_open + o
    assert replies == 0 and still_open == 0, (replies, still_open)
    assert swarm.tracker_process.alive()
    figures.update({"forged_relay_hellos": count, "bytes_relayed_or_answered": 0,
                    "left_open": 0})


def socket_connect(port: int):
    import socket
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _settle(sockets) -> tuple[int, int]:
    """(bytes received, sockets still open after 5 s) for a batch of forged connections."""
    import socket
    got = still_open = 0
    deadline = time.monotonic() + 5
    for sock in sockets:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            while True:
                data = sock.recv(4096)
                if not data:
                    break
                got += len(data)
        except socket.timeout:
            still_open += 1
        except OSError:
            pass
        finally:
            sock.close()
    return got, still_open
