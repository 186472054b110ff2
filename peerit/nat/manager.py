"""The daemon's NAT layer: its UDP socket, STUN, hole punching, QUIC and the relay, as paths.

:class:`NatManager` turns the building blocks of ``peerit.nat`` into peer links
(docs/nat-protocol.md is the contract with the tracker):

- **One UDP socket** (``--udp``, default any port) with a :class:`~peerit.nat.udp.UdpMux`:
  STUN answers go to a :class:`~peerit.nat.stun.StunClient`, punch probes to a
  :class:`~peerit.nat.punch.PunchCoordinator`, QUIC to a
  :class:`~peerit.nat.quic.QuicEndpoint`.
- **STUN.** Shortly after start (once the first tracker said where its STUN ports are, or
  after :data:`STUN_INFO_WAIT` with the default ports 3478/3479 on the tracker's host),
  :func:`~peerit.nat.netcheck.run_netcheck` measures the NAT; every
  :data:`~peerit.nat.udp.KEEPALIVE_INTERVAL` a Binding to the tracker keeps the mapping alive
  and notices a changed public address. Each tracker gets a ``NatReport`` after a result,
  when its session (re)starts (its ``StunInfo``) and with every keep-alive.
- **Dialing** (:meth:`NatManager.candidates`): two candidates for the daemon's ``Race``.
  Punched QUIC starts at :data:`QUIC_START` after the dial began: ``PunchRequest`` to the
  tracker, the ``Punch`` it answers with, a :class:`~peerit.nat.punch.PunchAttempt`
  (controlling), then a QUIC client on the confirmed path pinning the peer's id. The relay
  starts when the punch fails (at once when both sides are symmetric, as the attempt fails at
  once then), or at :data:`RELAY_START` if no punch is under way by then; a birthday punch
  keeps its own deadline instead, since the relay would otherwise win most of the races a
  symmetric NAT's punch is about to win: ``RelayRequest``, the ``RelayOffer``, then
  ``peerit.nat.relay_client`` as TLS client.
- **Accepting** (:meth:`NatManager.handle_push`): a ``Punch`` we did not ask for runs the
  attempt (controlled) and arms ``QuicEndpoint.accept_from`` on the confirmed path; a
  ``RelayOffer`` we did not ask for connects to the relay as TLS server. Either hands an
  inbound peer link over that authorizes the peer and joins its swarm by itself, like an
  inbound TCP link.
- **Birthday sockets**: the hard side of a punch opens extra UDP sockets (each a small mux
  with its own QUIC endpoint); the attempt closes all but the winner, and the winner is
  closed once no QUIC link or armed accept uses it any more (checked every
  :data:`SWEEP_INTERVAL`).

Every wait is bounded: the tracker's answer to a request (:data:`ANSWER_TIMEOUT`), the punch
(its deadline), the QUIC handshake (``QuicSettings.handshake_timeout``), the relay connect
and the peer link's own handshake timeout. All I/O goes through injected callables
(``listen_udp``, ``connect_tcp``) and the reactor's clock, so the unit tests run it on a
simulated NAT and in-memory TCP.
"""

import random
from dataclasses import replace
from typing import Callable, Iterable

from twisted.internet import defer, task
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from peerit.daemon.connector import Candidate, NoPath, link_attempt
from peerit.errors import PeeritError, TimedOut, UsageError
from peerit.nat import netcheck as nc
from peerit.nat import punch
from peerit.nat.quic import QuicEndpoint, QuicSettings
from peerit.nat.relay_client import accept_through_relay, dial_through_relay
from peerit.nat.stun import StunClient
from peerit.nat.udp import KEEPALIVE_INTERVAL, DatagramKind, UdpMux
from peerit.wire import tracker as wire

log = Logger()

Address = tuple[str, int]

DEFAULT_STUN_PORT = 3478
DEFAULT_STUN_ALT_PORT = 3479
STUN_INFO_WAIT = 2.0  # how long the first netcheck waits for the tracker's StunInfo
QUIC_START = 0.5  # seconds after the dial began (direct TCP has t = 0 and 0.25)
RELAY_START = 3.0  # relay at the latest, unless a punch is still within its deadline
ANSWER_TIMEOUT = 5.0
MAPPING_WAIT = 2.0  # a punch waits at most this long for our first mapping measurement  # tracker's Punch / RelayOffer after our request
MAX_EXTRA_SOCKETS = 512  # birthday sockets open at once, over every attempt
SWEEP_INTERVAL = 5.0
PATHS = ("tcp", "quic", "relay")

# netcheck's RFC 4787 names -> the contract's NatReport values
_WIRE_MAPPING = {nc.ENDPOINT_INDEPENDENT: "independent", nc.ADDRESS_DEPENDENT: "dependent",
                 nc.ADDRESS_AND_PORT_DEPENDENT: "dependent", nc.ENDPOINT_DEPENDENT: "dependent"}
_WIRE_FILTERING = {nc.ENDPOINT_INDEPENDENT: "independent", nc.ADDRESS_DEPENDENT: "address",
                   nc.ADDRESS_AND_PORT_DEPENDENT: "address-and-port"}


def wire_mapping(netcheck_mapping: str) -> str:
    return _WIRE_MAPPING.get(netcheck_mapping, "unknown")


def wire_filtering(netcheck_filtering: str) -> str:
    # "endpoint-independent or address-dependent" has no wire value: unknown says no more
    # than was measured.
    return _WIRE_FILTERING.get(netcheck_filtering, "unknown")


def parse_udp_spec(spec: str) -> tuple[int, str]:
    """``udp:PORT[:interface=ADDR]`` (or a bare port) -> (port, interface)."""
    parts = spec.split(":")
    if parts[0] == "udp":
        parts = parts[1:]
    if not parts or not parts[0].isdigit() or not 0 <= int(parts[0]) <= 65535:
        raise UsageError(f"bad UDP endpoint {spec!r}: expected udp:PORT[:interface=ADDR]")
    interface = ""
    for option in parts[1:]:
        key, _, value = option.partition("=")
        if key != "interface" or not value:
            raise UsageError(f"bad UDP endpoint option {option!r} in {spec!r}")
        interface = value
    return int(parts[0]), interface


def parse_paths(spec: str) -> frozenset[str]:
    """``tcp,quic,relay`` (any subset) -> the set of paths the daemon may dial."""
    paths = frozenset(p.strip() for p in spec.split(",") if p.strip())
    unknown = paths - set(PATHS)
    if unknown or not paths:
        raise UsageError(f"--paths takes a comma list of {', '.join(PATHS)}, not {spec!r}")
    return paths


class UdpSocket:
    """One UDP socket of ours: a mux, its QUIC endpoint, and the punch's view of it
    (:class:`~peerit.nat.punch.ISocketHandle`). The main socket and every birthday socket."""

    def __init__(self, manager: "NatManager", main: bool):
        self.manager = manager
        self.main = main
        self.mux = UdpMux(manager.clock)
        self.endpoint = QuicEndpoint(manager.identity, self.mux.send, manager.clock,
                                     manager.quic_settings, send_many=self.mux.send_many)
        self.port = None
        self.closed = False
        self.busy = 0  # QUIC connects / armed accepts in progress on this socket
        self.kept = False  # a birthday socket that became a punched path
        self.mux.set_handler(DatagramKind.PROBE, self._probe_received)
        self.mux.set_handler(DatagramKind.QUIC, self.endpoint.datagram_received)

    def listening(self, port) -> None:
        self.port = port
        self.endpoint.host = port.getHost()

    @property
    def local_port(self) -> int | None:
        return self.mux.local_port

    def _probe_received(self, data: bytes, addr) -> None:
        self.manager.coordinator.datagram_received(self, data, addr)

    # ISocketHandle
    def send(self, data: bytes, addr: Address) -> None:
        self.mux.send(data, addr)

    def close(self) -> None:
        """Birthday sockets only: the punch closes the extra sockets it does not keep. The
        main socket lives as long as the manager (:meth:`shutdown`)."""
        if not self.main:
            self.shutdown()

    def shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.endpoint.close()
        if self.port is not None:
            self.port.stopListening()
        self.manager._extra.discard(self)

    def __repr__(self):
        return f"<UdpSocket {'main' if self.main else 'extra'} port {self.local_port}>"


class _Dial:
    """What the two NAT candidates of one dial share: whether the punch is over, and until
    when a running birthday punch may still win."""

    def __init__(self, info_hash: bytes, peer_id: bytes, started_at: float):
        self.info_hash = info_hash
        self.peer_id = peer_id
        self.started_at = started_at
        self.punch_over = False
        self.birthday_deadline: float | None = None  # absolute time, while one runs
        self._waiters: list[Deferred] = []

    def give_up_punch(self) -> None:
        self.punch_over = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def when_punch_over(self) -> Deferred:
        if self.punch_over:
            return defer.succeed(None)
        d = Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(d)
        return d


class NatManager:
    """The daemon's NAT layer (see the module docstring).

    ``trackers()`` lists the daemon's tracker clients (the first one also serves STUN);
    ``swarm_trackers(info_hash)`` those of one swarm (they coordinate its punches and
    relays); ``inbound_link(path)`` makes an accepting peer link. ``listen_udp(port, protocol,
    interface)`` is ``reactor.listenUDP``; ``connect_tcp(host, port, factory)`` connects with
    a bounded timeout. ``paths`` limits what this side dials (``quic``, ``relay``).
    """

    def __init__(self, reactor, identity, *, trackers: Callable[[], Iterable],
                 swarm_trackers: Callable[[bytes], Iterable],
                 inbound_link: Callable[[str], object],
                 udp: str = "udp:0", stun_server: Address | None = None,
                 local_hosts: Callable[[], Iterable[str]] | None = None,
                 quic_settings: QuicSettings = QuicSettings(),
                 paths: Iterable[str] = PATHS, rng=None,
                 listen_udp=None, connect_tcp=None, resolve=None,
                 on_punch_outcome: Callable[[str, str, bool], object] | None = None):
        self.reactor = reactor
        self.clock = reactor
        self.identity = identity
        self.peer_id = identity.peer_id
        self.quic_settings = quic_settings
        self.paths = frozenset(paths)
        self._trackers = trackers
        self._swarm_trackers = swarm_trackers
        self._inbound_link = inbound_link
        self._udp_port, self._udp_interface = parse_udp_spec(udp)
        self._stun_server = stun_server
        self._local_hosts = local_hosts
        self.rng = rng or random.SystemRandom()
        self._listen_udp = listen_udp or reactor.listenUDP
        self._connect_tcp = connect_tcp or self._default_connect_tcp
        self._resolve = resolve or getattr(reactor, "resolve", None)
        self.coordinator = punch.PunchCoordinator()
        self.main: UdpSocket | None = None
        self.stun: StunClient | None = None
        self.report: nc.NetcheckReport | None = None
        self._stun_ports: dict = {}  # tracker address -> (stun_port, alt_port)
        self._stun_host: dict = {}  # tracker host -> resolved IP
        self._checking: Deferred | None = None
        self._check_waiters: list[Deferred] = []
        self._mapping_waiters: list[Deferred] = []
        self._probes: set[StunClient] = set()  # fresh-socket netchecks in progress
        self._first_check = None
        self._extra: set[UdpSocket] = set()
        self._sweep: task.LoopingCall | None = None
        self._punch_waits: dict[tuple, Deferred] = {}
        self._relay_waits: dict[tuple, Deferred] = {}
        self._accepting: set[Deferred] = set()
        self._running = False
        # (our mapping, theirs, succeeded) for each punch attempt that ends: for metrics.
        self._on_punch_outcome = on_punch_outcome or (lambda mine, theirs, ok: None)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def udp_port(self) -> int:
        """The main socket's local port (``Hello.udp_port``); 0 before start."""
        return (self.main.local_port or 0) if self.main is not None else 0

    @property
    def mapping(self) -> str:
        """Our NAT mapping behaviour as the punch sees it: independent, dependent, unknown."""
        if self.report is None or not self.report.udp_works:
            return punch.UNKNOWN
        return punch.mapping_behaviour(self.report.mapping)

    def start(self) -> None:
        """Open the UDP socket (raises ``PeeritError`` if it cannot) and schedule the first
        netcheck."""
        self.main = UdpSocket(self, main=True)
        try:
            port = self._listen_udp(self._udp_port, self.main.mux,
                                    interface=self._udp_interface)
        except Exception as e:
            raise PeeritError(f"cannot open UDP port {self._udp_port}: {e}") from None
        self.main.listening(port)
        self.stun = StunClient(self.clock, self.main.mux.send, software="peer-it")
        self.main.mux.set_handler(DatagramKind.STUN, self.stun.datagram_received)
        self.main.mux.set_refresh(self._refresh)
        self._running = True
        self._first_check = self.clock.callLater(STUN_INFO_WAIT, self._start_first_check)
        log.info("UDP socket for STUN, punching and QUIC on port {port}", port=self.udp_port)

    def stop(self) -> None:
        """Cancel every attempt and wait, close every socket; idempotent."""
        if not self._running:
            return
        self._running = False
        if self._first_check is not None and self._first_check.active():
            self._first_check.cancel()
        self._first_check = None
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()
        self._sweep = None
        self.coordinator.cancel_all()
        for waits in (self._punch_waits, self._relay_waits):
            for d in list(waits.values()):
                d.cancel()
            waits.clear()
        for d in list(self._accepting):
            d.cancel()
        for d in list(self._mapping_waiters):
            d.cancel()
        for stun in list(self._probes):
            stun.stop()
        if self.stun is not None:
            self.stun.stop()
        for sock in list(self._extra):
            sock.shutdown()
        if self.main is not None:
            self.main.shutdown()

    # -- STUN and netcheck --------------------------------------------------------------------

    def _stun_tracker(self):
        for client in self._trackers():
            return client
        return None

    def _tracker_stun_addresses(self) -> defer.Deferred:
        """(primary, alternate) STUN addresses of the first tracker, or (None, None)."""
        client = self._stun_tracker()
        if client is None:
            return defer.succeed((None, None))
        address = client.tracker
        ports = self._stun_ports.get(address, (DEFAULT_STUN_PORT, DEFAULT_STUN_ALT_PORT))
        if not ports[0]:
            return defer.succeed((None, None))

        def addresses(ip):
            self._stun_host[address.host] = ip
            return ((ip, ports[0]), (ip, ports[1]) if ports[1] else None)
        host = address.host
        if isIPAddress(host) or isIPv6Address(host):
            return defer.succeed(addresses(host))
        if host in self._stun_host:
            return defer.succeed(addresses(self._stun_host[host]))
        return self._resolve(host).addCallback(addresses)

    def _start_first_check(self) -> None:
        self._first_check = None
        self.check().addErrback(_check_failed)

    def check(self) -> Deferred:
        """Measure the NAT now (or join the measurement running); fires with the report.

        Two steps. First a quick one on the main socket: a Binding to the tracker's STUN
        port and one to its second port give the public address and whether the mapping
        depends on the destination, in two round trips; that is all a punch needs, so it is
        reported at once. Then the full netcheck (filtering, and the external server) from
        a fresh socket, whose flows cannot make the NAT look looser than it is; its result
        keeps the main socket's public address."""
        waiter = Deferred()
        self._check_waiters.append(waiter)
        if self._checking is None:
            self._checking = Deferred.fromCoroutine(self._measure())
            self._checking.addBoth(self._check_done)
        return waiter

    async def _measure(self) -> nc.NetcheckReport:
        primary, alternate = await self._tracker_stun_addresses()
        second = alternate or self._stun_server
        if primary is not None and second is not None:
            hosts = list(self._local_hosts()) if self._local_hosts is not None else None
            # tracker_alternate=None: no filtering test (it needs a socket that has not
            # talked to the second port), the second port as "external" tells the mapping.
            quick = await nc.run_netcheck(self.stun, primary, None, second,
                                          local_port=self.udp_port, local_hosts=hosts,
                                          measured_at=self.clock.seconds())
            if quick.udp_works and self._running:
                self._learned(quick)
        return await self._fresh_check()

    async def _fresh_check(self) -> nc.NetcheckReport:
        """The full netcheck from a new socket, with the main socket's public address."""
        probe = self._open_socket(main=False)
        stun = StunClient(self.clock, probe.mux.send, software="peer-it")
        probe.mux.set_handler(DatagramKind.STUN, stun.datagram_received)
        self._probes.add(stun)
        try:
            report = await self._check(stun, probe.local_port)
        finally:
            # (stop() ends a check cut short: it stops every probe's client.)
            self._probes.discard(stun)
            probe.shutdown()
        current = self.report
        if current is not None and current.udp_works:
            return replace(report, public_host=current.public_host,
                           public_port=current.public_port, local_port=self.udp_port)
        if report.udp_works:
            # No answer to the main socket yet: ask for its own public address.
            primary, _ = await self._tracker_stun_addresses()
            server = primary or self._stun_server
            try:
                mapped = await self.stun.binding(server)
            except PeeritError:
                return replace(report, local_port=self.udp_port)
            return replace(report, public_host=mapped[0], public_port=mapped[1],
                           local_port=self.udp_port)
        return replace(report, local_port=self.udp_port)

    async def _check(self, stun: StunClient, local_port: int) -> nc.NetcheckReport:
        primary, alternate = await self._tracker_stun_addresses()
        if primary is None and self._stun_server is None:
            return nc.NetcheckReport(False, None, None, nc.UNKNOWN, nc.UNKNOWN, None, None,
                                     local_port=local_port,
                                     measured_at=self.clock.seconds())
        if primary is None:
            primary, alternate, external = self._stun_server, None, None
        else:
            external = self._stun_server
        hosts = list(self._local_hosts()) if self._local_hosts is not None else None
        return await nc.run_netcheck(
            stun, primary, alternate, external, local_port=local_port,
            local_hosts=hosts, measured_at=self.clock.seconds())

    def _mapping_known(self, timeout: float) -> Deferred:
        """Fires (None) once our mapping is measured, at once if it is or no measurement is
        under way, or after ``timeout`` regardless."""
        if self.report is not None or (self._checking is None and self._first_check is None):
            return defer.succeed(None)
        d = Deferred(lambda d: self._mapping_waiters.remove(d)
                     if d in self._mapping_waiters else None)
        self._mapping_waiters.append(d)
        return d.addTimeout(timeout, self.clock, onTimeoutCancel=lambda result, t: None)

    def _check_done(self, result):
        self._checking = None
        waiters, self._check_waiters = self._check_waiters, []
        if isinstance(result, Failure):
            for d in waiters:
                d.errback(result)
            return None
        if self._running:
            self._learned(result)
        for d in waiters:
            d.callback(result)
        return None

    def _learned(self, report: nc.NetcheckReport) -> None:
        old = self.report
        self.report = report
        waiters, self._mapping_waiters = self._mapping_waiters, []
        for d in waiters:
            d.callback(None)
        if old is None or (old.public_host, old.public_port, old.mapping) != \
                (report.public_host, report.public_port, report.mapping):
            log.info("NAT: public UDP address {host}:{port}, {nat} ({mapping} mapping, "
                     "{filtering} filtering)", host=report.public_host,
                     port=report.public_port, nat=report.nat_type, mapping=report.mapping,
                     filtering=report.filtering)
        self._send_reports()

    def _nat_report(self):
        report = self.report
        if report is None or not report.udp_works or report.public_host is None:
            return None
        return wire.NatReport(public=wire.Endpoint(report.public_host, report.public_port),
                              mapping=wire_mapping(report.mapping),
                              filtering=wire_filtering(report.filtering))

    def _send_reports(self, trackers=None) -> None:
        message = self._nat_report()
        if message is None:
            return
        for client in (trackers if trackers is not None else self._trackers()):
            if client.connected:
                client.send(message)

    def _refresh(self):
        """Every keep-alive: a Binding to the tracker keeps the NAT mapping; a changed
        public address is reported at once (and the report repeated for trackers that
        reconnected meanwhile)."""
        if self._checking is not None or not self._running:
            return None
        if self.report is None:
            return self.check()

        async def refresh():
            primary, _ = await self._tracker_stun_addresses()
            server = primary or self._stun_server
            if server is None:
                return
            mapped = await self.stun.binding(server)
            report = self.report
            if report is not None and mapped != (report.public_host, report.public_port):
                log.info("NAT: public UDP address changed to {host}:{port}",
                         host=mapped[0], port=mapped[1])
                self.report = replace(report, public_host=mapped[0], public_port=mapped[1],
                                      udp_works=True)
            self._send_reports()
        return Deferred.fromCoroutine(refresh())

    def netcheck(self) -> Deferred:
        """For ``peerit-ctl netcheck``: a fresh report as a dict (``NetcheckReport.as_dict``)
        with the tracker's round trip and a ``text`` key (``describe()``).

        The NAT's behaviour is measured from a new socket: the main one has flows open to
        every STUN port already, through which a port-restricted NAT would look looser than
        it is. The public address shown is the main socket's (kept fresh by the
        keep-alive). What was measured also updates what the punch goes by."""
        async def run():
            report = await self._fresh_check()
            if report.udp_works and self._running:
                self._learned(report)
            rtt = None
            client = self._stun_tracker()
            if client is not None and client.connected:
                try:
                    rtt = await client.ping()
                except PeeritError as e:
                    log.info("tracker ping for netcheck failed: {e}", e=str(e))
            report = replace(report, tracker_rtt=rtt)
            data = report.as_dict()
            data["udp_port"] = self.udp_port
            data["text"] = report.describe()
            return data
        return Deferred.fromCoroutine(run())

    # -- pushes from the tracker ---------------------------------------------------------------

    def handle_push(self, message, tracker=None) -> bool:
        """A tracker push; True when it was ours (StunInfo, Punch, RelayOffer, or an Error
        refusing one of our requests). ``tracker`` is the address of the tracker it came
        from (the relay runs on that host)."""
        if not self._running:
            return False
        kind = type(message)
        if kind is wire.StunInfo:
            self._stun_info(message, tracker)
            return True
        if kind is wire.Punch:
            self._punch_received(message)
            return True
        if kind is wire.RelayOffer:
            self._relay_offer_received(message, tracker)
            return True
        if kind is wire.Error:
            return self._refused(message)
        return False

    def _stun_info(self, message, tracker) -> None:
        client = self._client_for(tracker)
        if client is None:
            return
        ports = (message.stun_port, message.stun_alt_port)
        old = self._stun_ports.get(client.tracker)
        self._stun_ports[client.tracker] = ports
        # A StunInfo starts every session: tell this tracker what we know at once.
        self._send_reports([client])
        if client is self._stun_tracker():
            if self._first_check is not None and self._first_check.active():
                self._first_check.cancel()
                self._start_first_check()
            elif old is not None and old != ports:
                self.check().addErrback(_check_failed)

    def _client_for(self, tracker):
        clients = list(self._trackers())
        if tracker is None:
            return clients[0] if clients else None
        for client in clients:
            if client is tracker or client.tracker == tracker:
                return client
        return None

    def _refused(self, error) -> bool:
        opcode = error.refused_opcode
        if opcode == wire.messages.opcode_of(wire.PunchRequest):
            waits, what = self._punch_waits, "punch"
        elif opcode == wire.messages.opcode_of(wire.RelayRequest):
            waits, what = self._relay_waits, "relay"
        else:
            return False
        # The tracker answers in order: the oldest request for that swarm is the refused one.
        for key, d in list(waits.items()):
            if key[0] == error.info_hash:
                del waits[key]
                d.errback(NoPath(f"tracker refused the {what}: {error.code}: "
                                 f"{error.reason}"))
                break
        return True

    # -- dialing -------------------------------------------------------------------------------

    def candidates(self, info_hash: bytes, peer_info, make_link) -> list[Candidate]:
        """Punched QUIC and relay candidates for the daemon's race towards ``peer_info``.

        ``make_link(path, on_ready, on_failed)`` builds the dialing ``PeerLink``.
        """
        if not self._running:
            return []
        dial = _Dial(info_hash, peer_info.peer_id, self.clock.seconds())
        out = []
        if "quic" in self.paths:
            out.append(Candidate("quic (punched)",
                                 lambda: self._quic_candidate(dial, make_link)))
        else:
            dial.give_up_punch()
        if "relay" in self.paths:
            out.append(Candidate("relay", lambda: self._relay_candidate(dial, make_link)))
        return out

    def _tracker_of(self, info_hash: bytes):
        for client in self._swarm_trackers(info_hash):
            if client.connected:
                return client
        raise NoPath("no tracker connected to coordinate")

    def _ask(self, waits: dict, key: tuple, request, what: str) -> Deferred:
        """Send ``request`` to the swarm's tracker and wait (bounded) for its answer."""
        if key in waits:
            return defer.fail(NoPath(f"a {what} with this peer is already being set up"))
        client = self._tracker_of(key[0])
        answer = Deferred(lambda d: waits.pop(key, None))
        waits[key] = answer
        if not client.send(request):
            waits.pop(key, None)
            return defer.fail(NoPath("tracker session lost"))

        def timed_out(result, timeout):
            waits.pop(key, None)
            raise NoPath(f"no {what} from the tracker within {timeout:g}s")
        return answer.addTimeout(ANSWER_TIMEOUT, self.clock, onTimeoutCancel=timed_out)

    def _quic_candidate(self, dial: _Dial, make_link) -> Deferred:
        d = Deferred.fromCoroutine(self._punch_and_connect(dial, make_link))

        def failed(failure):
            # A cancelled dial is over for the relay too: it must not start because of it.
            if not failure.check(CancelledError):
                dial.give_up_punch()
            return failure
        return d.addErrback(failed)

    async def _punch_and_connect(self, dial: _Dial, make_link):
        delay = dial.started_at + QUIC_START - self.clock.seconds()
        if delay > 0:
            await task.deferLater(self.clock, delay, lambda: None)
        # Our own mapping decides the plan (birthday or not): a dial right after start may
        # have to wait for the first measurement, a round trip or two.
        await self._mapping_known(MAPPING_WAIT)
        key = (dial.info_hash, dial.peer_id)
        message = await self._ask(self._punch_waits, key,
                                  wire.PunchRequest(dial.info_hash, dial.peer_id), "punch")
        path_found = Deferred()
        attempt = self._start_attempt(message, path_found)
        if attempt.plan in ("easy", "hard"):
            dial.birthday_deadline = self.clock.seconds() + attempt.deadline
        try:
            path = await path_found
        except CancelledError:
            attempt.cancel()
            raise
        sock, addr = path.local_socket, tuple(path.remote_addr)

        def connect(factory):
            return sock.endpoint.connect(addr, dial.peer_id,
                                         lambda peer_id: factory.buildProtocol(addr))
        sock.busy += 1
        try:
            return await link_attempt(
                connect, lambda on_ready, on_failed: make_link("quic", on_ready, on_failed))
        finally:
            sock.busy -= 1
            self._watch(sock)

    def _start_attempt(self, message, path_found: Deferred) -> punch.PunchAttempt:
        """A PunchAttempt for a Punch message; ``path_found`` fires with the Path or fails
        with NoPath."""
        my_mapping = self.mapping
        their_mapping = punch.mapping_behaviour(message.mapping)

        def succeeded(path):
            self._on_punch_outcome(my_mapping, their_mapping, True)
            if not path_found.called:
                path_found.callback(path)

        def failed(reason):
            self._on_punch_outcome(my_mapping, their_mapping, False)
            if not path_found.called:
                path_found.errback(NoPath(f"punch failed: {reason}"))
        candidates = []
        for c in message.candidates:
            if c.kind in punch.CANDIDATE_KINDS and c.port:
                candidates.append(punch.Candidate(c.host, c.port, c.kind))
        attempt = punch.PunchAttempt(
            self.clock, self.rng, attempt_id=message.attempt_id, nonce=message.nonce,
            my_peer_id=self.peer_id, their_peer_id=message.peer_id,
            role=punch.CONTROLLING if message.controlling else punch.CONTROLLED,
            their_candidates=candidates, main_socket=self.main,
            on_success=succeeded, on_failure=failed,
            my_mapping=my_mapping, their_mapping=their_mapping,
            open_socket=self._open_extra_socket)
        try:
            self.coordinator.start(attempt)
        except (ValueError, punch.TooManyAttempts) as e:
            failed(str(e))
        return attempt

    def _relay_candidate(self, dial: _Dial, make_link) -> Deferred:
        return Deferred.fromCoroutine(self._relay_dial(dial, make_link))

    async def _relay_dial(self, dial: _Dial, make_link):
        while not dial.punch_over:
            # At RELAY_START, or when the punch is over; a birthday punch keeps its deadline.
            start_at = max(dial.started_at + RELAY_START, dial.birthday_deadline or 0.0)
            delay = start_at - self.clock.seconds()
            if delay <= 0:
                break
            wake = Deferred()  # cancelling it (the race lost) raises CancelledError here

            def wake_up(_=None):
                if not wake.called:
                    wake.callback(None)
            timer = self.clock.callLater(delay, wake_up)
            punch_over = dial.when_punch_over().addCallbacks(wake_up, lambda f: None)
            try:
                await wake
            finally:
                if timer.active():
                    timer.cancel()
                punch_over.cancel()
        client = self._tracker_of(dial.info_hash)
        key = (dial.info_hash, dial.peer_id)
        offer = await self._ask(self._relay_waits, key,
                                wire.RelayRequest(dial.info_hash, dial.peer_id), "relay offer")
        return await dial_through_relay(
            self._connect_tcp, client.tracker.host, offer.port, offer.token, self.identity,
            dial.peer_id,
            lambda on_ready, on_failed: make_link("relay", on_ready, on_failed),
            clock=self.clock)

    # -- accepting -----------------------------------------------------------------------------

    def _punch_received(self, message) -> None:
        key = (message.info_hash, message.peer_id)
        if message.controlling:
            waiting = self._punch_waits.pop(key, None)
            if waiting is None:
                log.info("punch {attempt} for a request we no longer wait for: ignored",
                         attempt=message.attempt_id.hex())
            else:
                waiting.callback(message)
            return
        if "quic" not in self.paths:
            return
        started = self.clock.seconds()

        def start(_):
            if not self._running:
                return
            path_found = Deferred()
            self._start_attempt(message, path_found)
            path_found.addCallback(self._accept_quic, message.peer_id, started)
            path_found.addErrback(lambda f: log.info(
                "punch from {peer} (we accept): {why}", peer=message.peer_id.hex()[:12],
                why=f.getErrorMessage()))
        # As on the dialing side, our plan depends on our mapping (bounded wait).
        self._mapping_known(MAPPING_WAIT).addCallback(start)

    def _accept_quic(self, path: punch.Path, peer_id: bytes, started: float) -> None:
        sock = path.local_socket

        def build(proven_peer_id):
            link = self._inbound_link("quic")
            link.connect_seconds = self.clock.seconds() - started
            return link
        sock.busy += 1
        d = sock.endpoint.accept_from(tuple(path.remote_addr), {peer_id}, build)
        self._accepting.add(d)

        def done(result):
            self._accepting.discard(d)
            sock.busy -= 1
            self._watch(sock)
            if isinstance(result, Failure) and not result.check(CancelledError):
                log.info("QUIC from {peer} on the punched path: {why}",
                         peer=peer_id.hex()[:12], why=result.getErrorMessage())
            return None
        d.addBoth(done)

    def _relay_offer_received(self, message, tracker) -> None:
        key = (message.info_hash, message.peer_id)
        if message.initiator:
            waiting = self._relay_waits.pop(key, None)
            if waiting is not None:
                waiting.callback(message)
            return
        client = self._client_for(tracker)
        if client is None:
            return
        started = self.clock.seconds()

        def build():
            link = self._inbound_link("relay")
            link.connect_seconds = self.clock.seconds() - started
            return link
        d = accept_through_relay(self._connect_tcp, client.tracker.host, message.port,
                                 message.token, self.identity, build, clock=self.clock)
        self._accepting.add(d)

        def done(result):
            self._accepting.discard(d)
            if isinstance(result, Failure) and not result.check(CancelledError):
                log.info("relay offer from {peer}: {why}", peer=message.peer_id.hex()[:12],
                         why=result.getErrorMessage())
            return None
        d.addBoth(done)

    # -- birthday sockets ----------------------------------------------------------------------

    def _open_extra_socket(self) -> UdpSocket:
        if len(self._extra) >= MAX_EXTRA_SOCKETS:
            raise OSError(f"{MAX_EXTRA_SOCKETS} extra UDP sockets already open")
        return self._open_socket(main=False)

    def _open_socket(self, main: bool) -> UdpSocket:
        sock = UdpSocket(self, main=main)
        port = self._listen_udp(0, sock.mux, interface=self._udp_interface)
        sock.listening(port)
        self._extra.add(sock)
        return sock

    def _watch(self, sock: UdpSocket) -> None:
        """A birthday socket that won a punch is ours to close once no QUIC link or armed
        accept uses it (the attempt closed the others)."""
        if sock.main or sock.closed:
            return
        sock.kept = True
        if sock.busy == 0 and not sock.endpoint.links():
            sock.shutdown()
            return
        if self._sweep is None:
            self._sweep = task.LoopingCall(self._sweep_extra)
            self._sweep.clock = self.clock
            self._sweep.start(SWEEP_INTERVAL, now=False)

    def _sweep_extra(self) -> None:
        for sock in list(self._extra):
            if sock.kept and not sock.busy and not sock.endpoint.links():
                sock.shutdown()
        if not any(sock.kept for sock in self._extra) and self._sweep is not None:
            self._sweep.stop()
            self._sweep = None

    # -- helpers -------------------------------------------------------------------------------

    def _default_connect_tcp(self, host: str, port: int, factory) -> Deferred:
        from twisted.internet.endpoints import HostnameEndpoint
        return HostnameEndpoint(self.reactor, host, port, timeout=10).connect(factory)


def _check_failed(failure) -> None:
    if not failure.check(CancelledError):  # stopping cancels a check in progress
        log.failure("netcheck failed", failure)
