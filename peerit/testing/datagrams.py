"""An in-memory datagram network for socket-free tests of UDP logic.

Endpoints attach under an address and get a ``send(data, addr)`` callable; datagrams arrive
``latency`` seconds later on an injected clock (``task.Clock``), in send order, unless the
``loss`` rule drops them. Loss rules are deterministic so a failing test fails the same way
every run.
"""

import heapq
import random
from typing import Callable

Address = tuple
LossRule = Callable[[int, bytes, Address, Address], bool]


def drop_every(n: int, start: int = 0) -> LossRule:
    """Drop datagram number ``start``, ``start + n``, ... (counted over the whole network)."""
    return lambda index, data, src, dst: index >= start and (index - start) % n == 0


def drop_fraction(fraction: float, seed: int = 0, after: int = 0) -> LossRule:
    """Drop about ``fraction`` of the datagrams after the first ``after``, from a seeded PRNG."""
    rng = random.Random(seed)
    return lambda index, data, src, dst: index >= after and rng.random() < fraction


class DatagramNetwork:
    """Datagrams between attached addresses, delivered on ``clock`` after ``latency`` s."""

    def __init__(self, clock, latency: float = 0.005, loss: LossRule | None = None):
        self.clock = clock
        self.latency = latency
        self.loss = loss
        self.sent = 0
        self.dropped = 0
        self.undeliverable = 0
        self._receivers: dict[Address, Callable[[bytes, Address], None]] = {}
        self._queue: list[tuple[float, int, Address, Address, bytes]] = []
        self._call = None

    def attach(self, address: Address, receive: Callable[[bytes, Address], None]):
        """Deliver datagrams for ``address`` to ``receive(data, src)``; returns its send."""
        address = tuple(address)
        self._receivers[address] = receive
        return lambda data, dst: self._send(address, tuple(dst), bytes(data))

    def detach(self, address: Address) -> None:
        self._receivers.pop(tuple(address), None)

    def _send(self, src: Address, dst: Address, data: bytes) -> None:
        index = self.sent
        self.sent += 1
        if self.loss is not None and self.loss(index, data, src, dst):
            self.dropped += 1
            return
        heapq.heappush(self._queue, (self.clock.seconds() + self.latency, index, src, dst, data))
        self._schedule()

    def _schedule(self) -> None:
        if not self._queue:
            return
        at = self._queue[0][0]
        delay = max(0.0, at - self.clock.seconds())
        if self._call is None or not self._call.active():
            self._call = self.clock.callLater(delay, self._deliver_due)
        elif self._call.getTime() > at:
            self._call.reset(delay)

    def _deliver_due(self) -> None:
        self._call = None
        now = self.clock.seconds()
        while self._queue and self._queue[0][0] <= now:
            _, _, src, dst, data = heapq.heappop(self._queue)
            receive = self._receivers.get(dst)
            if receive is None:
                self.undeliverable += 1
            else:
                receive(data, src)
        self._schedule()


def run_until(clock, predicate: Callable[[], bool], timeout: float) -> bool:
    """Advance ``clock`` from one scheduled call to the next until ``predicate()`` holds or
    ``timeout`` simulated seconds pass; returns whether it holds."""
    deadline = clock.seconds() + timeout
    while not predicate():
        calls = clock.getDelayedCalls()
        if not calls:
            return False
        next_at = min(call.getTime() for call in calls)
        if next_at > deadline:
            clock.advance(max(0.0, deadline - clock.seconds()))
            return predicate()
        clock.advance(max(0.0, next_at - clock.seconds()))
    return True
