"""The tracker's STUN responder with clients no one here wrote, and under a flood.

Standard clients send bare 20-byte Binding requests (or a little more); the responder
answers them all, and bounds what spoofed requests can make it send with a per-address rate,
a global byte budget and a cap on each answer's size (docs/nat-protocol.md, "STUN").
"""

import re
import shutil
import socket
import subprocess
import time

import pytest

from peerit.nat.stun import BURST_PER_SOURCE, MAX_AMPLIFICATION, REPLIES_PER_SECOND_PER_SOURCE
from peerit.testing.metrics import metrics_url, scrape, total
from peerit.wire import stun

pytestmark = pytest.mark.integration


def stun_port(tracker) -> int:
    text = tracker.process.wait_for_log("STUN on udp ports")
    return int(re.search(r"STUN on udp ports (\d+)", text).group(1))


@pytest.mark.skipif(shutil.which("turnutils_stunclient") is None,
                    reason="coturn's turnutils_stunclient is not installed (bin/setup --test)")
def test_turnutils_stunclient_gets_its_reflexive_address(tracker):
    """coturn's client, a plain RFC 5389 Binding request, gets its own loopback address."""
    result = subprocess.run(["turnutils_stunclient", "-p", str(stun_port(tracker)),
                             "127.0.0.1"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "UDP reflexive addr: 127.0.0.1:" in result.stdout, result.stdout


def test_requests_of_every_standard_size_are_answered(tracker):
    """20, 28, 32 and 40 bytes (none, or one 4-, 8-, 16-byte attribute), with and without
    FINGERPRINT: each gets a success carrying the address it came from."""
    port = stun_port(tracker)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        me = sock.getsockname()
        for index, size in enumerate((None, 4, 8, 16)):
            attributes = () if size is None else (stun.Attribute(0x8F00, b"x" * size),)
            for fingerprint in (False, True):
                tid = bytes([index, fingerprint]) * 6
                request = stun.build(stun.StunMessage(stun.BINDING_REQUEST, tid, attributes),
                                     fingerprint=fingerprint)
                sock.sendto(request, ("127.0.0.1", port))
                answer = stun.parse(sock.recvfrom(2048)[0])
                assert (answer.type, answer.transaction_id) == (stun.BINDING_SUCCESS, tid)
                assert stun.mapped_address(answer) == me
                assert (answer.attributes[-1].type == stun.FINGERPRINT) == fingerprint


FLOOD_SOURCES = 100
FLOOD_PER_SOURCE = 200  # 20,000 requests
FLOOD_SECONDS = 4.0
BUDGET = 50_000  # bytes/s, small enough that the flood meets it


def test_a_flood_stays_within_the_documented_bound(tracker_factory):
    """20,000 requests from 100 loopback addresses over ~4 s, half of them the worst case
    (24 bytes with an unknown required attribute, answered with a 56-byte 420): the tracker
    sends at most 2.4 times the bytes it received, at most its byte budget per second (plus
    one second's burst), and each address gets at most its rate."""
    tracker = tracker_factory("--metrics", "tcp:0", "--stun-budget", str(BUDGET))
    url = metrics_url(tracker.process.wait_for_log("serving Prometheus"))
    port = stun_port(tracker)
    bare = stun.build(stun.StunMessage(stun.BINDING_REQUEST, b"f" * 12), fingerprint=False)
    worst = stun.build(stun.StunMessage(stun.BINDING_REQUEST, b"w" * 12,
                                        (stun.Attribute(0x0042, b""),)), fingerprint=False)
    sockets = []
    try:
        for index in range(FLOOD_SOURCES):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.bind((f"127.0.1.{index + 1}", 0))
            sock.setblocking(False)
        answers = [0] * FLOOD_SOURCES
        sent_bytes = 0
        rounds = FLOOD_PER_SOURCE
        started = time.monotonic()
        for round_ in range(rounds):
            for index, sock in enumerate(sockets):
                request = worst if (index + round_) % 2 else bare
                sock.sendto(request, ("127.0.0.1", port))
                sent_bytes += len(request)
            answers = _drain(sockets, answers)
            # Paced: round r leaves no earlier than r/rounds of the flood's duration.
            delay = started + FLOOD_SECONDS * (round_ + 1) / rounds - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            answers = _drain(sockets, answers)
            time.sleep(0.05)
        figures = scrape(url)
        elapsed = time.monotonic() - started
    finally:
        for sock in sockets:
            sock.close()
    received = total(figures, "peerit_tracker_stun_received_bytes_total")
    out = total(figures, "peerit_tracker_stun_sent_bytes_total")
    print(f"flood: {FLOOD_SOURCES * FLOOD_PER_SOURCE} requests, {sent_bytes} bytes sent in "
          f"{elapsed:.2f} s; tracker received {received:.0f} bytes, sent {out:.0f} "
          f"(ratio {out / received:.3f}); answers seen {sum(answers)}; "
          f"rate-limited {total(figures, 'peerit_tracker_stun_requests_total', result='rate_limited'):.0f}, "
          f"over budget {total(figures, 'peerit_tracker_stun_requests_total', result='over_budget'):.0f}")
    assert elapsed <= FLOOD_SECONDS + 4.0, "the flood was not bounded in time"
    assert 0 < received <= sent_bytes
    assert out <= MAX_AMPLIFICATION * received
    assert out <= BUDGET * (elapsed + 1.0)
    assert total(figures, "peerit_tracker_stun_requests_total", result="over_budget") > 0, \
        "the flood never met the byte budget: the test proves less than it says"
    per_source_cap = BURST_PER_SOURCE + REPLIES_PER_SECOND_PER_SOURCE * elapsed
    assert max(answers) <= per_source_cap, (max(answers), per_source_cap)
    assert sum(answers) > 0


def _drain(sockets, answers):
    for index, sock in enumerate(sockets):
        while True:
            try:
                sock.recv(2048)
            except BlockingIOError:
                break
            answers[index] += 1
    return answers
