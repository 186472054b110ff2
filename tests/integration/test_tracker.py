"""A real ``twistd -n peerit-tracker`` on loopback with real TLS clients.

Daemon stand-ins are subprocesses running the real :class:`TrackerClient` (so they can be
killed or frozen); the observer that asks for peer lists, and the misbehaving clients, are
blocking stdlib TLS sockets in the test process.
"""

import os
import resource
import shutil
import signal
import socket
import ssl
import sys
import time
from pathlib import Path

import pytest

from peerit.identity import Identity, peer_id_of_certificate
from peerit.testing.processes import Process
from peerit.wire import tracker as wire
from peerit.wire.framing import FrameDecoder, frame

pytestmark = pytest.mark.integration

SWARM = bytes.fromhex("5a" * 32)

# A daemon stand-in: keeps a TrackerClient session, announces SWARM, logs what happens.
DAEMON_STANDIN = r"""
import sys
from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from peerit.addresses import TrackerAddress
from peerit.identity import Identity
from peerit.daemon.tracker_client import TrackerClient
from peerit.wire import tracker as wire

address, identity_dir, info_hash = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])

def pushed(message):
    if isinstance(message, wire.PeerJoined):
        print("PUSH joined", message.peer.peer_id.hex(), flush=True)

client = TrackerClient(
    reactor, Identity.load_or_create(identity_dir), TrackerAddress.parse(address),
    hello=lambda: wire.Hello(7000, 0, ("127.0.0.1",)),
    announces=lambda: [wire.Announce(info_hash, "started", 100)],
    on_push=pushed, connect_timeout=3, retry_policy=lambda n: 0.5)

def welcomed(c):
    print("WELCOMED", c.peer_id.hex(), c.public_address.host, flush=True)
client.when_connected().addCallback(welcomed)
client.startService()
reactor.run()
"""


def start_standin(tmp_path: Path, name: str, address: str,
                  info_hash: bytes = SWARM) -> tuple[Process, bytes]:
    identity_dir = tmp_path / name
    peer_id = Identity.load_or_create(str(identity_dir)).peer_id
    process = Process([sys.executable, "-c", DAEMON_STANDIN, address, str(identity_dir),
                       info_hash.hex()], tmp_path / f"{name}.log")
    return process, peer_id


class SyncClient:
    """A blocking TLS client speaking the tracker protocol (for observers and misfits)."""

    def __init__(self, tmp_path: Path, name: str, tracker, pin: bytes | None = None):
        self.identity = Identity.load_or_create(str(tmp_path / name))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # self-signed: the key is pinned below instead
        ctx.load_cert_chain(str(tmp_path / name / "identity.crt"),
                            str(tmp_path / name / "identity.key"))
        raw = socket.create_connection((tracker.address.host, tracker.address.port), 5)
        self.sock = ctx.wrap_socket(raw)
        from cryptography import x509
        proven = peer_id_of_certificate(
            x509.load_der_x509_certificate(self.sock.getpeercert(binary_form=True)))
        assert proven == (pin or tracker.address.fingerprint), "tracker key mismatch"
        self.sock.settimeout(10)
        self.decoder = FrameDecoder(wire.MAX_TRACKER_FRAME_SIZE)
        self.pending = []

    def send(self, message):
        self.sock.sendall(frame(wire.build(message)))

    def receive(self):
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("tracker closed the session")
            self.pending += [wire.parse(body) for body in self.decoder.feed(data)]
        return self.pending.pop(0)

    def receive_kind(self, kind):
        while True:
            message = self.receive()
            if isinstance(message, kind):
                return message

    def hello(self) -> wire.Welcome:
        self.send(wire.Hello(7000, 0, ("127.0.0.1",)))
        return self.receive_kind(wire.Welcome)

    def peers(self, info_hash=SWARM) -> set[bytes]:
        self.send(wire.PeerListRequest(info_hash, 200))
        return {p.peer_id for p in self.receive_kind(wire.PeerList).peers}

    def close(self):
        self.sock.close()


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


def test_tracker_announces_its_address_and_fingerprint(tracker):
    identity = Identity.load_or_create(str(tracker.data_dir))
    assert tracker.address.fingerprint == identity.peer_id
    assert tracker.address.host == "127.0.0.1" and tracker.address.port > 0
    log = tracker.process.wait_for_log("fingerprint")
    assert identity.fingerprint in log
    assert str(tracker.address) in log


def test_announces_are_seen_by_the_other_clients_and_pushed(tracker, tmp_path):
    address = str(tracker.address)
    first, first_id = start_standin(tmp_path, "first", address)
    try:
        first.wait_for_log("WELCOMED")
        second, second_id = start_standin(tmp_path, "second", address)
        try:
            second.wait_for_log("WELCOMED")
            observer = SyncClient(tmp_path, "observer", tracker)
            welcome = observer.hello()
            assert welcome.peer_id == observer.identity.peer_id
            assert welcome.observed.host == "127.0.0.1"
            wait_until(lambda: observer.peers() == {first_id, second_id}, 10,
                       "both announces listed")
            first.wait_for_log(f"PUSH joined {second_id.hex()}", timeout=10)
            observer.close()
        finally:
            second.stop()
    finally:
        first.stop()


def test_killed_or_frozen_clients_disappear_within_the_idle_timeout(tracker_factory, tmp_path):
    tracker = tracker_factory("--idle-timeout", "3")
    address = str(tracker.address)
    killed, killed_id = start_standin(tmp_path, "killed", address)
    frozen, frozen_id = start_standin(tmp_path, "frozen", address)
    alive, alive_id = start_standin(tmp_path, "alive", address)
    try:
        for p in (killed, frozen, alive):
            p.wait_for_log("WELCOMED")
        observer = SyncClient(tmp_path, "observer", tracker)
        observer.hello()
        wait_until(lambda: observer.peers() == {killed_id, frozen_id, alive_id}, 10,
                   "all three listed")
        killed.kill()
        os.kill(frozen.pid, signal.SIGSTOP)  # its connection stays open, but silent
        started = time.monotonic()
        wait_until(lambda: observer.peers() == {alive_id}, 3 + 2,
                   "killed and frozen peers dropped")
        observer.send(wire.KeepAlive())
        assert time.monotonic() - started < 5
        tracker.process.wait_for_log("silent for")
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
        for p in (killed, frozen, alive):
            p.stop()


def test_a_garbage_sending_client_is_dropped_while_others_keep_working(tracker, tmp_path):
    good, good_id = start_standin(tmp_path, "good", str(tracker.address))
    try:
        good.wait_for_log("WELCOMED")
        observer = SyncClient(tmp_path, "observer", tracker)
        observer.hello()

        garbage = SyncClient(tmp_path, "garbage", tracker)
        garbage.hello()
        garbage.sock.sendall(frame(b"\x03not an announce"))
        error = garbage.receive_kind(wire.Error)
        assert error.code == "malformed"
        with pytest.raises((EOFError, ConnectionError, ssl.SSLError)):
            garbage.receive()

        huge = SyncClient(tmp_path, "huge", tracker)
        huge.hello()
        huge.sock.sendall((1 << 30).to_bytes(4, "big"))
        assert huge.receive_kind(wire.Error).code == "malformed"

        plain = socket.create_connection((tracker.address.host, tracker.address.port), 5)
        plain.settimeout(10)
        plain.sendall(b"GET / HTTP/1.0\r\n\r\n" * 100)
        try:
            while plain.recv(4096):
                pass
        except ConnectionError:
            pass
        plain.close()

        assert observer.peers() == {good_id}
        assert tracker.process.alive()
        log = tracker.process.log()
        assert "closed: malformed" in log
        good.wait_for_log("WELCOMED")
        assert "reconnecting" not in good.log()
    finally:
        good.stop()


def test_a_client_pinning_a_wrong_fingerprint_refuses_to_talk(tracker, tmp_path):
    wrong = Identity.generate().fingerprint
    address = f"{tracker.address.host}:{tracker.address.port}#{wrong}"
    liar, liar_id = start_standin(tmp_path, "pinned-wrong", address)
    try:
        liar.wait_for_log("did not welcome us", timeout=15)
        assert "WELCOMED" not in liar.log()
        observer = SyncClient(tmp_path, "observer", tracker)
        observer.hello()
        assert liar_id not in observer.peers()
    finally:
        liar.stop()


def test_sigterm_stops_the_tracker_cleanly(tracker):
    # twistd ends by re-raising the signal it stopped for, so a parent (systemd counts it
    # as a clean stop) sees "terminated by SIGTERM"; what matters is the orderly shutdown.
    assert tracker.process.stop() in (0, -signal.SIGTERM)
    assert not tracker.endpoint_path.exists()
    log = tracker.process.log()
    assert "peer-it tracker stopping" in log
    assert "Server Shut Down." in log
    assert "Traceback" not in log


def open_files_soft_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files line")


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_a_low_soft_open_files_limit_is_raised_to_serve_max_sessions(tracker_factory,
                                                                      tmp_path):
    """Started with a shell's low soft limit (256), the tracker raises it to what
    --max-sessions needs and serves 300 sessions at once (it stopped accepting near 250)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1064:
        pytest.skip(f"hard open-files limit {hard} is below what the test needs")
    running = tracker_factory("--max-sessions", "1000", "--max-sessions-per-address", "1000",
                              "--relay", "none",
                              prefix=("prlimit", f"--nofile=256:{hard}", "--"))
    assert open_files_soft_limit(running.process.pid) == 1000 + 64  # sessions + spare
    clients = []
    try:
        for n in range(300):
            client = SyncClient(tmp_path, f"c{n}", running)
            clients.append(client)
            client.hello()
        assert clients[0].peers(wire.NO_INFO_HASH) == set()  # the first is still served
    finally:
        for client in clients:
            client.close()
    assert "open files allowed" not in running.process.log()


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_a_hard_open_files_limit_below_max_sessions_is_logged(tracker_factory):
    running = tracker_factory("--max-sessions", "1000", "--relay", "none",
                              prefix=("prlimit", "--nofile=200:200", "--"))
    running.process.wait_for_log(
        "only 200 open files allowed (hard limit 200): about 136 sessions at once, not "
        "--max-sessions 1000")
    assert open_files_soft_limit(running.process.pid) == 200
