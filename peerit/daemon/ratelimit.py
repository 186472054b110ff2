"""A token bucket on an injected clock: caps a daemon's upload rate when asked to."""


class TokenBucket:
    def __init__(self, clock, rate: float, burst: float | None = None):
        self.clock = clock
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate / 4, 1 << 17))
        self._tokens = self.burst
        self._last = clock.seconds()

    def _refill(self) -> None:
        now = self.clock.seconds()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def take(self, amount: int) -> bool:
        """Spend ``amount`` if available now (a block larger than the burst may overdraw)."""
        self._refill()
        if self._tokens >= min(amount, self.burst):
            self._tokens -= amount
            return True
        return False

    def wait_time(self, amount: int) -> float:
        self._refill()
        return max(0.0, (min(amount, self.burst) - self._tokens) / self.rate)
