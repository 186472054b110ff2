"""The daemon's side of the tracker session: one pinned TLS session, kept up for good.

:class:`TrackerClient` is a service: it connects (its own reconnect loop with backoff, not ``ClientService``),
pins the tracker's fingerprint in the TLS handshake, says Hello, replays the daemon's current
announces after every (re)connect, keeps the session alive, and hands whatever the tracker
pushes to the daemon's push handler. The per-connection logic is :class:`TrackerLink`, which
does no I/O of its own and is tested against the tracker's session logic with iosim.
"""

import collections
import random
from typing import Callable, Iterable

from twisted.application import service
from twisted.application.internet import backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.logger import Logger
from zope.interface import implementer

from peerit.addresses import TrackerAddress
from peerit.errors import MalformedMessage, PeeritError, TimedOut
from peerit.identity import Identity
from peerit.tls import PinnedClientTLS
from peerit.wire import tracker as wire
from peerit.wire.framing import FrameDecoder, frame

log = Logger(namespace="peerit.daemon.tracker_client")

DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 10.0


class TrackerUnavailable(PeeritError):
    """No session with the tracker (not connected yet, or the session ended)."""


class TrackerRefused(PeeritError):
    """The tracker answered a request with an Error."""

    def __init__(self, error: wire.Error):
        super().__init__(f"tracker refused: {error.code}: {error.reason}")
        self.error = error


PushHandler = Callable[[object], None]


class TrackerLink:
    """One connection's worth of tracker session, client side. No I/O: ``write`` sends bytes,
    ``abort`` drops the connection; the owner feeds :meth:`handshake_completed`,
    :meth:`data_received` and :meth:`connection_lost`."""

    def __init__(self, clock: IReactorTime, write: Callable[[bytes], None],
                 abort: Callable[[], None], hello: Callable[[], wire.Hello],
                 announces: Callable[[], Iterable[wire.Announce]], on_push: PushHandler,
                 welcome_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 rng: random.Random | None = None):
        self._clock = clock
        self._write = write
        self._abort = abort
        self._hello = hello
        self._announces = announces
        self._on_push = on_push
        self._rng = rng or random.Random()
        self._decoder = FrameDecoder(wire.MAX_TRACKER_FRAME_SIZE)
        self.welcome: wire.Welcome | None = None
        self.welcomed = Deferred()
        self.lost = Deferred()   # fires (with this link) once the session is over
        self.closed = False
        self._peer_lists: dict[bytes, collections.deque] = {}
        self._pings: dict[int, tuple[Deferred, float]] = {}
        self._last_heard = clock.seconds()
        self._timer = clock.callLater(welcome_timeout, self._welcome_expired)

    @property
    def active(self) -> bool:
        return self.welcome is not None and not self.closed

    # -- events ------------------------------------------------------------------------------

    def handshake_completed(self) -> None:
        """TLS proved the pinned tracker key: introduce ourselves."""
        self._send(self._hello())

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._last_heard = self._clock.seconds()
        try:
            for body in self._decoder.feed(data):
                self._message_received(wire.parse(body))
                if self.closed:
                    return
        except MalformedMessage as e:
            log.warn("tracker sent a bad frame ({reason}); reconnecting", reason=str(e))
            self.close()

    def connection_lost(self, reason=None) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        lost = TrackerUnavailable("tracker session ended")
        if not self.welcomed.called:
            self.welcomed.errback(reason if reason is not None else lost)
        pending = [d for queue in self._peer_lists.values() for d in queue]
        pending += [d for d, _ in self._pings.values()]
        self._peer_lists.clear()
        self._pings.clear()
        for d in pending:
            d.errback(TrackerUnavailable("tracker session ended"))
        self.lost.callback(self)

    def close(self) -> None:
        self._abort()
        self.connection_lost()

    # -- requests ----------------------------------------------------------------------------

    def send(self, message) -> bool:
        if not self.active:
            return False
        self._send(message)
        return True

    def request_peers(self, info_hash: bytes, max_peers: int) -> Deferred:
        """Fires with a list of :class:`~peerit.wire.tracker.PeerInfo` (no timeout here)."""
        if not self.active:
            return fail(TrackerUnavailable("not connected to the tracker"))
        queue = self._peer_lists.setdefault(info_hash, collections.deque())
        d = Deferred(lambda d: _discard(queue, d))
        queue.append(d)
        self._send(wire.PeerListRequest(info_hash, min(max_peers, wire.MAX_PEERS_PER_LIST)))
        return d

    def ping(self) -> Deferred:
        """Fires with the round-trip time in seconds (no timeout here)."""
        if not self.active:
            return fail(TrackerUnavailable("not connected to the tracker"))
        nonce = self._rng.getrandbits(64)
        d = Deferred(lambda d: self._pings.pop(nonce, None))
        self._pings[nonce] = (d, self._clock.seconds())
        self._send(wire.Ping(nonce))
        return d

    # -- inside ------------------------------------------------------------------------------

    def _send(self, message) -> None:
        self._write(frame(wire.build(message)))

    def _message_received(self, message) -> None:
        kind = type(message)
        if self.welcome is None:
            if kind is wire.Error:
                log.warn("tracker refused the session: {code}: {reason}",
                         code=message.code, reason=message.reason)
                self.close()
            elif kind is not wire.Welcome:
                log.warn("tracker sent {kind} before Welcome; reconnecting", kind=kind.__name__)
                self.close()
            else:
                self._welcomed(message)
            return
        if kind is wire.PeerList:
            queue = self._peer_lists.get(message.info_hash)
            if queue:
                d = queue.popleft()
                if not queue:
                    del self._peer_lists[message.info_hash]
                d.callback(list(message.peers))
        elif kind is wire.Pong:
            waiting = self._pings.pop(message.nonce, None)
            if waiting is not None:
                d, sent_at = waiting
                d.callback(self._clock.seconds() - sent_at)
        elif kind is wire.KeepAlive:
            pass
        elif kind is wire.Error:
            self._error_received(message)
        else:
            self._on_push(message)

    def _welcomed(self, welcome: wire.Welcome) -> None:
        self.welcome = welcome
        self._timer.cancel()
        interval = max(welcome.keepalive_ms, 100) / 1000.0
        self._timer = self._clock.callLater(interval, self._keepalive, interval)
        for announce in self._announces():
            self._send(announce)
        self.welcomed.callback(welcome)

    def _error_received(self, error: wire.Error) -> None:
        if error.refused_opcode == wire.messages.opcode_of(wire.PeerListRequest):
            queue = self._peer_lists.get(error.info_hash)
            if queue:
                queue.popleft().errback(TrackerRefused(error))
                if not queue:
                    del self._peer_lists[error.info_hash]
                return
        if error.code in wire.FATAL_ERRORS:
            log.warn("tracker closed the session: {code}: {reason}",
                     code=error.code, reason=error.reason)
            self._on_push(error)
            self.close()
            return
        log.info("tracker refused a request: {code}: {reason}",
                 code=error.code, reason=error.reason)
        self._on_push(error)

    def _keepalive(self, interval: float) -> None:
        # Sent on every interval (not only when idle): the tracker echoes it, and that echo
        # is how this side notices a tracker that vanished without closing the connection.
        self._timer = None
        if self._clock.seconds() - self._last_heard >= 3 * interval:
            log.warn("tracker silent for {seconds:.1f}s; reconnecting",
                     seconds=self._clock.seconds() - self._last_heard)
            self.close()
            return
        self._send(wire.KeepAlive())
        self._timer = self._clock.callLater(interval, self._keepalive, interval)

    def _welcome_expired(self) -> None:
        self._timer = None
        log.warn("no Welcome from the tracker in time; reconnecting")
        self.close()


def _discard(queue: collections.deque, d: Deferred) -> None:
    try:
        queue.remove(d)
    except ValueError:
        pass


@implementer(IHandshakeListener)
class _TrackerClientProtocol(Protocol):
    """Thin adapter: TLS events and bytes in, to its :class:`TrackerLink`."""

    def __init__(self, client: "TrackerClient"):
        self.client = client
        self.link: TrackerLink | None = None

    def connectionMade(self):
        c = self.client
        self.link = TrackerLink(c.clock, self.transport.write, self.transport.abortConnection,
                                c._hello, c._announces, c._push,
                                welcome_timeout=c.connect_timeout)

    def handshakeCompleted(self):
        self.link.handshake_completed()

    def dataReceived(self, data):
        self.link.data_received(data)

    def connectionLost(self, reason):
        self.link.connection_lost(reason)


class _TrackerClientFactory(Factory):
    noisy = False

    def __init__(self, client: "TrackerClient"):
        self.client = client

    def buildProtocol(self, addr):
        protocol = _TrackerClientProtocol(self.client)
        protocol.factory = self
        return protocol


class TrackerClient(service.Service):
    """The daemon's session with its tracker, re-established whenever it drops.

    ``hello()`` returns the :class:`~peerit.wire.tracker.Hello` to send (listen ports, LAN
    addresses) and ``announces()`` the :class:`~peerit.wire.tracker.Announce` messages that
    describe what the daemon shares now (event "started"); both are called on every connect,
    so the tracker's table is rebuilt after any disconnection. ``on_push(message)`` receives
    every message the tracker sends unasked (PeerJoined, non-request errors, later NAT
    messages).

    Reconnecting is a small loop of its own rather than ``ClientService``: that one cannot
    take a connection lost while ``prepareConnection`` waits (here: for the TLS handshake and
    Welcome), and the backoff must only reset once the tracker has welcomed us, so that a
    wrong pin or a refusing tracker is retried ever more slowly.
    """

    def __init__(self, reactor, identity: Identity, tracker: TrackerAddress,
                 hello: Callable[[], wire.Hello],
                 announces: Callable[[], Iterable[wire.Announce]],
                 on_push: PushHandler, *,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 retry_policy: Callable[[int], float] | None = None,
                 endpoint=None):
        if tracker.fingerprint is None:
            raise PeeritError(f"tracker {tracker} has no fingerprint to pin "
                              f"(write it as HOST:PORT#FINGERPRINT)")
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.tracker = tracker
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self._hello = hello
        self._announces = announces
        self._on_push = on_push
        # At most ~25 s between attempts: a tracker back after a long outage must see every
        # daemon again within 30 s; the spread of the jitter keeps them from all coming at once.
        self._retry_policy = retry_policy or backoffPolicy(
            initialDelay=1.0, maxDelay=20.0, jitter=lambda: random.random() * 5)
        self._link: TrackerLink | None = None
        self._waiters: list[Deferred] = []
        self._failures = 0
        self._connecting: Deferred | None = None
        self._retry = None
        if endpoint is None:
            endpoint = HostnameEndpoint(reactor, tracker.host, tracker.port,
                                        timeout=connect_timeout)
        self._endpoint = endpoint
        # peerit.tls.client_factory, on our clock (TLS batches small writes with callLater).
        self._factory = TLSMemoryBIOFactory(PinnedClientTLS(identity, tracker.fingerprint),
                                            True, _TrackerClientFactory(self), clock=reactor)

    # -- state -------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.active

    @property
    def public_address(self) -> wire.Endpoint | None:
        """Where the tracker sees this daemon's session come from (NAT's public side)."""
        return self._link.welcome.observed if self.connected else None

    @property
    def peer_id(self) -> bytes | None:
        """Our id as the tracker proved it (equal to the identity's)."""
        return self._link.welcome.peer_id if self.connected else None

    def when_connected(self, timeout: float | None = None) -> Deferred:
        """Fires with this client once a session is up (at once if it is)."""
        if self.connected:
            return succeed(self)
        d = Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(d)
        if timeout is not None:
            self._bound(d, timeout, "connecting to the tracker")
        return d

    # -- requests ----------------------------------------------------------------------------

    def announce(self, info_hash: bytes, event: str, left: int) -> bool:
        """Send now if connected (True); otherwise the next connect's replay covers it."""
        return self.send(wire.Announce(info_hash, event, left))

    def send(self, message) -> bool:
        return self._link.send(message) if self.connected else False

    def request_peers(self, info_hash: bytes, max_peers: int = 50) -> Deferred:
        """Fires with up to ``max_peers`` PeerInfo of the swarm; fails with TimedOut,
        TrackerUnavailable or TrackerRefused. Waits for a session within the same timeout."""
        return self._request(lambda link: link.request_peers(info_hash, max_peers),
                             "peer list")

    def ping(self) -> Deferred:
        """Fires with the round-trip time to the tracker, in seconds."""
        return self._request(lambda link: link.ping(), "ping")

    def _request(self, call, what: str) -> Deferred:
        if self.connected:
            d = call(self._link)
        else:
            d = self.when_connected().addCallback(lambda _: call(self._link))
        return self._bound(d, self.request_timeout, what)

    def _bound(self, d: Deferred, timeout: float, what: str) -> Deferred:
        def timed_out(result, seconds):
            raise TimedOut(f"tracker {what}: no answer in {seconds:g}s")
        return d.addTimeout(timeout, self.clock, onTimeoutCancel=timed_out)

    # -- connection loop ---------------------------------------------------------------------

    def startService(self):
        super().startService()
        self._attempt()

    def stopService(self):
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._connecting is not None:
            self._connecting.cancel()
        link, self._link = self._link, None
        if link is not None:
            link.close()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(TrackerUnavailable("tracker client stopped"))

    def _attempt(self):
        self._retry = None
        self._connecting = d = self._endpoint.connect(self._factory)
        d.addCallbacks(self._tcp_connected, self._attempt_failed)

    def _tcp_connected(self, protocol):
        self._connecting = None
        link = protocol.wrappedProtocol.link
        self._link = link
        link.welcomed.addCallbacks(self._welcomed, lambda failure: None)
        link.lost.addCallback(self._lost)

    def _attempt_failed(self, failure):
        self._connecting = None
        if failure.check(CancelledError) or not self.running:
            return
        log.warn("cannot reach tracker {tracker}: {reason}", tracker=str(self.tracker),
                 reason=failure.getErrorMessage())
        self._schedule_retry()

    def _welcomed(self, welcome):
        self._failures = 0
        log.info("tracker session with {tracker} up; public address {host}:{port}",
                 tracker=str(self.tracker), host=welcome.observed.host,
                 port=welcome.observed.port)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self)

    def _lost(self, link):
        if link is not self._link:
            return
        self._link = None
        if self.running:
            if link.welcome is None:
                log.warn("tracker {tracker} did not welcome us (unreachable, refused, or not "
                         "the pinned key)", tracker=str(self.tracker))
            self._schedule_retry()

    def _schedule_retry(self):
        self._failures += 1
        delay = self._retry_policy(self._failures)
        self._retry = self.clock.callLater(delay, self._attempt)

    def _push(self, message) -> None:
        try:
            self._on_push(message)
        except Exception:
            log.failure("push handler failed on {kind}", kind=type(message).__name__)
