"""The tracker's Prometheus metrics: counters from ``tracker.stats`` and the STUN responder,
gauges read from the live sessions, swarm table and relay when ``/metrics`` is scraped.

No label names a swarm or a peer: series stay few whatever the load, and a scrape tells no
one who shares what. Every name is listed in docs/observability.md.
"""

from prometheus_client.core import GaugeHistogramMetricFamily

from peerit.metrics.exposition import counter, gauge, histogram, plain_counter
from peerit.tracker.session import Tracker

# Members per swarm, for the swarm size distribution.
SWARM_SIZE_BOUNDS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
STUN_RESULTS = ("success", "error", "rate_limited", "over_budget", "ignored")


class TrackerCollector:
    """``nat`` (a NatCoordinator), ``broker`` (a RelayBroker) and ``stun`` (a callable giving
    the StunResponder, known once its port is bound) may each be None when off."""

    def __init__(self, tracker: Tracker, nat=None, broker=None, stun=lambda: None):
        self.tracker = tracker
        self.nat = nat
        self.broker = broker
        self.stun = stun

    def collect(self):
        tracker = self.tracker
        stats = tracker.stats
        yield gauge("peerit_tracker_sessions", "Connections to the tracker by state: active "
                    "(Hello done) or opening (TLS or Hello under way).", labels=("state",),
                    values={("active",): tracker.active_count,
                            ("opening",): tracker.session_count - tracker.active_count})
        yield plain_counter("peerit_tracker_sessions_opened_total",
                            "Connections accepted (within the session caps).",
                            stats.sessions_opened)
        yield counter("peerit_tracker_sessions_closed_total",
                      "Sessions ended, by reason (disconnected, timed_out, superseded, "
                      "tls_failed, a refusal code...).", stats.sessions_closed)
        store = tracker.store
        counts = store.stats()
        census = store.census(SWARM_SIZE_BOUNDS)
        yield gauge("peerit_tracker_swarms", "Swarms with at least one member.",
                    counts["swarms"])
        yield gauge("peerit_tracker_peers", "Peers with an entry in the swarm table.",
                    counts["peers"])
        yield gauge("peerit_tracker_swarm_members", "Swarm entries by role.",
                    labels=("role",), values={("seeder",): census["seeders"],
                                              ("leecher",): census["leechers"]})
        sizes = GaugeHistogramMetricFamily(
            "peerit_tracker_swarm_size", "Swarms by number of members (seeders + leechers).",
            buckets=[(str(bound), count) for bound, count
                     in zip(SWARM_SIZE_BOUNDS, census["sizes"])]
            + [("+Inf", census["sizes"][-1])],
            gsum_value=census["seeders"] + census["leechers"])
        yield sizes
        yield counter("peerit_tracker_requests_total",
                      "Requests from daemons by kind (announce, peer_list_request, "
                      "keep_alive, punch_request...) and result (ok, refused, rate_limited, "
                      "closed).", stats.requests)
        yield histogram("peerit_tracker_request_duration_seconds",
                        "From the read that brought a request to the end of its handling.",
                        stats.request_seconds)
        yield counter("peerit_tracker_refusals_total",
                      "Connections, requests and sessions refused, by reason (the error "
                      "code sent, max_sessions, max_sessions_per_address, tls_failed).",
                      stats.refusals)
        yield from self._stun()
        yield counter("peerit_tracker_punches_total",
                      "Hole punches coordinated (Punch sent to both peers), by the pair of "
                      "NAT mapping behaviours the peers reported.", stats.punches)
        yield from self._relay()

    def _stun(self):
        responder = self.stun()
        if responder is None:
            return
        c = responder.counts
        family = counter("peerit_tracker_stun_requests_total",
                         "STUN datagrams by outcome: success or error answered, dropped "
                         "over the per-address rate or the byte budget, ignored (not a "
                         "well-formed Binding request).", _Values(("result",), {
                             ("success",): c.answered - c.errors, ("error",): c.errors,
                             ("rate_limited",): c.rate_limited,
                             ("over_budget",): c.over_budget + c.too_large,
                             ("ignored",): c.ignored}))
        yield family
        yield plain_counter("peerit_tracker_stun_received_bytes_total",
                            "Bytes of every datagram the STUN ports received.",
                            c.received_bytes)
        yield plain_counter("peerit_tracker_stun_sent_bytes_total",
                            "Bytes of STUN answers sent.", c.sent_bytes)

    def _relay(self):
        nat, broker = self.nat, self.broker
        if nat is not None:
            yield plain_counter("peerit_tracker_relay_offers_total",
                                "Relay tokens offered to both peers.", nat.relays)
        if broker is None:
            return
        active = list(broker.splices)
        yield gauge("peerit_tracker_relay_sessions", "Relayed sessions spliced now.",
                    len(active))
        yield gauge("peerit_tracker_relay_pending_offers",
                    "Relay tokens offered and not yet used by both sides.", broker.pending)
        yield plain_counter("peerit_tracker_relay_sessions_total",
                            "Relayed sessions that ended.", broker.sessions_completed)
        yield plain_counter("peerit_tracker_relay_bytes_total",
                            "Bytes relayed, both directions, ended and current sessions.",
                            broker.bytes_relayed + sum(sum(s.bytes_from) for s in active))


class _Values:
    """Counter values computed at scrape time, in the shape ``exposition.counter`` reads."""

    def __init__(self, labels: tuple[str, ...], values: dict):
        self.labels = labels
        self.values = values
