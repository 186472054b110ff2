"""TLS for every peer-it link (pyOpenSSL): both sides show their identity, keys are pinned.

Certificates are self-signed, so chain validation means nothing here; what matters is the key.
The client pins the key it expects (the tracker's fingerprint, or the peer id the tracker
announced) inside the verify callback, so a mismatch fails the handshake itself. The server
accepts any key and reads the proven peer id from the session afterwards
(:func:`peer_id_of_transport`), binding everything that session says to it.
"""

from OpenSSL import SSL
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator)
from collections import OrderedDict

from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from zope.interface import implementer

from peerit.identity import Identity, peer_id_of_certificate


def _context(identity: Identity, expected_peer_id: bytes | None) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.use_certificate(identity.certificate)
    ctx.use_privatekey(identity.key)
    ctx.check_privatekey()
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_TICKET)

    def verify(conn, cert, errno, depth, ok):
        if depth != 0:
            return False  # peers send a bare self-signed leaf, never a chain
        if expected_peer_id is None:
            return True
        return peer_id_of_certificate(cert) == expected_peer_id

    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
    return ctx


@implementer(IOpenSSLClientConnectionCreator)
class PinnedClientTLS:
    """Client side: present ``identity``; accept only a server proving ``expected_peer_id``."""

    def __init__(self, identity: Identity, expected_peer_id: bytes):
        self._ctx = _context(identity, expected_peer_id)

    def clientConnectionForTLS(self, tlsProtocol):
        conn = SSL.Connection(self._ctx, None)
        conn.set_app_data(tlsProtocol)
        conn.set_connect_state()
        return conn


@implementer(IOpenSSLServerConnectionCreator)
class IdentityServerTLS:
    """Server side: present ``identity``; require a client certificate, any key."""

    def __init__(self, identity: Identity):
        self._ctx = _context(identity, None)

    def serverConnectionForTLS(self, tlsProtocol):
        conn = SSL.Connection(self._ctx, None)
        conn.set_app_data(tlsProtocol)
        conn.set_accept_state()
        return conn


class HandshakeGate:
    """Bounds the TLS handshakes a listener has in progress, in all and per source address.

    A handshake costs ~40 KiB before anything is proven, so thousands of connections that
    never finish one would grow memory until their timeouts. At a cap the *oldest* pending
    handshake from that source (or anywhere) is dropped rather than the newcomer refused:
    an honest client finishes in milliseconds, so an attacker holding slots cannot lock it out.
    """

    def __init__(self, total: int = 512, per_source: int = 16):
        self.total = total
        self.per_source = per_source
        self._pending: OrderedDict = OrderedDict()  # protocol -> source, oldest first
        self._by_source: dict[str, int] = {}
        self.evicted = 0

    def admit(self, protocol, source: str) -> None:
        if self._by_source.get(source, 0) >= self.per_source:
            self._evict(next(p for p, s in self._pending.items() if s == source))
        if len(self._pending) >= self.total:
            self._evict(next(iter(self._pending)))
        self._pending[protocol] = source
        self._by_source[source] = self._by_source.get(source, 0) + 1

    def release(self, protocol) -> None:
        source = self._pending.pop(protocol, None)
        if source is not None:
            left = self._by_source[source] - 1
            if left:
                self._by_source[source] = left
            else:
                del self._by_source[source]

    def _evict(self, protocol) -> None:
        self.release(protocol)
        self.evicted += 1
        if protocol.transport is not None:
            protocol.transport.abortConnection()

    @property
    def pending(self) -> int:
        return len(self._pending)


class _GatedTLSProtocol(BufferingTLSTransport):
    def makeConnection(self, transport):
        host = getattr(transport.getPeer(), "host", "?")
        self.factory.gate.admit(self, host)
        super().makeConnection(transport)

    def dataReceived(self, data):
        super().dataReceived(data)
        # Twisted's own flag (stable since TLSMemoryBIOProtocol exists): the handshake is
        # over, this connection no longer counts against the gate.
        if self._handshakeDone:
            self.factory.gate.release(self)

    def connectionLost(self, reason):
        self.factory.gate.release(self)
        super().connectionLost(reason)


class GatedTLSFactory(TLSMemoryBIOFactory):
    protocol = _GatedTLSProtocol

    def __init__(self, *args, gate: HandshakeGate | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = gate or HandshakeGate()


def server_factory(identity: Identity, wrapped_factory, clock=None,
                   gate: HandshakeGate | None = None) -> TLSMemoryBIOFactory:
    """``clock``: Twisted's TLS layer batches writes with callLater(0); tests pass theirs.
    Handshakes in progress are bounded by ``gate`` (a default one if not given)."""
    return GatedTLSFactory(IdentityServerTLS(identity), False, wrapped_factory,
                           clock=clock, gate=gate)


def client_factory(identity: Identity, expected_peer_id: bytes,
                   wrapped_factory, clock=None) -> TLSMemoryBIOFactory:
    return TLSMemoryBIOFactory(PinnedClientTLS(identity, expected_peer_id), True,
                               wrapped_factory, clock=clock)


def peer_id_of_transport(transport) -> bytes | None:
    """The peer id the other side proved on this TLS transport, once the handshake is done."""
    cert = transport.getPeerCertificate()
    if cert is None:
        return None
    return peer_id_of_certificate(cert)
