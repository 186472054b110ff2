"""An in-memory UDP internet with simulated NAT routers, driven by a ``task.Clock``.

Built to test hole punching without sockets, and strict in the ways that make punching hard:

- a NAT keeps a *mapping* per inside endpoint (``independent``: one public port for every
  destination, the source port kept when free, like Linux ``masquerade``) or per inside
  endpoint *and* destination (``dependent``, "symmetric": a random port 1024-65535 for each new
  destination, like ``masquerade random``);
- inbound datagrams pass only if a mapping exists and the *filter* allows the sender:
  ``independent`` (any sender), ``address`` (an address the inside endpoint has sent to),
  ``address-and-port`` (that exact address and port; the Linux default). Anything else is
  dropped and, like a home router and unlike a bare Linux box, leaves no state behind;
- hairpinning (reaching your own NAT's public address from inside) is off unless asked for;
- loss and latency are configurable, every random choice comes from one seeded ``Random``.

Addresses are plain ``(ip, port)`` tuples of strings and ints; private address ranges may
repeat behind different NATs, as they do in homes. :data:`NAT_TYPES` names the usual pairs of
mapping and filtering behaviour.

Over that network, fakes for socket-free tests of the daemon's NAT layer (``peerit.nat.manager``):

- :class:`FakeUdpReactor`: ``listenUDP`` onto a simulated host, so the
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

import math
import os
from collections import deque
from dataclasses import dataclass, field

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from peerit.addresses import TrackerAddress
from peerit.nat.punch import ISocketHandle
from peerit.daemon.nat.relay_client import RELAY_PREAMBLE, TOKEN_SIZE
from peerit.nat.stun import StunResponder
from peerit.tls import peer_id_of_transport
from peerit.wire import tracker as wire

MAPPINGS = ("independent", "dependent")
FILTERINGS = ("independent", "address", "address-and-port")
NAT_TYPES = {
    "full-cone": ("independent", "independent"),
    "restricted-cone": ("independent", "address"),
    "port-restricted": ("independent", "address-and-port"),
    "symmetric": ("dependent", "address-and-port"),
}
STUN_SERVER = ("192.0.2.1", 3478)
EPHEMERAL_PORTS = (32768, 60999)  # Linux's default local port range
NAT_PORTS = (1024, 65535)
INBOX_SIZE = 1024


@implementer(ISocketHandle)
class FakeSocket:
    """One bound UDP socket on a fake host. Received datagrams go to ``receiver(socket, data,
    addr)`` when set, else to ``inbox`` (the last :data:`INBOX_SIZE` of them)."""

    def __init__(self, host: "FakeHost", port: int, receiver=None):
        self.host = host
        self.port = port
        self.receiver = receiver
        self.inbox: deque = deque(maxlen=INBOX_SIZE)
        self.closed = False
        self.sent = 0
        self.received = 0

    @property
    def address(self) -> tuple[str, int]:
        return (self.host.ip, self.port)

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.closed:
            raise RuntimeError(f"send on closed socket {self.address}")
        self.sent += 1
        self.host.sent += 1
        self.host.network._send_from(self, bytes(data), (addr[0], int(addr[1])))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.host.sockets.pop(self.port, None)

    def __repr__(self):
        return f"<FakeSocket {self.host.ip}:{self.port}{' closed' if self.closed else ''}>"


class FakeHost:
    """A machine with one address, on the public internet or on a NAT's inside."""

    def __init__(self, network: "FakeNetwork", ip: str, nat: "FakeNAT | None",
                 uplink_latency: float):
        self.network = network
        self.ip = ip
        self.nat = nat
        self.uplink_latency = uplink_latency
        self.sockets: dict[int, FakeSocket] = {}
        self.sent = 0
        self.dropped_no_socket = 0
        self._next_port = EPHEMERAL_PORTS[0]

    def open_socket(self, port: int | None = None, receiver=None) -> FakeSocket:
        if port is None:
            port = self._free_port()
        elif port in self.sockets:
            raise OSError(f"address in use: {self.ip}:{port}")
        sock = FakeSocket(self, port, receiver)
        self.sockets[port] = sock
        return sock

    def _free_port(self) -> int:
        low, high = EPHEMERAL_PORTS
        for _ in range(high - low + 1):
            port = self._next_port
            self._next_port = low if port >= high else port + 1
            if port not in self.sockets:
                return port
        raise OSError("no free local port")

    def _deliver(self, port: int, data: bytes, src: tuple[str, int]) -> None:
        sock = self.sockets.get(port)
        if sock is None:
            self.dropped_no_socket += 1
            return
        sock.received += 1
        self.network.delivered += 1
        if sock.receiver is not None:
            sock.receiver(sock, data, src)
        else:
            sock.inbox.append((data, src))

    def _from_internet(self, src, dst, data) -> None:
        self._deliver(dst[1], data, src)


class _Mapping:
    __slots__ = ("internal", "key", "port", "sessions", "last_used")

    def __init__(self, internal, key, port, now):
        self.internal = internal
        self.key = key
        self.port = port
        self.sessions: set[tuple[str, int]] = set()  # remote endpoints sent to
        self.last_used = now


class FakeNAT:
    """A NAT router: private hosts inside, one public address outside."""

    def __init__(self, network: "FakeNetwork", public_ip: str, mapping: str, filtering: str,
                 hairpin: bool, uplink_latency: float, lan_latency: float,
                 mapping_timeout: float):
        if mapping not in MAPPINGS:
            raise ValueError(f"mapping must be one of {MAPPINGS}")
        if filtering not in FILTERINGS:
            raise ValueError(f"filtering must be one of {FILTERINGS}")
        self.network = network
        self.public_ip = public_ip
        self.mapping = mapping
        self.filtering = filtering
        self.hairpin = hairpin
        self.uplink_latency = uplink_latency
        self.lan_latency = lan_latency
        self.mapping_timeout = mapping_timeout
        self.hosts: dict[str, FakeHost] = {}
        self._by_key: dict = {}
        self._by_port: dict[int, _Mapping] = {}
        self.mappings_created = 0
        self.dropped_unsolicited = 0  # no mapping for the public port
        self.dropped_filtered = 0  # a mapping, but the filter refused the sender
        self.dropped_hairpin = 0

    @property
    def mapping_count(self) -> int:
        return len(self._by_port)

    def external_port(self, internal, remote) -> int | None:
        """The public port a live mapping gives ``internal`` towards ``remote`` (or None)."""
        m = self._live(self._by_key.get(self._key(internal, remote)))
        return m.port if m else None

    def _key(self, internal, remote):
        return internal if self.mapping == "independent" else (internal, remote)

    def _live(self, m: _Mapping | None) -> _Mapping | None:
        if m is not None and self.network.clock.seconds() - m.last_used > self.mapping_timeout:
            del self._by_key[m.key]
            del self._by_port[m.port]
            return None
        return m

    def _map(self, internal, remote) -> _Mapping:
        """The mapping an outbound datagram uses, created on first use; refreshes it."""
        now = self.network.clock.seconds()
        key = self._key(internal, remote)
        m = self._live(self._by_key.get(key))
        if m is None:
            m = _Mapping(internal, key, self._allocate_port(internal[1]), now)
            self._by_key[key] = m
            self._by_port[m.port] = m
            self.mappings_created += 1
        m.last_used = now
        m.sessions.add(remote)
        return m

    def _allocate_port(self, preferred: int) -> int:
        if self.mapping == "independent" and self._live(self._by_port.get(preferred)) is None:
            return preferred
        low, high = NAT_PORTS
        rng = self.network.rng
        for _ in range(64):
            port = rng.randint(low, high)
            if self._live(self._by_port.get(port)) is None:
                return port
        for port in range(low, high + 1):
            if self._live(self._by_port.get(port)) is None:
                return port
        raise OSError(f"NAT {self.public_ip} has no free port")

    def _outbound(self, src, dst, data) -> None:
        m = self._map(src, dst)
        public_src = (self.public_ip, m.port)
        if dst[0] == self.public_ip:
            if not self.hairpin:
                self.dropped_hairpin += 1
                return
            self._from_internet(public_src, dst, data)
            return
        self.network._to_internet(public_src, dst, data, self.uplink_latency)

    def _from_internet(self, src, dst, data) -> None:
        m = self._live(self._by_port.get(dst[1]))
        if m is None:
            self.dropped_unsolicited += 1
            return
        if self.filtering == "address":
            allowed = any(remote[0] == src[0] for remote in m.sessions)
        elif self.filtering == "address-and-port":
            allowed = src in m.sessions
        else:
            allowed = True
        if not allowed:
            self.dropped_filtered += 1
            return
        m.last_used = self.network.clock.seconds()
        host = self.hosts.get(m.internal[0])
        if host is not None:
            self.network._later(self.lan_latency, host._deliver, m.internal[1], data, src)


def _step_to(now: float, when: float) -> float:
    """The smallest step that takes ``now`` to at least ``when`` (float sums can land a hair
    short, and then the call would never run)."""
    step = max(0.0, when - now)
    while now + step < when:
        step = math.nextafter(step, math.inf)
    return step


class FakeNetwork:
    """The internet: public hosts and NAT routers by public address, one clock, one rng.

    ``loss`` is the chance that a datagram crossing the internet is lost (after the sender's
    NAT has seen it, as most loss happens upstream); ``jitter`` adds up to that many seconds
    at random to each internet crossing, so datagrams may be reordered.
    """

    def __init__(self, clock: Clock, rng, loss: float = 0.0, jitter: float = 0.0):
        self.clock = clock
        self.rng = rng
        self.loss = loss
        self.jitter = jitter
        self._public: dict[str, FakeHost | FakeNAT] = {}
        self.sent = 0
        self.delivered = 0
        self.lost = 0
        self.unroutable = 0

    def add_nat(self, public_ip: str, mapping: str = "independent",
                filtering: str = "address-and-port", hairpin: bool = False,
                uplink_latency: float = 0.010, lan_latency: float = 0.0005,
                mapping_timeout: float = 120.0) -> FakeNAT:
        self._claim(public_ip)
        nat = FakeNAT(self, public_ip, mapping, filtering, hairpin, uplink_latency,
                      lan_latency, mapping_timeout)
        self._public[public_ip] = nat
        return nat

    def add_nat_of_type(self, public_ip: str, nat_type: str, **options) -> FakeNAT:
        mapping, filtering = NAT_TYPES[nat_type]
        return self.add_nat(public_ip, mapping, filtering, **options)

    def add_host(self, ip: str, nat: FakeNAT | None = None,
                 uplink_latency: float = 0.010) -> FakeHost:
        host = FakeHost(self, ip, nat, uplink_latency)
        if nat is None:
            self._claim(ip)
            self._public[ip] = host
        else:
            if ip in nat.hosts:
                raise ValueError(f"{ip} already behind {nat.public_ip}")
            nat.hosts[ip] = host
        return host

    def _claim(self, ip):
        if ip in self._public or ip == STUN_SERVER[0]:
            raise ValueError(f"public address {ip} already in use")

    def binding_request(self, sock: FakeSocket) -> tuple[str, int]:
        """The address a STUN server at :data:`STUN_SERVER` sees for ``sock``; like the real
        request, it creates (or refreshes) the NAT mapping towards that server."""
        nat = sock.host.nat
        if nat is None:
            return sock.address
        return (nat.public_ip, nat._map(sock.address, STUN_SERVER).port)

    def run(self, duration: float, stop=None) -> bool:
        """Advance the clock event by event for up to ``duration`` seconds, returning early
        (True) as soon as ``stop()`` is true."""
        clock = self.clock
        end = clock.seconds() + duration
        while True:
            if stop is not None and stop():
                return True
            calls = clock.getDelayedCalls()  # kept sorted by time by task.Clock
            if not calls or calls[0].getTime() > end:
                break
            clock.advance(_step_to(clock.seconds(), calls[0].getTime()))
        if end > clock.seconds():
            clock.advance(end - clock.seconds())
        return stop() if stop is not None else False

    def _later(self, delay, f, *args):
        self.clock.callLater(delay, f, *args)

    def _send_from(self, sock: FakeSocket, data: bytes, dst) -> None:
        self.sent += 1
        host = sock.host
        src = sock.address
        nat = host.nat
        if dst[0] == host.ip:
            self._later(0, host._deliver, dst[1], data, src)
        elif nat is None:
            self._to_internet(src, dst, data, host.uplink_latency)
        elif dst[0] in nat.hosts:
            self._later(nat.lan_latency, nat.hosts[dst[0]]._deliver, dst[1], data, src)
        else:
            self._later(nat.lan_latency, nat._outbound, src, dst, data)

    def _to_internet(self, src, dst, data, first_hop_latency: float) -> None:
        if self.loss and self.rng.random() < self.loss:
            self.lost += 1
            return
        target = self._public.get(dst[0])
        if target is None:
            self.unroutable += 1
            return
        delay = first_hop_latency + target.uplink_latency
        if self.jitter:
            delay += self.rng.uniform(0, self.jitter)
        self._later(delay, target._from_internet, src, dst, data)


# -- punching between two simulated peers (shared by tests/unit/test_punch.py and bench/) --

OPEN = "open"  # a host on the public internet, no NAT


class SimulatedPeer:
    """A peer on the fake network: one main socket, a PunchCoordinator fed by every socket it
    opens, and the success/failure callbacks recorded with the time they fired."""

    def __init__(self, network: FakeNetwork, peer_id: bytes, nat_type: str, public_ip: str,
                 lan_ip: str = "192.168.1.10", port: int = 40000, nat: FakeNAT | None = None,
                 **nat_options):
        from peerit.nat.punch import PunchCoordinator
        self.network = network
        self.peer_id = peer_id
        if nat is None and nat_type != OPEN:
            nat = network.add_nat_of_type(public_ip, nat_type, **nat_options)
        self.nat = nat
        self.host = network.add_host(public_ip if nat is None else lan_ip, nat)
        self.coordinator = PunchCoordinator()
        self.socket = self.host.open_socket(port, receiver=self.coordinator.datagram_received)
        self.successes: list[tuple[float, object]] = []
        self.failures: list[tuple[float, str]] = []
        self.attempt = None

    @property
    def mapping(self) -> str:
        return "independent" if self.nat is None else self.nat.mapping

    def candidates(self) -> list:
        """What the tracker would hand the other side: LAN address, STUN-observed address."""
        from peerit.nat.punch import Candidate
        public = self.network.binding_request(self.socket)
        found = [Candidate(*public, "public")]
        if self.nat is not None:
            found.insert(0, Candidate(*self.socket.address, "lan"))
        return found

    def open_socket(self) -> FakeSocket:
        return self.host.open_socket(receiver=self.coordinator.datagram_received)

    def punch(self, other: "SimulatedPeer", attempt_id: bytes, nonce: bytes, role: str,
              rng, my_mapping: str | None = None, their_mapping: str | None = None,
              **options):
        from peerit.nat.punch import PunchAttempt
        clock = self.network.clock
        self.attempt = PunchAttempt(
            clock, rng, attempt_id=attempt_id, nonce=nonce, my_peer_id=self.peer_id,
            their_peer_id=other.peer_id, role=role, their_candidates=other.candidates(),
            my_mapping=my_mapping or self.mapping,
            their_mapping=their_mapping or other.mapping, main_socket=self.socket,
            open_socket=self.open_socket,
            on_success=lambda path: self.successes.append((clock.seconds(), path)),
            on_failure=lambda reason: self.failures.append((clock.seconds(), reason)),
            **options)
        self.coordinator.start(self.attempt)
        return self.attempt

    @property
    def done(self) -> bool:
        return bool(self.successes or self.failures)


class PunchOutcome:
    def __init__(self, network, a: SimulatedPeer, b: SimulatedPeer):
        self.network = network
        self.a = a
        self.b = b

    @property
    def connected(self) -> bool:
        return bool(self.a.successes and self.b.successes)

    @property
    def time(self) -> float | None:
        """When the later of the two sides had its path (both start at 0 unless delayed)."""
        if not self.connected:
            return None
        return max(self.a.successes[0][0], self.b.successes[0][0])


def punch_between(a_type: str, b_type: str, seed: int, *, loss: float = 0.0,
                  jitter: float = 0.0, b_delay: float = 0.0, b_starts: bool = True,
                  a_controls: bool = True, duration: float = 10.0, a_options=None,
                  b_options=None, nat_options=None, **options) -> PunchOutcome:
    """Two peers behind NATs of the given types (or :data:`OPEN`) punch towards each other;
    runs the simulation until both are done or ``duration`` passes."""
    import random
    clock = Clock()
    rng = random.Random(seed)
    network = FakeNetwork(clock, rng, loss=loss, jitter=jitter)
    nat_options = nat_options or {}
    a = SimulatedPeer(network, b"\x0a" * 32, a_type, "203.0.113.1", **nat_options)
    b = SimulatedPeer(network, b"\x0b" * 32, b_type, "198.51.100.2", **nat_options)
    attempt_id = rng.randbytes(16)
    nonce = rng.randbytes(32)
    roles = ("controlling", "controlled") if a_controls else ("controlled", "controlling")
    a.punch(b, attempt_id, nonce, roles[0], random.Random(rng.random()),
            **{**options, **(a_options or {})})
    if b_starts:
        b_rng = random.Random(rng.random())
        clock.callLater(b_delay, b.punch, a, attempt_id, nonce, roles[1], b_rng,
                        **{**options, **(b_options or {})})
    network.run(duration, stop=lambda: a.done and (b.done or not b_starts))
    return PunchOutcome(network, a, b)


# -- UDP ---------------------------------------------------------------------------------------

class FakeUdpPort:
    """What ``listenUDP`` returns, on a simulated socket; the protocol's transport too."""

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
    """``listenUDP(port, protocol, interface)`` on one simulated host; records what it opened."""

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
    """Our STUN responder on ``ip`` (ports 3478 and 3479) of the simulated network."""

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
        self.relay_host = ""   # the host its offers name ("": the tracker's own)
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
                    initiator=initiator, port=self.relay_port, host=self.relay_host))

    def candidates_of(self, client: FakeTrackerClient) -> tuple:
        out = [wire.PunchCandidate(host, client.udp_port, "lan") for host in client.lan]
        if client.nat_report is not None:
            public = client.nat_report.public
            out.append(wire.PunchCandidate(public.host, public.port, "public"))
        else:
            out.append(wire.PunchCandidate(client.public_ip, client.udp_port, "public"))
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
