"""NAT traversal on a real ``twistd -n peerit-tracker``: punch coordination between two real
``TrackerClient`` sessions, the relay splicing two raw TCP connections, and the STUN port.

The two daemon stand-ins run in one subprocess (real TLS sessions through ``TrackerClient``)
and print every push as a JSON line; the relay and STUN clients are plain sockets here.
"""

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from peerit.testing.processes import Process
from peerit.tracker.relay import relay_hello
from peerit.wire import stun

pytestmark = pytest.mark.integration

SWARM = bytes.fromhex("6b" * 32)

# Two daemons' tracker sessions in one reactor. Once both got StunInfo and reported their NAT,
# A asks to punch to B, to relay to B, and to punch to a peer that is not there.
STANDINS = r"""
import json, sys
from twisted.internet import defer, reactor
from peerit.addresses import TrackerAddress
from peerit.identity import Identity
from peerit.daemon.tracker_client import TrackerClient
from peerit.wire import tracker as wire

address, directory, info_hash = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
SETUP = {"a": (40001, ("127.0.0.1",), 61001, "independent"),
         "b": (40002, ("10.9.8.7",), 61002, "dependent")}
clients, stun_infos = {}, {}

def show(value):
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple):
        return [show(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: show(getattr(value, k)) for k in value.__dataclass_fields__}
    return value

def pushed(name, message):
    print("PUSH", json.dumps({"to": name, "kind": type(message).__name__,
                              **show(message)}), flush=True)
    if isinstance(message, wire.StunInfo):
        stun_infos[name] = message
        udp, lan, public_port, mapping = SETUP[name]
        clients[name].send(wire.NatReport(wire.Endpoint("127.0.0.1", public_port), mapping,
                                          "address-and-port"))
        if len(stun_infos) == 2:
            go()

def make(name):
    identity = Identity.load_or_create(f"{directory}/{name}")
    udp, lan, _, _ = SETUP[name]
    client = TrackerClient(
        reactor, identity, TrackerAddress.parse(address),
        hello=lambda: wire.Hello(7000, udp, lan),
        announces=lambda: [wire.Announce(info_hash, "started", 100)],
        on_push=lambda message: pushed(name, message), connect_timeout=5,
        retry_policy=lambda n: 0.5)
    print("ID", name, identity.peer_id.hex(), flush=True)
    return client

@defer.inlineCallbacks
def go():
    # A ping answered means everything sent before it (announce, NatReport) was handled.
    yield clients["b"].ping()
    yield clients["a"].ping()
    a = clients["a"]
    a.send(wire.PunchRequest(info_hash, clients["b"].peer_id))
    a.send(wire.RelayRequest(info_hash, clients["b"].peer_id))
    a.send(wire.PunchRequest(info_hash, bytes(32)))
    yield a.ping()
    print("DONE", flush=True)

for name in ("a", "b"):
    clients[name] = make(name)
    clients[name].startService()
reactor.callLater(30, reactor.stop)
reactor.run()
"""


def run_standins(tmp_path: Path, tracker) -> tuple[dict, list[dict]]:
    process = Process([sys.executable, "-c", STANDINS, str(tracker.address), str(tmp_path),
                       SWARM.hex()], tmp_path / "standins.log")
    try:
        process.wait_for_log("DONE", timeout=30)
        time.sleep(0.2)  # the last pushes are written before DONE; let them reach the log
        log = process.log()
    finally:
        process.stop()
    ids = {}
    pushes = []
    for line in log.splitlines():
        if line.startswith("ID "):
            _, name, peer_id = line.split()
            ids[name] = peer_id
        elif line.startswith("PUSH "):
            pushes.append(json.loads(line[5:]))
    return ids, pushes


def only(pushes, **match):
    found = [p for p in pushes if all(p.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, pushes)
    return found[0]


def test_punch_and_relay_offers_reach_both_sessions(tracker_factory, tmp_path):
    tracker = tracker_factory()
    ids, pushes = run_standins(tmp_path, tracker)
    stun_a = only(pushes, to="a", kind="StunInfo")
    assert stun_a["stun_port"] and stun_a["stun_alt_port"] and stun_a["relay_port"]

    to_a = only(pushes, to="a", kind="Punch")
    to_b = only(pushes, to="b", kind="Punch")
    assert (to_a["attempt_id"], to_a["nonce"]) == (to_b["attempt_id"], to_b["nonce"])
    assert len(bytes.fromhex(to_a["attempt_id"])) == 16
    assert len(bytes.fromhex(to_a["nonce"])) == 32
    assert (to_a["peer_id"], to_a["controlling"]) == (ids["b"], True)
    assert (to_b["peer_id"], to_b["controlling"]) == (ids["a"], False)
    assert to_a["candidates"] == [
        {"host": "10.9.8.7", "port": 40002, "kind": "lan"},
        {"host": "127.0.0.1", "port": 61002, "kind": "public"}]
    assert to_b["candidates"] == [
        {"host": "127.0.0.1", "port": 40001, "kind": "lan"},
        {"host": "127.0.0.1", "port": 61001, "kind": "public"}]
    assert (to_a["mapping"], to_b["mapping"]) == ("dependent", "independent")

    offer_a = only(pushes, to="a", kind="RelayOffer")
    offer_b = only(pushes, to="b", kind="RelayOffer")
    assert offer_a["token"] == offer_b["token"]
    assert (offer_a["initiator"], offer_b["initiator"]) == (True, False)
    assert offer_a["port"] == offer_b["port"] == stun_a["relay_port"]

    refusal = only(pushes, to="a", kind="Error")
    assert (refusal["code"], refusal["refused_opcode"], refusal["info_hash"]) == \
        ("peer_unavailable", 12, SWARM.hex())


def _relay_connect(port: int, token: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), 5)
    sock.sendall(relay_hello(token))
    return sock


def _exchange(sock, outgoing: bytes, expect: int, results: dict, name: str):
    """Send ``outgoing`` while receiving ``expect`` bytes; record what came and when."""
    received = bytearray()
    sender = threading.Thread(target=sock.sendall, args=(outgoing,))
    sender.start()
    sock.settimeout(30)
    while len(received) < expect:
        data = sock.recv(1 << 16)
        if not data:
            break
        received += data
    results[name] = (bytes(received), time.monotonic())
    sender.join(30)


def test_relay_splices_two_connections_at_the_capped_rate(tracker_factory, tmp_path):
    rate = 4_000_000
    tracker = tracker_factory("--relay-rate", str(rate))
    ids, pushes = run_standins(tmp_path, tracker)
    offer = only(pushes, to="a", kind="RelayOffer")
    token, port = bytes.fromhex(offer["token"]), offer["port"]

    first = _relay_connect(port, token)
    second = _relay_connect(port, token)
    size = 6 * 1024 * 1024
    up, down = os.urandom(size), os.urandom(size)
    results = {}
    started = time.monotonic()
    threads = [threading.Thread(target=_exchange, args=(first, up, size, results, "first")),
               threading.Thread(target=_exchange, args=(second, down, size, results, "second"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results["second"][0] == up, "first -> second intact"
    assert results["first"][0] == down, "second -> first intact"
    burst = max(64 * 1024, rate // 20)
    for name, (_, finished) in results.items():
        achieved = (size - burst) / (finished - started)
        print(f"relay {name}: {size} bytes in {finished - started:.2f}s = "
              f"{achieved / 1e6:.2f} MB/s (cap {rate / 1e6:.1f} MB/s)")
        # The cap holds (loosely: scheduling noise on a shared machine) ...
        assert achieved < rate * 1.3
    # ... and a used token does not open a third splice.
    third = _relay_connect(port, token)
    third.settimeout(5)
    assert _closed(third)
    for sock in (first, second, third):
        sock.close()
    log = tracker.process.wait_for_log("ended after", timeout=10)
    assert f"{size} bytes" in log, "each session's bytes are logged"


def _closed(sock) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_relay_closes_a_wrong_token_without_a_reply(tracker):
    endpoint_log = tracker.process.wait_for_log("relay on tcp port")
    port = int(endpoint_log.split("relay on tcp port ")[1].split()[0])
    sock = _relay_connect(port, os.urandom(32))
    sock.settimeout(5)
    assert _closed(sock)
    sock.close()


def test_stun_binding_is_answered_on_the_stun_port(tracker):
    text = tracker.process.wait_for_log("STUN on udp ports")
    stun_port = int(text.split("STUN on udp ports ")[1].split()[0])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    transaction = os.urandom(12)
    # Padded as our client pads: the tracker never answers with more bytes than it got.
    request = stun.build(stun.StunMessage(stun.BINDING_REQUEST, transaction,
                                          (stun.padding(64),)))
    sock.sendto(request, ("127.0.0.1", stun_port))
    answer = stun.parse(sock.recvfrom(2048)[0])
    me = sock.getsockname()
    sock.close()
    assert (answer.type, answer.transaction_id) == (stun.BINDING_SUCCESS, transaction)
    assert stun.mapped_address(answer) == me
