"""The peer protocol's session on one link, as an explicit state machine without I/O.

The session frames bytes, checks the opening handshake against the identity the transport
proved, has the inbound peer authorized, joins the swarm, keeps the link alive and pumps
blocks to upload. It writes only to an :class:`~peerit.daemon.peer_transport.IPeerTransport`
and waits only on its injected clock; :class:`~peerit.daemon.peerlink.PeerLink` is the thin
Twisted protocol that feeds it.

States (``TRANSITIONS`` lists every move there is; ``_move`` refuses the rest)::

    CONNECTING -> SECURED -> HANDSHAKEN -> AUTHORIZED -> ATTACHED -> CLOSING -> CLOSED

and from any state before CLOSING straight to CLOSING (we close) or CLOSED (the transport
went first).

- CONNECTING: the transport is up, its TLS handshake may still be running; nothing is
  accepted from the peer yet.
- SECURED: the transport proved the peer's identity (and it is the one we dialed).
- HANDSHAKEN: the peer's handshake message names that identity and our protocol version;
  an inbound link waits here for the daemon to authorize the peer.
- AUTHORIZED: both handshakes exchanged; keep-alive runs. A dialed link waits here for its
  dialer's race to pick it (``attach``); an inbound one attaches at once.
- ATTACHED: a member of its swarm, which gets every message.
- CLOSING: we closed; the transport drains (at most ``CLOSE_GRACE``).
- CLOSED: the transport is gone.
"""

import enum

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from peerit.daemon.peer_transport import IPeerTransport
from peerit.errors import MalformedMessage, PeeritError
from peerit.wire import framing
from peerit.wire import peer as wire

log = Logger()

HANDSHAKE_TIMEOUT = 15.0
KEEPALIVE_INTERVAL = 30.0
IDLE_TIMEOUT = 120.0
CLOSE_GRACE = 5.0  # a peer that stops reading cannot hold a closing link open longer
UPLOAD_BURST_BYTES = 4 << 20
BLOCK_BUFFERS = framing.BodyPool()  # every link's received blocks (reactor thread only)


class IPeerRouter(Interface):
    """What a session needs from the daemon: its swarms, and who may join them."""

    upload_limiter = Attribute("A token bucket every upload takes from, or None.")

    def authorize(info_hash, peer_id):
        """Deferred firing with None (welcome) or the reason to refuse."""

    def swarm_for(info_hash):
        """The running swarm for ``info_hash``, or None."""


class State(enum.Enum):
    CONNECTING = "connecting"
    SECURED = "secured"
    HANDSHAKEN = "handshaken"
    AUTHORIZED = "authorized"
    ATTACHED = "attached"
    CLOSING = "closing"
    CLOSED = "closed"


_ENDING = {State.CLOSING, State.CLOSED}
# The only transitions there are; _move refuses any other.
TRANSITIONS = {
    State.CONNECTING: {State.SECURED} | _ENDING,
    State.SECURED: {State.HANDSHAKEN} | _ENDING,
    State.HANDSHAKEN: {State.AUTHORIZED} | _ENDING,
    State.AUTHORIZED: {State.ATTACHED} | _ENDING,
    State.ATTACHED: _ENDING,
    State.CLOSING: {State.CLOSED},
    State.CLOSED: set(),
}
# A peer that sent a valid handshake gets an orderly TLS close; before that, an abort.
_GRACEFUL = {State.HANDSHAKEN, State.AUTHORIZED, State.ATTACHED}
_ATTACHED = State.ATTACHED  # per block: a module global is cheaper than an enum attribute


class PeerSession:
    """One link's session. ``info_hash`` is known when we dial, learnt from the handshake
    otherwise. A dialer passes ``on_ready(session)`` (called once the peer answered; the
    race then calls :meth:`attach` on the winner) and ``on_failed(reason)`` (called if the
    link ends before that)."""

    def __init__(self, router: IPeerRouter, clock: IReactorTime, my_peer_id: bytes,
                 info_hash: bytes | None = None, expected_peer_id: bytes | None = None,
                 path: str = "tcp", on_ready=None, on_failed=None):
        self.router = router
        self.clock = clock
        self.my_peer_id = my_peer_id
        self.info_hash = info_hash
        self.expected_peer_id = expected_peer_id
        self.dialed_by_us = info_hash is not None
        self.path = path
        self.on_ready = on_ready
        self.on_failed = on_failed
        self.state = State.CONNECTING
        self.close_reason = "connection lost"
        self.peer_id = None  # proven by the transport
        self.remote = ""
        self.connect_seconds = 0.0
        self.transport: IPeerTransport | None = None
        self.swarm = None
        self.peer = None  # the swarm's PeerState once attached
        self.decoder = framing.FrameDecoder(wire.MAX_FRAME_SIZE, BLOCK_BUFFERS)
        self._paused = False
        self._pump_call = None
        self._timers = {}
        self._last_received = clock.seconds()
        self._last_sent = clock.seconds()

    def _move(self, to: State) -> None:
        if to not in TRANSITIONS[self.state]:
            raise AssertionError(f"peer session: {self.state.name} -> {to.name}")
        self.state = to

    @property
    def closed(self) -> bool:
        return self.state in _ENDING

    # -- events from the transport --------------------------------------------------------
    def connected(self, transport: IPeerTransport) -> None:
        self.transport = transport
        self.remote = transport.remote
        if self.closed:  # cancelled while its connection was being made
            transport.abortConnection()
            return
        self._timers["handshake"] = self.clock.callLater(
            HANDSHAKE_TIMEOUT, self.close, "handshake timed out")
        if transport.proven_at_start:
            self.secured()

    def secured(self) -> None:
        """The transport's handshake is done: check the identity it proved."""
        if self.state is not State.CONNECTING:
            return
        peer_id = self.transport.proven_peer_id()
        if peer_id is None:
            self.close("no identity proven")
            return
        if self.expected_peer_id is not None and peer_id != self.expected_peer_id:
            self.close("peer proved another identity than announced")
            return
        self.peer_id = peer_id
        self._move(State.SECURED)
        if self.dialed_by_us:
            self.send(wire.Handshake(wire.PROTOCOL_VERSION, self.info_hash, self.my_peer_id))

    def data_received(self, data) -> None:
        self._frames_received(self.decoder.feed, data)

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were decrypted straight into ``decoder.get_buffer()``."""
        self._frames_received(self.decoder.buffer_updated, nbytes)

    def _frames_received(self, decode, data) -> None:
        self._last_received = self.clock.seconds()
        try:
            frames = decode(data)
            for body in frames:
                if self.state is _ATTACHED:
                    self.swarm.handle(self.peer, wire.parse(body))
                elif self.state in _ENDING:
                    return
                else:
                    message = wire.parse(body)
                    if self.state is State.CONNECTING:
                        self.close("message before the TLS handshake")
                    elif self.state is State.SECURED:
                        self._on_handshake(message)
                    # HANDSHAKEN / AUTHORIZED: not yet in the swarm, nothing to act on.
        except MalformedMessage as e:
            log.info("peer link {remote}: {error}", remote=self.remote, error=str(e))
            if self.state is State.ATTACHED and self.peer is not None:
                # An attached peer that sends garbage is banned like any protocol breaker.
                self.swarm.ban(self.peer, f"malformed message: {e}")
            else:
                self.close(f"malformed message: {e}")

    def connection_lost(self, why: str) -> None:
        if self.state is not State.CLOSED:
            if self.state is not State.CLOSING:
                self._move(State.CLOSING)
            self._move(State.CLOSED)
        if self.peer is None and self.on_failed is not None:  # it never joined its swarm
            failed, self.on_failed = self.on_failed, None
            failed(self.close_reason if self.close_reason != "connection lost" else why)
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        if self._pump_call is not None and self._pump_call.active():
            self._pump_call.cancel()
        if self.peer is not None:
            self.swarm.detach(self.peer)
            self.peer = None

    # -- the opening handshake ------------------------------------------------------------
    def _on_handshake(self, message) -> None:
        if not isinstance(message, wire.Handshake):
            self.close("expected a handshake")
            return
        if message.version != wire.PROTOCOL_VERSION:
            self.close(f"unsupported protocol version {message.version}")
            return
        if message.peer_id != self.peer_id:
            self.close("handshake names another peer than its certificate")
            return
        if self.dialed_by_us:
            if message.info_hash != self.info_hash:
                self.close("peer answered for another swarm")
                return
            self._move(State.HANDSHAKEN)
            self._authorized()
            if self.on_ready is not None:
                self.on_failed = None
                self.on_ready(self)
            else:
                self.attach()
            return
        self.info_hash = message.info_hash
        self._move(State.HANDSHAKEN)
        d = self.router.authorize(message.info_hash, self.peer_id)
        d.addCallback(self._authorization)
        d.addErrback(lambda f: self.close(f"cannot authorize: {f.getErrorMessage()}"))

    def _authorization(self, refusal: str | None) -> None:
        if self.closed:
            return
        if refusal:
            self.close(refusal)
            return
        self.send(wire.Handshake(wire.PROTOCOL_VERSION, self.info_hash, self.my_peer_id))
        self._authorized()
        self.attach()

    def _authorized(self) -> None:
        self._move(State.AUTHORIZED)
        timer = self._timers.pop("handshake", None)
        if timer is not None and timer.active():
            timer.cancel()
        self._timers["keepalive"] = self.clock.callLater(KEEPALIVE_INTERVAL, self._tick)

    def attach(self) -> None:
        """Join the swarm (the dialer's race calls this for the winner)."""
        if self.state is not State.AUTHORIZED:
            return
        swarm = self.router.swarm_for(self.info_hash)
        if swarm is None:
            self.close("swarm no longer active")
            return
        self.swarm = swarm
        self._move(State.ATTACHED)
        peer = swarm.attach(self)
        if self.state is State.ATTACHED:  # the swarm may refuse (close) us instead
            self.peer = peer

    def rejoin(self) -> None:
        """Move from the swarm the link is in to the one now registered for its info-hash:
        a download known by its link, whose metadata just arrived, keeps the links of its
        metadata phase (the old swarm has let them go already)."""
        if self.state is not _ATTACHED:
            return
        swarm = self.router.swarm_for(self.info_hash)
        if swarm is None:
            self.close("swarm no longer active")
            return
        self.swarm, self.peer = swarm, None
        peer = swarm.attach(self)
        if self.state is _ATTACHED:  # the swarm may refuse (close) us instead
            self.peer = peer

    # -- keep-alive -----------------------------------------------------------------------
    def _tick(self) -> None:
        now = self.clock.seconds()
        if now - self._last_received > IDLE_TIMEOUT:
            self.close("idle timeout")
            return
        if now - self._last_sent >= KEEPALIVE_INTERVAL * 0.9:
            self.send(wire.KeepAlive())
        self._timers["keepalive"] = self.clock.callLater(KEEPALIVE_INTERVAL, self._tick)

    # -- closing --------------------------------------------------------------------------
    def close(self, reason: str) -> None:
        if self.closed:
            return
        graceful = self.state in _GRACEFUL
        log.debug("peer link {remote} closed: {reason}", remote=self.remote, reason=reason)
        self.close_reason = reason
        transport = self.transport
        self._move(State.CLOSING)
        if transport is None:
            return  # ``connected`` aborts the transport if it ever comes
        if graceful:
            # TLS sends close_notify (and closes) only once no producer is registered:
            # without this the link stayed open, the other side never learnt of the
            # close, and a banned or finished peer kept its connection.
            transport.unregisterProducer()
            transport.loseConnection()
            self._timers["closing"] = self.clock.callLater(
                CLOSE_GRACE, transport.abortConnection)
        else:
            transport.abortConnection()

    # -- sending --------------------------------------------------------------------------
    def send(self, message) -> None:
        if self.closed:
            return
        body = wire.build(message)
        self.transport.write(framing.frame_header(len(body)) + body)
        self._last_sent = self.clock.seconds()

    def want_to_upload(self) -> None:
        if not self._paused and self._pump_call is None and not self.closed:
            self._pump_call = self.clock.callLater(0, self._pump)

    def _pump(self) -> None:
        self._pump_call = None
        sent = 0
        limiter = self.router.upload_limiter
        write_sequence = self.transport.writeSequence
        while not self._paused and self.state is _ATTACHED and self.peer is not None:
            if limiter is not None and self.peer.upload_queue:
                length = self.peer.upload_queue[0][2]
                if not limiter.take(length):
                    self._pump_call = self.clock.callLater(limiter.wait_time(length),
                                                           self._pump)
                    return
            try:
                item = self.swarm.next_upload(self.peer)
            except PeeritError as e:
                log.error("cannot read from our share: {error}", error=str(e))
                self.close("local read error")
                return
            if item is None:
                return
            piece, offset, data = item
            header = wire.block_header(piece, offset)
            write_sequence([framing.frame_header(len(header) + len(data)), header, data])
            sent += len(data)
            if sent >= UPLOAD_BURST_BYTES:
                self.want_to_upload()
                break
        self._last_sent = self.clock.seconds()

    # Back-pressure from the transport (the link is its push producer).
    def pause_producing(self) -> None:
        self._paused = True

    def resume_producing(self) -> None:
        self._paused = False
        if self.peer is not None and self.peer.upload_queue:
            self.want_to_upload()
