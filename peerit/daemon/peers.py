"""The daemon's peer links: the TLS listener for inbound links, and the race that dials a
peer over every path it may be reached on.

A child service of the daemon. Links ask ``router`` (the transfers registry, an
:class:`~peerit.daemon.peer_session.IPeerRouter`) which swarm they join and whether the
peer may. The punched-QUIC and relayed paths come from ``udp_paths`` (the NAT side; None
when the daemon has no UDP socket).
"""

from typing import Callable

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.protocol import Factory

from peerit import tls
from peerit.addresses import format_host_port
from peerit.daemon.connector import Candidate, Race, link_attempt
from peerit.daemon.node import Node
from peerit.daemon.peer_session import IPeerRouter
from peerit.daemon.peerlink import PeerLink
from peerit.endpoints import tcp_description


class PeerLinks(service.Service):
    name = "peers"

    def __init__(self, reactor, node: Node, router: IPeerRouter, listen: str = "tcp:0",
                 paths=("tcp", "quic", "relay"), udp_paths: Callable[[], object] = None):
        self.reactor = reactor
        self.node = node
        self.router = router
        self.listen_spec = listen
        self.paths = frozenset(paths)
        self._udp_paths = udp_paths or (lambda: None)
        self.listen_port = 0
        self._port = None

    def startService(self):
        super().startService()
        return defer.ensureDeferred(self._listen())

    async def _listen(self):
        factory = Factory()
        factory.buildProtocol = lambda addr: self.inbound_link("tcp")
        endpoint = endpoints.serverFromString(self.reactor, tcp_description(self.listen_spec))
        self._port = await endpoint.listen(tls.server_factory(self.node.identity, factory))
        self.listen_port = self._port.getHost().port

    def stopService(self):
        super().stopService()
        if self._port is not None:
            return self._port.stopListening()

    def inbound_link(self, path: str) -> PeerLink:
        """A link the other side opened (here, through a punched hole, or a relay)."""
        return PeerLink(self.router, self.reactor, self.node.peer_id, path=path)

    def connect_peer(self, info_hash: bytes, info) -> defer.Deferred:
        """Race the peer's paths: direct TCP (LAN first, then public), then punched QUIC
        and the relay (their start times are the NAT manager's; docs/nat-protocol.md)."""
        seen, candidates = set(), []
        tcp = [(h, "lan") for h in info.lan_addresses] + [(info.public_address, "public")]
        for host, kind in tcp if "tcp" in self.paths else []:
            if not host or (host, info.tcp_port) in seen or not info.tcp_port:
                continue
            seen.add((host, info.tcp_port))
            candidates.append(Candidate(
                f"tcp {format_host_port(host, info.tcp_port)} ({kind})",
                lambda host=host: self._tcp_attempt(info_hash, info.peer_id, host,
                                                    info.tcp_port)))
        nat = self._udp_paths()
        if nat is not None:
            def make_link(path, on_ready, on_failed):
                return PeerLink(self.router, self.reactor, self.node.peer_id,
                                info_hash=info_hash, expected_peer_id=info.peer_id, path=path,
                                on_ready=on_ready, on_failed=on_failed)
            candidates += nat.candidates(info_hash, info, make_link)
        return Race(self.reactor, candidates).run()

    def _tcp_attempt(self, info_hash: bytes, peer_id: bytes, host: str, port: int):
        endpoint = tls.TLSClientEndpoint(
            tls.PinnedClientTLS(self.node.identity, peer_id),
            endpoints.HostnameEndpoint(self.reactor, host, port, timeout=10))

        def make_link(on_ready, on_failed):
            return PeerLink(self.router, self.reactor, self.node.peer_id,
                            info_hash=info_hash, expected_peer_id=peer_id, path="tcp",
                            on_ready=on_ready, on_failed=on_failed)
        return link_attempt(endpoint.connect, make_link)
