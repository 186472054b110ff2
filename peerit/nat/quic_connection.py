"""aioquic's sans-IO ``QuicConnection`` with peer-id pinning and bounded flow control.

Every use of aioquic internals lives in this module and in ``quic_fastpath.py`` (mixed in
here), so an aioquic upgrade that moves them breaks here (and in ``tests/unit/test_quic.py``
and ``test_quic_fastpath.py``) rather than silently:

- ``Context._request_client_certificate``: aioquic can ask for and check a TLS 1.3 client
  certificate (it verifies the CertificateVerify signature over the handshake transcript) but
  only exposes the switch "for test purposes". We turn it on for servers so that both sides
  prove their key inside the handshake, as on TCP+TLS.
- ``Context._set_peer_certificate`` is wrapped so a key that is not the pinned one fails the
  handshake itself with a ``bad_certificate`` alert, before any application data can flow;
  ``Context._peer_certificate`` is read afterwards to learn the proven id.
- ``_write_connection_limits`` / ``_write_stream_limits`` are replaced: aioquic doubles its
  receive windows whenever the peer has used half, whatever the application consumed, so a peer
  could make us buffer without bound. Here the credit is "bytes the application has consumed +
  a fixed window", which also gives real receive back-pressure when the reader pauses.
- ``_host_cids`` tells which connection ids are ours (:meth:`owns_connection_id`): several
  connections share one remote address, told apart by the id each datagram is sent to.
- ``_streams`` and ``QuicStreamSender._buffer_start`` tell how much of a stream is still held
  (written, not yet acknowledged) for send back-pressure.
- ``_loss._pacer`` is replaced by :class:`CoarsePacer`, whose bursts cover the reactor's timer
  granularity (see there).
- ``_serialize_transport_parameters`` is wrapped to announce ``MAX_ACK_DELAY_MS`` instead of
  aioquic's fixed 25 ms.

- The bulk fast path (``peerit/nat/quic_fastpath.py``, mixed in here) overrides
  ``_write_application`` (it calls aioquic's after its burst) and ``receive_datagram`` (it
  falls back to aioquic's for any packet it does not take), and reads or updates:

  - connection state: ``_state``, ``_handshake_confirmed``, ``_quic_logger``, ``_is_client``,
    ``host_cid``, ``_peer_cid`` (``cid``, ``sequence_number``), ``_network_paths[0]``
    (``addr``, ``is_validated``, ``remote_challenges``), ``_close_at``, ``_close_pending``,
    ``_idle_timeout()``, ``_ack_eliciting_sent_since_receipt``, ``_ack_delay``,
    ``_remote_ack_delay_exponent``, ``_spin_bit``, ``_spin_highest_pn``, ``_events``,
    ``_max_datagram_size``, ``_pacing_at``, ``_stream_can_receive()``;
  - what else may be waiting to be sent: ``_handshake_done_pending``, ``_ping_pending``,
    ``_probe_pending``, ``_streams_blocked_pending``, ``_datagrams_pending``,
    ``_retire_connection_ids``, ``_host_cids[*].was_sent``, ``_crypto_streams[ONE_RTT]``;
  - keys: ``_cryptos[ONE_RTT]`` (``_update_key_requested``, ``key_phase``, and on ``send`` /
    ``recv``: ``aead._aead``, ``aead._iv``, ``hp._encryptor``, ``hp._is_chacha20``,
    ``key_phase``) and ``_cryptos[ZERO_RTT].recv.aead``;
  - the 1-RTT packet space ``_spaces[ONE_RTT]`` (``ack_at``, ``expected_packet_number``,
    ``largest_received_packet``/``_time``, ``received_packets`` (a
    ``QuicPacketNumberWindow``: ``add``, ``_received``, ``_lower``), ``ack_queue``,
    ``discarded``, ``sent_packets``, ``ack_eliciting_in_flight``, ``is_application_data``)
    and ``recovery.MAX_ACK_RANGES``;
  - ACK frames written in fast-path packets: ``packet.push_ack_frame``,
    ``_local_ack_delay_exponent``, ``_on_ack_delivery`` (the frame's delivery handler);
  - flow control: ``_remote_max_data``, ``_remote_max_data_used``, ``_local_max_data``
    (``used``, ``value``); streams in ``_streams``: ``is_blocked``,
    ``max_stream_data_local``/``_remote``, the sender's ``_pending``, ``_buffer``,
    ``_buffer_start``, ``_buffer_fin``, ``highest_offset``, ``buffer_is_empty``,
    ``reset_pending``, ``on_data_delivery``, the receiver's ``_buffer``, ``_buffer_start``,
    ``_final_size``, ``highest_offset``, ``is_finished``, ``stop_pending``,
    ``handle_frame``;
  - loss recovery: ``_loss`` (``_pacer.packet_time``/``bucket_time``/``update_bucket``,
    ``on_ack_received``, ``peer_completed_address_validation``, ``handshake_confirmed``,
    ``_time_of_last_sent_ack_eliciting_packet``, ``_cc``: ``on_packet_sent`` and, for
    ``RenoCongestionControl`` exactly, ``bytes_in_flight``): fast-path packets are
    registered as ``_flush_builder`` and ``on_packet_sent`` would, once per run;
  - the packet builder: ``_packet``, ``_buffer``, ``max_flight_bytes``,
    ``max_total_bytes``, ``_flight_bytes``, ``_total_bytes``, ``_datagrams``, ``_packets``,
    ``_packet_number``; and ``QuicSentPacket``'s constructor.

  ``tests/unit/test_quic_fastpath.py`` runs the fast path against aioquic's own code both
  ways, so a change there shows as a failing transfer rather than a silent corruption, and
  :mod:`peerit.shims.aioquic` probes these names once at import: where one is missing the
  fast path stays off (``QuicSettings.fast_path`` defaults to the probe).

Everything fails closed: if a newer aioquic ignored the client-certificate switch, the server
would see no certificate and refuse the connection.
"""

from cryptography import x509
from aioquic import tls
from aioquic.quic.connection import (
    CONNECTION_LIMIT_FRAME_CAPACITY, MAX_STREAM_DATA_FRAME_CAPACITY)
from aioquic.buffer import Buffer
from aioquic.quic.packet import (
    QuicFrameType, pull_quic_transport_parameters, push_quic_transport_parameters)
from aioquic.quic.recovery import QuicPacketPacer

from peerit.identity import format_fingerprint, peer_id_of_certificate
from peerit.nat.quic_fastpath import BulkStreamFastPath


#: How late a reactor timer may fire: epoll sleeps in whole milliseconds, rounded up.
TIMER_GRANULARITY = 0.002
#: the max_ack_delay we announce, in ms. aioquic announces 25 ms but acknowledges within its
#: 1 ms ACK timer (and at the end of every reactor turn with input, here). The peer adds
#: the announced delay to every probe timeout: with 25 ms, each lost tail packet or lost ACK
#: stalled a fast link for 25 ms or more. 5 ms leaves room for the reactor's 2 ms timer
#: granularity and a busy turn.
MAX_ACK_DELAY_MS = 5


class CoarsePacer(QuicPacketPacer):
    """aioquic's pacer, with bursts worth at least ``TIMER_GRANULARITY`` of sending.

    aioquic lets out at most 16 datagrams per burst and then asks to be woken a fraction of a
    millisecond later; a Twisted reactor sleeps at least a millisecond, so a fast path would be
    capped near 16 datagrams per millisecond (~23 MB/s) whatever the congestion window. A
    burst covering the timer's slack keeps the rate the congestion controller chose; on a
    long path it is still a small fraction of the window (2 ms of a 50 ms RTT).
    """

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        super().update_rate(congestion_window, smoothed_rtt)
        if self.bucket_max < TIMER_GRANULARITY:
            self.bucket_max = TIMER_GRANULARITY


class PinnedQuicConnection(BulkStreamFastPath):
    """A QUIC connection that accepts only peers proving one of ``allowed_peer_ids``.

    ``receive_window`` bounds what the peer may send beyond what the application consumed
    (:meth:`consumed`), per stream and for the whole connection.
    """

    def __init__(self, *, configuration, allowed_peer_ids: frozenset, receive_window: int,
                 **kwargs):
        configuration.max_data = receive_window
        configuration.max_stream_data = receive_window
        super().__init__(configuration=configuration, **kwargs)
        self._allowed_peer_ids = frozenset(allowed_peer_ids)
        self._loss._pacer = CoarsePacer(max_datagram_size=configuration.max_datagram_size)
        self._receive_window = receive_window
        self._consumed_by_stream: dict[int, int] = {}
        self._consumed_total = 0
        #: why the handshake refused the peer's key (None while nothing was refused)
        self.identity_refusal: str | None = None

    def _serialize_transport_parameters(self) -> bytes:
        # aioquic writes max_ack_delay=25 with no setting; announce what we really do.
        parameters = pull_quic_transport_parameters(
            Buffer(data=super()._serialize_transport_parameters()))
        parameters.max_ack_delay = MAX_ACK_DELAY_MS
        buf = Buffer(capacity=3 * self._max_datagram_size)
        push_quic_transport_parameters(buf, parameters)
        return buf.data

    # -- identity -------------------------------------------------------------------------

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        context = self.tls
        if not self._is_client:
            context._request_client_certificate = True
        set_peer_certificate = context._set_peer_certificate

        def pinned_set_peer_certificate(certificate) -> None:
            set_peer_certificate(certificate)
            proven = peer_id_of_certificate(context._peer_certificate)
            if proven not in self._allowed_peer_ids:
                self.identity_refusal = (
                    f"peer proved key {format_fingerprint(proven)[:16]}…, "
                    f"not the expected one")
                raise tls.AlertBadCertificate(self.identity_refusal)

        context._set_peer_certificate = pinned_set_peer_certificate

    def peer_certificate(self) -> x509.Certificate | None:
        """The certificate the other side presented (and signed the transcript with)."""
        certificate = getattr(getattr(self, "tls", None), "_peer_certificate", None)
        return certificate if isinstance(certificate, x509.Certificate) else None

    def proven_peer_id(self) -> bytes | None:
        """The peer id the other side proved in the handshake, if it is an allowed one.

        Meaningful once the handshake completed: the certificate was then checked against the
        pins and its key signed the transcript (CertificateVerify).
        """
        certificate = self.peer_certificate()
        if certificate is None:
            return None
        proven = peer_id_of_certificate(certificate)
        return proven if proven in self._allowed_peer_ids else None

    def handshake_confirmed(self) -> bool:
        """For a client: the server sent HANDSHAKE_DONE, so it accepted our certificate."""
        return self._handshake_confirmed

    def owns_connection_id(self, cid: bytes) -> bool:
        """``cid`` is one of the connection ids we issued and have not retired: the endpoint
        routes a datagram carrying it to this connection."""
        return any(issued.cid == cid for issued in self._host_cids)

    # -- flow control -----------------------------------------------------------------------

    def consumed(self, stream_id: int, size: int) -> None:
        """The application took ``size`` more bytes of ``stream_id``: the peer may send more."""
        self._consumed_by_stream[stream_id] = self._consumed_by_stream.get(stream_id, 0) + size
        self._consumed_total += size

    def _raised(self, current: int, consumed: int) -> int:
        # Grant more only once a quarter of the window is free, so credit goes out in a few
        # frames per window rather than in every packet.
        target = consumed + self._receive_window
        return target if target - current >= self._receive_window // 4 else current

    def _write_connection_limits(self, builder, space) -> None:
        max_data = self._local_max_data
        max_data.value = self._raised(max_data.value, self._consumed_total)
        for limit in (max_data, self._local_max_streams_bidi, self._local_max_streams_uni):
            if limit is not max_data and limit.sent - limit.used >= limit.value - limit.sent:
                continue
            if limit.value != limit.sent:
                buf = builder.start_frame(
                    limit.frame_type, capacity=CONNECTION_LIMIT_FRAME_CAPACITY,
                    handler=self._on_connection_limit_delivery, handler_args=(limit,))
                buf.push_uint_var(limit.value)
                limit.sent = limit.value

    def _credit_pending(self) -> bool:
        """Whether ``_write_connection_limits``/``_write_stream_limits`` would write a frame
        now (the same tests, without their effects)."""
        max_data = self._local_max_data
        if self._raised(max_data.value, self._consumed_total) != max_data.sent:
            return True
        for limit in (self._local_max_streams_bidi, self._local_max_streams_uni):
            if (limit.sent - limit.used < limit.value - limit.sent
                    and limit.value != limit.sent):
                return True
        for stream in self._streams.values():
            if stream.max_stream_data_local and self._raised(
                    stream.max_stream_data_local,
                    self._consumed_by_stream.get(stream.stream_id, 0)
            ) != stream.max_stream_data_local_sent:
                return True
        return False

    def _write_stream_limits(self, builder, space, stream) -> None:
        if not stream.max_stream_data_local:
            return  # a send-only stream: no credit to grant
        stream.max_stream_data_local = self._raised(
            stream.max_stream_data_local, self._consumed_by_stream.get(stream.stream_id, 0))
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA, capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery, handler_args=(stream,))
            buf.push_uint_var(stream.stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local

    # -- send buffer ------------------------------------------------------------------------

    def held_bytes(self, stream_id: int, written: int) -> int:
        """Bytes of ``stream_id`` written (``written`` in all) but not yet acknowledged."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0  # never opened, or finished and discarded: nothing held
        return written - stream.sender._buffer_start

    def send_finished(self, stream_id: int) -> bool:
        """Whether everything written on ``stream_id``, and its FIN, was acknowledged."""
        stream = self._streams.get(stream_id)
        return stream is None or stream.sender.is_finished
