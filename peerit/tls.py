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
from twisted.protocols.tls import TLSMemoryBIOFactory
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


def server_factory(identity: Identity, wrapped_factory, clock=None) -> TLSMemoryBIOFactory:
    """``clock``: Twisted's TLS layer batches writes with callLater(0); tests pass theirs."""
    return TLSMemoryBIOFactory(IdentityServerTLS(identity), False, wrapped_factory,
                               clock=clock)


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
