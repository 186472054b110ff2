"""The tracker's TLS adapter: feeds a connection's events to its :class:`TrackerSession`.

TLS is always ours (``peerit.tls.server_factory``): the client must present a certificate,
and the key it proves is the session's peer id. This module holds no logic of its own beyond
bounding how long a closing connection may linger.
"""

from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from peerit.identity import Identity
from peerit.tls import IdentityServerTLS, peer_id_of_transport
from peerit.tracker.session import Tracker
from peerit.tracker.transport import TrackerTLSFactory

# A peer that stops reading cannot hold a closing connection open for longer than this.
CLOSE_GRACE = 5.0


@implementer(IHandshakeListener, IPushProducer)
class TrackerProtocol(Protocol):
    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self.session = None
        self._closing = None

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.session = self.tracker.open_session(self, peer.host, peer.port)
        if self.session is None:
            self.transport.abortConnection()
            return
        self.transport.registerProducer(self, True)
        # Answers are small and come one per request: without this, Nagle holds each one
        # back until the previous is acknowledged (tens of ms with delayed ACKs).
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)

    def handshakeCompleted(self):
        if self.session is not None:
            self.session.handshake_completed(peer_id_of_transport(self.transport))

    def dataReceived(self, data):
        if self.session is not None:
            self.session.data_received(data)

    def connectionLost(self, reason):
        if self._closing is not None and self._closing.active():
            self._closing.cancel()
        if self.session is not None:
            self.session.connection_lost()

    # SessionLink, for the session
    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def close(self) -> None:
        # TLS waits for a registered producer to go before it sends close_notify.
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        if self._closing is None:
            self._closing = self.tracker.clock.callLater(CLOSE_GRACE, self.abort)

    def abort(self) -> None:
        self.transport.abortConnection()

    # IPushProducer: the transport says when its send buffer fills and drains. A peer that
    # does not read its answers gets no new ones: stop reading its requests until it does.
    def pauseProducing(self):
        if self.session is not None:
            self.session.producer_paused()
        self.transport.pauseProducing()

    def resumeProducing(self):
        if self.session is not None:
            self.session.producer_resumed()
        self.transport.resumeProducing()

    def stopProducing(self):
        pass


class TrackerFactory(Factory):
    """Plain factory of :class:`TrackerProtocol`; wrap it with :func:`tls_factory`."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def buildProtocol(self, addr):
        protocol = TrackerProtocol(self.tracker)
        protocol.factory = self
        return protocol


def tls_factory(identity: Identity, tracker: Tracker):
    """What the tracker listens with: our TLS around :class:`TrackerFactory`.

    Same as ``peerit.tls.server_factory`` (handshakes bounded the same way) but with the
    tracker's write path (``peerit.tracker.transport``), on the tracker's clock: writes
    outside a read are gathered with ``callLater(0)``, which must run on the injected clock
    in tests. Idle sessions hold no TLS buffers (``release_buffers``).
    """
    return TrackerTLSFactory(IdentityServerTLS(identity, release_buffers=True), False,
                             TrackerFactory(tracker), tracker.clock)
