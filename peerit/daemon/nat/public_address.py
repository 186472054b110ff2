"""Observer of the daemon's public UDP address and NAT type, and the STUN keep-alive.

Shortly after start (once the first tracker said where its STUN ports are, or after
:data:`STUN_INFO_WAIT` with the default ports 3478/3479 on the tracker's host),
:func:`~peerit.nat.netcheck.run_netcheck` measures the NAT; every
:data:`~peerit.nat.udp.KEEPALIVE_INTERVAL` a Binding to the tracker keeps the mapping alive
and notices a changed public address. Each tracker gets a ``NatReport`` after a result, when
its session (re)starts (its ``StunInfo``) and with every keep-alive.
"""

from dataclasses import replace
from typing import Callable, Iterable

from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from peerit.daemon.nat.socket_pool import SocketPool, UdpSocket
from peerit.endpoints import DEFAULT_STUN_ALT_PORT, DEFAULT_STUN_PORT
from peerit.errors import PeeritError
from peerit.nat import netcheck as nc
from peerit.nat import punch
from peerit.nat.stun import StunClient
from peerit.nat.udp import DatagramKind
from peerit.wire import tracker as wire

log = Logger()

Address = tuple[str, int]

STUN_INFO_WAIT = 2.0  # how long the first netcheck waits for the tracker's StunInfo

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


class PublicAddress:
    """What the daemon knows of its NAT (:attr:`report`), kept fresh and told to the trackers.

    ``trackers()`` lists the daemon's tracker clients (the first one also serves STUN);
    ``stun_server`` is an external STUN server; ``pool`` opens the fresh sockets a full
    netcheck measures from; ``resolve(host)`` resolves a tracker's host name.
    """

    def __init__(self, clock, pool: SocketPool, *, trackers: Callable[[], Iterable],
                 stun_server: Address | None = None,
                 local_hosts: Callable[[], Iterable[str]] | None = None, resolve=None):
        self.clock = clock
        self._pool = pool
        self._trackers = trackers
        self._stun_server = stun_server
        self._local_hosts = local_hosts
        self._resolve = resolve
        self.main: UdpSocket | None = None
        self.stun: StunClient | None = None
        self.report: nc.NetcheckReport | None = None
        self.running = False
        self._stun_ports: dict = {}  # tracker address -> (stun_port, alt_port)
        self._stun_host: dict = {}  # tracker host -> resolved IP
        self._checking: Deferred | None = None
        self._check_waiters: list[Deferred] = []
        self._mapping_waiters: list[Deferred] = []
        self._probes: set[StunClient] = set()  # fresh-socket netchecks in progress
        self._first_check = None

    @property
    def udp_port(self) -> int:
        """The main socket's local port; 0 before start."""
        return (self.main.local_port or 0) if self.main is not None else 0

    @property
    def mapping(self) -> str:
        """Our NAT mapping behaviour as the punch sees it: independent, dependent, unknown."""
        if self.report is None or not self.report.udp_works:
            return punch.UNKNOWN
        return punch.mapping_behaviour(self.report.mapping)

    def start(self, main: UdpSocket) -> None:
        """STUN on the main socket, keep-alives by its mux, the first netcheck scheduled."""
        self.main = main
        self.stun = StunClient(self.clock, main.mux.send, software="peer-it")
        main.mux.set_handler(DatagramKind.STUN, self.stun.datagram_received)
        main.mux.set_refresh(self._refresh)
        self.running = True
        self._first_check = self.clock.callLater(STUN_INFO_WAIT, self._start_first_check)

    def cancel_first_check(self) -> None:
        if self._first_check is not None and self._first_check.active():
            self._first_check.cancel()
        self._first_check = None

    def stop(self) -> None:
        """Cancel every wait and measurement; idempotent."""
        self.running = False
        self.cancel_first_check()
        for d in list(self._mapping_waiters):
            d.cancel()
        for stun in list(self._probes):
            stun.stop()
        if self.stun is not None:
            self.stun.stop()

    # -- STUN and netcheck --------------------------------------------------------------------

    def stun_tracker(self):
        for client in self._trackers():
            return client
        return None

    def _tracker_stun_addresses(self) -> defer.Deferred:
        """(primary, alternate) STUN addresses of the first tracker, or (None, None)."""
        client = self.stun_tracker()
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
            if quick.udp_works and self.running:
                self.learned(quick)
        return await self.fresh_check()

    async def fresh_check(self) -> nc.NetcheckReport:
        """The full netcheck from a new socket, with the main socket's public address."""
        probe = self._pool.open()
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

    def mapping_known(self, timeout: float) -> Deferred:
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
        if self.running:
            self.learned(result)
        for d in waiters:
            d.callback(result)
        return None

    def learned(self, report: nc.NetcheckReport) -> None:
        """A new measurement: kept, logged when it changed, reported to the trackers."""
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
        self.send_reports()

    def _nat_report(self):
        report = self.report
        if report is None or not report.udp_works or report.public_host is None:
            return None
        return wire.NatReport(public=wire.Endpoint(report.public_host, report.public_port),
                              mapping=wire_mapping(report.mapping),
                              filtering=wire_filtering(report.filtering))

    def send_reports(self, trackers=None) -> None:
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
        if self._checking is not None or not self.running:
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
            self.send_reports()
        return Deferred.fromCoroutine(refresh())

    def stun_info(self, message, client) -> None:
        """A tracker's ``StunInfo`` (it starts every session): where its STUN ports are."""
        ports = (message.stun_port, message.stun_alt_port)
        old = self._stun_ports.get(client.tracker)
        self._stun_ports[client.tracker] = ports
        # A StunInfo starts every session: tell this tracker what we know at once.
        self.send_reports([client])
        if client is self.stun_tracker():
            if self._first_check is not None and self._first_check.active():
                self._first_check.cancel()
                self._start_first_check()
            elif old is not None and old != ports:
                self.check().addErrback(_check_failed)

    def netcheck(self) -> Deferred:
        """For ``peerit-ctl netcheck``: a fresh report as a dict (``NetcheckReport.as_dict``)
        with the tracker's round trip and a ``text`` key (``describe()``).

        The NAT's behaviour is measured from a new socket: the main one has flows open to
        every STUN port already, through which a port-restricted NAT would look looser than
        it is. The public address shown is the main socket's (kept fresh by the
        keep-alive). What was measured also updates what the punch goes by."""
        async def run():
            report = await self.fresh_check()
            if report.udp_works and self.running:
                self.learned(report)
            rtt = None
            client = self.stun_tracker()
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


def _check_failed(failure) -> None:
    if not failure.check(CancelledError):  # stopping cancels a check in progress
        log.failure("netcheck failed", failure)
