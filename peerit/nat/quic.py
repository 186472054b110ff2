"""Peer links over QUIC on a (hole-punched) UDP socket, with aioquic driven by Twisted.

One :class:`QuicEndpoint` per UDP socket owns the QUIC connections on it. A remote address may
carry several connections at once (one per swarm link between the same two peers, at most
:data:`MAX_CONNECTIONS_PER_ADDRESS`): datagrams are told apart by their destination connection
id, each connection proves and pins the peer's identity by itself, and each ends on its own
(see "One connection per swarm link" below). It does no I/O itself: the socket multiplexer
hands it datagrams (:meth:`QuicEndpoint.datagram_received`) and it sends through a
``send(data, addr)`` callable; time comes from an injected ``IReactorTime``. aioquic's sans-IO
``QuicConnection`` supplies TLS 1.3, loss recovery and congestion control.

Identity works as on TCP+TLS: both sides present their certificate in the handshake (the
server requests a client certificate) and each pins the other's peer id, so a wrong key fails
the handshake and no peer data ever flows. The dialer pins the id it expects; the acceptor is
armed for a remote address with the ids it may accept there (:meth:`QuicEndpoint.accept_from`),
and every other Initial is dropped unanswered.

The peer protocol runs unchanged: it gets a transport with the usual ``write`` /
``loseConnection`` / producer API and ``peer_id``. Bytes go over a pair of unidirectional
streams (client→server on stream 2, server→client on stream 3) rather than one bidirectional
stream: a QUIC server cannot send on a client-opened stream before the client's first byte,
while peer protocols may have either side speak first.

One connection per swarm link: all the swarms two peers share use the one punched path, each
in its own QUIC connection on the same 4-tuple, rather than one connection with a stream per
swarm. A connection per link keeps each link exactly what it was alone (its own handshake and
pin, its own flow-control windows so a stalled swarm cannot hold another's credit, its own
end: a link closing or failing takes nothing else down, and its connection goes with it) and
keeps the bulk fast path, which carries one stream per connection. The price is a handshake
per link (about a round trip and one signature each way) and a congestion controller per
link, as with one TCP connection per link.

Throughput: input is batched (datagrams received in one reactor turn are processed, then one
flush answers them all, via ``callLater(0)``), received stream data is joined into one
``dataReceived`` per batch, and sending is capped by ``send_buffer_limit`` with producer
pause/resume. See ``docs/quic.md`` for figures and tuning.
"""

import enum
import ssl
from dataclasses import dataclass

from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import QuicErrorCode, QuicPacketType, pull_quic_header
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IConsumer, IHalfCloseableProtocol, IPushProducer, ITransport)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from peerit.errors import IdentityMismatch, TimedOut
from peerit.identity import Identity, format_fingerprint
from peerit.nat.quic_connection import PinnedQuicConnection
from peerit.nat.quic_fastpath import StreamChunksReceived
from peerit.shims.aioquic import FAST_PATH

log = Logger()

ALPN = "peerit/1"
CONNECTION_ID_LENGTH = 8
MIN_DATAGRAM_SIZE = 1200  # QUIC's floor; always safe
MTU_1500_IPV4_DATAGRAM_SIZE = 1500 - 20 - 8  # what a 1500-byte IPv4 path carries
MTU_1500_IPV6_DATAGRAM_SIZE = 1500 - 40 - 8

TIMER_RETRY = 1e-6  # seconds; see _Link._rearm_timer

#: QUIC connections (open, handshaking, or armed acceptances) with one remote address: one
#: per swarm link between two peers, bounded so a peer cannot make us hold unbounded state
MAX_CONNECTIONS_PER_ADDRESS = 32

# Application error codes in our CONNECTION_CLOSE frames.
CLOSE_ABORTED = 0x1
CLOSE_PROTOCOL = 0x2


def is_quic_datagram(data: bytes) -> bool:
    """QUIC sets the 0x40 ("fixed") bit in every packet's first byte (RFC 9000 §17)."""
    return bool(data) and bool(data[0] & 0x40)


def destination_connection_id(data: bytes) -> bytes:
    """The destination connection id of a datagram's first packet (RFC 9000 §17.2, §17.3):
    length-prefixed in a long header; in a short header, the length we chose for our ids."""
    if data[0] & 0x80:
        if len(data) < 6:
            return b""
        return data[6:6 + data[5]]
    return data[1:1 + CONNECTION_ID_LENGTH]


@dataclass(frozen=True)
class QuicSettings:
    """Knobs of the QUIC adapter; the defaults suit any path, see docs/quic.md for tuning."""

    #: largest UDP payload sent; 1200 always works, 1472 suits a 1500-MTU IPv4 path
    max_datagram_size: int = MIN_DATAGRAM_SIZE
    #: bound on a connect or an armed accept, from start to proven identity
    handshake_timeout: float = 10.0
    #: connection closed when nothing was heard for this long
    idle_timeout: float = 30.0
    #: PING this often on an open link; keeps NAT mappings and the idle timer alive
    keepalive_interval: float = 10.0
    #: "reno" or "cubic" (aioquic's)
    congestion_control: str = "reno"
    #: bytes the peer may send beyond what our protocol consumed (memory bound per link)
    receive_window: int = 8 * 1024 * 1024
    #: written-but-unacknowledged bytes above which the producer is paused
    send_buffer_limit: int = 4 * 1024 * 1024
    #: build and parse plain stream packets with peerit's fast path (quic_fastpath.py);
    #: False leaves every packet to aioquic (the reference, for tests and comparisons). On by
    #: default where aioquic's internals are as checked (peerit.shims.aioquic).
    fast_path: bool = FAST_PATH

    def __post_init__(self):
        if self.max_datagram_size < MIN_DATAGRAM_SIZE:
            raise ValueError(f"max_datagram_size must be at least {MIN_DATAGRAM_SIZE}")
        if self.congestion_control not in ("reno", "cubic"):
            raise ValueError(f"unknown congestion control {self.congestion_control!r}")


class QuicConnectionLost(error.ConnectionLost):
    """The QUIC connection ended with an error (idle timeout, peer abort, protocol error)."""

    def __init__(self, reason_phrase: str, error_code: int | None = None):
        self.reason_phrase = reason_phrase
        self.error_code = error_code
        code = "" if error_code is None else f" (code 0x{error_code:x})"
        super().__init__(f"QUIC connection lost: {reason_phrase}{code}")


class QuicHandshakeFailed(error.ConnectError):
    """The QUIC handshake ended before both identities were proven."""


class _State(enum.Enum):
    HANDSHAKING = "handshaking"  # QUIC/TLS handshake running, no protocol yet
    OPEN = "open"                # identities proven, protocol connected
    CLOSING = "closing"          # close sent or received; draining stray packets
    CLOSED = "closed"            # aioquic terminated; removed from the endpoint


def _address(addr) -> IPv4Address | IPv6Address:
    host, port = addr[0], addr[1]
    return (IPv6Address if ":" in host else IPv4Address)("UDP", host, port)


@implementer(ITransport, IConsumer, IPushProducer)
class QuicStreamTransport:
    """What the peer protocol sees: a stream transport over one QUIC link.

    ``peer_id`` is the id the other side proved in the handshake.
    """

    def __init__(self, link: "_Link", peer_id: bytes):
        self._link = link
        self.peer_id = peer_id
        self.disconnecting = False
        self.disconnected = False
        self._producer = None
        self._streaming = False
        self._producer_paused = False
        self._reading_paused = False

    # ITransport
    def write(self, data: bytes) -> None:
        if data and not self.disconnecting:
            self._link.write(data)

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self.disconnecting:
            return
        self.disconnecting = True
        if self._producer is None:
            self._link.finish_sending()
        # else: unregisterProducer finishes, as Twisted's own transports do.

    def abortConnection(self) -> None:
        self.disconnecting = True
        self._link.abort("aborted by the application")

    def getPeer(self):
        return _address(self._link.addr)

    def getHost(self):
        return self._link.endpoint.host

    def getPeerCertificate(self):
        """The peer's certificate (a ``cryptography`` object), as ``peerit.tls`` expects."""
        return self._link.conn.peer_certificate()

    # IConsumer
    def registerProducer(self, producer, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError("a producer is already registered")
        if self.disconnected:
            producer.stopProducing()
            return
        self._producer = producer
        self._streaming = bool(streaming)
        self._producer_paused = False
        self._link.update_send_pressure()

    def unregisterProducer(self) -> None:
        self._producer = None
        if self.disconnecting and not self.disconnected:
            self._link.finish_sending()

    # IPushProducer: a consumer of our reads may pause us.
    def pauseProducing(self) -> None:
        self._reading_paused = True

    def resumeProducing(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self._link.resume_reading()

    def stopProducing(self) -> None:
        self.loseConnection()

    # for the link
    def _pressure(self, held: int, limit: int) -> None:
        """Pause the producer above ``limit`` held bytes, let it go on below half of it."""
        producer = self._producer
        if producer is None:
            return
        if self._streaming:
            if not self._producer_paused and held > limit:
                self._producer_paused = True
                producer.pauseProducing()
            elif self._producer_paused and held <= limit // 2:
                self._producer_paused = False
                producer.resumeProducing()
        else:
            # A pull producer writes once per resumeProducing: ask until the buffer is full,
            # stopping if it wrote nothing (it has finished or is waiting on something).
            while self._producer is producer and not self.disconnecting:
                before = self._link.written
                if self._link.held() > limit // 2:
                    break
                producer.resumeProducing()
                if self._link.written == before:
                    break

    def _lost(self) -> None:
        self.disconnecting = True
        self.disconnected = True
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.stopProducing()


class _Link:
    """One QUIC connection on the endpoint's socket, from handshake to termination."""

    def __init__(self, endpoint: "QuicEndpoint", addr, conn: PinnedQuicConnection,
                 protocol_factory, waiting: defer.Deferred, is_client: bool):
        self.endpoint = endpoint
        self.addr = addr
        self.conn = conn
        self.is_client = is_client
        self.state = _State.HANDSHAKING
        self.written = 0
        self.peer_id: bytes | None = None
        self.cids: set[bytes] = set()  # our connection ids the endpoint routes to this link
        self._protocol_factory = protocol_factory
        self._waiting = waiting
        self._protocol = None
        self._transport: QuicStreamTransport | None = None
        # client → server on 2, server → client on 3 (RFC 9000 §2.1 stream id bits)
        self._send_stream = 2 if is_client else 3
        self._receive_stream = 3 if is_client else 2
        self._held_input: list[bytes] = []
        self._input_finished = False
        self._tls_done = False
        self._finishing = False
        self._clock = endpoint.clock
        self._timer = None
        self._timer_fired_at = None
        self._handshake_timer = self._clock.callLater(
            endpoint.settings.handshake_timeout, self._handshake_timed_out)
        self._keepalive = None
        self._ping_uid = 0

    # -- input from the endpoint ------------------------------------------------------------

    def datagram_received(self, data: bytes, now: float) -> None:
        self.conn.receive_datagram(data, self.addr, now)
        self.endpoint._mark_dirty(self)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_fired_at = self._clock.seconds()
        self.conn.handle_timer(self._timer_fired_at)
        self.pump()

    def _send_keepalive(self) -> None:
        self._keepalive = None
        if self.state is _State.OPEN:
            self._ping_uid += 1
            self.conn.send_ping(self._ping_uid)
            self.pump()
            self._keepalive = self._clock.callLater(
                self.endpoint.settings.keepalive_interval, self._send_keepalive)

    # -- the driving loop -------------------------------------------------------------------

    def pump(self) -> None:
        """Handle aioquic's events, send what it has, re-arm its timer."""
        if self.state is _State.CLOSED:
            return
        self._handle_events()
        if self.state is _State.CLOSED:
            return
        now = self._clock.seconds()
        datagrams = self.conn.datagrams_to_send(now)
        if datagrams:
            self.endpoint._send_all(datagrams)
        if self.state is _State.OPEN:
            if self._finishing and self.conn.send_finished(self._send_stream):
                self._close(None, code=QuicErrorCode.NO_ERROR, phrase="done")
                return
            self.update_send_pressure()
        self._rearm_timer(now)

    def _rearm_timer(self, now: float) -> None:
        at = self.conn.get_timer()
        if at is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        delay = max(0.0, at - now)
        if delay == 0.0 and now == self._timer_fired_at:
            # aioquic sets its loss timer at sent + delay but declares the loss when
            # sent <= now - delay; rounding can keep the timer due and the loss undeclared
            # at one instant. A real clock moves on; a frozen one would spin forever.
            delay = TIMER_RETRY
        if self._timer is None:
            self._timer = self._clock.callLater(delay, self._on_timer)
        elif self._timer.getTime() != at:
            self._timer.reset(delay)

    def _handle_events(self) -> None:
        received: list[bytes] = []
        finished = False
        while (event := self.conn.next_event()) is not None:
            kind = type(event)
            if kind is StreamChunksReceived:
                if event.stream_id != self._receive_stream:
                    self._protocol_error(f"data on unexpected stream {event.stream_id}")
                    return
                received.extend(event.chunks)
            elif kind is events.StreamDataReceived:
                if event.stream_id != self._receive_stream:
                    self._protocol_error(f"data on unexpected stream {event.stream_id}")
                    return
                if event.data:
                    received.append(event.data)
                if event.end_stream:
                    finished = True
            elif kind is events.HandshakeCompleted:
                self._tls_done = True
            elif kind is events.ConnectionTerminated:
                self._deliver(received, finished)
                received, finished = [], False
                self._terminated(event)
                return
            elif kind is events.StreamReset:
                self._deliver(received, finished)
                received, finished = [], False
                self.abort(f"peer reset its stream (code 0x{event.error_code:x})")
                return
            elif kind is events.StopSendingReceived:
                self.abort(f"peer stopped reading (code 0x{event.error_code:x})")
                return
            elif kind is events.ConnectionIdIssued:
                self.endpoint._add_cid(self, event.connection_id)
            elif kind is events.ConnectionIdRetired:
                self.endpoint._drop_cid(self, event.connection_id)
        if self.identity_refused():
            return
        # The client waits for HANDSHAKE_DONE: only then has the server accepted *our*
        # certificate, so a link the server refuses never looks open to our protocol.
        if (self.state is _State.HANDSHAKING and self._tls_done
                and (not self.is_client or self.conn.handshake_confirmed())):
            self._hold(received, finished)
            received, finished = [], False
            if not self._handshake_completed():
                return
        self._deliver(received, finished)

    def identity_refused(self) -> bool:
        """Fail at once when the handshake refused the peer's key (aioquic reports it only
        after the closing period)."""
        refusal = self.conn.identity_refusal
        if refusal is None or self.state is not _State.HANDSHAKING:
            return False
        self.state = _State.CLOSING
        self._stop_link_timers()
        self._fail_waiting(IdentityMismatch(f"QUIC peer {self.addr[0]}:{self.addr[1]}: "
                                            f"{refusal}"))
        return True

    def _handshake_completed(self) -> bool:
        if self.state is not _State.HANDSHAKING:
            return False
        peer_id = self.conn.proven_peer_id()
        if peer_id is None:
            # No client certificate, or one that escaped the pin: never deliver anything.
            self._close(IdentityMismatch(f"QUIC peer {self.addr[0]}:{self.addr[1]} "
                                         "proved no allowed identity"),
                        code=CLOSE_PROTOCOL, phrase="identity not proven")
            return False
        self.peer_id = peer_id
        self.state = _State.OPEN
        self._handshake_timer.cancel()
        self._handshake_timer = None
        self._keepalive = self._clock.callLater(
            self.endpoint.settings.keepalive_interval, self._send_keepalive)
        log.info("QUIC link to {peer} at {addr} open", peer=format_fingerprint(peer_id)[:16],
                 addr=self.addr)
        transport = self._transport = QuicStreamTransport(self, peer_id)
        try:
            protocol = self._protocol_factory(peer_id)
            if protocol is None:
                raise QuicHandshakeFailed(string="protocol factory refused the link")
            self._protocol = protocol
            protocol.makeConnection(transport)
        except Exception:
            failure = Failure()
            self._close(failure.value, code=CLOSE_ABORTED, phrase="refused locally")
            return False
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(protocol)
        self._deliver([], False)  # what the server sent before we saw HANDSHAKE_DONE
        return self.state is _State.OPEN

    def _hold(self, received: list[bytes], finished: bool) -> None:
        if received:
            self._held_input.extend(received)
        if finished:
            self._input_finished = True

    def _deliver(self, received: list[bytes], finished: bool) -> None:
        if self.state is _State.HANDSHAKING:
            # Peer data before the identities are settled is held (bounded by the receive
            # window: nothing held is credited back), never delivered.
            self._hold(received, finished)
            return
        if self.state is not _State.OPEN:
            return
        self._hold(received, finished)
        if self._transport._reading_paused:
            return
        if self._held_input:
            data = b"".join(self._held_input) if len(self._held_input) > 1 \
                else self._held_input[0]
            self._held_input = []
            self.conn.consumed(self._receive_stream, len(data))
            try:
                self._protocol.dataReceived(data)
            except Exception:
                # As Twisted's TCP transports do: a protocol bug ends its own link only.
                log.failure("peer protocol failed on data from {addr}", addr=self.addr)
                self.abort("protocol error")
                return
            self.endpoint._mark_dirty(self)  # credit may have opened: tell the peer
        if self._input_finished and self.state is _State.OPEN and not self._held_input:
            self._input_finished = False
            half_closeable = IHalfCloseableProtocol(self._protocol, None)
            if half_closeable is not None:
                half_closeable.readConnectionLost()
            else:
                self._transport.loseConnection()

    def resume_reading(self) -> None:
        self._deliver([], False)

    # -- output from the protocol -----------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.state is not _State.OPEN or self._finishing:
            return
        self.conn.send_stream_data(self._send_stream, data)
        self.written += len(data)
        self.endpoint._mark_dirty(self)
        if self._transport._producer is not None and self._transport._streaming:
            self._transport._pressure(self.held(), self.endpoint.settings.send_buffer_limit)

    def held(self) -> int:
        return self.conn.held_bytes(self._send_stream, self.written)

    def update_send_pressure(self) -> None:
        if self._transport is not None and not self._finishing:
            self._transport._pressure(self.held(), self.endpoint.settings.send_buffer_limit)

    def finish_sending(self) -> None:
        """Graceful close: FIN our stream, close once everything we wrote is acknowledged."""
        if self.state is not _State.OPEN or self._finishing:
            return
        self._finishing = True
        self.conn.send_stream_data(self._send_stream, b"", end_stream=True)
        self.endpoint._mark_dirty(self)

    def abort(self, why: str) -> None:
        if self.state is _State.OPEN:
            self._close(error.ConnectionAborted(why), code=CLOSE_ABORTED, phrase=why)

    def _protocol_error(self, why: str) -> None:
        self._close(QuicConnectionLost(why), code=CLOSE_PROTOCOL, phrase=why)

    # -- endings ----------------------------------------------------------------------------

    def cancel(self, reason: Exception) -> None:
        """Stop the handshake (a cancelled Deferred or a closed endpoint)."""
        if self.state is _State.HANDSHAKING:
            self._close(reason, code=CLOSE_ABORTED, phrase="cancelled")

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        if self.state is _State.HANDSHAKING:
            timeout = self.endpoint.settings.handshake_timeout
            self._close(TimedOut(f"QUIC handshake with {self.addr[0]}:{self.addr[1]} "
                                 f"did not complete in {timeout:g} s"),
                        code=CLOSE_ABORTED, phrase="handshake timeout")

    def _close(self, why: Exception | None, *, code: int, phrase: str) -> None:
        """Close from our side: tell the protocol (or the waiting caller) now, let aioquic
        send CONNECTION_CLOSE and drain stray packets for a few PTOs."""
        if self.state in (_State.CLOSING, _State.CLOSED):
            return
        was = self.state
        self.state = _State.CLOSING
        self._stop_link_timers()
        self.conn.close(error_code=code, reason_phrase=phrase)
        self.endpoint._mark_dirty(self)
        if was is _State.OPEN:
            self._lose_protocol(why if why is not None else error.ConnectionDone())
        else:
            self._fail_waiting(why or QuicHandshakeFailed(string=phrase))

    def _terminated(self, event: events.ConnectionTerminated) -> None:
        """aioquic is done with the connection: idle timeout, the peer's close, or the end
        of our own closing period."""
        was = self.state
        self.state = _State.CLOSED
        self._stop_link_timers()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.endpoint._forget(self)
        if was is _State.OPEN:
            if event.error_code == QuicErrorCode.NO_ERROR:
                why = error.ConnectionDone(event.reason_phrase or "closed by peer")
            else:
                why = QuicConnectionLost(event.reason_phrase or "closed by peer",
                                         event.error_code)
            self._lose_protocol(why)
        elif was is _State.HANDSHAKING:
            if self.conn.identity_refusal is not None:
                why = IdentityMismatch(f"QUIC peer {self.addr[0]}:{self.addr[1]}: "
                                       f"{self.conn.identity_refusal}")
            else:
                why = QuicHandshakeFailed(string=f"QUIC handshake with {self.addr[0]}:"
                                          f"{self.addr[1]} failed: "
                                          f"{event.reason_phrase or 'connection closed'} "
                                          f"(code 0x{event.error_code:x})")
            self._fail_waiting(why)

    def _lose_protocol(self, why: Exception) -> None:
        transport, protocol = self._transport, self._protocol
        self._held_input = []
        if transport is not None:
            transport._lost()
        if protocol is not None:
            self._protocol = None
            protocol.connectionLost(Failure(why))

    def _fail_waiting(self, why: Exception) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(Failure(why))

    def _stop_link_timers(self) -> None:
        for name in ("_handshake_timer", "_keepalive"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)

    def shutdown(self) -> None:
        """The endpoint closes: send our CONNECTION_CLOSE once and stop at once."""
        if self.state is _State.OPEN:
            self._close(error.ConnectionLost("QUIC endpoint closed"),
                        code=CLOSE_ABORTED, phrase="endpoint closed")
        elif self.state is _State.HANDSHAKING:
            self._close(error.ConnectionAborted("QUIC endpoint closed"),
                        code=CLOSE_ABORTED, phrase="endpoint closed")
        if self.state is not _State.CLOSED:
            datagrams = self.conn.datagrams_to_send(self._clock.seconds())
            if datagrams:
                self.endpoint._send_all(datagrams)
        self.state = _State.CLOSED
        self._stop_link_timers()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@dataclass(eq=False)
class _Arm:
    """Acceptance of one connection, armed for one punched remote address."""
    allowed_peer_ids: frozenset
    protocol_factory: object
    waiting: defer.Deferred
    timeout: object = None
    link: _Link | None = None


class QuicEndpoint:
    """The QUIC connections on one UDP socket.

    ``send(data, addr)`` writes one datagram; feed every QUIC datagram the socket receives to
    :meth:`datagram_received`. ``host`` is what transports report from ``getHost()``.
    ``send_many(datagrams, addr)``, if given, writes a burst to one address (e.g. with
    :class:`DatagramWriter`, one syscall per burst) and returns how many the OS refused.

    A remote address may have up to :data:`MAX_CONNECTIONS_PER_ADDRESS` connections and armed
    acceptances together. With one connection there and no acceptance armed, its short-header
    datagrams go to it unexamined (aioquic drops what is not for it); otherwise each datagram
    goes by its destination connection id, and an Initial for an unknown id takes the oldest
    acceptance armed for that address.
    """

    def __init__(self, identity: Identity, send, clock, settings: QuicSettings = QuicSettings(),
                 host=None, send_many=None):
        self.identity = identity
        self.clock = clock
        self.settings = settings
        self.host = host
        self._raw_send = send
        self._raw_send_many = send_many
        self._links: dict[tuple, list[_Link]] = {}  # by remote address, oldest first
        self._cids: dict[bytes, _Link] = {}  # our connection ids in use, to their link
        self._arms: dict[tuple, list[_Arm]] = {}  # by remote address, oldest first
        self._dirty: dict[_Link, None] = {}
        self._flush_call = None
        self._closed = False
        #: datagrams dropped because no connection or armed acceptance wanted them
        self.dropped = 0
        #: datagrams the socket refused (full send buffer); QUIC recovers them as losses
        self.send_failures = 0

    # -- public API -------------------------------------------------------------------------

    def connect(self, addr, expected_peer_id: bytes, protocol_factory) -> defer.Deferred:
        """Dial ``addr`` and accept only a peer proving ``expected_peer_id``.

        ``protocol_factory(peer_id)`` makes the protocol once the identity is proven. The
        Deferred fires with that protocol (connected), or fails with ``IdentityMismatch``,
        ``TimedOut`` (after ``handshake_timeout``) or ``QuicHandshakeFailed``; cancelling it
        closes the connection.
        """
        addr = tuple(addr)
        if self._closed:
            return defer.fail(QuicHandshakeFailed(string="QUIC endpoint is closed"))
        if self._in_use(addr) >= MAX_CONNECTIONS_PER_ADDRESS:
            return defer.fail(QuicHandshakeFailed(
                string=f"{MAX_CONNECTIONS_PER_ADDRESS} QUIC connections with "
                       f"{addr[0]}:{addr[1]} already"))
        link_box: list[_Link] = []
        waiting = defer.Deferred(lambda d: self._cancel_link(link_box[0]))
        conn = PinnedQuicConnection(configuration=self._configuration(is_client=True),
                                    allowed_peer_ids=frozenset([expected_peer_id]),
                                    receive_window=self.settings.receive_window)
        conn.fast_path = self.settings.fast_path
        link = _Link(self, addr, conn, protocol_factory, waiting, is_client=True)
        link_box.append(link)
        self._add_link(link)
        conn.connect(addr, self.clock.seconds())
        link.pump()
        return waiting

    def accept_from(self, addr, allowed_peer_ids, protocol_factory,
                    timeout: float | None = None) -> defer.Deferred:
        """Arm acceptance of one QUIC connection from ``addr`` by one of ``allowed_peer_ids``.

        Until armed, Initials from ``addr`` are dropped unanswered; each armed acceptance takes
        one connection (arm once per expected link). The Deferred fires with the
        connected protocol (``protocol_factory(peer_id)``), or fails with ``TimedOut`` when
        no connection completed within ``timeout`` (default ``handshake_timeout``), or with
        the handshake's error; cancelling it disarms and closes a handshake in progress.
        """
        addr = tuple(addr)
        if self._closed:
            return defer.fail(QuicHandshakeFailed(string="QUIC endpoint is closed"))
        if self._in_use(addr) >= MAX_CONNECTIONS_PER_ADDRESS:
            return defer.fail(QuicHandshakeFailed(
                string=f"{MAX_CONNECTIONS_PER_ADDRESS} QUIC connections with "
                       f"{addr[0]}:{addr[1]} already armed or open"))
        allowed = frozenset(allowed_peer_ids)
        if not allowed:
            raise ValueError("accept_from needs at least one allowed peer id")
        waiting = defer.Deferred(lambda d: self._cancel_arm(addr, arm))
        arm = _Arm(allowed, protocol_factory, waiting)
        self._arms.setdefault(addr, []).append(arm)
        limit = self.settings.handshake_timeout if timeout is None else timeout
        arm.timeout = self.clock.callLater(limit, self._arm_timed_out, addr, arm, limit)
        waiting.addBoth(self._disarm, addr, arm)
        return waiting

    def close(self) -> None:
        """Close every connection (peers get CONNECTION_CLOSE) and every armed acceptance."""
        if self._closed:
            return
        self._closed = True
        for arm in [arm for arms in self._arms.values() for arm in arms]:
            if arm.link is None:
                arm.waiting.errback(Failure(error.ConnectionAborted("QUIC endpoint closed")))
        for link in [link for links in self._links.values() for link in links]:
            link.shutdown()
        self._links.clear()
        self._cids.clear()
        self._dirty.clear()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None

    def datagram_received(self, data: bytes, addr) -> None:
        """One QUIC datagram from the socket (first byte has the 0x40 bit)."""
        if self._closed:
            return
        links = self._links.get(addr)
        # The common case unexamined: a short-header packet from the one connection there.
        if (links is not None and len(links) == 1 and not data[0] & 0x80
                and addr not in self._arms):
            link = links[0]
        else:
            link = self._route(data, addr, links)
        if link is None:
            link = self._accept_initial(data, addr)
            if link is None:
                self.dropped += 1
                return
        # _Link.datagram_received and _mark_dirty, inlined: this runs once per datagram.
        link.conn.receive_datagram(data, addr, self.clock.seconds())
        self._dirty[link] = None
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush)

    def datagrams_received(self, datagrams: list, addr) -> None:
        """QUIC datagrams of one read from one address, in order (a GRO read): what
        :meth:`datagram_received` does for each, with the lookups done once."""
        links = self._links.get(addr)
        if links is None or self._closed:
            for data in datagrams:
                self.datagram_received(data, addr)
            return
        now = self.clock.seconds()
        if len(links) == 1 and addr not in self._arms:
            runs = [(links[0], datagrams)]
        else:
            runs = self._runs_by_link(datagrams, addr, links)
        for link, run in runs:
            if link is None:
                for data in run:
                    self.datagram_received(data, addr)
                continue
            link.conn.receive_datagrams(run, addr, now)
            self._dirty[link] = None
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush)

    def links(self) -> int:
        """QUIC connections on this socket, in any state but closed."""
        return sum(len(links) for links in self._links.values())

    def links_with(self, addr) -> int:
        """QUIC connections with one remote address, in any state but closed."""
        return len(self._links.get(tuple(addr), ()))

    # -- internals --------------------------------------------------------------------------

    def _configuration(self, is_client: bool) -> QuicConfiguration:
        settings = self.settings
        return QuicConfiguration(
            is_client=is_client,
            alpn_protocols=[ALPN],
            certificate=self.identity.certificate,
            private_key=self.identity.key,
            # Self-signed certificates: there is no chain to verify; the key is pinned instead.
            verify_mode=ssl.CERT_NONE,
            connection_id_length=CONNECTION_ID_LENGTH,
            idle_timeout=settings.idle_timeout,
            max_datagram_size=settings.max_datagram_size,
            congestion_control_algorithm=settings.congestion_control,
        )

    def _in_use(self, addr) -> int:
        """Connections with ``addr`` plus acceptances armed for it and not yet taken."""
        waiting = sum(1 for arm in self._arms.get(addr, ()) if arm.link is None)
        return len(self._links.get(addr, ())) + waiting

    def _route(self, data: bytes, addr, links) -> _Link | None:
        """The connection a datagram from ``addr`` is for, by its destination connection id;
        None when it is for none of them (an Initial, or a stray)."""
        if not links:
            return None
        cid = destination_connection_id(data)
        link = self._cids.get(cid)
        if link is not None:
            return link if link.addr == addr else None
        # An id aioquic issued whose event we have not handled yet (it is reported when the
        # frame announcing it is written).
        for link in links:
            if cid and link.conn.owns_connection_id(cid):
                self._add_cid(link, cid)
                return link
        return None

    def _runs_by_link(self, datagrams: list, addr, links) -> list:
        """``datagrams`` split into runs of consecutive ones for the same connection (None:
        for no connection yet), order kept."""
        runs: list = []
        for data in datagrams:
            link = self._route(data, addr, links)
            if runs and runs[-1][0] is link:
                runs[-1][1].append(data)
            else:
                runs.append((link, [data]))
        return runs

    def _add_link(self, link: _Link) -> None:
        self._links.setdefault(link.addr, []).append(link)
        self._add_cid(link, link.conn.host_cid)

    def _add_cid(self, link: _Link, cid: bytes) -> None:
        if link.state is _State.CLOSED:
            return
        self._cids[cid] = link
        link.cids.add(cid)

    def _drop_cid(self, link: _Link, cid: bytes) -> None:
        link.cids.discard(cid)
        if self._cids.get(cid) is link:
            del self._cids[cid]

    def _accept_initial(self, data: bytes, addr) -> _Link | None:
        arm = next((arm for arm in self._arms.get(addr, ()) if arm.link is None), None)
        if arm is None:
            return None
        # RFC 9000 §14.1: a client's Initial comes in a datagram of at least 1200 bytes.
        if len(data) < MIN_DATAGRAM_SIZE:
            return None
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CONNECTION_ID_LENGTH)
        except ValueError:
            return None
        if (header.packet_type != QuicPacketType.INITIAL
                or header.version not in QuicConfiguration().supported_versions
                or len(header.destination_cid) < 8):
            return None
        conn = PinnedQuicConnection(
            configuration=self._configuration(is_client=False),
            allowed_peer_ids=arm.allowed_peer_ids,
            receive_window=self.settings.receive_window,
            original_destination_connection_id=header.destination_cid)
        conn.fast_path = self.settings.fast_path
        link = _Link(self, addr, conn, arm.protocol_factory, arm.waiting, is_client=False)
        arm.link = link
        self._add_link(link)
        # The client sends to the id it chose until it learns ours.
        self._add_cid(link, header.destination_cid)
        return link

    def _disarm(self, result, addr, arm: _Arm):
        arms = self._arms.get(addr)
        if arms is not None and arm in arms:
            arms.remove(arm)
            if not arms:
                del self._arms[addr]
        if arm.timeout is not None and arm.timeout.active():
            arm.timeout.cancel()
        return result

    def _arm_timed_out(self, addr, arm: _Arm, limit: float) -> None:
        arm.timeout = None
        why = TimedOut(f"no QUIC connection from {addr[0]}:{addr[1]} within {limit:g} s")
        if arm.link is not None:
            arm.link.cancel(why)
        else:
            arm.waiting.errback(Failure(why))

    def _cancel_arm(self, addr, arm: _Arm) -> None:
        if arm.link is not None:
            self._cancel_link(arm.link)

    def _cancel_link(self, link: _Link) -> None:
        # The Deferred being cancelled fails itself with CancelledError.
        link._waiting = None
        link.cancel(defer.CancelledError())
        if link.state is not _State.CLOSED:
            link.pump()

    def _mark_dirty(self, link: _Link) -> None:
        self._dirty[link] = None
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        """Answer a whole batch of input at once: fewer ACK-only packets, fewer calls."""
        self._flush_call = None
        dirty, self._dirty = self._dirty, {}
        for link in dirty:
            link.pump()

    def _forget(self, link: _Link) -> None:
        links = self._links.get(link.addr)
        if links is not None and link in links:
            links.remove(link)
            if not links:
                del self._links[link.addr]
        for cid in list(link.cids):
            self._drop_cid(link, cid)
        self._dirty.pop(link, None)

    def _send(self, data: bytes, addr) -> None:
        try:
            self._raw_send(data, addr)
        except OSError as e:
            if e.errno not in SEND_LOSSES:
                raise
            self.send_failures += 1

    def _send_all(self, datagrams: list) -> None:
        """aioquic's ``(data, addr)`` list: through ``send_many`` when there is one."""
        send_many = self._raw_send_many
        if send_many is None or len(datagrams) == 1:
            for data, addr in datagrams:
                self._send(data, addr)
            return
        addr = datagrams[0][1]
        if all(other is addr or other == addr for _, other in datagrams):
            self.send_failures += send_many([data for data, _ in datagrams], addr)
        else:  # a path probe among them (aioquic only probes after a migration)
            for data, addr in datagrams:
                self.send_failures += send_many([data], addr)
