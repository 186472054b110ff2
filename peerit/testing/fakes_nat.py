"""Fakes for socket-free tests of the daemon's NAT layer (``peerit.daemon.nat``).

- :class:`FakeUdpReactor`: ``listenUDP`` onto a host of ``peerit.testing.fakenat``, so the
  manager's real muxes, punch attempts and QUIC endpoints run over simulated NATs.
- :class:`FakeStunServer`: the tracker's STUN responder (two ports) on a public fake host.
- :class:`FakeTracker` / :class:`FakeTrackerClient`: the tracker's side of
  docs/nat-protocol.md in a few lines: it keeps each session's ``NatReport`` and answers
  ``PunchRequest`` with a ``Punch`` to both peers and ``RelayRequest`` with a ``RelayOffer``.
- :class:`FakeRelay`: in-memory TCP connections to the tracker's relay, spliced by token, with
  the relay's preamble checked; delivery is scheduled on the clock like the datagrams.
- :class:`ProbeLink`: a minimal peer-link stand-in (ready as soon as a transport with a
  ``peer_id`` connects, or on TLS ``handshakeCompleted``), recording what it receives.
"""

import os
from dataclasses import dataclass, field

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.internet import error
from zope.interface import implementer

from peerit.addresses import TrackerAddress
from peerit.daemon.nat.relay_client import RELAY_PREAMBLE, TOKEN_SIZE
from peerit.nat.stun import StunResponder
from peerit.tls import peer_id_of_transport
from peerit.wire import tracker as wire


# -- the contract's tracker messages, until peerit.wire.tracker has them ----------------------

def contract_wire():
    """``peerit.wire.tracker`` once it has the NAT messages; until then a stand-in namespace
    with them as docs/nat-protocol.md defines them (tests patch it into the manager)."""
    if hasattr(wire, "Punch"):
        return wire
    from types import SimpleNamespace

    @dataclass(frozen=True)
    class NatReport:
        public: wire.Endpoint
        mapping: str
        filtering: str

    @dataclass(frozen=True)
    class StunInfo:
        stun_port: int
        stun_alt_port: int
        relay_port: int

    @dataclass(frozen=True)
    class PunchRequest:
        info_hash: bytes
        peer_id: bytes

    @dataclass(frozen=True)
    class PunchCandidate:
        host: str
        port: int
        kind: str

    @dataclass(frozen=True)
    class Punch:
        attempt_id: bytes
        nonce: bytes
        info_hash: bytes
        peer_id: bytes
        controlling: bool
        candidates: tuple
        mapping: str

    @dataclass(frozen=True)
    class RelayRequest:
        info_hash: bytes
        peer_id: bytes

    @dataclass(frozen=True)
    class RelayOffer:
        token: bytes
        info_hash: bytes
        peer_id: bytes
        initiator: bool
        port: int

    opcodes = {NatReport: 10, StunInfo: 11, PunchRequest: 12, Punch: 13, RelayRequest: 14,
               RelayOffer: 15}

    class _Messages:
        @staticmethod
        def opcode_of(cls):
            return opcodes[cls] if cls in opcodes else wire.messages.opcode_of(cls)

    return SimpleNamespace(
        Endpoint=wire.Endpoint, Error=wire.Error, messages=_Messages(), NatReport=NatReport,
        StunInfo=StunInfo, PunchRequest=PunchRequest, PunchCandidate=PunchCandidate,
        Punch=Punch, RelayRequest=RelayRequest, RelayOffer=RelayOffer)


def candidate_class(module):
    """The class of a Punch candidate in ``module`` (its name is the tracker side's choice)."""
    for name in ("PunchCandidate", "Candidate", "PeerCandidate", "CandidateAddress"):
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError("no punch candidate class in the tracker wire module")


# -- UDP ---------------------------------------------------------------------------------------

class FakeUdpPort:
    """What ``listenUDP`` returns, on a fakenat socket; the protocol's transport too."""

    def __init__(self, sock, protocol):
        self.socket_handle = sock
        self.protocol = protocol
        self.closed = False

    def write(self, data: bytes, addr) -> None:
        if self.closed:
            raise OSError("socket closed")
        self.socket_handle.send(data, addr)

    def getHost(self):
        return IPv4Address("UDP", *self.socket_handle.address)

    def stopListening(self):
        if not self.closed:
            self.closed = True
            self.socket_handle.close()
            self.protocol.doStop()
        return succeed(None)


class FakeUdpReactor:
    """``listenUDP(port, protocol, interface)`` on one fakenat host; records what it opened."""

    def __init__(self, host):
        self.host = host
        self.ports: list[FakeUdpPort] = []

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        sock = self.host.open_socket(port or None)
        udp_port = FakeUdpPort(sock, protocol)
        sock.receiver = lambda s, data, addr: (
            None if udp_port.closed else protocol.datagramReceived(data, addr))
        protocol.makeConnection(udp_port)
        self.ports.append(udp_port)
        return udp_port

    @property
    def open_ports(self) -> list[FakeUdpPort]:
        return [p for p in self.ports if not p.closed]


class FakeStunServer:
    """Our STUN responder on ``ip`` (ports 3478 and 3479) of a fakenat network."""

    def __init__(self, network, ip: str, port: int = 3478, alt_port: int = 3479):
        self.host = network.add_host(ip)
        self.responder = StunResponder(network.clock, alternate_port=True)
        self.main = self.host.open_socket(port, receiver=self._received)
        self.alternate = self.host.open_socket(alt_port, receiver=self._received)

    def _received(self, sock, data, addr):
        reply = self.responder.respond(data, addr)
        if reply is None:
            return
        out = self.alternate if reply.from_alternate_port and sock is self.main else sock
        out.send(reply.datagram, addr)


# -- the tracker -------------------------------------------------------------------------------

class FakeTrackerClient:
    """A daemon's session with :class:`FakeTracker` (the TrackerClient API the manager uses)."""

    def __init__(self, tracker: "FakeTracker", peer_id: bytes, address: TrackerAddress,
                 public_ip: str, lan: tuple[str, ...]):
        self.fake = tracker
        self.peer_id = peer_id
        self.tracker = address
        self.public_ip = public_ip
        self.lan = lan
        self.udp_port = 0
        self.connected = True
        self.sent: list = []
        self.push = None  # set by the test: push(message, tracker_address)
        self.nat_report = None

    def send(self, message) -> bool:
        if not self.connected:
            return False
        message = _over_the_wire(message)
        self.sent.append(message)
        self.fake.received(self, message)
        return True

    def ping(self) -> Deferred:
        if not self.connected:
            return fail(error.ConnectionLost("not connected"))
        return succeed(0.042)

    def deliver(self, message) -> None:
        if self.connected and self.push is not None:
            self.push(_over_the_wire(message), self.tracker)


def _over_the_wire(message):
    """The message as the other side would parse it, once the real wire format exists."""
    if hasattr(wire, "build") and hasattr(wire, "Punch"):
        return wire.parse(wire.build(message))
    return message


class FakeTracker:
    """Coordinates punches and relays as docs/nat-protocol.md says, after ``delay`` s."""

    def __init__(self, clock, host: str, rng, relay_port: int = 59001, delay: float = 0.01,
                 swarm_members=None):
        self.clock = clock
        self.address = TrackerAddress(host, 59000, "00" * 32)
        self.rng = rng
        self.relay_port = relay_port
        self.delay = delay
        self.sessions: dict[bytes, FakeTrackerClient] = {}
        self.refuse: set[str] = set()  # request class names to refuse with an Error
        self.requests: list = []

    def connect(self, peer_id: bytes, public_ip: str, lan=()) -> FakeTrackerClient:
        client = FakeTrackerClient(self, peer_id, self.address, public_ip, tuple(lan))
        self.sessions[peer_id] = client
        return client

    def received(self, client: FakeTrackerClient, message) -> None:
        kind = type(message).__name__
        if kind == "NatReport":
            client.nat_report = message
            return
        self.requests.append(message)
        other = self.sessions.get(getattr(message, "peer_id", None))
        if kind in self.refuse or other is None or not other.connected:
            refusal = wire.Error("peer_unavailable", "peer not connected",
                                 wire.messages.opcode_of(type(message)), message.info_hash)
            self.clock.callLater(self.delay, client.deliver, refusal)
            return
        if kind == "PunchRequest":
            attempt_id, nonce = self.rng.randbytes(16), self.rng.randbytes(32)
            for me, them, controlling in ((client, other, True), (other, client, False)):
                self.clock.callLater(self.delay, me.deliver, wire.Punch(
                    attempt_id=attempt_id, nonce=nonce, info_hash=message.info_hash,
                    peer_id=them.peer_id, controlling=controlling,
                    candidates=self.candidates_of(them),
                    mapping=them.nat_report.mapping if them.nat_report else "unknown"))
        elif kind == "RelayRequest":
            token = self.rng.randbytes(32)
            for me, them, initiator in ((client, other, True), (other, client, False)):
                self.clock.callLater(self.delay, me.deliver, wire.RelayOffer(
                    token=token, info_hash=message.info_hash, peer_id=them.peer_id,
                    initiator=initiator, port=self.relay_port))

    def candidates_of(self, client: FakeTrackerClient) -> tuple:
        out = [candidate_class(wire)(host, client.udp_port, "lan") for host in client.lan]
        if client.nat_report is not None:
            public = client.nat_report.public
            out.append(candidate_class(wire)(public.host, public.port, "public"))
        else:
            out.append(candidate_class(wire)(client.public_ip, client.udp_port, "public"))
        return tuple(out)


# -- the relay (in-memory TCP) -----------------------------------------------------------------

class _MemoryTransport:
    """One end of an in-memory TCP connection to the relay."""

    disconnecting = False

    def __init__(self, relay: "FakeRelay", protocol, host: str, port: int):
        self.relay = relay
        self.protocol = protocol
        self.peer_address = IPv4Address("TCP", host, port)
        self.host_address = IPv4Address("TCP", "10.0.0.1", 40000 + len(relay.connections))
        self.closed = False
        self.producer = None
        self.written = 0

    def write(self, data: bytes) -> None:
        if data and not self.closed:
            self.written += len(data)
            self.relay._from_client(self, bytes(data))

    def writeSequence(self, seq) -> None:
        self.write(b"".join(seq))

    def loseConnection(self) -> None:
        self.relay._close(self)

    abortConnection = loseConnection

    def getPeer(self):
        return self.peer_address

    def getHost(self):
        return self.host_address

    def registerProducer(self, producer, streaming) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def setTcpNoDelay(self, enabled) -> None:
        pass


@dataclass
class _RelayConn:
    transport: _MemoryTransport
    buffered: bytes = b""
    token: bytes | None = None
    partner: "_RelayConn | None" = None
    pending: list = field(default_factory=list)


class FakeRelay:
    """The tracker's relay: ``connect_tcp(host, port, factory)`` for the managers. A client
    must send the preamble and a token; two clients with one token are spliced. Only
    ``port`` on ``host`` answers; anything else is refused."""

    def __init__(self, clock, host: str, port: int = 59001, latency: float = 0.005):
        self.clock = clock
        self.host = host
        self.port = port
        self.latency = latency
        self.connections: list[_RelayConn] = []
        self._waiting: dict[bytes, _RelayConn] = {}
        self.bad_tokens = 0
        self.spliced = 0

    def connect_tcp(self, host: str, port: int, factory) -> Deferred:
        if (host, port) != (self.host, self.port):
            return fail(error.ConnectionRefusedError(f"{host}:{port}"))
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = _MemoryTransport(self, protocol, host, port)
        conn = _RelayConn(transport)
        self.connections.append(conn)
        d = Deferred()

        def connected():
            protocol.makeConnection(transport)
            d.callback(protocol)
        self.clock.callLater(self.latency, connected)
        return d

    def _find(self, transport) -> _RelayConn:
        return next(c for c in self.connections if c.transport is transport)

    def _from_client(self, transport, data: bytes) -> None:
        conn = self._find(transport)
        if conn.partner is not None:
            self._deliver(conn.partner, data)
            return
        conn.buffered += data
        hello = len(RELAY_PREAMBLE) + TOKEN_SIZE
        if conn.token is None and len(conn.buffered) >= hello:
            if not conn.buffered.startswith(RELAY_PREAMBLE):
                self.bad_tokens += 1
                self._close(transport)
                return
            conn.token, conn.buffered = conn.buffered[len(RELAY_PREAMBLE):hello], \
                conn.buffered[hello:]
            other = self._waiting.pop(conn.token, None)
            if other is None:
                self._waiting[conn.token] = conn
                return
            conn.partner, other.partner = other, conn
            self.spliced += 1
            for a, b in ((conn, other), (other, conn)):
                if a.buffered:
                    self._deliver(b, a.buffered)
                    a.buffered = b""

    def _deliver(self, conn: _RelayConn, data: bytes) -> None:
        def arrive():
            if not conn.transport.closed:
                conn.transport.protocol.dataReceived(data)
        self.clock.callLater(self.latency, arrive)

    def _close(self, transport) -> None:
        conn = self._find(transport)
        for c in (conn, conn.partner):
            if c is not None and not c.transport.closed:
                c.transport.closed = True
                self.clock.callLater(self.latency, c.transport.protocol.connectionLost,
                                     Failure(error.ConnectionDone()))


# -- a peer link stand-in ----------------------------------------------------------------------

@implementer(IHandshakeListener)
class ProbeLink(Protocol):
    """Ready once the transport proved an identity (QUIC: at connect; TLS: at handshake).

    Writes ``greeting`` when ready and collects what arrives in ``received``."""

    def __init__(self, path: str, on_ready=None, on_failed=None, expected_peer_id=None,
                 greeting: bytes = b""):
        self.path = path
        self.on_ready = on_ready
        self.on_failed = on_failed
        self.expected_peer_id = expected_peer_id
        self.greeting = greeting
        self.peer_id = None
        self.received = b""
        self.closed_because = None
        self.lost = False
        self.connect_seconds = 0.0

    def connectionMade(self):
        if getattr(self.transport, "peer_id", None) is not None:
            self._proven(self.transport.peer_id)

    def handshakeCompleted(self):
        self._proven(peer_id_of_transport(self.transport))

    def _proven(self, peer_id):
        if self.expected_peer_id is not None and peer_id != self.expected_peer_id:
            self.close("wrong peer")
            return
        self.peer_id = peer_id
        if self.greeting:
            self.transport.write(self.greeting)
        if self.on_ready is not None:
            ready, self.on_ready, self.on_failed = self.on_ready, None, None
            ready(self)

    def dataReceived(self, data):
        self.received += data

    def close(self, reason: str):
        self.closed_because = reason
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason):
        self.lost = True
        if self.on_failed is not None:
            failed, self.on_failed, self.on_ready = self.on_failed, None, None
            failed(self.closed_because or reason.getErrorMessage())


def random_peer_id() -> bytes:
    return os.urandom(32)
