"""The daemon's one stream of changes: transfers say what changed, faces subscribe.

A transfer (or the daemon itself) calls :meth:`EventHub.changed` with its key whenever
something a person would see moved: its state, a verified piece, a peer joining or leaving.
That call only marks the key; once per tick (at most ``interval`` seconds, 1 s by default) the
hub takes one snapshot of each marked key, plus the keys whose figures move on their own
(rates, while peers are connected), drops those equal to what it last published, and hands the
rest to every subscriber as one list. So a download verifying 500 pieces a second costs one
snapshot a second, and a thousand idle shares cost nothing.

:meth:`EventHub.changed_now` publishes at the next reactor turn instead of the next tick: for
the moments a subscriber waits on (the last piece verified, an error).

The hub ticks only while someone subscribes, so a daemon nobody watches never wakes up for
it. Keys are ``(kind, id)`` tuples; an event is ``{"kind": kind, "id": id, "data": dict}``, or
``data`` None once the thing is gone.
"""

from typing import Callable, Hashable, Iterable

from twisted.logger import Logger

log = Logger()

TICK = 1.0  # seconds: the longest a change waits before it is published


class Subscription:
    def __init__(self, hub: "EventHub", callback):
        self.hub = hub
        self.callback = callback

    def cancel(self) -> None:
        self.hub._unsubscribe(self)


class EventHub:
    def __init__(self, clock, snapshot: Callable[[Hashable], dict | None],
                 live: Callable[[], Iterable[Hashable]] = tuple, interval: float = TICK):
        self.clock = clock
        self.interval = interval
        self._snapshot = snapshot  # key -> dict, None when the thing no longer exists
        self._live = live  # keys whose figures move without an event (rates)
        self._dirty: set = set()
        self._published: dict = {}  # key -> last data handed out
        self._subscribers: list[Subscription] = []
        self._tick_call = None
        self._soon_call = None
        self.ticks = 0

    # -- publishers -----------------------------------------------------------------------
    def changed(self, key: Hashable) -> None:
        """Something about ``key`` changed: publish it at the next tick (O(1))."""
        if self._subscribers:
            self._dirty.add(key)

    def changed_now(self, key: Hashable) -> None:
        """Publish ``key`` at the next reactor turn rather than the next tick."""
        if self._subscribers:
            self._dirty.add(key)
            if self._soon_call is None:
                self._soon_call = self.clock.callLater(0, self._soon)

    # -- subscribers ----------------------------------------------------------------------
    def subscribe(self, callback: Callable[[list[dict]], None]) -> Subscription:
        """``callback(events)`` after every tick that changed something; the caller takes
        its own first snapshot (the hub only sends what changed since)."""
        subscription = Subscription(self, callback)
        self._subscribers.append(subscription)
        if self._tick_call is None:
            self._tick_call = self.clock.callLater(self.interval, self._tick)
        return subscription

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)
        if not self._subscribers:
            for call in (self._tick_call, self._soon_call):
                if call is not None and call.active():
                    call.cancel()
            self._tick_call = self._soon_call = None
            self._dirty.clear()
            self._published.clear()  # a later first subscriber takes its own snapshot

    # -- ticking --------------------------------------------------------------------------
    def _soon(self) -> None:
        self._soon_call = None
        self.flush()

    def _tick(self) -> None:
        self._tick_call = None
        self.flush()
        if self._subscribers:
            self._tick_call = self.clock.callLater(self.interval, self._tick)

    def flush(self) -> list[dict]:
        """Publish every marked or live key that differs from what was last published."""
        self.ticks += 1
        keys = self._dirty
        self._dirty = set()
        keys.update(self._live())
        events = []
        for key in keys:
            data = self._snapshot(key)
            if data is None:
                # Said even if never published: a subscriber's first snapshot may hold it.
                self._published.pop(key, None)
                events.append({"kind": key[0], "id": key[1], "data": None})
            elif self._published.get(key) != data:
                self._published[key] = data
                events.append({"kind": key[0], "id": key[1], "data": data})
        if events:
            for subscription in list(self._subscribers):
                try:
                    subscription.callback(events)
                except Exception:
                    # One broken face must not starve the others.
                    log.failure("event subscriber failed; dropping it")
                    self._unsubscribe(subscription)
        return events
