"""What the tracker did, counted where it happens and exported by ``peerit.tracker.metrics``.

Plain counters (a dict update per event): cheap on the request path, and no Prometheus
import in the logic. Gauges (sessions, swarms, relay sessions) are not kept here; the
collector reads them from the live state at scrape time.
"""

import re

from peerit.metrics.counts import Histogram, LabelledCounter, LabelledHistogram

RESULTS = ("ok", "refused", "rate_limited", "closed")

# Why a request was refused or a session ended on a rule (not a plain disconnect).
REFUSAL_CLOSES = frozenset({"malformed", "unknown_message", "protocol_violation",
                            "rate_limited", "unsupported_version"})


def request_kind(message_type: type) -> str:
    """``PeerListRequest`` -> ``peer_list_request``: the ``kind`` label."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", message_type.__name__).lower()


class RequestKind:
    """Counts of one kind of request: plain attributes, the cheapest thing to increment."""

    __slots__ = ("name", "ok", "refused", "rate_limited", "closed", "seconds")

    def __init__(self, name: str):
        self.name = name
        self.ok = self.refused = self.rate_limited = self.closed = 0
        self.seconds = Histogram()


class TrackerStats:
    def __init__(self):
        self.kinds: dict[type, RequestKind] = {}
        self.refusals = LabelledCounter("reason")
        self.sessions_opened = 0
        self.sessions_closed = LabelledCounter("reason")
        self.punches = LabelledCounter("nat_pair")

    def kind(self, message_type: type) -> RequestKind:
        kind = self.kinds.get(message_type)
        if kind is None:
            kind = self.kinds[message_type] = RequestKind(request_kind(message_type))
        return kind

    @property
    def requests(self) -> LabelledCounter:
        """By ``kind`` and ``result`` (ok, refused, rate_limited, closed), for export."""
        counts = LabelledCounter("kind", "result")
        for kind in self.kinds.values():
            for result in RESULTS:
                value = getattr(kind, result)
                if value:
                    counts.inc(kind.name, result, amount=value)
        return counts

    @property
    def request_seconds(self) -> LabelledHistogram:
        histograms = LabelledHistogram("kind")
        for kind in self.kinds.values():
            if kind.seconds.count:
                histograms.values[(kind.name,)] = kind.seconds
        return histograms


def nat_pair(a: str, b: str) -> str:
    """A label for two mapping behaviours, in a fixed order (the pair is unordered)."""
    return "-".join(sorted((a, b)))
