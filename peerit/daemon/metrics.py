"""The daemon's Prometheus metrics: counters from ``daemon.stats``, and gauges read from the
transfers, peer links, tracker sessions and disk queues when ``/metrics`` is scraped.

No label names a swarm or a peer (series count, and a home server's metrics page should not
list what it shares). Every name is listed in docs/observability.md.
"""

from peerit.daemon.stats import PATHS, DaemonStats, traffic_path
from peerit.metrics.counts import LabelledCounter
from peerit.metrics.exposition import counter, gauge, histogram, plain_counter

TRANSFER_STATES = ("checking", "downloading", "seeding", "paused", "stopped", "error")
_ALL_PATHS = tuple((path,) for path in PATHS)


class DaemonCollector:
    """``stats`` (the daemon's :class:`DaemonStats`), ``transfers`` (the registry: ``all()``
    and ``host`` with its disk queues) and ``trackers`` (the sessions: ``clients``)."""

    def __init__(self, stats: DaemonStats, transfers, trackers):
        self.stats = stats
        self.transfers = transfers
        self.trackers = trackers

    def collect(self):
        stats = self.stats
        peers = {key: 0 for key in _ALL_PATHS}
        traffic = LabelledCounter("path", "direction")
        traffic.values.update(stats.retired_bytes.values)
        states = {(state,): 0 for state in TRANSFER_STATES}
        for transfer in self.transfers.all():
            state = transfer.state.value
            states[(state,)] = states.get((state,), 0) + 1
            swarm = transfer.data_swarm
            if swarm is None:
                continue
            for peer in list(swarm.peers.values()):
                path = traffic_path(peer.link)
                peers[(path,)] = peers.get((path,), 0) + 1
                traffic.inc(path, "received", amount=peer.download.total)
                traffic.inc(path, "sent", amount=peer.upload.total)
        yield gauge("peerit_daemon_transfers", "Shares and downloads by state.",
                    labels=("state",), values=states)
        yield gauge("peerit_daemon_peers", "Peer links attached to a swarm, by path (lan: "
                    "TCP to a private or loopback address; tcp; quic: hole-punched; relay).",
                    labels=("path",), values=peers)
        received = LabelledCounter("path")
        sent = LabelledCounter("path")
        for (path, direction), value in traffic.values.items():
            (received if direction == "received" else sent).inc(path, amount=value)
        yield counter("peerit_daemon_received_bytes_total",
                      "Piece data received from peers, by path.", received, always=_ALL_PATHS)
        yield counter("peerit_daemon_sent_bytes_total",
                      "Piece data sent to peers, by path.", sent, always=_ALL_PATHS)
        yield plain_counter("peerit_daemon_pieces_verified_total",
                            "Pieces received from peers that matched their hash.",
                            stats.pieces_verified)
        yield plain_counter("peerit_daemon_pieces_failed_total",
                            "Pieces received from peers that failed their hash check.",
                            stats.pieces_failed)
        yield counter("peerit_daemon_connection_attempts_total",
                      "Paths tried when dialing a peer (each candidate of the race), by path.",
                      stats.connection_attempts, always=_ALL_PATHS)
        yield counter("peerit_daemon_connections_total",
                      "Dials that ended with a ready link, by the winning path.",
                      stats.connections, always=_ALL_PATHS)
        yield histogram("peerit_daemon_connect_duration_seconds",
                        "From the start of a dial to a ready link, by the winning path.",
                        stats.connect_seconds)
        yield histogram("peerit_daemon_first_byte_seconds",
                        "From a download's start (or resume) to its first block of data.",
                        stats.first_byte_seconds)
        yield counter("peerit_daemon_punches_total",
                      "Hole-punch attempts by NAT pair (our mapping behaviour, then the "
                      "peer's) and outcome (success, failure).", stats.punches)
        trackers = list(self.trackers.clients.values())
        yield gauge("peerit_daemon_tracker_sessions", "Tracker sessions by state (up: "
                    "connected and welcomed; down: reconnecting).", labels=("state",),
                    values={("up",): sum(1 for t in trackers if t.connected),
                            ("down",): sum(1 for t in trackers if not t.connected)})
        host = self.transfers.host  # None until the transfers service started
        hasher = host.hasher if host is not None else None
        writer = host.writer if host is not None else None
        for name, stage, what in (("write", writer, "waiting to be written"),
                                  ("hash", hasher, "waiting to be hashed")):
            yield gauge(f"peerit_daemon_{name}_queue_bytes", f"Received block bytes {what}.",
                        stage.queued_bytes if stage is not None else 0)
        waits = LabelledCounter("queue")
        for name, stage in (("hash", hasher), ("write", writer)):
            waits.inc(name, amount=stage.waits if stage is not None else 0)
        yield counter("peerit_daemon_queue_full_waits_total",
                      "Times a full queue made its feeder wait (the reactor for the hash "
                      "queue: receiving paused; the hasher for the write queue).", waits)
