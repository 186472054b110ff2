"""aioquic's connection internals: what the QUIC fast path (``peerit.nat.quic_fastpath``) and
the pinned connection (``peerit.nat.quic_connection``) reach into.

The full inventory, and why each is needed, is ``peerit/nat/quic_connection.py``'s docstring;
it was checked against aioquic 1.7.2, the version setup.cfg pins.

Two kinds of use:

- **Required** (identity pinning, bounded receive windows): ``tls.Context``'s client
  certificate switch and ``_set_peer_certificate``, the connection's
  ``_write_connection_limits`` / ``_write_stream_limits``. These fail closed: without them the
  handshake refuses the peer, so no probe can offer a weaker path.
- **Speed only** (the bulk fast path): :data:`FAST_PATH` says whether every attribute the fast
  path reads or replaces is on a fresh ``QuicConnection`` as expected; ``QuicSettings``
  defaults its ``fast_path`` to it, so without them every packet takes aioquic's own path.
"""

from aioquic.quic import packet, recovery
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

#: connection attributes and methods the fast path reads, updates or overrides
FAST_PATH_CONNECTION = (
    "_state", "_handshake_confirmed", "_quic_logger", "_is_client", "host_cid", "_peer_cid",
    "_network_paths", "_close_at", "_close_pending", "_idle_timeout",
    "_ack_eliciting_sent_since_receipt", "_ack_delay", "_remote_ack_delay_exponent",
    "_spin_bit", "_spin_highest_pn", "_events", "_max_datagram_size", "_pacing_at",
    "_stream_can_receive", "_handshake_done_pending", "_ping_pending", "_probe_pending",
    "_streams_blocked_pending", "_datagrams_pending", "_retire_connection_ids", "_host_cids",
    "_crypto_streams", "_cryptos", "_spaces", "_local_ack_delay_exponent",
    "_on_ack_delivery", "_remote_max_data", "_remote_max_data_used", "_local_max_data",
    "_streams", "_loss", "_write_application", "receive_datagram", "_flush_builder",
)
#: the loss recovery's, likewise
FAST_PATH_RECOVERY = (
    "_pacer", "on_ack_received", "peer_completed_address_validation",
    "_time_of_last_sent_ack_eliciting_packet", "_cc",
)


def _probe(connection_names=FAST_PATH_CONNECTION, recovery_names=FAST_PATH_RECOVERY) -> bool:
    try:
        conn = QuicConnection(configuration=QuicConfiguration(is_client=True))
    except Exception:  # pragma: no cover - an aioquic whose constructor changed
        return False
    return (all(hasattr(conn, name) for name in connection_names)
            and all(hasattr(conn._loss, name) for name in recovery_names)
            and hasattr(recovery, "MAX_ACK_RANGES")
            and all(hasattr(packet, name) for name in (
                "push_ack_frame", "pull_ack_frame", "decode_packet_number")))


#: every internal the fast path uses is where it expects it (decided once, at import)
FAST_PATH = _probe()
