"""The tracker's TLS transport: Twisted's memory-BIO TLS, shaped for many small answers.

A tracker answers thousands of small requests a second, each on one of thousands of sessions,
and under load the fixed costs per answer (not the answers themselves) filled its core:

- Twisted's ``BufferingTLSTransport`` gathers small writes and encrypts them on the *next*
  reactor turn (``callLater(0)``): a timer per session per turn, and every answer a turn late.
  Here what a session writes while its read is being handled is encrypted once when that read
  is done (one ``SSL_write``, one record); only writes made outside a read (pushes to other
  sessions) wait for the next turn, gathered as before.
- Twisted's TCP transport never writes at once: it queues, registers the socket for
  writability (``epoll_ctl``), sends when the reactor next polls it, and deregisters it
  (``epoll_ctl`` again): two system calls and one more event per answer. Here the encrypted
  bytes are sent straight away when nothing is queued on that connection already (a
  non-blocking ``send``), and only what the kernel does not take is queued the usual way, so
  backpressure and producers work unchanged.

- pyOpenSSL's wrappers cost more than the TLS work for records this small: each ``recv``
  and ``bio_read`` allocates a 32 KiB buffer, each call checks three callback helpers, and
  the call that finds nothing more to read (one per read and one per flush) raises
  ``WantReadError`` through ``_raise_ssl_error``. Measured per request batch (80-byte record
  in, 600-byte record out): ~13 us through pyOpenSSL's methods, ~5 us calling its binding
  (``SSL_read``/``SSL_write``/``BIO_read``) directly into one reused buffer. Once the
  handshake is done the tracker calls the binding directly; anything but data or "want
  read" goes through pyOpenSSL's own ``_raise_ssl_error``, so errors and shutdown are
  handled exactly as by Twisted's loop. A pyOpenSSL without the binding gets the plain path.

Everything else (handshake, shutdown, errors, producers, the handshake gate of
``peerit.tls``) is the parent classes' own code.
"""

from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from OpenSSL import SSL
from OpenSSL.SSL import WantReadError

from peerit.shims.openssl import binding_has, ffi as _ffi, lib as _lib
from peerit.tls import GatedTLSFactory

# pyOpenSSL's cffi binding (the same one peerit.tls reads peer links with);
# tests/unit/test_tracker_transport.py fails if the direct path is not taken.
_DIRECT = binding_has("SSL_read", "SSL_write", "SSL_get_error", "BIO_read",
                      "SSL_ERROR_WANT_READ")

# Gathered writes are encrypted at once past this size (as Twisted's own aggregation does),
# so a read full of requests for long peer lists, or a burst of pushes to one session, holds
# at most this much plaintext before it moves on to the connection's send queue.
MAX_PENDING = 64 * 1024
# One bio_read per record written (TLSMemoryBIOProtocol writes at most 16 KiB per SSL_write).
SEND_BIO_READ = 2 ** 15
# The direct path's one buffer, for plaintext in and records out alike: every use copies
# what it got out before the next, and the reactor runs one callback at a time.
_BUFFER_SIZE = 64 * 1024
_buffer = _ffi.new("char[]", _BUFFER_SIZE) if _DIRECT else None


class TrackerTLSProtocol(GatedTLSFactory.protocol):
    """One TLS connection of the tracker: writes flushed per read, sent without a poll."""

    def __init__(self, factory, wrappedProtocol, _connectWrapped=True):
        super().__init__(factory, wrappedProtocol, _connectWrapped)
        self._clock = factory.clock
        self._reading = False
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._flush_call = None
        self._established = False  # handshake done, gate released: the direct read path
        # BufferingTLSTransport binds its aggregator's write the same way (a hot path).
        self.write = self._gather

    # -- application writes -----------------------------------------------------------------

    def _gather(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size > MAX_PENDING:
            self._flush_pending()
        elif not self._reading and self._flush_call is None:
            # Inside a read, dataReceived flushes when the read is done.
            self._flush_call = self._clock.callLater(0, self._scheduled_flush)

    def writeSequence(self, sequence) -> None:
        self._gather(b"".join(sequence))

    def _scheduled_flush(self) -> None:
        self._flush_call = None
        self._flush_pending()

    def _flush_pending(self) -> None:
        if self._flush_call is not None:
            self._flush_call.cancel()
            self._flush_call = None
        if not self._pending:
            return
        data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending = []
        self._pending_size = 0
        if (not _DIRECT or not self._handshakeDone or self._appSendBuffer
                or self.disconnecting or self._lostTLSConnection):
            # The unbuffered write of the TLS layer: one SSL_write per 16 KiB, then the
            # records go out through _flushSendBIO below.
            TLSMemoryBIOProtocol.write(self, data)
            return
        connection = self._tlsConnection
        ssl = connection._ssl
        # pyOpenSSL's contexts allow partial writes: SSL_write takes one record (16 KiB) at
        # most per call. A memory BIO never blocks, so each call takes some.
        result = _lib.SSL_write(ssl, data, len(data))
        if result < len(data) and result > 0:
            with _ffi.from_buffer(data) as pointer:
                sent = result
                while sent < len(data):
                    result = _lib.SSL_write(ssl, pointer + sent, len(data) - sent)
                    if result <= 0:
                        data = data[sent:]
                        break
                    sent += result
        if result <= 0:
            self._flushSendBIO()  # the records of any part written before the error
            try:
                connection._raise_ssl_error(ssl, result)
            except WantReadError:
                self._bufferedWrite(data)
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
            return
        self._flushSendBIO()

    def dataReceived(self, data):
        self._reading = True
        try:
            if self._established:
                self._established_read(data)
            else:
                # Handshake (and the gate of peerit.tls, released once it is done).
                super().dataReceived(data)
                self._established = _DIRECT and self._handshakeDone
        finally:
            self._reading = False
        if self._pending:
            self._flush_pending()

    def _established_read(self, data):
        # TLSMemoryBIOProtocol.dataReceived once the handshake is done (the gate released),
        # on the binding.
        connection = self._tlsConnection
        if _lib.BIO_write(connection._into_ssl, data, len(data)) != len(data):
            connection.bio_write(data)  # pragma: no cover - a memory BIO takes it all
        if self._appSendBuffer:
            self._unbufferPendingWrites()
        self._flushReceiveBIO()

    def loseConnection(self):
        self._flush_pending()
        super().loseConnection()

    def connectionLost(self, reason):
        if self._flush_call is not None:
            self._flush_call.cancel()
            self._flush_call = None
        self._pending = []
        super().connectionLost(reason)
        # super() points write at a sink; keep it so.

    # -- TLS records out --------------------------------------------------------------------

    def _flushReceiveBIO(self):
        # Twisted's loop (TLSMemoryBIOProtocol._flushReceiveBIO) on the binding: see the
        # module docstring. Before the handshake is done Twisted's own loop runs.
        if not _DIRECT or not self._handshakeDone:
            return super()._flushReceiveBIO()
        connection = self._tlsConnection
        ssl = connection._ssl
        protocol = self.wrappedProtocol
        while not self._lostTLSConnection:
            result = _lib.SSL_read(ssl, _buffer, _BUFFER_SIZE)
            if result > 0:
                if not self._aborted:
                    # What ProtocolWrapper.dataReceived does, one call less.
                    protocol.dataReceived(_ffi.buffer(_buffer, result)[:])
                continue
            if _lib.SSL_get_error(ssl, result) == _lib.SSL_ERROR_WANT_READ:
                break  # all read; the usual end of every read, without an exception
            try:
                connection._raise_ssl_error(ssl, result)
            except WantReadError:  # pragma: no cover - answered above
                break
            except SSL.ZeroReturnError:
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
        self._flushSendBIO()

    def _flushSendBIO(self):
        if not _DIRECT:
            # All of it here too: a gathered write can leave more than one read's worth of
            # records, and nothing else would flush the rest before the next write.
            chunks = []
            while True:
                try:
                    chunks.append(self._tlsConnection.bio_read(SEND_BIO_READ))
                except WantReadError:
                    break
            if chunks:
                self._send(b"".join(chunks) if len(chunks) > 1 else chunks[0])
            return
        # All of it (a memory BIO read returns <= 0 only when empty).
        bio = self._tlsConnection._from_ssl
        result = _lib.BIO_read(bio, _buffer, _BUFFER_SIZE)
        if result <= 0:
            return
        records = _ffi.buffer(_buffer, result)[:]
        while result == _BUFFER_SIZE:
            result = _lib.BIO_read(bio, _buffer, _BUFFER_SIZE)
            if result > 0:
                records += _ffi.buffer(_buffer, result)[:]
        self._send(records)

    # _send (sealed records to TCP without a poll when nothing is queued): DirectTLS's.


class TrackerTLSFactory(GatedTLSFactory):
    """:class:`GatedTLSFactory` building :class:`TrackerTLSProtocol`; ``clock`` is required
    (the tests' ``task.Clock`` or the reactor)."""

    protocol = TrackerTLSProtocol

    def __init__(self, contextFactory, isClient, wrappedFactory, clock, **kwargs):
        super().__init__(contextFactory, isClient, wrappedFactory, clock=clock, **kwargs)
        self.clock = clock
