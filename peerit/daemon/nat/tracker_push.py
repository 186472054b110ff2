"""What the tracker pushes to the daemon's NAT side: ``StunInfo``, ``Punch``, ``RelayOffer``,
and ``Error`` refusing one of our requests.

Answers to our own requests go to the :class:`~peerit.daemon.nat.path_dialer.PathDialer`
waiting for them. A ``Punch`` we did not ask for runs the attempt (controlled) and arms
``QuicEndpoint.accept_from`` on the confirmed path; a ``RelayOffer`` we did not ask for
connects to the relay as TLS server. Either hands an inbound peer link over
(``inbound_link(path)``) that authorizes the peer and joins its swarm by itself, like an
inbound TCP link.
"""

from typing import Callable, Iterable

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from peerit.daemon.nat.path_dialer import MAPPING_WAIT, PathDialer
from peerit.daemon.nat.public_address import PublicAddress
from peerit.daemon.nat.relay_client import accept_through_relay, relay_address
from peerit.daemon.nat.socket_pool import SocketPool
from peerit.nat import punch
from peerit.wire import tracker as wire

log = Logger()


class TrackerPushHandler:
    """Routes the NAT pushes of the daemon's tracker sessions (``trackers()``) and accepts the
    paths other peers open to us."""

    def __init__(self, clock, identity, *, paths: Iterable[str],
                 trackers: Callable[[], Iterable], public: PublicAddress,
                 dialer: PathDialer, pool: SocketPool,
                 inbound_link: Callable[[str], object], connect_tcp):
        self.clock = clock
        self.identity = identity
        self.paths = frozenset(paths)
        self._trackers = trackers
        self._public = public
        self._dialer = dialer
        self._pool = pool
        self._inbound_link = inbound_link
        self._connect_tcp = connect_tcp
        self._accepting: set[Deferred] = set()
        self.running = False

    def stop(self) -> None:
        self.running = False
        for d in list(self._accepting):
            d.cancel()

    def handle_push(self, message, tracker=None) -> bool:
        """A tracker push; True when it was ours (StunInfo, Punch, RelayOffer, or an Error
        refusing one of our requests). ``tracker`` is the address of the tracker it came
        from (the relay runs on that host unless the offer names another)."""
        if not self.running:
            return False
        kind = type(message)
        if kind is wire.StunInfo:
            client = self._client_for(tracker)
            if client is not None:
                self._public.stun_info(message, client)
            return True
        if kind is wire.Punch:
            self._punch_received(message)
            return True
        if kind is wire.RelayOffer:
            self._relay_offer_received(message, tracker)
            return True
        if kind is wire.Error:
            return self._dialer.refused(message)
        return False

    def _client_for(self, tracker):
        clients = list(self._trackers())
        if tracker is None:
            return clients[0] if clients else None
        for client in clients:
            if client is tracker or client.tracker == tracker:
                return client
        return None

    def _punch_received(self, message) -> None:
        if message.controlling:
            self._dialer.punch_answered(message)
            return
        if "quic" not in self.paths:
            return
        started = self.clock.seconds()

        def start(_):
            if not self.running:
                return
            path_found = Deferred()
            self._dialer.start_attempt(message, path_found)
            path_found.addCallback(self._accept_quic, message.peer_id, started)
            path_found.addErrback(lambda f: log.info(
                "punch from {peer} (we accept): {why}", peer=message.peer_id.hex()[:12],
                why=f.getErrorMessage()))
        # As on the dialing side, our plan depends on our mapping (bounded wait).
        self._public.mapping_known(MAPPING_WAIT).addCallback(start)

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
            self._pool.watch(sock)
            if isinstance(result, Failure) and not result.check(CancelledError):
                log.info("QUIC from {peer} on the punched path: {why}",
                         peer=peer_id.hex()[:12], why=result.getErrorMessage())
            return None
        d.addBoth(done)

    def _relay_offer_received(self, message, tracker) -> None:
        if message.initiator:
            self._dialer.relay_offered(message)
            return
        client = self._client_for(tracker)
        if client is None:
            return
        started = self.clock.seconds()

        def build():
            link = self._inbound_link("relay")
            link.connect_seconds = self.clock.seconds() - started
            return link
        host, port = relay_address(message, client.tracker.host)
        d = accept_through_relay(self._connect_tcp, host, port, message.token,
                                 self.identity, build, clock=self.clock)
        self._accepting.add(d)

        def done(result):
            self._accepting.discard(d)
            if isinstance(result, Failure) and not result.check(CancelledError):
                log.info("relay offer from {peer}: {why}", peer=message.peer_id.hex()[:12],
                         why=result.getErrorMessage())
            return None
        d.addBoth(done)
