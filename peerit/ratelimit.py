"""Token buckets on an injected clock: the one rate limiter every part of peer-it uses.

:class:`TokenBucket` holds ``burst`` tokens refilled at ``rate`` per second. Two ways to spend:

- :meth:`TokenBucket.take` is all-or-nothing (a request, a probe, a reply, an upload block):
  it says whether ``amount`` could be spent now. A block larger than the burst passes when the
  bucket is full and overdraws it, so a limit below one block's size slows but never stalls.
- :meth:`TokenBucket.consume` is for bytes already moved (a relay read): it always spends,
  and answers how long to pause until the bucket is out of debt.

:class:`KeyedTokenBuckets` keeps one bucket per key (a source address) with a cap on keys, so
memory stays bounded however many sources appear.

``now`` may be passed by callers that already read the clock for the same event (one clock
read per socket read, not per frame).
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

MAX_KEYS = 65536


class TokenBucket:
    __slots__ = ("clock", "rate", "burst", "tokens", "at")

    def __init__(self, clock: IReactorTime, rate: float, burst: float):
        if rate <= 0 or burst <= 0:
            raise ValueError("a token bucket needs a positive rate and burst")
        self.clock = clock
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = self.burst
        self.at = clock.seconds()

    def _refill(self, now: float | None) -> None:
        if now is None:
            now = self.clock.seconds()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def take(self, amount: float = 1.0, now: float | None = None) -> bool:
        """Spend ``amount`` if it is there now (see the module docstring for large blocks)."""
        self._refill(now)
        if self.tokens >= min(amount, self.burst):
            self.tokens -= amount
            return True
        return False

    def consume(self, amount: float, now: float | None = None) -> float:
        """Spend ``amount`` (already used); the seconds to wait before the bucket is not in debt."""
        self._refill(now)
        self.tokens -= amount
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def wait_time(self, amount: float) -> float:
        """Seconds until :meth:`take` of ``amount`` would succeed."""
        self._refill(None)
        return max(0.0, (min(amount, self.burst) - self.tokens) / self.rate)


class KeyedTokenBuckets:
    """One :class:`TokenBucket` per key, at most ``max_keys`` of them (least recently used go)."""

    def __init__(self, clock: IReactorTime, rate: float, burst: float,
                 max_keys: int = MAX_KEYS):
        if max_keys < 1:
            raise ValueError("max_keys must be positive")
        TokenBucket(clock, rate, burst)  # validates rate and burst once, here
        self._clock = clock
        self._rate = rate
        self._burst = burst
        self._max_keys = max_keys
        self._buckets: dict[object, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key, amount: float = 1.0) -> bool:
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                # dicts keep insertion order and each key is re-inserted on use: the first is
                # the one idle longest. Forgetting it only gives it a fresh burst later.
                del self._buckets[next(iter(self._buckets))]
            bucket = TokenBucket(self._clock, self._rate, self._burst)
        self._buckets[key] = bucket
        return bucket.take(amount)

    # The name the STUN responder calls it by: a reply is allowed or not.
    allow = take
