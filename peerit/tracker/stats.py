"""What the tracker did, counted where it happens and exported by ``peerit.tracker.metrics``.

Plain counters (a dict update per event): cheap on the request path, and no Prometheus
import in the logic. Gauges (sessions, swarms, relay sessions) are not kept here; the
collector reads them from the live state at scrape time.
"""

import re

from peerit.metrics.counts import LabelledCounter, LabelledHistogram

# Why a request was refused or a session ended on a rule (not a plain disconnect).
REFUSAL_CLOSES = frozenset({"malformed", "unknown_message", "protocol_violation",
                            "rate_limited", "unsupported_version"})


def request_kind(message_type: type) -> str:
    """``PeerListRequest`` -> ``peer_list_request``: the ``kind`` label."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", message_type.__name__).lower()


class TrackerStats:
    def __init__(self):
        self.requests = LabelledCounter("kind", "result")
        self.request_seconds = LabelledHistogram("kind")
        self.refusals = LabelledCounter("reason")
        self.sessions_opened = 0
        self.sessions_closed = LabelledCounter("reason")
        self.punches = LabelledCounter("nat_pair")
        self._kinds: dict[type, str] = {}

    def kind(self, message_type: type) -> str:
        kind = self._kinds.get(message_type)
        if kind is None:
            kind = self._kinds[message_type] = request_kind(message_type)
        return kind


def nat_pair(a: str, b: str) -> str:
    """A label for two mapping behaviours, in a fixed order (the pair is unordered)."""
    return "-".join(sorted((a, b)))
