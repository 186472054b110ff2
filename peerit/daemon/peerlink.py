"""A peer link: the Twisted protocol that feeds a :class:`PeerSession` on one stream.

Thin adapter: it wraps the transport it is given (TCP+TLS, QUIC stream, relay) in the
:class:`~peerit.daemon.peer_transport.IPeerTransport` the session writes to, forwards bytes,
the TLS handshake's completion and the loss of the connection, and is the transport's push
producer so that uploads follow its back-pressure (a slow peer never makes us buffer more
than the transport's own buffer). The protocol logic is all in ``peer_session``.
"""

from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from peerit.daemon.peer_session import IPeerRouter, PeerSession
from peerit.daemon.peer_transport import peer_transport
from peerit.shims import twisted_tcp

# Twisted's TCP transport reads up to bufferSize per doRead, pauses its producer (us)
# when more than bufferSize waits to be sent, and sends at most SEND_LIMIT per doWrite
# (defaults 64 KiB and 128 KiB). A 256 KiB block then meant a pause/resume cycle and two
# reactor turns per block. Measured with bench_transfer (CPU of all daemons, 2 runs each):
# 512 MiB 1->1: 3.95/3.45 s with 256 KiB / 128 KiB, 3.40/2.57 with 1 MiB / 512 KiB,
# 2.75/3.10 with 2 MiB / 1 MiB; 1+8 swarm 128 MiB: 12.5 s -> 8.5 (1 MiB) / 8.2 (2 MiB), but
# 2 MiB took a swarm downloader's peak RSS to 99 MiB (84 with 1 MiB). Held per link at most
# ~bufferSize + one block; only unchoked links (4 + 1) upload.
TCP_BUFFER = 1 << 20
TCP_SEND_LIMIT = 1 << 20


@implementer(IHandshakeListener, IPushProducer)
class PeerLink(Protocol):
    """One link; ``router`` resolves swarms and authorizes peers. The arguments are the
    :class:`PeerSession`'s, which is ``self.session``."""

    def __init__(self, router: IPeerRouter, clock, my_peer_id: bytes,
                 info_hash: bytes | None = None, expected_peer_id: bytes | None = None,
                 path: str = "tcp", on_ready=None, on_failed=None):
        self.session = PeerSession(router, clock, my_peer_id, info_hash, expected_peer_id,
                                   path, on_ready, on_failed)
        # The data path goes straight to the session: no extra call per read. The TLS
        # layer (peerit.tls.DirectTLS) decrypts into get_buffer()'s memory and reports the
        # bytes with buffer_updated(); other transports call dataReceived.
        self.dataReceived = self.session.data_received
        self.get_buffer = self.session.decoder.get_buffer
        self.buffer_updated = self.session.buffer_updated

    def connectionMade(self):
        self.transport.registerProducer(self, True)
        # Bulk data: bigger reads, writes and sends per reactor turn (see TCP_BUFFER).
        tcp = getattr(self.transport, "transport", None)
        if tcp is not None and hasattr(tcp, "bufferSize"):
            tcp.bufferSize = TCP_BUFFER
            twisted_tcp.set_send_limit(tcp, TCP_SEND_LIMIT)
        self.session.connected(peer_transport(self.transport, self.session.path))

    def handshakeCompleted(self):
        self.session.secured()

    def connectionLost(self, reason):
        self.session.connection_lost(reason.getErrorMessage())

    # Those who dial or accept links (the connection race, the NAT paths) hold the protocol.
    def close(self, reason: str) -> None:
        self.session.close(reason)

    @property
    def connect_seconds(self) -> float:
        return self.session.connect_seconds

    @connect_seconds.setter
    def connect_seconds(self, seconds: float) -> None:
        self.session.connect_seconds = seconds

    # IPushProducer: the transport tells us when its buffer is full and when it drained.
    def pauseProducing(self):
        self.session.pause_producing()

    def resumeProducing(self):
        self.session.resume_producing()

    def stopProducing(self):
        self.session.pause_producing()
