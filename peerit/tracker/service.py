"""The tracker as a Twisted service: listen with our TLS, announce the address, sweep, stop;
and the NAT side's ports (STUN responder, relay) whose numbers every session is told."""

import os
import resource

from twisted.application import service
from twisted.internet import task
from twisted.internet.defer import gatherResults, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from peerit.addresses import TrackerAddress
from peerit.endpoints import parse_udp_endpoint, tcp_description
from peerit.identity import Identity
from peerit.tracker.protocol import tls_factory
from peerit.tracker.relay import RelayBroker, RelayFactory
from peerit.tracker.session import Tracker
from peerit.tracker.stun_server import stun_protocols
from peerit.wire import tracker as wire

log = Logger(namespace="peerit.tracker")

ENDPOINT_FILE = "tracker.endpoint"
def _listen_now(reactor, description: str, factory):
    """Listen on a stream endpoint and return the port, raising if that fails."""
    results = []
    serverFromString(reactor, description).listen(factory).addBoth(results.append)
    if not results:
        raise RuntimeError(f"listening on {description} did not complete at once")
    if not hasattr(results[0], "getHost"):
        results[0].raiseException()
    return results[0]


def write_atomic(path: str, text: str) -> None:
    """Readers (tests, scripts) see the old file or the whole new one, never half."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# Descriptors besides sessions and relay connections: listening and STUN sockets, the log,
# epoll, the key files while they are read, a few accepts in flight.
SPARE_FILES = 64


def raise_open_files_limit(needed: int, getrlimit=resource.getrlimit,
                           setrlimit=resource.setrlimit) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE towards ``needed`` (no further than the hard limit, which
    needs no privilege); returns the (soft, hard) limits now in force.

    A shell's default soft limit is often 1024: without this a tracker allowed 20,000
    sessions would stop accepting at about a thousand (Twisted logs EMFILE and carries on).
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return soft, hard
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft < want:
        setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft, hard


def advertised_host(bound_host: str) -> str:
    """Where a local client should connect: the bound interface, or loopback for 'all'."""
    return "127.0.0.1" if bound_host in ("", "0.0.0.0", "::") else bound_host


class TrackerService(service.Service):
    """Listens on ``description`` and serves ``tracker`` with TLS as ``identity``."""

    name = "peerit-tracker"

    def __init__(self, reactor, tracker: Tracker, identity: Identity, description: str,
                 data_dir: str, other_connections: int = 0, rlimit=raise_open_files_limit,
                 listen=None, worker: int | None = None):
        self.reactor = reactor
        # listen(reactor, description, factory) -> port; a worker shares its port
        # (peerit.tracker.workers) and says it is ready in its own file, not tracker.endpoint.
        self._listen_port = listen or _listen_now
        self.worker = worker
        self.tracker = tracker
        self.identity = identity
        self.description = tcp_description(description)
        self.data_dir = data_dir
        # Connections the process may hold besides sessions (the relay's cap).
        self.other_connections = other_connections
        self._rlimit = rlimit
        self.port = None
        self.address: TrackerAddress | None = None
        self._sweeper = None

    @property
    def endpoint_path(self) -> str:
        if self.worker is not None:
            return os.path.join(self.data_dir, f"worker-{self.worker}.ready")
        return os.path.join(self.data_dir, ENDPOINT_FILE)

    def privilegedStartService(self):
        # Bind here, before twistd drops privileges, and fail the start (twistd exits
        # non-zero) rather than run a tracker that listens nowhere.
        super().privilegedStartService()
        self._listen()

    def _listen(self):
        self._check_open_files()
        self.port = self._listen_port(self.reactor, self.description,
                                      tls_factory(self.identity, self.tracker))

    def _check_open_files(self):
        max_sessions = self.tracker.limits.max_sessions
        needed = max_sessions + self.other_connections + SPARE_FILES
        soft, hard = self._rlimit(needed)
        if soft < needed:
            sessions = max(0, soft - self.other_connections - SPARE_FILES)
            log.warn("only {soft} open files allowed (hard limit {hard}): about {sessions} "
                     "sessions at once, not --max-sessions {max_sessions}; raise the limit "
                     "(systemd LimitNOFILE=, or ulimit -n as root) or lower --max-sessions",
                     soft=soft, hard=hard, sessions=sessions, max_sessions=max_sessions)

    def startService(self):
        super().startService()
        if self.port is None:
            self._listen()
        bound = self.port.getHost()
        self.address = TrackerAddress(advertised_host(bound.host), bound.port,
                                      self.identity.peer_id)
        self._sweeper = task.LoopingCall(self.tracker.sweep)
        self._sweeper.clock = self.reactor
        self._sweeper.start(self.tracker.limits.idle_timeout / 2, now=False)
        # Ready only once the reactor runs: its SIGTERM handler is installed by then, so a
        # test or script that stops the tracker as soon as it is ready gets a clean stop.
        self.reactor.callWhenRunning(self._ready)

    def _ready(self):
        if not self.running or self.port is None:
            return
        bound = self.port.getHost()
        if self.worker is not None:
            write_atomic(self.endpoint_path, f"{os.getpid()} {self.address}\n")
            log.info("peer-it tracker worker {worker} (pid {pid}) listening on {host}:{port}",
                     worker=self.worker, pid=os.getpid(), host=bound.host, port=bound.port)
            return
        write_atomic(self.endpoint_path, f"{self.address}\n")
        log.info("peer-it tracker listening on {host}:{port} (TLS), fingerprint "
                 "{fingerprint}; daemons use --tracker {tracker}",
                 host=bound.host, port=bound.port, fingerprint=self.identity.fingerprint,
                 tracker=str(self.address))

    def stopService(self):
        super().stopService()
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        try:
            os.unlink(self.endpoint_path)
        except FileNotFoundError:
            pass
        self.tracker.close_all("shutting_down", "tracker stopping")
        log.info("peer-it tracker stopping")
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()


class NatPortsService(service.Service):
    """The STUN responder's UDP ports and the relay's TCP port.

    Binds in ``privilegedStartService`` (3478 needs no privilege, but a failed bind must fail
    the start like the tracker's own port), then sets ``tracker.stun_info`` with the bound
    numbers, so port 0 works and every session's StunInfo says where things really are.
    ``stun`` is ``udp:PORT[:interface=ADDR]`` or None; ``stun_alt_port`` a port, 0 for none,
    or None for "any free port" (with ``udp:0``); ``relay`` a ``tcp:`` endpoint or None.
    """

    name = "peerit-tracker-nat"

    def __init__(self, reactor, tracker: Tracker, stun: str | None,
                 stun_alt_port: int | None, relay: str | None,
                 broker: RelayBroker | None, listen_udp=None):
        self.reactor = reactor
        # listen_udp(reactor, port, protocol, interface) -> port (workers share theirs)
        self._listen_udp = listen_udp or (
            lambda reactor, port, protocol, interface:
            reactor.listenUDP(port, protocol, interface=interface))
        self.tracker = tracker
        self.stun = stun
        self.stun_alt_port = stun_alt_port
        self.relay = relay
        self.broker = broker
        self.ports = []
        self.stun_ports: tuple[int, int] = (0, 0)
        self.relay_port = 0

    def privilegedStartService(self):
        super().privilegedStartService()
        self._bind()

    def startService(self):
        super().startService()
        if not self.ports and (self.stun or self.relay):
            self._bind()
        self.tracker.stun_info = wire.StunInfo(*self.stun_ports, self.relay_port)
        log.info("NAT traversal: STUN on udp ports {stun} and {alt}, relay on tcp port "
                 "{relay} (0 = off)", stun=self.stun_ports[0], alt=self.stun_ports[1],
                 relay=self.relay_port)

    def _bind(self):
        try:
            if self.stun:
                port, interface = parse_udp_endpoint(self.stun, "STUN endpoint")
                alternate = self.stun_alt_port != 0
                protocols = stun_protocols(self.reactor, alternate)
                primary = self._listen_udp(self.reactor, port, protocols[0], interface)
                self.ports.append(primary)
                alt_port = 0
                if alternate:
                    second = self._listen_udp(self.reactor, self.stun_alt_port or 0,
                                              protocols[1], interface)
                    self.ports.append(second)
                    alt_port = second.getHost().port
                self.stun_ports = (primary.getHost().port, alt_port)
            if self.relay:
                listening = _listen_now(self.reactor, self.relay, RelayFactory(self.broker))
                self.ports.append(listening)
                self.relay_port = listening.getHost().port
                log.info("peer-it relay listening on tcp {host}:{port}",
                         host=listening.getHost().host, port=self.relay_port)
        except BaseException:
            for port in self.ports:
                port.stopListening()
            self.ports = []
            raise

    def stopService(self):
        super().stopService()
        if self.broker is not None:
            self.broker.close_all()
        ports, self.ports = self.ports, []
        return gatherResults([maybeDeferred(p.stopListening) for p in ports])
