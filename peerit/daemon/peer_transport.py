"""The one interface a peer session writes to, whatever carries it (TCP+TLS, QUIC, relay).

Each adapter binds the underlying transport's own methods as its attributes: a block written
by the upload pump costs no extra call on the way to the socket (the data path was tuned:
see ``peerit.daemon.peerlink``).
"""

from twisted.internet.interfaces import ITransport
from zope.interface import Attribute, Interface, implementer

from peerit.tls import peer_id_of_transport


class IPeerTransport(Interface):
    """An authenticated, ordered byte stream to one peer."""

    path = Attribute("How the stream is carried: 'tcp', 'quic' or 'relay'.")
    remote = Attribute("The other end as 'host:port', for logs and status.")
    proven_at_start = Attribute(
        "True when the peer's identity is proven before any byte (QUIC, whose handshake "
        "is done when the stream opens); False when a TLS handshake still has to finish.")

    def proven_peer_id():
        """The peer id the transport's handshake proved, or None."""

    def write(data):
        """Queue bytes."""

    def writeSequence(data):
        """Queue a list of byte strings (header + body without joining them)."""

    def registerProducer(producer, streaming):
        """Pause/resume ``producer`` as the send buffer fills and drains."""

    def unregisterProducer():
        """Stop calling the producer (TLS closes only once none is registered)."""

    def loseConnection():
        """Close once the send buffer is empty."""

    def abortConnection():
        """Close now, dropping what is buffered."""


def _remote_of(transport) -> str:
    peer = transport.getPeer()
    return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"


class _Bound:
    def __init__(self, transport: ITransport, path: str):
        self.transport = transport
        self.path = path
        self.remote = _remote_of(transport)
        # Bound once: an uploaded block reaches the real transport with no frame in between.
        self.writeSequence = transport.writeSequence
        self.registerProducer = transport.registerProducer
        self.unregisterProducer = transport.unregisterProducer
        self.loseConnection = transport.loseConnection
        self.abortConnection = transport.abortConnection
        # Requests are small and latency-bound: never let Nagle hold them back.
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)

    def write(self, data) -> None:
        # Looked up at each call: Twisted's TLS transport swaps its ``write`` when the
        # connection is lost. Only small messages come this way.
        self.transport.write(data)


@implementer(IPeerTransport)
class TlsStream(_Bound):
    """TLS over a TCP connection, direct or spliced by a tracker's relay: the identity is the
    certificate the TLS handshake proves."""

    proven_at_start = False

    def proven_peer_id(self) -> bytes | None:
        return peer_id_of_transport(self.transport)


@implementer(IPeerTransport)
class ProvenStream(_Bound):
    """A stream whose identity was proven before it opened (a QUIC stream: the QUIC
    handshake pinned the certificate); the transport carries it as ``peer_id``."""

    proven_at_start = True

    def proven_peer_id(self) -> bytes | None:
        return self.transport.peer_id


def peer_transport(transport: ITransport, path: str) -> IPeerTransport:
    """The adapter for a transport Twisted handed a peer link."""
    if getattr(transport, "peer_id", None) is not None:
        return ProvenStream(transport, path)
    return TlsStream(transport, path)
