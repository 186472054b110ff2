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

Everything else (handshake, shutdown, errors, producers, the handshake gate of
``peerit.tls``) is the parent classes' own code.
"""

from twisted.internet import tcp
from twisted.protocols.tls import TLSMemoryBIOProtocol

from OpenSSL.SSL import WantReadError

from peerit.tls import GatedTLSFactory

# Writes gathered outside a read are encrypted at once past this size (as Twisted's own
# aggregation does), so a burst of pushes to one session holds at most this much plaintext.
MAX_PENDING = 64 * 1024
# One bio_read per record written (TLSMemoryBIOProtocol writes at most 16 KiB per SSL_write).
SEND_BIO_READ = 2 ** 15


class TrackerTLSProtocol(GatedTLSFactory.protocol):
    """One TLS connection of the tracker: writes flushed per read, sent without a poll."""

    def __init__(self, factory, wrappedProtocol, _connectWrapped=True):
        super().__init__(factory, wrappedProtocol, _connectWrapped)
        self._clock = factory.clock
        self._reading = False
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._flush_call = None
        self._direct_send = False
        # BufferingTLSTransport binds its aggregator's write the same way (a hot path).
        self.write = self._gather

    def makeConnection(self, transport):
        # Sending without a poll needs Twisted's TCP connection (its send queue is checked
        # first); anything else (tests' in-memory transports) gets every byte through write().
        self._direct_send = isinstance(transport, tcp.Connection)
        super().makeConnection(transport)

    # -- application writes -----------------------------------------------------------------

    def _gather(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_size += len(data)
        if self._reading:
            return  # flushed when this read is done
        if self._pending_size > MAX_PENDING:
            self._flush_pending()
        elif self._flush_call is None:
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
        # The unbuffered write of the TLS layer: one SSL_write per 16 KiB, then the records
        # go out through _flushSendBIO below.
        TLSMemoryBIOProtocol.write(self, data)

    def dataReceived(self, data):
        self._reading = True
        try:
            super().dataReceived(data)
        finally:
            self._reading = False
        if self._pending:
            self._flush_pending()

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

    def _flushSendBIO(self):
        try:
            records = self._tlsConnection.bio_read(SEND_BIO_READ)
        except WantReadError:
            return
        self._send(records)

    def _send(self, data: bytes) -> None:
        transport = self.transport
        if (self._direct_send and not transport._tempDataLen and not transport.dataBuffer
                and transport.connected and not transport.disconnecting):
            # Nothing queued before these bytes, so sending them now keeps the order.
            # writeSomeData returns the bytes the kernel took (0 when it would block), or
            # an exception instance when the connection is gone: then write() queues the
            # lot and the reactor's own write path reports the loss as usual.
            sent = transport.writeSomeData(data)
            if sent.__class__ is int:
                if sent == len(data):
                    return
                data = data[sent:]
        transport.write(data)


class TrackerTLSFactory(GatedTLSFactory):
    """:class:`GatedTLSFactory` building :class:`TrackerTLSProtocol`; ``clock`` is required
    (the tests' ``task.Clock`` or the reactor)."""

    protocol = TrackerTLSProtocol

    def __init__(self, contextFactory, isClient, wrappedFactory, clock, **kwargs):
        super().__init__(contextFactory, isClient, wrappedFactory, clock=clock, **kwargs)
        self.clock = clock
