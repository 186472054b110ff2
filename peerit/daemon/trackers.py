"""The daemon's tracker sessions: one ``TrackerClient`` per tracker, and what they hear.

A child service of the daemon (a ``MultiService`` whose children are the sessions, one for
each ``--tracker`` and for each tracker a shared .p2p names). A session says Hello with our
ports and addresses, re-announces every running transfer when it (re)connects, and hands
what the tracker pushes to the UDP side (punch and relay offers) or to the transfer it
concerns (new peers; a refusal for load, retried later).
"""

from typing import Callable

from twisted.application import service
from twisted.logger import Logger

from peerit.addresses import TrackerAddress
from peerit.daemon.tracker_client import TrackerClient
from peerit.wire import tracker as wire

log = Logger()

ANNOUNCE_RETRY = 10.0  # seconds (plus jitter) before re-announcing after a load refusal
ANNOUNCE_OPCODE = wire.messages.opcode_of(wire.Announce)


def make_tracker_client(sessions: "TrackerSessions", address) -> TrackerClient:
    return TrackerClient(
        sessions.reactor, sessions.node.identity, address,
        hello=lambda: wire.Hello(**sessions.hello_fields()),
        announces=lambda: [wire.Announce(*a) for a in sessions.announcements(address)],
        on_push=lambda message: sessions.tracker_push(message, address))


class TrackerSessions(service.MultiService):
    """``transfers`` is the registry (``get``, ``all``); ``listen_port()`` and ``udp`` (or
    None) give what Hello tells; ``client_factory(sessions, address)`` makes a session."""

    name = "trackers"

    def __init__(self, reactor, node, transfers, *, trackers: list[TrackerAddress] = (),
                 listen_port: Callable[[], int], udp=None, rng,
                 client_factory: Callable = make_tracker_client):
        super().__init__()
        self.reactor = reactor
        self.node = node
        self.transfers = transfers
        self.addresses = list(trackers)
        self.listen_port = listen_port
        self.udp = udp
        self.rng = rng
        self.client_factory = client_factory
        self.clients: dict[TrackerAddress, object] = {}

    def startService(self):
        super().startService()
        for address in self.addresses:
            self.client(address)

    def client(self, address: TrackerAddress):
        client = self.clients.get(address)
        if client is None:
            client = self.client_factory(self, address)
            self.clients[address] = client
            client.setServiceParent(self)
        return client

    def trackers_for(self, metainfo) -> list:
        addresses = list(self.addresses)
        for address in metainfo.trackers:
            if address.fingerprint and address not in addresses:
                addresses.append(address)
        return [self.client(a) for a in addresses]

    def hello_fields(self) -> dict:
        return {"tcp_port": self.listen_port(),
                "udp_port": self.udp.udp_port if self.udp is not None else 0,
                "addresses": tuple(self.node.addresses())}

    def announcements(self, address: TrackerAddress) -> list[tuple[bytes, str, int]]:
        """What a (re)connected tracker session must hear: every active transfer.

        The session asks for this as the tracker welcomes it, so it is also the moment to
        let downloads ask that tracker for peers (once the session counts as connected)."""
        self.reactor.callLater(0, self._session_up, address)
        out = []
        for transfer in self.transfers.all():
            if transfer.swarm is not None and transfer.swarm.running and any(
                    c is self.clients.get(address) for c in transfer.trackers):
                out.append((transfer.info_hash, "started", transfer.bytes_left))
        return out

    def _session_up(self, address: TrackerAddress) -> None:
        client = self.clients.get(address)
        if client is None or not client.connected:
            return
        for transfer in self.transfers.all():
            transfer.tracker_up(client)

    def _reannounce(self, info_hash: bytes) -> None:
        transfer = self.transfers.get(info_hash)
        if transfer is not None and transfer.swarm is not None and transfer.swarm.running:
            transfer.announce("started")

    def tracker_push(self, message, tracker=None) -> None:
        if self.udp is not None and self.udp.handle_push(message, tracker):
            return
        info_hash = getattr(message, "info_hash", None)
        peer = getattr(message, "peer", None)
        transfer = self.transfers.get(info_hash)
        if (isinstance(message, wire.Error) and transfer is not None
                and message.refused_opcode == ANNOUNCE_OPCODE
                and message.code in ("rate_limited", "too_many_swarms")):
            # Refused for load, not for cause: say it again later (the session stays up).
            log.info("tracker refused announcing {t} ({code}); retrying in {s:.0f}s",
                     t=transfer.short, code=message.code, s=ANNOUNCE_RETRY)
            self.reactor.callLater(ANNOUNCE_RETRY + self.rng.random() * ANNOUNCE_RETRY,
                                   self._reannounce, info_hash)
            return
        if transfer is not None and peer is not None:
            transfer.peers_found([peer])
