"""What the daemon did, counted where it happens and exported by ``peerit.daemon.metrics``.

Plain counters (a dict update per event, no Prometheus import in the logic). Bytes per path
are not counted per block: each peer's meters already hold its totals; a peer's totals join
``retired_bytes`` when it detaches, and the collector adds the live peers at scrape time.
"""

import ipaddress

from peerit.metrics.counts import Histogram, LabelledCounter, LabelledHistogram

PATHS = ("lan", "tcp", "quic", "relay")
# Addresses a TCP link counts as "lan" on: private, loopback, link-local. Spelled out, as
# Python's is_private also covers ranges that are public on a real network (198.18.0.0/15).
_LAN_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16",
    "100.64.0.0/10", "::1/128", "fc00::/7", "fe80::/10"))


def traffic_path(link) -> str:
    """``lan``, ``tcp``, ``quic`` or ``relay``: a link's path as the metrics label it."""
    path = getattr(link, "path", "tcp")
    if path != "tcp":
        return path
    host = getattr(link, "remote", "").rsplit(":", 1)[0].strip("[]")
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return "tcp"
    return "lan" if any(address in network for network in _LAN_NETWORKS
                        if network.version == address.version) else "tcp"


def candidate_path(label: str) -> str:
    """The path of a connection candidate from its label (``tcp 10.0.0.2:4000 (lan)``,
    ``quic (punched)``, ``relay``)."""
    if label.startswith("tcp"):
        return "lan" if label.endswith("(lan)") else "tcp"
    return label.split(" ", 1)[0]


class DaemonStats:
    def __init__(self):
        self.pieces_verified = 0  # received from peers and matching their hash
        self.pieces_failed = 0
        self.retired_bytes = LabelledCounter("path", "direction")
        self.connection_attempts = LabelledCounter("path")
        self.connections = LabelledCounter("path")  # attempts that gave a ready link
        self.connect_seconds = LabelledHistogram("path")
        self.first_byte_seconds = Histogram()
        self.punches = LabelledCounter("nat_pair", "outcome")

    def retire(self, link, downloaded: int, uploaded: int) -> None:
        path = traffic_path(link)
        self.retired_bytes.inc(path, "received", amount=downloaded)
        self.retired_bytes.inc(path, "sent", amount=uploaded)


def nat_pair(mine: str, theirs: str) -> str:
    """``independent-dependent``: our mapping behaviour, then the other peer's."""
    return f"{mine}-{theirs}"
