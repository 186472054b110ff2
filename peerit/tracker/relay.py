"""The tracker's relay: two peers that cannot reach each other meet here and get spliced.

Plain TCP (the peers' own TLS runs end to end inside, so the relay sees only ciphertext).
Each side opens a connection and sends :data:`RELAY_HELLO_MAGIC` + a 32-byte token first;
the token was issued by the tracker (``RelayRequest`` -> ``RelayOffer`` to both, see
``peerit.tracker.nat``) and works once, for two connections. When the second arrives the two
are spliced: bytes from one are written to the other, both ways.

Bounds, all of them:

- the hello must arrive within ``preamble_timeout`` of connecting; a byte that cannot be the
  magic, an unknown, expired or used token: closed at once, without a reply;
- a token not matched within ``token_lifetime`` expires, and the side waiting with it is closed;
- a side that sends before its partner arrives has at most ``hold_limit`` bytes held (plus
  the one read that crossed it), then its reading pauses;
- spliced, each side is a push producer for the other's transport: when one's send buffer is
  full the other is not read (back-pressure end to end, nothing queues here), and each
  direction is capped at ``rate`` bytes/s by a token bucket (reading pauses for the deficit);
- a splice silent both ways for ``idle_timeout`` is closed; so is a closing side that will not
  take its last bytes within ``CLOSE_GRACE``;
- at most ``max_sessions`` relays (issued tokens count) and ``max_connections`` connections
  in all; a peer is part of at most ``per_peer`` at once.

:class:`RelayBroker` holds the tokens and counts (no I/O beyond calling its connections);
:class:`RelayConnection` is the thin protocol; :class:`RelaySplice` pairs two of them.

Each side is an explicit machine (:class:`Side`, moves in ``TRANSITIONS``) and only the side
itself moves it; the broker and the splice tell it what happened (``wait``, ``spliced``,
``finish``)::

    PREAMBLE -> WAITING -> SPLICED -> CLOSING -> CLOSED

and from any of the first three straight to CLOSING (closed at once) or CLOSED (the
connection went, or was refused at connect).
"""

import enum
import hashlib
import os
from dataclasses import dataclass
from typing import Callable

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from peerit.identity import format_fingerprint
from peerit.ratelimit import TokenBucket
from peerit.wire.tracker import RELAY_TOKEN_SIZE
from peerit.wire.relay import (  # noqa: F401 (relay_hello: the tracker's re-export)
    RELAY_HELLO_MAGIC, RELAY_HELLO_SIZE, could_be_relay_hello, parse_relay_hello, relay_hello)

log = Logger(namespace="peerit.tracker.relay")

CLOSE_GRACE = 10.0


@dataclass(frozen=True)
class RelayLimits:
    """What the relay allows; the tap's ``--relay-*`` options."""
    rate: float = 10_000_000        # bytes/s, each direction of each relayed session
    max_sessions: int = 200          # relays at once, issued tokens included
    per_peer: int = 4                # relays one peer is part of at once
    token_lifetime: float = 30.0     # issue -> both sides connected
    preamble_timeout: float = 10.0   # connect -> hello received
    idle_timeout: float = 180.0      # silence both ways (peer links keep alive every 30 s)
    hold_limit: int = 64 * 1024      # held for a side whose partner is not there yet
    max_connections: int = 0         # 0: twice max_sessions plus 256 not yet paired

    def __post_init__(self):
        if not self.rate > 0:
            raise ValueError("relay rate must be positive")
        for name in ("max_sessions", "per_peer", "hold_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("token_lifetime", "preamble_timeout", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")

    @property
    def connection_cap(self) -> int:
        return self.max_connections or 2 * self.max_sessions + 256

    @property
    def burst(self) -> int:
        """Token bucket depth: 50 ms at the rate, at least one socket read (64 KiB)."""
        return max(64 * 1024, int(self.rate / 20))


class RelayRefused(Exception):
    """The relay cannot take another session; ``code`` is the tracker error code."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass
class _Offer:
    token: bytes
    peers: tuple[bytes, bytes]
    expiry: object                      # IDelayedCall
    waiting: "RelayConnection | None" = None


class RelayBroker:
    """Tokens, pairing and counts. ``random_bytes(n)`` makes tokens (``os.urandom``)."""

    def __init__(self, clock: IReactorTime, limits: RelayLimits = RelayLimits(),
                 random_bytes: Callable[[int], bytes] = os.urandom):
        self.clock = clock
        self.limits = limits
        self.random_bytes = random_bytes
        self._offers: dict[bytes, _Offer] = {}
        self.splices: set["RelaySplice"] = set()
        self.connections: set["RelayConnection"] = set()
        self._involving: dict[bytes, int] = {}
        self.sessions_completed = 0
        self.bytes_relayed = 0

    # -- tracker side ------------------------------------------------------------------------

    def offer(self, requester: bytes, target: bytes) -> bytes:
        """A one-time token for these two peers; raises :class:`RelayRefused`."""
        if len(self._offers) + len(self.splices) >= self.limits.max_sessions:
            raise RelayRefused("relay_unavailable",
                               f"relay full ({self.limits.max_sessions} sessions)")
        for peer, who in ((requester, "you are"), (target, "that peer is")):
            if self._involving.get(peer, 0) >= self.limits.per_peer:
                raise RelayRefused("too_many_attempts",
                                   f"{who} in {self.limits.per_peer} relays already")
        token = self.random_bytes(RELAY_TOKEN_SIZE)
        if len(token) != RELAY_TOKEN_SIZE or token in self._offers:
            raise RelayRefused("relay_unavailable", "could not make a token")
        expiry = self.clock.callLater(self.limits.token_lifetime, self._expire, token)
        self._offers[token] = _Offer(token, (requester, target), expiry)
        for peer in (requester, target):
            self._involving[peer] = self._involving.get(peer, 0) + 1
        return token

    def withdraw(self, token: bytes) -> None:
        """Forget an offer that was never delivered."""
        offer = self._offers.pop(token, None)
        if offer is not None:
            offer.expiry.cancel()
            self._release(offer.peers)
            if offer.waiting is not None:
                offer.waiting.close()

    @property
    def pending(self) -> int:
        return len(self._offers)

    # -- connection side ---------------------------------------------------------------------

    def connection_opened(self, connection: "RelayConnection") -> bool:
        if len(self.connections) >= self.limits.connection_cap:
            return False
        self.connections.add(connection)
        return True

    def connection_closed(self, connection: "RelayConnection") -> None:
        self.connections.discard(connection)
        for offer in self._offers.values():
            if offer.waiting is connection:
                # The side that waited went away; its token stays good until it expires,
                # so a peer that reconnects can still meet its partner.
                offer.waiting = None
                break

    def present(self, token: bytes, connection: "RelayConnection") -> bool:
        """A connection showed a token: wait for the partner, or splice with it.

        False for a token that is unknown, expired or already used by two connections
        (the caller closes without a word).
        """
        offer = self._offers.get(token)
        if offer is None:
            return False
        if offer.waiting is None:
            offer.waiting = connection
            connection.wait()
            return True
        del self._offers[token]
        offer.expiry.cancel()
        splice = RelaySplice(self, offer.waiting, connection, offer.peers)
        self.splices.add(splice)
        splice.start()
        return True

    def splice_ended(self, splice: "RelaySplice") -> None:
        if splice in self.splices:
            self.splices.discard(splice)
            self._release(splice.peers)
            self.sessions_completed += 1
            self.bytes_relayed += sum(splice.bytes_from)

    def close_all(self) -> None:
        for token in list(self._offers):
            self.withdraw(token)
        for connection in list(self.connections):
            connection.close()

    def _expire(self, token: bytes) -> None:
        offer = self._offers.pop(token, None)
        if offer is None:
            return
        self._release(offer.peers)
        if offer.waiting is not None:
            log.info("relay token {token} expired with one side waiting ({source})",
                     token=token_label(token), source=offer.waiting.source)
            offer.waiting.close()

    def _release(self, peers) -> None:
        for peer in peers:
            count = self._involving.get(peer, 0) - 1
            if count > 0:
                self._involving[peer] = count
            else:
                self._involving.pop(peer, None)


def token_label(token: bytes) -> str:
    """For logs: enough to tell sessions apart, useless to anyone reading them."""
    return hashlib.sha256(token).hexdigest()[:8]


class Side(enum.Enum):
    PREAMBLE = "preamble"   # connected; reading the hello
    WAITING = "waiting"     # token accepted; the partner is not here yet
    SPLICED = "spliced"     # bytes flow to and from the partner
    CLOSING = "closing"     # we closed (abort, or drain within CLOSE_GRACE)
    CLOSED = "closed"       # the connection is gone, or was refused at connect


_ENDING = {Side.CLOSING, Side.CLOSED}
# The only transitions there are; _move refuses any other.
TRANSITIONS = {
    Side.PREAMBLE: {Side.WAITING, Side.SPLICED} | _ENDING,
    Side.WAITING: {Side.SPLICED} | _ENDING,
    Side.SPLICED: _ENDING,
    Side.CLOSING: {Side.CLOSED},
    Side.CLOSED: set(),
}


@implementer(IPushProducer)
class RelayConnection(Protocol):
    """One side of a relay. Its reading pauses for any of: held bytes over the limit, the
    rate cap, the partner's full send buffer (it is registered as the partner transport's
    producer); it resumes once no reason remains."""

    def __init__(self, broker: RelayBroker):
        self.broker = broker
        self.clock = broker.clock
        self.state = Side.PREAMBLE
        self.partner: "RelayConnection | None" = None
        self.splice: "RelaySplice | None" = None
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.source = "?"
        self._hello = b""
        self._paused: set[str] = set()
        self._timer = None

    def _move(self, to: Side) -> None:
        if to not in TRANSITIONS[self.state]:
            raise AssertionError(f"relay side: {self.state.name} -> {to.name}")
        self.state = to

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.source = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        if not self.broker.connection_opened(self):
            log.warn("relay refused connection from {source}: connection cap reached",
                     source=self.source)
            self._move(Side.CLOSED)  # never counted, so its loss is nobody's business
            self.transport.abortConnection()
            return
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)   # relayed TLS handshakes are small writes that must not wait
        self._timer = self.clock.callLater(self.broker.limits.preamble_timeout,
                                           self._preamble_expired)

    def dataReceived(self, data: bytes):
        state = self.state
        if state is Side.SPLICED:
            self.splice.forward(self, data)
        elif state is Side.WAITING:
            self._hold(data)
        elif state is Side.PREAMBLE:
            self._preamble(data)

    def connectionLost(self, reason=None):
        if self.state is Side.CLOSED:
            return
        if self.state is not Side.CLOSING:
            self._move(Side.CLOSING)
        self._move(Side.CLOSED)
        self._cancel_timer()
        self.broker.connection_closed(self)
        if self.splice is not None:
            self.splice.end(self)  # once: the splice ignores the second side's loss

    # -- states ------------------------------------------------------------------------------

    def _preamble(self, data: bytes) -> None:
        hello = self._hello + data
        if not could_be_relay_hello(hello):
            log.info("relay connection from {source}: not a relay hello; closed",
                     source=self.source)
            self.close()
            return
        if len(hello) < RELAY_HELLO_SIZE:
            self._hello = hello
            return
        self._hello = b""
        self._cancel_timer()
        token, rest = parse_relay_hello(hello), hello[RELAY_HELLO_SIZE:]
        if rest:
            self._hold(rest)
        if not self.broker.present(token, self):
            log.info("relay connection from {source}: unknown, expired or used token; closed",
                     source=self.source)
            self.close()

    def wait(self) -> None:
        """The broker took our token; the partner is not here yet."""
        self._move(Side.WAITING)

    def spliced(self, splice: "RelaySplice", partner: "RelayConnection") -> None:
        """The broker paired us with ``partner`` in ``splice``."""
        self._move(Side.SPLICED)
        self.splice = splice
        self.partner = partner

    def _hold(self, data: bytes) -> None:
        self.held.append(data)
        self.held_bytes += len(data)
        if self.held_bytes >= self.broker.limits.hold_limit:
            self.pause("hold")

    def take_held(self) -> bytes:
        data = b"".join(self.held)
        self.held, self.held_bytes = [], 0
        return data

    def _preamble_expired(self) -> None:
        self._timer = None
        log.info("relay connection from {source}: no hello within {seconds:g}s; closed",
                 source=self.source, seconds=self.broker.limits.preamble_timeout)
        self.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- reading control -----------------------------------------------------------------------

    def pause(self, reason: str) -> None:
        if not self._paused and self.state not in _ENDING:
            self.transport.pauseProducing()
        self._paused.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._paused:
            return
        self._paused.discard(reason)
        if not self._paused and self.state not in _ENDING:
            self.transport.resumeProducing()

    # IPushProducer, for the partner's transport: its send buffer filled or drained.
    def pauseProducing(self):
        self.pause("backpressure")

    def resumeProducing(self):
        self.resume("backpressure")

    def stopProducing(self):
        pass  # the partner's connection is going; its connectionLost ends the splice

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close without a reply, now."""
        if self.state in _ENDING:
            return
        self._move(Side.CLOSING)
        self._cancel_timer()
        self.transport.abortConnection()

    def finish(self) -> None:
        """The partner left: send what is still buffered, then close (bounded by CLOSE_GRACE)."""
        if self.state in _ENDING:
            return
        self._move(Side.CLOSING)
        self._cancel_timer()
        # Our transport has the partner registered as its producer; a registered producer
        # would hold the close back.
        try:
            self.transport.unregisterProducer()
        except RuntimeError:
            pass
        self.transport.loseConnection()
        self._timer = self.clock.callLater(CLOSE_GRACE, self.transport.abortConnection)


class RelaySplice:
    """Two connections with the same token, spliced both ways."""

    def __init__(self, broker: RelayBroker, first: RelayConnection, second: RelayConnection,
                 peers: tuple[bytes, bytes]):
        self.broker = broker
        self.clock = broker.clock
        self.limits = broker.limits
        self.first, self.second = first, second
        self.peers = peers
        self.bytes_from = [0, 0]           # first -> second, second -> first
        self.started_at = self.clock.seconds()
        self.last_active = self.started_at
        self.ended = False
        self._buckets = {first: TokenBucket(self.clock, self.limits.rate, self.limits.burst),
                         second: TokenBucket(self.clock, self.limits.rate, self.limits.burst)}
        self._rate_timers = {}
        self._idle_timer = None

    def start(self) -> None:
        first, second = self.first, self.second
        first.spliced(self, second)
        second.spliced(self, first)
        # Each side produces for the other's transport: a full send buffer on one side
        # pauses reading on the other.
        second.transport.registerProducer(first, True)
        first.transport.registerProducer(second, True)
        log.info("relay session {token} up: {a} <-> {b} (peers {pa} and {pb})",
                 token=self.label, a=first.source, b=second.source,
                 pa=format_fingerprint(self.peers[0])[:16],
                 pb=format_fingerprint(self.peers[1])[:16])
        for connection in (first, second):
            held = connection.take_held()
            if held and not self.ended:
                self.forward(connection, held)
            connection.resume("hold")
        if not self.ended:
            self._idle_timer = self.clock.callLater(self.limits.idle_timeout, self._idle_check)

    @property
    def label(self) -> str:
        return f"#{id(self) & 0xffffff:06x}"

    def forward(self, source: RelayConnection, data: bytes) -> None:
        if self.ended:
            return
        self.bytes_from[0 if source is self.first else 1] += len(data)
        self.last_active = self.clock.seconds()
        source.partner.transport.write(data)
        delay = self._buckets[source].consume(len(data))
        if delay > 0 and source not in self._rate_timers:
            source.pause("rate")
            self._rate_timers[source] = self.clock.callLater(delay, self._rate_ok, source)

    def _rate_ok(self, source: RelayConnection) -> None:
        del self._rate_timers[source]
        delay = self._buckets[source].consume(0)
        if delay > 0:
            self._rate_timers[source] = self.clock.callLater(delay, self._rate_ok, source)
        else:
            source.resume("rate")

    def _idle_check(self) -> None:
        self._idle_timer = None
        silent = self.clock.seconds() - self.last_active
        if silent >= self.limits.idle_timeout:
            log.info("relay session {token}: idle for {seconds:.0f}s; closing",
                     token=self.label, seconds=silent)
            self.end(None)
            return
        self._idle_timer = self.clock.callLater(self.limits.idle_timeout - silent,
                                                self._idle_check)

    def end(self, by: RelayConnection | None) -> None:
        """One side closed (``by``), or the splice idled out (None): close the rest."""
        if self.ended:
            return
        self.ended = True
        for timer in [*self._rate_timers.values(), self._idle_timer]:
            if timer is not None and timer.active():
                timer.cancel()
        self._rate_timers.clear()
        for connection in (self.first, self.second):
            if connection is not by:
                connection.finish()
        seconds = self.clock.seconds() - self.started_at
        log.info("relay session {token} ended after {seconds:.1f}s: {a_bytes} bytes "
                 "{a} -> {b}, {b_bytes} bytes back ({how})", token=self.label,
                 seconds=seconds, a=self.first.source, b=self.second.source,
                 a_bytes=self.bytes_from[0], b_bytes=self.bytes_from[1],
                 how="idle" if by is None else f"{by.source} closed")
        self.broker.splice_ended(self)


class RelayFactory(Factory):
    noisy = False

    def __init__(self, broker: RelayBroker):
        self.broker = broker

    def buildProtocol(self, addr):
        protocol = RelayConnection(self.broker)
        protocol.factory = self
        return protocol
