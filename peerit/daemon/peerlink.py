"""A peer link: the peer protocol on one authenticated byte stream (TCP+TLS, QUIC, relay).

Thin adapter: it frames bytes, checks the opening handshake against the identity the
transport proved, then hands every message to the swarm and pulls blocks to upload from it.
Uploads are driven by the transport's back-pressure (this protocol is the transport's push
producer), so a slow peer never makes us buffer more than the transport's own buffer.
"""

from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from peerit.errors import MalformedMessage, PeeritError
from peerit.shims import twisted_tcp
from peerit.tls import peer_id_of_transport
from peerit.wire import framing
from peerit.wire import peer as wire

log = Logger()

HANDSHAKE_TIMEOUT = 15.0
KEEPALIVE_INTERVAL = 30.0
IDLE_TIMEOUT = 120.0
CLOSE_GRACE = 5.0  # a peer that stops reading cannot hold a closing link open longer
UPLOAD_BURST_BYTES = 4 << 20
# Twisted's TCP transport reads up to bufferSize per doRead, pauses its producer (us)
# when more than bufferSize waits to be sent, and sends at most SEND_LIMIT per doWrite
# (defaults 64 KiB and 128 KiB). A 256 KiB block then meant a pause/resume cycle and two
# reactor turns per block. Measured with bench_transfer (CPU of all daemons, 2 runs each):
# 512 MiB 1->1: 3.95/3.45 s with 256 KiB / 128 KiB, 3.40/2.57 with 1 MiB / 512 KiB,
# 2.75/3.10 with 2 MiB / 1 MiB; 1+8 swarm 128 MiB: 12.5 s -> 8.5 (1 MiB) / 8.2 (2 MiB), but
# 2 MiB took a swarm downloader's peak RSS to 99 MiB (84 with 1 MiB). Held per link at most
# ~bufferSize + one block; only unchoked links (4 + 1) upload.
TCP_BUFFER = 1 << 20
BLOCK_BUFFERS = framing.BodyPool()  # every link's received blocks (reactor thread only)
TCP_SEND_LIMIT = 1 << 20


@implementer(IHandshakeListener, IPushProducer)
class PeerLink(Protocol):
    """One link. ``router`` resolves swarms and authorizes peers (see ``Daemon``)."""

    def __init__(self, router, clock, my_peer_id: bytes, info_hash: bytes | None = None,
                 expected_peer_id: bytes | None = None, path: str = "tcp",
                 on_ready=None, on_failed=None):
        self.router = router
        self.clock = clock
        self.my_peer_id = my_peer_id
        self.info_hash = info_hash  # known when we dial; learnt from the handshake otherwise
        self.expected_peer_id = expected_peer_id
        self.dialed_by_us = info_hash is not None
        self.path = path
        self.on_ready = on_ready  # dialer: called with self once the peer answered
        self.on_failed = on_failed  # dialer: called with a reason if it closes before that
        self.close_reason = "connection lost"
        self.peer_id = None  # proven by the transport
        self.remote = ""
        self.connect_seconds = 0.0
        self.swarm = None
        self.state = None  # PeerState once attached
        self._decoder = framing.FrameDecoder(wire.MAX_FRAME_SIZE, BLOCK_BUFFERS)
        self._handshaken = False
        self._closed = False
        self._paused = False
        self._pump_call = None
        self._timers = {}
        self._last_received = clock.seconds()
        self._last_sent = clock.seconds()

    # -- connection -----------------------------------------------------------------------
    def connectionMade(self):
        peer = self.transport.getPeer()
        self.remote = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        self._timers["handshake"] = self.clock.callLater(
            HANDSHAKE_TIMEOUT, self.close, "handshake timed out")
        self.transport.registerProducer(self, True)
        # Requests are small and latency-bound: never let Nagle hold them back.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        # Bulk data: bigger reads, writes and sends per reactor turn (see TCP_BUFFER).
        tcp = getattr(self.transport, "transport", None)
        if tcp is not None and hasattr(tcp, "bufferSize"):
            tcp.bufferSize = TCP_BUFFER
            twisted_tcp.set_send_limit(tcp, TCP_SEND_LIMIT)
        if getattr(self.transport, "peer_id", None) is not None:
            self._secured(self.transport.peer_id)  # QUIC/relay: proven before we start

    def handshakeCompleted(self):
        self._secured(peer_id_of_transport(self.transport))

    def _secured(self, peer_id: bytes | None) -> None:
        if peer_id is None:
            self.close("no identity proven")
            return
        if self.expected_peer_id is not None and peer_id != self.expected_peer_id:
            self.close("peer proved another identity than announced")
            return
        self.peer_id = peer_id
        if self.dialed_by_us:
            self._send(wire.Handshake(wire.PROTOCOL_VERSION, self.info_hash, self.my_peer_id))

    def dataReceived(self, data):
        self._frames_received(self._decoder.feed, data)

    # The TLS layer (peerit.tls.DirectTLS) decrypts straight into these buffers: a
    # block's payload lands in its own buffer with no intermediate bytes object or copy.
    def get_buffer(self) -> memoryview:
        return self._decoder.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self._frames_received(self._decoder.buffer_updated, nbytes)

    def _frames_received(self, decode, data) -> None:
        self._last_received = self.clock.seconds()
        try:
            frames = decode(data)
            for body in frames:
                if self._closed:
                    return
                message = wire.parse(body)
                if not self._handshaken:
                    self._on_handshake(message)
                elif self.state is not None:
                    self.swarm.handle(self.state, message)
        except MalformedMessage as e:
            log.info("peer link {remote}: {error}", remote=self.remote, error=str(e))
            if self.state is not None and not self._closed:
                # An attached peer that sends garbage is banned like any protocol breaker.
                self.swarm.ban(self.state, f"malformed message: {e}")
            else:
                self.close(f"malformed message: {e}")

    def _on_handshake(self, message) -> None:
        if self.peer_id is None:
            self.close("message before the TLS handshake")
            return
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
            self._handshaken = True
            self._ready()
            if self.on_ready is not None:
                self.on_failed = None
                self.on_ready(self)
            else:
                self.attach()
            return
        self.info_hash = message.info_hash
        self._handshaken = True
        d = self.router.authorize(message.info_hash, self.peer_id)
        d.addCallback(self._authorized)
        d.addErrback(lambda f: self.close(f"cannot authorize: {f.getErrorMessage()}"))

    def _authorized(self, refusal: str | None) -> None:
        if self._closed:
            return
        if refusal:
            self.close(refusal)
            return
        self._send(wire.Handshake(wire.PROTOCOL_VERSION, self.info_hash, self.my_peer_id))
        self._ready()
        self.attach()

    def _ready(self) -> None:
        timer = self._timers.pop("handshake", None)
        if timer is not None and timer.active():
            timer.cancel()
        self._timers["keepalive"] = self.clock.callLater(KEEPALIVE_INTERVAL, self._tick)

    def attach(self) -> None:
        """Join the swarm (the dialer's race calls this for the winner)."""
        swarm = self.router.swarm_for(self.info_hash)
        if swarm is None:
            self.close("swarm no longer active")
            return
        self.swarm = swarm
        self.state = swarm.attach(self)

    def _tick(self) -> None:
        now = self.clock.seconds()
        if now - self._last_received > IDLE_TIMEOUT:
            self.close("idle timeout")
            return
        if now - self._last_sent >= KEEPALIVE_INTERVAL * 0.9:
            self._send(wire.KeepAlive())
        self._timers["keepalive"] = self.clock.callLater(KEEPALIVE_INTERVAL, self._tick)

    def close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        log.debug("peer link {remote} closed: {reason}", remote=self.remote, reason=reason)
        self.close_reason = reason
        if self.transport is not None:
            if self._handshaken:
                # TLS sends close_notify (and closes) only once no producer is registered:
                # without this the link stayed open, the other side never learnt of the
                # close, and a banned or finished peer kept its connection.
                self.transport.unregisterProducer()
                self.transport.loseConnection()
                self._timers["closing"] = self.clock.callLater(
                    CLOSE_GRACE, self.transport.abortConnection)
            else:
                self.transport.abortConnection()

    def connectionLost(self, reason):
        self._closed = True
        if not self._handshaken or (self.dialed_by_us and self.state is None):
            if self.on_failed is not None:
                failed, self.on_failed = self.on_failed, None
                failed(self.close_reason if self.close_reason != "connection lost"
                       else reason.getErrorMessage())
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        if self._pump_call is not None and self._pump_call.active():
            self._pump_call.cancel()
        if self.state is not None:
            self.swarm.detach(self.state)
            self.state = None

    # -- sending --------------------------------------------------------------------------
    def _send(self, message) -> None:
        if self._closed:
            return
        body = wire.build(message)
        self.transport.write(framing.frame_header(len(body)) + body)
        self._last_sent = self.clock.seconds()

    send = _send

    def want_to_upload(self) -> None:
        if not self._paused and self._pump_call is None and not self._closed:
            self._pump_call = self.clock.callLater(0, self._pump)

    def _pump(self) -> None:
        self._pump_call = None
        sent = 0
        limiter = getattr(self.router, "upload_limiter", None)
        while not self._paused and not self._closed and self.state is not None:
            if limiter is not None and self.state.upload_queue:
                length = self.state.upload_queue[0][2]
                if not limiter.take(length):
                    self._pump_call = self.clock.callLater(limiter.wait_time(length),
                                                           self._pump)
                    return
            try:
                item = self.swarm.next_upload(self.state)
            except PeeritError as e:
                log.error("cannot read from our share: {error}", error=str(e))
                self.close("local read error")
                return
            if item is None:
                return
            piece, offset, data = item
            header = wire.block_header(piece, offset)
            self.transport.writeSequence(
                [framing.frame_header(len(header) + len(data)), header, data])
            sent += len(data)
            if sent >= UPLOAD_BURST_BYTES:
                self.want_to_upload()
                break
        self._last_sent = self.clock.seconds()

    # IPushProducer: the transport tells us when its buffer is full and when it drained.
    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        if self.state is not None and self.state.upload_queue:
            self.want_to_upload()

    def stopProducing(self):
        self._paused = True
