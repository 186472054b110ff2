"""Transfer rates as exponentially-weighted moving averages on an injected clock."""

import math


class RateMeter:
    def __init__(self, clock, window: float = 5.0):
        self.clock = clock
        self.window = window
        self._rate = 0.0
        self._last = clock.seconds()
        self.total = 0

    def _decay(self, now: float) -> None:
        elapsed = now - self._last
        if elapsed > 0:
            self._rate *= math.exp(-elapsed / self.window)
            self._last = now

    def add(self, amount: int) -> None:
        self._decay(self.clock.seconds())
        self._rate += amount / self.window
        self.total += amount

    @property
    def rate(self) -> float:
        """Bytes per second over roughly the last ``window`` seconds."""
        self._decay(self.clock.seconds())
        return self._rate

    def above(self, floor: float) -> bool:
        """``rate > floor``, answered without the decay arithmetic when the meter is idle
        (the stored rate only decays, so it bounds the current one): a thousand idle
        transfers are checked every second while a page is open."""
        return self._rate > floor and self.rate > floor
