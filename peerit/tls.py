"""TLS for every peer-it link (pyOpenSSL): both sides show their identity, keys are pinned.

Certificates are self-signed, so chain validation means nothing here; what matters is the key.
The client pins the key it expects (the tracker's fingerprint, or the peer id the tracker
announced) inside the verify callback, so a mismatch fails the handshake itself. The server
accepts any key and reads the proven peer id from the session afterwards
(:func:`peer_id_of_transport`), binding everything that session says to it.
"""

from collections import OrderedDict

from OpenSSL import SSL
from twisted.internet import tcp
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator, IStreamClientEndpoint)
from twisted.protocols.tls import (
    BufferingTLSTransport, TLSMemoryBIOFactory, TLSMemoryBIOProtocol)
from twisted.python.failure import Failure
from zope.interface import implementer

from peerit.identity import Identity, peer_id_of_certificate
from peerit.shims.openssl import binding_has, ffi as _ffi, lib as _lib

# SSL_read into a caller's buffer (pyOpenSSL's own recv allocates a buffer and copies out of
# it for every record); tests/unit/test_tls.py fails if the direct path is not taken.
_DIRECT_READ = binding_has("SSL_read", "SSL_write", "BIO_get_mem_data", "SSL_get_error",
                           "SSL_ERROR_WANT_READ")
_WANT_READ = _lib.SSL_ERROR_WANT_READ if _DIRECT_READ else None


TLS13_CIPHERSUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


def _context(identity: Identity, expected_peer_id: bytes | None) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.use_certificate(identity.certificate)
    ctx.use_privatekey(identity.key)
    ctx.check_privatekey()
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_TICKET)
    # AES-128-GCM first (OpenSSL's default puts AES-256 first): 2.85 against 2.16 GB/s here
    # (`openssl speed -evp`), and TLS record crypto is a fifth of a bulk receiver's CPU.
    # Still a TLS 1.3 AEAD with 128-bit security; both ends are ours, so this one is used.
    ctx.set_tls13_ciphersuites(TLS13_CIPHERSUITES)

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
    """Server side: present ``identity``; require a client certificate, any key.

    ``release_buffers``: OpenSSL frees a connection's read and write buffers whenever they
    are empty. For a server holding thousands of mostly idle sessions (the tracker) that is
    55 -> 33 KiB per session with no measurable CPU cost (docs/tracker.md); bulk peer links
    keep theirs, since they are never empty for long.
    """

    def __init__(self, identity: Identity, release_buffers: bool = False):
        self._ctx = _context(identity, None)
        if release_buffers:
            self._ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)

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


RECORD = 2 ** 14  # TLS plaintext per record
LARGE_WRITE = 64 * 1024  # writes from this size skip the small-write aggregator
# Sealed records are read out of OpenSSL's memory BIO into this reused buffer (reactor
# thread only) and sent from it; only what the kernel does not take is copied. pyOpenSSL's
# bio_read allocated a fresh buffer and a fresh bytes per flush (page faults on every
# block's 256 KiB, twice): a third of a seeder's reactor thread in the 1 seeder + 8
# downloaders benchmark. Holds a 1 MiB block's records; more pending goes through bio_read.
CIPHERTEXT_BUFFER = (1 << 20) + (64 << 10)
_ciphertext = None  # allocated at first use, not zeroed: only the pages used are touched


class DirectTLS(BufferingTLSTransport):
    """Twisted's TLS transport without its per-record copies, for bulk peer links.

    Receiving: a protocol that offers ``get_buffer() -> writable memoryview`` and
    ``buffer_updated(nbytes)`` (the shape of asyncio's BufferedProtocol) gets each record's
    plaintext written in place by ``SSL_read``: a peer link's block payload lands in the
    block's buffer. Twisted's path allocates a 32 KiB buffer per record, copies the
    plaintext into a new ``bytes``, and the frame decoder copies it once more. Other
    protocols get Twisted's path unchanged.

    Sending: records are sealed from memoryview slices of the caller's buffer, and the
    ciphertext of a whole write is read out of the BIO and handed to TCP in one piece.
    Twisted's path joins a write sequence (a copy), slices ``bytes`` per record (a copy
    each) and moves each record's ciphertext separately. A large ``writeSequence``
    (header + block) is written part by part instead of joined.

    Both use pyOpenSSL's cffi binding (``_DIRECT_READ``); without it, Twisted's paths.
    """

    direct_reads = 0  # records delivered in place (tests check the paths are taken)
    direct_writes = 0
    _direct_send = False  # set by makeConnection: the transport is Twisted's TCP

    def writeSequence(self, sequence):
        if not _DIRECT_READ or sum(map(len, sequence)) < LARGE_WRITE:
            return super().writeSequence(sequence)
        self._aggregator.flush()  # what was written before goes first
        if self.disconnecting and self._producer is None:
            return  # as TLSMemoryBIOProtocol.write: nothing after loseConnection
        parts = list(sequence)
        head = parts[:-1]
        lead = sum(map(len, head))
        if head and lead < RECORD:
            # The small parts before the payload (frame and block headers) ride in its first
            # record: not records of their own, each read out and sent on its own (three
            # sends per block), and a 16 KiB copy at most.
            payload = memoryview(parts[-1])
            take = RECORD - lead
            parts = [b"".join([*head, payload[:take]]), payload[take:]]
        for part in parts:
            if self._appSendBuffer:  # OpenSSL wants a read first: keep the order
                self._bufferedWrite(bytes(part))
            elif not self._seal(part):
                return
        self._flushSendBIO()  # the whole sequence's records in one send

    def _write(self, data):
        if not _DIRECT_READ:
            return super()._write(data)
        if self._seal(data):
            self._flushSendBIO()

    def _seal(self, data) -> bool:
        """Seal ``data`` into records in the send BIO (not flushed); False if the connection
        is gone or failed (nothing to send)."""
        if self._lostTLSConnection:
            return False
        connection = self._tlsConnection
        ssl = connection._ssl
        view = memoryview(data)
        total = len(view)
        done = 0
        while done < total:
            chunk = view[done:done + RECORD]
            result = _lib.SSL_write(ssl, _ffi.from_buffer(chunk), len(chunk))
            if result > 0:
                done += result
                continue
            try:
                connection._raise_ssl_error(ssl, result)
            except SSL.WantReadError:
                self._bufferedWrite(bytes(view[done:]))  # as Twisted: resent after a read
                break
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
                return False
        self.direct_writes += 1
        return True

    def _flushSendBIO(self):
        # All pending ciphertext in one piece (Twisted reads at most 32 KiB per call into a
        # fresh 32 KiB buffer), read into the reused CIPHERTEXT_BUFFER.
        global _ciphertext
        if not _DIRECT_READ:
            return super()._flushSendBIO()
        connection = self._tlsConnection
        bio = connection._from_ssl
        pending = _lib.BIO_get_mem_data(bio, _ffi.NULL)
        if pending <= 0:
            return
        if pending > CIPHERTEXT_BUFFER:
            self._send(connection.bio_read(pending))
            return
        if _ciphertext is None:
            _ciphertext = _ffi.new_allocator(should_clear_after_alloc=False)(
                "char[]", CIPHERTEXT_BUFFER)
        got = _lib.BIO_read(bio, _ciphertext, pending)
        if got <= 0:  # cannot happen with data pending; pyOpenSSL's path names the error
            self._send(connection.bio_read(pending))
            return
        self._send(memoryview(_ffi.buffer(_ciphertext, got)))

    def makeConnection(self, transport):
        # Sending without a poll needs Twisted's TCP connection (its send queue is checked
        # first); anything else (in-memory test transports, a relay's preamble wrapper)
        # gets every byte through write().
        self._direct_send = isinstance(transport, tcp.Connection)
        super().makeConnection(transport)

    def _send(self, data) -> None:
        """Sealed records to TCP: at once when nothing is queued before them (keeps the
        order, saves Twisted's join of its queue, a copy of every byte, and a reactor
        turn); only what the kernel does not take goes through write(), copied (``data``
        may be the reused ciphertext buffer)."""
        transport = self.transport
        if (self._direct_send and not transport._tempDataLen and not transport.dataBuffer
                and transport.connected and not transport.disconnecting):
            # writeSomeData returns what the kernel took (0 if it would block), or an
            # exception instance if the connection is gone: then write() queues it all and
            # the reactor's own write path reports the loss.
            sent = transport.writeSomeData(data)
            if sent.__class__ is int:
                if sent == len(data):
                    return
                data = data[sent:]
        transport.write(bytes(data))

    def _flushReceiveBIO(self):
        get_buffer = getattr(self.wrappedProtocol, "get_buffer", None)
        if get_buffer is None or not _DIRECT_READ:
            return super()._flushReceiveBIO()
        connection = self._tlsConnection
        ssl = connection._ssl
        buffer_updated = self.wrappedProtocol.buffer_updated
        while not self._lostTLSConnection:
            view = get_buffer()
            size = len(view)
            target = _ffi.from_buffer(view, require_writable=True)
            # Record after record into the same buffer (a block's body takes 16 of them),
            # and the protocol told once it is full or nothing is left: not a round of
            # Python calls per 16 KiB record.
            filled = 0
            error = None  # SSL_get_error of the read that stopped short, taken at once:
            # the protocol's callback may use the connection (a write resets that state).
            while filled < size:
                result = _lib.SSL_read(ssl, target + filled, size - filled)
                if result <= 0:
                    error = _lib.SSL_get_error(ssl, result)
                    break
                filled += result
            del target
            if filled:
                self.direct_reads += 1
                if not self._aborted:
                    buffer_updated(filled)
                if error != _WANT_READ:
                    # The buffer is full (ask for the next one), or a close or an error
                    # stopped the read: the next SSL_read meets it again at once, with
                    # nothing in between, and it is handled below.
                    continue
            # The usual end, checked without an exception (~2 us each, once per read):
            # everything buffered has been read.
            if error == _WANT_READ:
                break
            # Anything else: pyOpenSSL turns it into its exception, handled as in Twisted.
            try:
                connection._raise_ssl_error(ssl, result)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
        self._flushSendBIO()


class DirectTLSFactory(TLSMemoryBIOFactory):
    protocol = DirectTLS


@implementer(IStreamClientEndpoint)
class TLSClientEndpoint:
    """``endpoints.wrapClientTLS`` with :class:`DirectTLS` as the TLS layer."""

    def __init__(self, creator, endpoint, clock=None):
        self._creator = creator
        self._endpoint = endpoint
        self._clock = clock

    def connect(self, factory):
        tls_factory = DirectTLSFactory(self._creator, True, factory, clock=self._clock)
        d = self._endpoint.connect(tls_factory)
        return d.addCallback(lambda protocol: protocol.wrappedProtocol)


class _GatedTLSProtocol(DirectTLS):
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
    return DirectTLSFactory(PinnedClientTLS(identity, expected_peer_id), True,
                                   wrapped_factory, clock=clock)


def peer_id_of_transport(transport) -> bytes | None:
    """The peer id the other side proved on this TLS transport, once the handshake is done."""
    cert = transport.getPeerCertificate()
    if cert is None:
        return None
    return peer_id_of_certificate(cert)
