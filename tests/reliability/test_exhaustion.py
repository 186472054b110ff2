"""Suite 5, resource exhaustion: half-open TLS, slow drips and UDP floods.

Against a real tracker and daemon on loopback: connections that never finish the TLS
handshake (1,000 in the short form, 5,000 in the long one, spread over 100 loopback source
addresses as a distributed attacker would be), slow-drip senders, and a flood of STUN and
punch-probe datagrams at the tracker's STUN port. Memory stays bounded (peak RSS reported),
the half-open connections are shed by the handshake timeouts, legitimate clients are still
served during the attack, and no UDP reply is larger than the datagram that caused it.
"""

import os
import random
import socket
import threading
import time

import pytest

from reliability_kit import MiB, peak_rss_kib, pick, random_file, rss_kib, share, wait_until
from test_fuzz import _daemon_port, _daemon_udp_port, _stun_answers, _stun_port
from test_tracker_loss import peers_in_table

from fuzzing import SEEDS, Mutator
from peerit.addresses import TrackerAddress
from peerit.identity import Identity
from peerit.nat.stun import MAX_AMPLIFICATION
from peerit.testing.badpeers import BlockingTlsClient
from peerit.wire import stun

SOURCES = [f"127.0.{i // 250}.{2 + i % 250}" for i in range(100)]


def open_half_open(port: int, count: int) -> list[socket.socket]:
    """``count`` TCP connections that send a few bytes of a TLS ClientHello and stop."""
    sockets = []
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((SOURCES[i % len(SOURCES)], 0))
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sockets.append(s)
        if i % 200 == 199:
            time.sleep(0.05)  # let the accept loop keep up: we test the server, not SYNs
    time.sleep(0.5)
    for s in sockets:
        try:
            s.send(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello that never continues
        except OSError:
            pass
    return sockets


def established_to(port: int) -> int:
    """Open TCP connections to local ``port`` (server side), from /proc/net/tcp."""
    count = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state == "01" and int(local.split(":")[1], 16) == port:
                count += 1
    return count


class Dripper(threading.Thread):
    """Connections that send one byte every ``interval`` seconds, forever (until stopped)."""

    def __init__(self, port: int, count: int, interval: float = 1.0):
        super().__init__(daemon=True)
        self.port, self.count, self.interval = port, count, interval
        self.stopped = threading.Event()
        self.cut_off = 0

    def run(self):
        sockets = []
        for i in range(self.count):
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5,
                                         source_address=(SOURCES[-1 - i % 10], 0))
            sockets.append(s)
        hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(256)
        n = 0
        while not self.stopped.wait(self.interval):
            for s in list(sockets):
                try:
                    s.send(hello[n % len(hello):n % len(hello) + 1])
                except OSError:
                    sockets.remove(s)
                    self.cut_off += 1
            n += 1
        for s in sockets:
            s.close()


def _close_all(sockets):
    for s in sockets:
        s.close()


def test_half_open_and_dripping_connections_are_shed_and_clients_still_served(
        swarm, tmp_path, figures):
    count = pick(1000, 5000)
    src = random_file(tmp_path / "src" / "ex.bin", 8 * MiB, seed=51)
    swarm.start_daemon("seed")
    s = share(swarm, "seed", src)
    info_hash = bytes.fromhex(s["info_hash"])
    tracker = TrackerAddress.parse(swarm.tracker_endpoint)
    daemon_port = _daemon_port(swarm, "seed")
    observer = BlockingTlsClient(Identity.generate(), str(tmp_path / "observer"))
    tracker_pid = swarm.tracker_process.pid
    daemon_pid = swarm.daemons["seed"].process.pid
    rss_before = {"tracker": rss_kib(tracker_pid), "daemon": rss_kib(daemon_pid)}

    drippers = [Dripper(tracker.port, 20), Dripper(daemon_port, 20)]
    for d in drippers:
        d.start()
    attack_started = time.monotonic()
    held = open_half_open(tracker.port, count) + open_half_open(daemon_port, count)
    try:
        at_peak = {"tracker": established_to(tracker.port),
                   "daemon": established_to(daemon_port)}
        # Legitimate clients during the attack: the tracker answers a peer list, and a new
        # daemon downloads from the seeder under attack.
        started = time.monotonic()
        assert peers_in_table(observer, tracker, info_hash)
        tracker_answer_s = time.monotonic() - started
        swarm.start_daemon("dl")
        started = time.monotonic()
        swarm.ctl("dl", "download", s["metainfo"], "--to", str(tmp_path / "out"), "--detach")
        swarm.wait_complete("dl", s["info_hash"], timeout=120)
        download_s = time.monotonic() - started
        assert (tmp_path / "out" / "ex.bin").read_bytes() == src.read_bytes()
        # The handshake timeouts (tracker 10 s, daemon 15 s) shed every half-open link.
        wait_until(lambda: established_to(tracker.port) <= 25
                   and established_to(daemon_port) <= 25, 60, interval=0.5,
                   what="half-open connections shed")
        shed_s = time.monotonic() - attack_started
    finally:
        _close_all(held)
        for d in drippers:
            d.stopped.set()
    for d in drippers:
        d.join(10)
        assert d.cut_off == d.count, (d.port, d.cut_off)  # drips do not keep a link alive
    peak = {"tracker": peak_rss_kib(tracker_pid), "daemon": peak_rss_kib(daemon_pid)}
    assert swarm.tracker_process.alive() and swarm.daemons["seed"].process.alive()
    # Bounded: a few hundred MiB at most for thousands of links, far from the machine's RAM.
    assert peak["tracker"] < 512 * 1024 and peak["daemon"] < 512 * 1024, peak
    figures.update({
        "half_open_per_target": count, "slow_drip_per_target": 20,
        "established_at_peak": at_peak, "all_shed_after_s": round(shed_s, 1),
        "rss_before_mib": {k: round(v / 1024, 1) for k, v in rss_before.items()},
        "peak_rss_mib": {k: round(v / 1024, 1) for k, v in peak.items()},
        "tracker_peer_list_during_attack_s": round(tracker_answer_s, 2),
        "download_8mib_during_attack_s": round(download_s, 1),
    })


@pytest.mark.parametrize("target", ["tracker_stun", "daemon_udp"])
def test_udp_flood_gets_no_amplification_and_real_requests_still_answered(
        swarm, target, figures):
    count = pick(20_000, 200_000)
    if target == "tracker_stun":
        port = _stun_port(swarm)
        pid = swarm.tracker_process.pid
    else:
        swarm.start_daemon("victim")
        port = _daemon_udp_port(swarm, "victim")
        pid = swarm.daemons["victim"].process.pid
    if port is None:
        pytest.skip(f"no UDP socket for {target}")
    inputs = Mutator(SEEDS["stun"]() + SEEDS["probe"](), 91, max_size=1200)
    rng = random.Random(92)
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    flood.bind(("127.0.0.1", 0))
    flood.setblocking(False)
    real_request = stun.build(stun.StunMessage(stun.BINDING_REQUEST, b"\x00" * 12))
    sent_bytes = received = received_bytes = 0
    larger = biggest_ratio = 0
    last_sent_size = {}
    started = time.monotonic()

    def drain():
        nonlocal received, received_bytes, larger, biggest_ratio
        while True:
            try:
                reply = flood.recv(65536)
            except BlockingIOError:
                return
            received += 1
            received_bytes += len(reply)
            request_size = last_sent_size.get(reply[8:20], 20)
            biggest_ratio = max(biggest_ratio, len(reply) / request_size)
            larger += len(reply) > request_size

    for i in range(count):
        # Half the flood is well-formed Binding requests (the ones that get answers).
        data = real_request[:8] + rng.randbytes(12) + real_request[20:] if i % 2 else \
            next(inputs)
        try:
            flood.sendto(data, ("127.0.0.1", port))
        except BlockingIOError:
            time.sleep(0.001)
            continue
        sent_bytes += len(data)
        if len(data) >= 20:
            last_sent_size[data[8:20]] = len(data)
        if i % 500 == 0:
            time.sleep(0.005)
        drain()
    flood_s = time.monotonic() - started
    time.sleep(0.5)
    drain()
    flood.close()
    if target == "tracker_stun":
        assert _stun_answers(port)  # another source is still answered
    else:
        assert swarm.daemons["victim"].process.alive()
        swarm.ctl("victim", "status")
    peak = peak_rss_kib(pid)
    figures.update({
        "target": target, "datagrams_sent": count, "bytes_sent": sent_bytes,
        "replies": received, "reply_bytes": received_bytes,
        "bytes_out_per_byte_in": round(received_bytes / max(1, sent_bytes), 3),
        "replies_larger_than_request": larger,
        "max_reply_to_request_ratio": round(biggest_ratio, 2),
        "flood_s": round(flood_s, 1), "peak_rss_mib": round(peak / 1024, 1),
        "still_serving": True,
    })
    # One source: its rate limit keeps the total far below what it sent; each answer within
    # the responder's cap on answer/request size (a bare 20-byte request gets 32 bytes).
    assert received_bytes <= sent_bytes, "the flood got more bytes back than it sent"
    assert biggest_ratio <= MAX_AMPLIFICATION, f"an answer {biggest_ratio:.2f}x its request"
