"""The daemon's NAT side, composed: one UDP socket, STUN, hole punching, QUIC and the relay,
as paths (docs/nat-protocol.md is the contract with the tracker).

:class:`NatManager` wires four parts, each with one job, and is what the daemon talks to:

- :mod:`~peerit.daemon.nat.socket_pool`: the main UDP socket (``--udp``, default any port,
  a :class:`~peerit.nat.udp.UdpMux` sending STUN answers, punch probes and QUIC each their
  way) and the birthday sockets;
- :mod:`~peerit.daemon.nat.public_address`: the public address and NAT type (netcheck, the
  STUN keep-alive, ``NatReport`` to the trackers);
- :mod:`~peerit.daemon.nat.path_dialer`: punched QUIC and relay candidates for the daemon's
  ``Race``, their start times one table;
- :mod:`~peerit.daemon.nat.tracker_push`: the tracker's pushes, and accepting the paths
  other peers open.

Every wait is bounded: the tracker's answer to a request, the punch (its deadline), the QUIC
handshake (``QuicSettings.handshake_timeout``), the relay connect and the peer link's own
handshake timeout. All I/O goes through injected callables (``listen_udp``, ``connect_tcp``)
and the reactor's clock, so the unit tests run it on a simulated NAT and in-memory TCP.
"""

import random
from typing import Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.logger import Logger

from peerit.daemon.connector import Candidate
from peerit.daemon.nat.path_dialer import PathDialer
from peerit.daemon.nat.public_address import PublicAddress
from peerit.daemon.nat.socket_pool import SocketPool
from peerit.daemon.nat.tracker_push import TrackerPushHandler
from peerit.endpoints import parse_udp_endpoint
from peerit.errors import UsageError
from peerit.nat import netcheck as nc
from peerit.nat import punch
from peerit.nat.quic import QuicSettings

log = Logger()

Address = tuple[str, int]

PATHS = ("tcp", "quic", "relay")
CONNECT_TIMEOUT = 10  # the relay's TCP connect


def parse_paths(spec: str) -> frozenset[str]:
    """``tcp,quic,relay`` (any subset) -> the set of paths the daemon may dial."""
    paths = frozenset(p.strip() for p in spec.split(",") if p.strip())
    unknown = paths - set(PATHS)
    if unknown or not paths:
        raise UsageError(f"--paths takes a comma list of {', '.join(PATHS)}, not {spec!r}")
    return paths


class NatManager:
    """The daemon's NAT side (see the module docstring).

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
                 listen_udp=None, connect_tcp=None, resolve=None):
        self.reactor = reactor
        self.clock = reactor
        self.identity = identity
        self.paths = frozenset(paths)
        self._udp_port, interface = parse_udp_endpoint(udp, "--udp")
        connect_tcp = connect_tcp or self._default_connect_tcp
        self.coordinator = punch.PunchCoordinator()
        self.sockets = SocketPool(reactor, identity, quic_settings, self.coordinator,
                                  listen_udp or reactor.listenUDP, interface)
        self.public = PublicAddress(reactor, self.sockets, trackers=trackers,
                                    stun_server=stun_server, local_hosts=local_hosts,
                                    resolve=resolve or getattr(reactor, "resolve", None))
        self.dialer = PathDialer(reactor, rng or random.SystemRandom(), identity,
                                 paths=self.paths, pool=self.sockets,
                                 coordinator=self.coordinator, public=self.public,
                                 swarm_trackers=swarm_trackers, connect_tcp=connect_tcp)
        self.pushes = TrackerPushHandler(reactor, identity, paths=self.paths,
                                         trackers=trackers, public=self.public,
                                         dialer=self.dialer, pool=self.sockets,
                                         inbound_link=inbound_link, connect_tcp=connect_tcp)
        self._running = False

    @property
    def udp_port(self) -> int:
        """The main socket's local port (``Hello.udp_port``); 0 before start."""
        return self.public.udp_port

    @property
    def mapping(self) -> str:
        """Our NAT mapping behaviour as the punch sees it: independent, dependent, unknown."""
        return self.public.mapping

    @property
    def report(self) -> nc.NetcheckReport | None:
        return self.public.report

    def start(self) -> None:
        """Open the UDP socket (raises ``PeeritError`` if it cannot) and schedule the first
        netcheck."""
        main = self.sockets.open_main(self._udp_port)
        self.public.start(main)
        self.dialer.running = self.pushes.running = True
        self._running = True
        log.info("UDP socket for STUN, punching and QUIC on port {port}", port=self.udp_port)

    def stop(self) -> None:
        """Cancel every attempt and wait, close every socket; idempotent."""
        if not self._running:
            return
        self._running = False
        self.public.cancel_first_check()
        self.sockets.stop_sweep()
        self.coordinator.cancel_all()
        self.dialer.stop()
        self.pushes.stop()
        self.public.stop()
        self.sockets.close_all()

    def check(self) -> Deferred:
        """Measure the NAT now (or join the measurement running); fires with the report."""
        return self.public.check()

    def netcheck(self) -> Deferred:
        """For ``peerit-ctl netcheck`` (:meth:`PublicAddress.netcheck`)."""
        return self.public.netcheck()

    def handle_push(self, message, tracker=None) -> bool:
        """A tracker push; True when it was ours (:meth:`TrackerPushHandler.handle_push`)."""
        return self.pushes.handle_push(message, tracker)

    def candidates(self, info_hash: bytes, peer_info, make_link) -> list[Candidate]:
        """Punched QUIC and relay candidates for the daemon's race towards ``peer_info``."""
        return self.dialer.candidates(info_hash, peer_info, make_link)

    def _default_connect_tcp(self, host: str, port: int, factory) -> Deferred:
        return HostnameEndpoint(self.reactor, host, port,
                                timeout=CONNECT_TIMEOUT).connect(factory)
