"""Dial a peer: race its candidate paths with small staggers; the first to finish wins.

Each candidate is a callable returning a Deferred that fires with a ready link, the
``PeerSession`` of a ``PeerLink`` in state AUTHORIZED (TLS and protocol handshakes done,
identity checked). Candidates start ``stagger`` seconds apart, or
at once when the previous one failed; the first link ready wins and every other attempt is
cancelled or closed (as wormhole's ``there_can_be_only_one``). The NAT work adds punched QUIC
and relay candidates to the same race.
"""

from dataclasses import dataclass
from typing import Callable

from twisted.internet.defer import Deferred, CancelledError
from twisted.python.failure import Failure

from peerit.errors import PeeritError


@dataclass
class Candidate:
    label: str  # e.g. "tcp 192.0.2.7:4000 (lan)"
    start: Callable[[], Deferred]  # -> Deferred[PeerSession]


class NoPath(PeeritError):
    """No candidate produced a working link."""


class Race:
    def __init__(self, clock, candidates: list[Candidate], stagger: float = 0.25,
                 deadline: float = 20.0):
        self.clock = clock
        self.candidates = list(candidates)
        self.stagger = stagger
        self.deadline = deadline
        self.result = Deferred(self._cancel)
        self._pending: dict[int, Deferred] = {}
        self._next = 0
        self._failures: list[str] = []
        self._done = False
        self._timer = None
        self._deadline_call = None
        self.started_at = clock.seconds()

    def run(self) -> Deferred:
        if not self.candidates:
            self._finish(Failure(NoPath("no address to try")))
            return self.result
        self._deadline_call = self.clock.callLater(
            self.deadline, self._give_up, f"no path within {self.deadline:.0f}s")
        self._start_next()
        return self.result

    def _start_next(self) -> None:
        self._timer = None
        if self._done or self._next >= len(self.candidates):
            return
        index = self._next
        self._next += 1
        candidate = self.candidates[index]
        try:
            d = candidate.start()
        except Exception as e:  # a candidate that cannot even start simply loses
            self._failed(Failure(e), index, candidate)
            return
        self._pending[index] = d
        d.addCallbacks(self._won, self._failed, callbackArgs=(index, candidate),
                       errbackArgs=(index, candidate))
        if self._next < len(self.candidates) and not self._done:
            self._timer = self.clock.callLater(self.stagger, self._start_next)

    def _won(self, link, index: int, candidate: Candidate):
        self._pending.pop(index, None)
        if self._done:
            link.close("lost the race to another path")
            return
        link.connect_seconds = self.clock.seconds() - self.started_at
        self._finish(link)

    def _failed(self, failure: Failure, index: int, candidate: Candidate):
        self._pending.pop(index, None)
        if self._done:
            return
        if not failure.check(CancelledError):
            self._failures.append(f"{candidate.label}: {failure.getErrorMessage()}")
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
            self._timer = None
        if self._next < len(self.candidates):
            self._start_next()
        elif not self._pending:
            self._finish(Failure(NoPath("; ".join(self._failures) or "all paths failed")))

    def _give_up(self, why: str) -> None:
        self._deadline_call = None
        if not self._done:
            self._finish(Failure(NoPath(why)))

    def _finish(self, outcome) -> None:
        self._done = True
        for call in (self._timer, self._deadline_call):
            if call is not None and call.active():
                call.cancel()
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.cancel()
        if isinstance(outcome, Failure):
            self.result.errback(outcome)
        else:
            self.result.callback(outcome)

    def _cancel(self, _):
        if not self._done:
            self._finish(Failure(CancelledError()))


def link_attempt(connect, make_link) -> Deferred:
    """Run one connection attempt until its link is ready (fires with its ``PeerSession``).

    ``connect(factory) -> Deferred`` opens the transport (e.g. a TLS-wrapped TCP endpoint's
    ``connect``); ``make_link(on_ready, on_failed)`` builds the protocol. The returned Deferred
    fires with the ready link, fails if the link closes first, and cancelling it aborts the
    attempt at whatever stage it is.
    """
    from twisted.internet.protocol import Factory

    links = []

    def cancel(_):
        connecting.cancel()
        for link in links:
            link.close("attempt cancelled")

    ready = Deferred(cancel)

    def on_ready(link):
        if not ready.called:
            ready.callback(link)

    def on_failed(reason: str):
        if not ready.called:
            ready.errback(Failure(NoPath(reason)))

    def build(addr):
        link = make_link(on_ready, on_failed)
        links.append(link)
        return link

    factory = Factory()
    factory.buildProtocol = build
    connecting = connect(factory)

    def connect_failed(failure):
        if not ready.called and not failure.check(CancelledError):
            ready.errback(Failure(NoPath(failure.getErrorMessage())))
    connecting.addErrback(connect_failed)
    return ready
