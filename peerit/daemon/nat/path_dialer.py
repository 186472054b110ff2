"""Dialing a peer over the NAT paths: punched QUIC and the tracker's relay, as race candidates.

When each path starts is one table, :data:`DIAL_TIMING` (seconds after the dial began; direct
TCP has t = 0 and 0.25 in the daemon's race):

======  =====  ==========================================================================
path    start  earlier / later
======  =====  ==========================================================================
quic    0.5    waits (at most :data:`MAPPING_WAIT`) for our first mapping measurement
relay   3.0    at once when the punch failed (both sides symmetric: at once); later while
               a birthday punch is within its own deadline, which the relay would
               otherwise win most races against
======  =====  ==========================================================================

Punched QUIC: ``PunchRequest`` to the tracker, the ``Punch`` it answers with, a
:class:`~peerit.nat.punch.PunchAttempt` (controlling), then a QUIC client on the confirmed
path pinning the peer's id. Relay: ``RelayRequest``, the ``RelayOffer``, then
:mod:`peerit.daemon.nat.relay_client` as TLS client. Every tracker answer is awaited at most
:data:`ANSWER_TIMEOUT`.
"""

from typing import Callable, Iterable

from twisted.internet import defer, task
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from peerit.daemon.connector import Candidate, NoPath, link_attempt
from peerit.daemon.nat.public_address import PublicAddress
from peerit.daemon.nat.relay_client import dial_through_relay, relay_address
from peerit.daemon.nat.socket_pool import SocketPool
from peerit.nat import punch
from peerit.wire import tracker as wire

log = Logger()

DIAL_TIMING = {
    "quic": 0.5,
    "relay": 3.0,
}
QUIC_START = DIAL_TIMING["quic"]
RELAY_START = DIAL_TIMING["relay"]
ANSWER_TIMEOUT = 5.0  # tracker's Punch / RelayOffer after our request
MAPPING_WAIT = 2.0  # a punch waits at most this long for our first mapping measurement


class Dial:
    """What the two NAT candidates of one dial share: whether the punch is over, and until
    when a running birthday punch may still win."""

    def __init__(self, info_hash: bytes, peer_id: bytes, started_at: float):
        self.info_hash = info_hash
        self.peer_id = peer_id
        self.started_at = started_at
        self.punch_over = False
        self.birthday_deadline: float | None = None  # absolute time, while one runs
        self._waiters: list[Deferred] = []

    def relay_start_at(self) -> float:
        """When the relay may start, the punch still running (the table's rule)."""
        return max(self.started_at + RELAY_START, self.birthday_deadline or 0.0)

    def give_up_punch(self) -> None:
        self.punch_over = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def when_punch_over(self) -> Deferred:
        if self.punch_over:
            return defer.succeed(None)
        d = Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(d)
        return d


class PathDialer:
    """Punch and relay candidates for the daemon's ``Race``, the requests they send to the
    swarm's tracker (``swarm_trackers(info_hash)``), and the punch attempts (dialing or, for
    :mod:`~peerit.daemon.nat.tracker_push`, accepting). ``connect_tcp(host, port, factory)``
    connects with a bounded timeout."""

    def __init__(self, clock, rng, identity, *, paths: Iterable[str], pool: SocketPool,
                 coordinator: punch.PunchCoordinator, public: PublicAddress,
                 swarm_trackers: Callable[[bytes], Iterable], connect_tcp,
                 on_punch_outcome: Callable[[str, str, bool], object] | None = None):
        self.clock = clock
        self.rng = rng
        self.identity = identity
        self.peer_id = identity.peer_id
        self.paths = frozenset(paths)
        self._pool = pool
        self._coordinator = coordinator
        self._public = public
        self._swarm_trackers = swarm_trackers
        self._connect_tcp = connect_tcp
        self._punch_waits: dict[tuple, Deferred] = {}
        self._relay_waits: dict[tuple, Deferred] = {}
        # (our mapping, theirs, succeeded) for each punch attempt that ends: for metrics.
        self._on_punch_outcome = on_punch_outcome or (lambda mine, theirs, ok: None)
        self.running = False

    def stop(self) -> None:
        self.running = False
        for waits in (self._punch_waits, self._relay_waits):
            for d in list(waits.values()):
                d.cancel()
            waits.clear()

    def candidates(self, info_hash: bytes, peer_info, make_link) -> list[Candidate]:
        """Punched QUIC and relay candidates for the daemon's race towards ``peer_info``.

        ``make_link(path, on_ready, on_failed)`` builds the dialing ``PeerLink``.
        """
        if not self.running:
            return []
        dial = Dial(info_hash, peer_info.peer_id, self.clock.seconds())
        out = []
        if "quic" in self.paths:
            out.append(Candidate("quic (punched)",
                                 lambda: self._quic_candidate(dial, make_link)))
        else:
            dial.give_up_punch()
        if "relay" in self.paths:
            out.append(Candidate("relay", lambda: self._relay_candidate(dial, make_link)))
        return out

    # -- the tracker's answers (from the push handler) ----------------------------------------

    def punch_answered(self, message) -> None:
        """The ``Punch`` answering our ``PunchRequest``."""
        waiting = self._punch_waits.pop((message.info_hash, message.peer_id), None)
        if waiting is None:
            log.info("punch {attempt} for a request we no longer wait for: ignored",
                     attempt=message.attempt_id.hex())
        else:
            waiting.callback(message)

    def relay_offered(self, message) -> None:
        """The ``RelayOffer`` answering our ``RelayRequest``."""
        waiting = self._relay_waits.pop((message.info_hash, message.peer_id), None)
        if waiting is not None:
            waiting.callback(message)

    def refused(self, error) -> bool:
        """A tracker ``Error``: True when it refused one of our requests."""
        opcode = error.refused_opcode
        if opcode == wire.messages.opcode_of(wire.PunchRequest):
            waits, what = self._punch_waits, "punch"
        elif opcode == wire.messages.opcode_of(wire.RelayRequest):
            waits, what = self._relay_waits, "relay"
        else:
            return False
        # The tracker answers in order: the oldest request for that swarm is the refused one.
        for key, d in list(waits.items()):
            if key[0] == error.info_hash:
                del waits[key]
                d.errback(NoPath(f"tracker refused the {what}: {error.code}: "
                                 f"{error.reason}"))
                break
        return True

    # -- dialing -------------------------------------------------------------------------------

    def tracker_of(self, info_hash: bytes):
        for client in self._swarm_trackers(info_hash):
            if client.connected:
                return client
        raise NoPath("no tracker connected to coordinate")

    def _ask(self, waits: dict, key: tuple, request, what: str) -> Deferred:
        """Send ``request`` to the swarm's tracker and wait (bounded) for its answer."""
        if key in waits:
            return defer.fail(NoPath(f"a {what} with this peer is already being set up"))
        client = self.tracker_of(key[0])
        answer = Deferred(lambda d: waits.pop(key, None))
        waits[key] = answer
        if not client.send(request):
            waits.pop(key, None)
            return defer.fail(NoPath("tracker session lost"))

        def timed_out(result, timeout):
            waits.pop(key, None)
            raise NoPath(f"no {what} from the tracker within {timeout:g}s")
        return answer.addTimeout(ANSWER_TIMEOUT, self.clock, onTimeoutCancel=timed_out)

    def _quic_candidate(self, dial: Dial, make_link) -> Deferred:
        d = Deferred.fromCoroutine(self._punch_and_connect(dial, make_link))

        def failed(failure):
            # A cancelled dial is over for the relay too: it must not start because of it.
            if not failure.check(CancelledError):
                dial.give_up_punch()
            return failure
        return d.addErrback(failed)

    async def _punch_and_connect(self, dial: Dial, make_link):
        delay = dial.started_at + QUIC_START - self.clock.seconds()
        if delay > 0:
            await task.deferLater(self.clock, delay, lambda: None)
        # Our own mapping decides the plan (birthday or not): a dial right after start may
        # have to wait for the first measurement, a round trip or two.
        await self._public.mapping_known(MAPPING_WAIT)
        key = (dial.info_hash, dial.peer_id)
        message = await self._ask(self._punch_waits, key,
                                  wire.PunchRequest(dial.info_hash, dial.peer_id), "punch")
        path_found = Deferred()
        attempt = self.start_attempt(message, path_found)
        if attempt.plan in ("easy", "hard"):
            dial.birthday_deadline = self.clock.seconds() + attempt.deadline
        try:
            path = await path_found
        except CancelledError:
            attempt.cancel()
            raise
        sock, addr = path.local_socket, tuple(path.remote_addr)

        def connect(factory):
            return sock.endpoint.connect(addr, dial.peer_id,
                                         lambda peer_id: factory.buildProtocol(addr))
        sock.busy += 1
        try:
            return await link_attempt(
                connect, lambda on_ready, on_failed: make_link("quic", on_ready, on_failed))
        finally:
            sock.busy -= 1
            self._pool.watch(sock)

    def start_attempt(self, message, path_found: Deferred) -> punch.PunchAttempt:
        """A PunchAttempt for a Punch message; ``path_found`` fires with the Path or fails
        with NoPath."""
        my_mapping = self._public.mapping
        their_mapping = punch.mapping_behaviour(message.mapping)

        def succeeded(path):
            self._on_punch_outcome(my_mapping, their_mapping, True)
            if not path_found.called:
                path_found.callback(path)

        def failed(reason):
            self._on_punch_outcome(my_mapping, their_mapping, False)
            if not path_found.called:
                path_found.errback(NoPath(f"punch failed: {reason}"))
        candidates = []
        for c in message.candidates:
            if c.kind in punch.CANDIDATE_KINDS and c.port:
                candidates.append(punch.Candidate(c.host, c.port, c.kind))
        attempt = punch.PunchAttempt(
            self.clock, self.rng, attempt_id=message.attempt_id, nonce=message.nonce,
            my_peer_id=self.peer_id, their_peer_id=message.peer_id,
            role=punch.CONTROLLING if message.controlling else punch.CONTROLLED,
            their_candidates=candidates, main_socket=self._pool.main,
            on_success=succeeded, on_failure=failed,
            my_mapping=my_mapping, their_mapping=their_mapping,
            open_socket=self._pool.open_extra)
        try:
            self._coordinator.start(attempt)
        except (ValueError, punch.TooManyAttempts) as e:
            failed(str(e))
        return attempt

    def _relay_candidate(self, dial: Dial, make_link) -> Deferred:
        return Deferred.fromCoroutine(self._relay_dial(dial, make_link))

    async def _relay_dial(self, dial: Dial, make_link):
        while not dial.punch_over:
            delay = dial.relay_start_at() - self.clock.seconds()
            if delay <= 0:
                break
            wake = Deferred()  # cancelling it (the race lost) raises CancelledError here

            def wake_up(_=None):
                if not wake.called:
                    wake.callback(None)
            timer = self.clock.callLater(delay, wake_up)
            punch_over = dial.when_punch_over().addCallbacks(wake_up, lambda f: None)
            try:
                await wake
            finally:
                if timer.active():
                    timer.cancel()
                punch_over.cancel()
        client = self.tracker_of(dial.info_hash)
        key = (dial.info_hash, dial.peer_id)
        offer = await self._ask(self._relay_waits, key,
                                wire.RelayRequest(dial.info_hash, dial.peer_id), "relay offer")
        host, port = relay_address(offer, client.tracker.host)
        return await dial_through_relay(
            self._connect_tcp, host, port, offer.token, self.identity,
            dial.peer_id,
            lambda on_ready, on_failed: make_link("relay", on_ready, on_failed),
            clock=self.clock)
