"""A programmable hostile peer: the real peer protocol over TLS with its own identity.

For the reliability suites (``tests/reliability``). It listens for peer links like a daemon,
registers with a tracker through :class:`peerit.daemon.tracker_client.TrackerClient` so honest
daemons find and dial it, and then behaves as told. With ``--udp`` it also takes the links
daemons open over hole-punched QUIC and through the tracker's relay, with the daemon's own
:class:`peerit.daemon.nat.manager.NatManager` (punch, ``QuicEndpoint``, relay client), so a
daemon limited to one path (``--paths quic`` or ``relay``) meets it there:

``honest``       serve every request correctly (optionally capped in bytes per second); with
                 ``--check-uploads`` it also downloads from the daemon it talks to and checks
                 every block it is served against the real data
``corrupt``      serve every block with its first byte flipped
``phantom``      claim every piece but hold only the even ones; the odd ones are served as
                 zeros (blocks for pieces it does not have)
``unsolicited``  push blocks nobody asked for as soon as it is unchoked
``oversized``    announce a frame far above the protocol's limit and drip its body
``wrong-type``   after the handshake send frames that are wrong at that moment (a second
                 handshake, a late bitfield, an unknown opcode, a truncated block header)
``stall``        claim every piece, accept requests and never answer them (keep-alives only)
``silent``       finish TLS (or the QUIC handshake), then say nothing at all

Run as ``python -m peerit.testing.badpeers --behaviour corrupt --p2p X.p2p --data PATH
--tracker HOST:PORT#FP --data-dir DIR --report report.json``. The report (JSON, rewritten
atomically twice a second and at exit) counts what it did: links, requests served (each with
its piece, offset and time), bytes sent, blocks checked from the daemon and mismatches found,
and the links taken per path (``paths``: tcp, quic, relay).

The module also holds :class:`BlockingTlsClient`, a small blocking TLS client with a peer-it
identity (stdlib ``ssl``) for the fuzz, exhaustion and access suites, and
:func:`announce_blocking` to put such a client in a swarm through a real tracker session.
"""

import argparse
import json
import os
import random
import signal
import socket
import ssl
import sys
import tempfile
import time

from peerit.wire import framing
from peerit.wire import peer as wire

BEHAVIOURS = ("honest", "corrupt", "phantom", "unsolicited", "oversized", "wrong-type",
              "stall", "silent")


class Report:
    """What the hostile peer did, written as JSON for the test that started it."""

    def __init__(self, path: str | None, behaviour: str):
        self.path = path
        self.data = {
            "behaviour": behaviour, "pid": os.getpid(), "links": 0, "handshakes": 0,
            "links_closed_by_daemon": 0, "requests": [], "bytes_sent": 0, "blocks_sent": 0,
            "frames_sent": 0, "checked_blocks": 0, "checked_bytes": 0, "mismatched_blocks": 0,
            "mismatches": [], "unexpected_blocks": 0, "registered": False,
            "paths": {"tcp": 0, "quic": 0, "relay": 0},
        }

    def __getitem__(self, key):
        return self.data[key]

    def __setitem__(self, key, value):
        self.data[key] = value

    def add(self, key, n=1):
        self.data[key] += n

    def write(self) -> None:
        if not self.path:
            return
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".report.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.data, f)
        os.replace(tmp, self.path)


def read_report(path) -> dict:
    with open(path) as f:
        return json.load(f)


def _make_protocol_class():
    """The link protocol, built lazily so the blocking helpers below need no reactor."""
    from twisted.internet.interfaces import IHandshakeListener
    from twisted.internet.protocol import Protocol
    from zope.interface import implementer

    from peerit.bitfield import Bitfield
    from peerit.errors import MalformedMessage
    from peerit.tls import peer_id_of_transport

    @implementer(IHandshakeListener)
    class HostileProtocol(Protocol):
        def __init__(self, peer: "HostilePeer", path: str):
            self.peer = peer
            self.path = path
            self.decoder = framing.FrameDecoder(wire.MAX_FRAME_SIZE)
            self.peer_id = None
            self.handshaken = False
            self.unchoked_us = False
            self.queue = []  # (piece, offset, length) to serve
            self.their_pieces = Bitfield(peer.metainfo.piece_count)
            self.asked = {}  # (piece, offset) -> length, when checking uploads
            self.checked_pieces = set()
            self.closed = False
            self.calls = []

        # -- plumbing ------------------------------------------------------------------------
        def connectionMade(self):
            self.peer.report.add("links")
            self.peer.report["paths"][self.path] += 1
            # QUIC proved the peer's id in its own handshake; TLS says so in handshakeCompleted.
            self.peer_id = getattr(self.transport, "peer_id", None)

        def handshakeCompleted(self):
            self.peer_id = peer_id_of_transport(self.transport)

        def send(self, message) -> None:
            if self.closed:
                return
            body = wire.build(message)
            self.transport.write(framing.frame(body))
            self.peer.report.add("frames_sent")

        def send_block(self, piece: int, offset: int, data: bytes) -> None:
            header = wire.block_header(piece, offset)
            self.transport.writeSequence(
                [framing.frame_header(len(header) + len(data)), header, data])
            self.peer.report.add("frames_sent")
            self.peer.report.add("blocks_sent")
            self.peer.report.add("bytes_sent", len(data))

        def later(self, delay, function, *args):
            from twisted.internet import reactor
            call = reactor.callLater(delay, function, *args)
            self.calls.append(call)
            return call

        def connectionLost(self, reason):
            self.closed = True
            if self.handshaken:
                self.peer.report.add("links_closed_by_daemon")
            for call in self.calls:
                if call.active():
                    call.cancel()
            self.peer.links.discard(self)

        def dataReceived(self, data):
            try:
                for body in self.decoder.feed(data):
                    self.message(wire.parse(body))
            except MalformedMessage:
                self.transport.abortConnection()

        # -- behaviour -----------------------------------------------------------------------
        def message(self, message) -> None:
            behaviour = self.peer.behaviour
            if not self.handshaken:
                if not isinstance(message, wire.Handshake):
                    self.transport.abortConnection()
                    return
                if message.info_hash != self.peer.metainfo.info_hash:
                    self.transport.abortConnection()
                    return
                self.handshaken = True
                self.peer.report.add("handshakes")
                if behaviour == "silent":
                    return
                self.send(wire.Handshake(wire.PROTOCOL_VERSION, message.info_hash,
                                         self.peer.peer_id))
                self.opened()
                return
            kind = type(message)
            if kind is wire.Interested:
                if behaviour not in ("oversized", "wrong-type"):
                    self.send(wire.Unchoke())
                if behaviour == "unsolicited":
                    self.push_unsolicited()  # before any request can have been made
            elif kind is wire.Request:
                self.requested(message)
            elif kind is wire.Cancel:
                key = (message.piece, message.offset, message.length)
                if key in self.queue:
                    self.queue.remove(key)
            elif kind is wire.Unchoke:
                self.unchoked_us = True
                self.ask_more()
            elif kind is wire.Choke:
                self.unchoked_us = False
                self.asked.clear()
            elif kind is wire.Bitfield:
                try:
                    self.their_pieces = Bitfield(self.peer.metainfo.piece_count, message.bits)
                except MalformedMessage:
                    pass
                self.consider_interest()
            elif kind is wire.Have:
                if 0 <= message.piece < self.their_pieces.size:
                    self.their_pieces.add(message.piece)
                self.consider_interest()
            elif kind is wire.Block:
                self.block_from_daemon(message)
            elif kind is wire.Reject:
                self.asked.pop((message.piece, message.offset), None)
                self.ask_more()

        def opened(self) -> None:
            behaviour = self.peer.behaviour
            count = self.peer.metainfo.piece_count
            self.send(wire.Bitfield(Bitfield.full(count).to_bytes()))
            if behaviour == "oversized":
                # A length far above MAX_FRAME_SIZE, then a slow drip of its body: a
                # receiver that buffers before checking would grow without bound.
                self.transport.write(framing.frame_header(256 << 20))
                self.drip(0)
            elif behaviour == "wrong-type":
                # At once (the next reactor turn): a download that other seeders finish in a
                # fraction of a second must still meet the violation.
                self.later(0, self.wrong_type, self.peer.rng.randrange(4))
            elif behaviour == "stall":
                self.keep_alive()

        def drip(self, n: int) -> None:
            if self.closed or n > 4000:
                return
            self.transport.write(os.urandom(1024))
            self.peer.report.add("bytes_sent", 1024)
            self.later(0.005, self.drip, n + 1)

        def wrong_type(self, which: int) -> None:
            if self.closed:
                return
            if which == 0:  # a second handshake
                self.send(wire.Handshake(wire.PROTOCOL_VERSION, self.peer.metainfo.info_hash,
                                         self.peer.peer_id))
            elif which == 1:  # a bitfield that is not the first message
                self.send(wire.Have(0))
                self.send(wire.Bitfield(bytes(len(Bitfield(
                    self.peer.metainfo.piece_count).to_bytes()))))
            elif which == 2:  # an opcode that does not exist
                self.transport.write(framing.frame(bytes([200]) + b"\x00" * 16))
            else:  # a block whose header is cut short
                self.transport.write(framing.frame(bytes([wire.BLOCK_OPCODE, 0, 0])))
            self.peer.report.add("frames_sent")

        def keep_alive(self) -> None:
            if self.closed:
                return
            self.send(wire.KeepAlive())
            self.later(5.0, self.keep_alive)

        def requested(self, request) -> None:
            self.peer.report["requests"].append(
                [request.piece, request.offset, request.length, round(time.time(), 3)])
            if self.peer.behaviour in ("stall", "oversized", "wrong-type", "silent"):
                return
            self.queue.append((request.piece, request.offset, request.length))
            if len(self.queue) == 1:
                self.later(0, self.pump)

        def pump(self) -> None:
            """Serve queued requests, within the rate cap if one is set."""
            if self.closed or not self.queue:
                return
            rate = self.peer.rate
            budget = rate * 0.05 if rate else float("inf")
            while self.queue and budget > 0:
                piece, offset, length = self.queue.pop(0)
                self.send_block(piece, offset, self.peer.block_data(piece, offset, length))
                budget -= length
            if self.queue:
                self.later(0.05 if rate else 0, self.pump)

        def push_unsolicited(self) -> None:
            rng = self.peer.rng
            for _ in range(4):
                piece = rng.randrange(self.peer.metainfo.piece_count)
                length = min(wire.DEFAULT_BLOCK_SIZE, self.peer.metainfo.piece_size(piece))
                self.send_block(piece, 0, self.peer.store.read_block(piece, 0, length))

        # -- checking what the daemon uploads -------------------------------------------------
        def consider_interest(self) -> None:
            if not self.peer.check_uploads:
                return
            if any(p not in self.checked_pieces for p in self.their_pieces):
                self.send(wire.Interested())
                self.ask_more()

        def ask_more(self) -> None:
            if not self.peer.check_uploads or not self.unchoked_us:
                return
            block = wire.DEFAULT_BLOCK_SIZE
            for piece in self.their_pieces:
                if len(self.asked) >= 8:
                    return
                if piece in self.checked_pieces:
                    continue
                self.checked_pieces.add(piece)
                size = self.peer.metainfo.piece_size(piece)
                for offset in range(0, size, block):
                    length = min(block, size - offset)
                    self.asked[(piece, offset)] = length
                    self.send(wire.Request(piece, offset, length))

        def block_from_daemon(self, message) -> None:
            key = (message.piece, message.offset)
            length = self.asked.pop(key, None)
            if length is None:
                self.peer.report.add("unexpected_blocks")
                return
            data = bytes(message.data)
            truth = self.peer.store.read_block(message.piece, message.offset, length)
            self.peer.report.add("checked_blocks")
            self.peer.report.add("checked_bytes", len(data))
            if data != truth:
                self.peer.report.add("mismatched_blocks")
                if len(self.peer.report["mismatches"]) < 50:
                    self.peer.report["mismatches"].append([message.piece, message.offset])
            self.ask_more()

    return HostileProtocol


class HostilePeer:
    """The peer: identity, data to serve, behaviour, and its links."""

    def __init__(self, metainfo, data_path: str, identity, behaviour: str, report: Report,
                 rate: float = 0, check_uploads: bool = False, seed: int | None = None):
        from peerit.daemon.storage import FileStore
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}; one of {BEHAVIOURS}")
        self.metainfo = metainfo
        self.identity = identity
        self.peer_id = identity.peer_id
        self.behaviour = behaviour
        self.report = report
        self.rate = rate
        self.check_uploads = check_uploads
        self.rng = random.Random(seed)
        root = os.path.dirname(os.path.abspath(data_path).rstrip("/"))
        self.store = FileStore(metainfo, root, writable=False)
        self.store.open(create=False)
        self.links = set()
        self._protocol_class = None

    def link(self, path: str):
        """A new link's protocol; ``path`` is how it came (tcp, quic, relay)."""
        if self._protocol_class is None:
            self._protocol_class = _make_protocol_class()
        link = self._protocol_class(self, path)
        self.links.add(link)
        return link

    def block_data(self, piece: int, offset: int, length: int) -> bytes:
        size = self.metainfo.piece_size(piece) if 0 <= piece < self.metainfo.piece_count else 0
        if not (0 < length <= wire.MAX_BLOCK_SIZE and 0 <= offset and offset + length <= size):
            return b"\x00" * min(max(length, 0), wire.MAX_BLOCK_SIZE)
        if self.behaviour == "phantom" and piece % 2:
            return b"\x00" * length
        data = self.store.read_block(piece, offset, length)
        if self.behaviour == "corrupt":
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        return data

    def factory(self):
        from twisted.internet.protocol import Factory
        from peerit import tls
        peer = self

        class _Factory(Factory):
            def buildProtocol(self, addr):
                return peer.link("tcp")
        return tls.server_factory(self.identity, _Factory())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m peerit.testing.badpeers",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--behaviour", choices=BEHAVIOURS, required=True)
    parser.add_argument("--p2p", required=True, help="the share's .p2p")
    parser.add_argument("--data", required=True, help="the share's data (file or folder)")
    parser.add_argument("--data-dir", required=True, help="where its identity lives")
    parser.add_argument("--tracker", help="HOST:PORT#FINGERPRINT to register with")
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="listen port (0: any)")
    parser.add_argument("--report", help="JSON report path")
    parser.add_argument("--rate", type=float, default=0, help="upload cap, bytes/s (honest)")
    parser.add_argument("--check-uploads", action="store_true",
                        help="also download from the daemon and check every block")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--udp", help="also take punched QUIC and relayed links, on this UDP "
                        "endpoint (udp:PORT[:interface=ADDR]); needs --tracker")
    options = parser.parse_args(argv)

    from twisted.internet import reactor, task
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from peerit.addresses import TrackerAddress
    from peerit.identity import Identity
    from peerit.metainfo import Metainfo
    from peerit.daemon.tracker_client import TrackerClient
    from peerit.wire import tracker as tracker_wire

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    metainfo = Metainfo.read(options.p2p)
    identity = Identity.load_or_create(options.data_dir)
    report = Report(options.report, options.behaviour)
    report["peer_id"] = identity.peer_id.hex()
    peer = HostilePeer(metainfo, options.data, identity, options.behaviour, report,
                       options.rate, options.check_uploads, options.seed)
    port = reactor.listenTCP(options.port, peer.factory(), interface=options.listen_host)
    report["port"] = port.getHost().port
    report.write()

    clients = []
    nat = None
    if options.udp:
        from peerit.daemon.nat.manager import NatManager
        nat = NatManager(reactor, identity, trackers=lambda: clients,
                         swarm_trackers=lambda info_hash: clients,
                         inbound_link=peer.link, udp=options.udp,
                         local_hosts=lambda: [options.listen_host], paths=("quic", "relay"))
        nat.start()
        report["udp_port"] = nat.udp_port
        reactor.addSystemEventTrigger("before", "shutdown", nat.stop)

    if options.tracker:
        address = TrackerAddress.parse(options.tracker)
        client = TrackerClient(
            reactor, identity, address,
            hello=lambda: tracker_wire.Hello(tcp_port=report["port"],
                                             udp_port=nat.udp_port if nat else 0,
                                             addresses=(options.listen_host,)),
            announces=lambda: [tracker_wire.Announce(metainfo.info_hash, "started", 0)],
            on_push=lambda message: nat is not None and nat.handle_push(message, address))
        clients.append(client)
        client.startService()

        def registered(_):
            report["registered"] = True
            report.write()
        client.when_connected().addCallback(registered)

    writer = task.LoopingCall(report.write)
    writer.start(0.5)
    signal.signal(signal.SIGTERM, lambda *a: reactor.callFromThread(reactor.stop))
    reactor.addSystemEventTrigger("after", "shutdown", report.write)
    reactor.run(installSignalHandlers=False)


# -- blocking helpers for tests (no reactor) -------------------------------------------------

class BlockingTlsClient:
    """A blocking TLS 1.3 client with a peer-it identity, for sending arbitrary bytes."""

    def __init__(self, identity, directory: str):
        self.identity = identity
        os.makedirs(directory, exist_ok=True)
        self._cert = os.path.join(directory, "client.crt")
        self._key = os.path.join(directory, "client.key")
        with open(self._cert, "wb") as f:
            f.write(identity.certificate_pem())
        with open(self._key, "wb") as f:
            f.write(identity.key_pem())
        os.chmod(self._key, 0o600)

    def context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # tests check the server's key themselves if needed
        ctx.load_cert_chain(self._cert, self._key)
        return ctx

    def connect(self, host: str, port: int, timeout: float = 10.0) -> ssl.SSLSocket:
        raw = socket.create_connection((host, port), timeout=timeout)
        try:
            return self.context().wrap_socket(raw)
        except BaseException:
            raw.close()
            raise


def server_peer_id(sock: ssl.SSLSocket) -> bytes:
    from cryptography import x509
    from peerit.identity import peer_id_of_certificate
    return peer_id_of_certificate(x509.load_der_x509_certificate(sock.getpeercert(True)))


def read_frame(sock, max_size: int, timeout: float = 10.0) -> bytes | None:
    """One frame body from a blocking socket, or None when the other side closed."""
    sock.settimeout(timeout)
    header = _read_exactly(sock, framing.LENGTH_SIZE)
    if header is None:
        return None
    length = int.from_bytes(header, "big")
    if length > max_size:
        raise ValueError(f"frame of {length} bytes")
    return _read_exactly(sock, length)


def _read_exactly(sock, n: int) -> bytes | None:
    chunks = []
    while n:
        try:
            chunk = sock.recv(n)
        except (ConnectionError, ssl.SSLError):
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def announce_blocking(client: BlockingTlsClient, tracker, info_hash: bytes, tcp_port: int,
                      timeout: float = 10.0) -> ssl.SSLSocket:
    """Open a tracker session as ``client``, say Hello and announce ``info_hash``; return
    the open session (the entry lasts as long as it stays open and within the idle timeout)."""
    from peerit.wire import tracker as tracker_wire
    sock = client.connect(tracker.host, tracker.port, timeout)
    sock.sendall(framing.frame(tracker_wire.build(tracker_wire.Hello(
        tcp_port=tcp_port, udp_port=0, addresses=("127.0.0.1",)))))
    welcome = tracker_wire.parse(read_frame(sock, tracker_wire.MAX_TRACKER_FRAME_SIZE, timeout))
    if not isinstance(welcome, tracker_wire.Welcome):
        raise RuntimeError(f"tracker answered {welcome!r}")
    sock.sendall(framing.frame(tracker_wire.build(
        tracker_wire.Announce(info_hash, "started", 0))))
    return sock


if __name__ == "__main__":
    main()
