"""Punch and relay coordination between tracker processes.

When a daemon asks for a punch or a relay with a peer whose session is on another process,
the requester's process builds the target's message (its Punch with the requester's
candidates, or its RelayOffer naming this process's relay port, and its address when the
target is on another host) and hands it to the target's
process through its Redis queue; that process checks its side as it would for a local
request, pushes the message, and answers (for a punch, with the requester's Punch carrying
the target's candidates). The requester's process then answers its daemon.

Redis streams are read at most once per reader and a process may restart, so a delivery is
resent every ``retry_interval`` until answered or ``timeout``; the receiving process keeps
each answer for ``remember`` seconds and repeats it for a repeated delivery instead of
pushing twice.
"""

import os
from collections import OrderedDict
from typing import Callable

from twisted.internet import defer

from peerit.tracker.redis_store import one_relay_host

PUNCH = b"punch"
RELAY = b"relay"


class Delivery:
    """``serve(kind, info_hash, requester, target, body)`` is the target side's check and
    push (``NatCoordinator.serve_remote``): it returns ``(True, answer_body)`` or
    ``(False, code, reason)``."""

    def __init__(self, clock, store, *, retry_interval: float = 0.3, timeout: float = 2.0,
                 remember: float = 30.0, random_bytes: Callable[[int], bytes] = os.urandom):
        self.clock = clock
        self.store = store
        self.retry_interval = retry_interval
        self.timeout = timeout
        self.remember = remember
        self.random_bytes = random_bytes
        self.serve: Callable | None = None
        self._pending: dict[bytes, tuple[defer.Deferred, float, object]] = {}
        self._answered: OrderedDict[bytes, tuple[float, dict]] = OrderedDict()
        store.on_signal = self.signal_received

    def reaches(self, peer_id: bytes) -> bool:
        """True when the peer's session is on another process."""
        owner = self.store.owner_of(peer_id)
        return owner is not None and owner != self.store.owner

    def same_host(self, peer_id: bytes) -> bool:
        """True when the peer's daemon reaches this process's relay at its own tracker's host
        (its session is on a process of this host, with no other relay address): a relay
        offer without a host is then enough."""
        owner = self.store.owner_of(peer_id)
        return owner is not None and one_relay_host(owner, self.store.owner)

    def deliver(self, kind: bytes, info_hash: bytes, requester: bytes, target: bytes,
                body: bytes) -> defer.Deferred:
        """Fires with ``(True, answer_body)`` or ``(False, code, reason)``; never fails."""
        owner = self.store.owner_of(target)
        if owner is None or not self.store.ready:
            return defer.succeed((False, "peer_unavailable",
                                  "the tracker's shared table is unavailable; retry"))
        request_id = self.random_bytes(16)
        fields = {b"t": b"d", b"i": request_id, b"f": self.store.owner, b"k": kind,
                  b"h": info_hash, b"r": requester, b"p": target, b"b": body}
        d = defer.Deferred()
        deadline = self.clock.seconds() + self.timeout
        self._pending[request_id] = (d, deadline, None)
        self._send(request_id, owner, fields)
        return d

    def _send(self, request_id: bytes, owner: bytes, fields: dict) -> None:
        entry = self._pending.get(request_id)
        if entry is None:
            return
        d, deadline, _ = entry
        if self.clock.seconds() >= deadline:
            del self._pending[request_id]
            d.callback((False, "peer_unavailable",
                        "the target's tracker process did not answer"))
            return
        self.store.send_signal(owner, fields)
        retry = self.clock.callLater(self.retry_interval, self._send, request_id, owner, fields)
        self._pending[request_id] = (d, deadline, retry)

    def signal_received(self, fields: dict) -> None:
        kind = fields.get(b"t")
        request_id = fields.get(b"i", b"")
        if kind == b"a":
            entry = self._pending.pop(request_id, None)
            if entry is None:
                return      # a repeated answer, or one after the timeout
            d, _, retry = entry
            if retry is not None and retry.active():
                retry.cancel()
            if fields.get(b"ok") == b"1":
                d.callback((True, fields.get(b"b", b"")))
            else:
                d.callback((False, fields.get(b"c", b"peer_unavailable").decode(),
                            fields.get(b"m", b"").decode("utf8", "replace")))
        elif kind == b"d" and self.serve is not None:
            now = self.clock.seconds()
            while self._answered and next(iter(self._answered.values()))[0] < now:
                self._answered.popitem(last=False)
            answer = self._answered.get(request_id)
            if answer is None:
                result = self.serve(fields[b"k"], fields[b"h"], fields[b"r"], fields[b"p"],
                                    fields[b"b"])
                answer_fields = {b"t": b"a", b"i": request_id}
                if result[0]:
                    answer_fields.update({b"ok": b"1", b"b": result[1]})
                else:
                    answer_fields.update({b"ok": b"0", b"c": result[1].encode(),
                                          b"m": result[2].encode()})
                answer = (now + self.remember, answer_fields)
                self._answered[request_id] = answer
            self.store.send_signal(fields[b"f"], answer[1])

    def close(self) -> None:
        pending, self._pending = self._pending, {}
        for d, _, retry in pending.values():
            if retry is not None and retry.active():
                retry.cancel()
            d.callback((False, "peer_unavailable", "tracker stopping"))
