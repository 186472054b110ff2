"""The daemon's UDP side: one socket for STUN, hole punching, QUIC and relay setup.

A child service of the daemon around the :class:`NatManager`. It starts before the tracker
sessions (their Hello carries the UDP port) and gives the peer links their punched and
relayed paths.
"""

from typing import Callable, Iterable

from twisted.application import service
from twisted.internet import defer

from peerit.errors import PeeritError
from peerit.daemon.nat.manager import NatManager
from peerit.nat.quic import QuicSettings


class UdpPaths(service.Service):
    """``trackers()`` lists the tracker sessions, ``swarm_trackers(info_hash)`` those of one
    swarm, ``inbound_link(path)`` makes an accepting peer link, ``local_hosts()`` gives
    our own addresses (see :class:`NatManager`)."""

    name = "udp"

    def __init__(self, reactor, node, *, udp: str, trackers: Callable[[], Iterable],
                 swarm_trackers: Callable[[bytes], Iterable],
                 inbound_link: Callable[[str], object], stun_server=None,
                 paths=("tcp", "quic", "relay"), quic_datagram_size: int = 1200, rng=None):
        self.reactor = reactor
        self.node = node
        self.udp_spec = udp
        self._trackers = trackers
        self._swarm_trackers = swarm_trackers
        self._inbound_link = inbound_link
        self.stun_server = stun_server
        self.paths = frozenset(paths)
        self.quic_datagram_size = quic_datagram_size
        self.rng = rng
        self.nat: NatManager | None = None

    def startService(self):
        super().startService()
        self.nat = NatManager(
            self.reactor, self.node.identity, trackers=self._trackers,
            swarm_trackers=self._swarm_trackers, inbound_link=self._inbound_link,
            udp=self.udp_spec, stun_server=self.stun_server,
            local_hosts=self.node.addresses,
            quic_settings=QuicSettings(max_datagram_size=self.quic_datagram_size),
            paths=self.paths, rng=self.rng)
        self.nat.start()

    def stopService(self):
        super().stopService()
        if self.nat is not None:
            self.nat.stop()

    @property
    def udp_port(self) -> int:
        return self.nat.udp_port if self.nat is not None else 0

    def netcheck(self) -> defer.Deferred:
        """The NAT as STUN sees it (a dict, see NatManager)."""
        if self.nat is None:
            return defer.fail(PeeritError(
                "this daemon has no UDP socket to check (start it with --udp)"))
        return self.nat.netcheck()

    def handle_push(self, message, tracker) -> bool:
        """True if ``message`` was the NAT side's (a punch or relay offer)."""
        return self.nat is not None and self.nat.handle_push(message, tracker)

    def candidates(self, info_hash: bytes, peer_info, make_link) -> list:
        return self.nat.candidates(info_hash, peer_info, make_link) if self.nat else []
