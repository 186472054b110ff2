"""Counters and histograms cheap enough for hot paths; exported at scrape time.

The logic increments these (a dict update, or a bisect and two additions); nothing here
knows Prometheus. A collector in ``peerit.tracker.metrics`` / ``peerit.daemon.metrics`` reads
them when ``/metrics`` is scraped.
"""

from bisect import bisect_left

# Seconds, for request handling (tens of microseconds) up to connection set-up (seconds).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class LabelledCounter:
    """Monotonic counts keyed by a tuple of label values (``labels`` names them)."""

    __slots__ = ("labels", "values")

    def __init__(self, *labels: str):
        self.labels = labels
        self.values: dict[tuple, float] = {}

    def inc(self, *key: str, amount: float = 1) -> None:
        values = self.values
        values[key] = values.get(key, 0) + amount

    def get(self, *key: str) -> float:
        return self.values.get(key, 0)

    def total(self) -> float:
        return sum(self.values.values())


class Histogram:
    """Observations counted per bucket (upper bounds ``buckets``, +Inf implied) with a sum."""

    __slots__ = ("buckets", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus wants them, ending with ``+Inf``."""
        out, running = [], 0
        for bound, count in zip(self.buckets + (float("inf"),), self.counts):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class LabelledHistogram:
    """One :class:`Histogram` per tuple of label values, made on first use."""

    __slots__ = ("labels", "buckets", "values")

    def __init__(self, *labels: str, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.labels = labels
        self.buckets = buckets
        self.values: dict[tuple, Histogram] = {}

    def observe(self, *key: str, value: float) -> None:
        histogram = self.values.get(key)
        if histogram is None:
            histogram = self.values[key] = Histogram(self.buckets)
        histogram.observe(value)
