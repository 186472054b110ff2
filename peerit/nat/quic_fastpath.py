"""A bulk fast path through aioquic for 1-RTT packets that carry one stream's data.

aioquic builds and parses every packet with about 85 Python calls (packet builder, frame
dispatch, stream bookkeeping), which caps a core near 30 MB/s with 1452-byte datagrams. On a
peer link nearly every packet is the same: a short-header packet with one STREAM frame of our
byte stream (sending), or one STREAM frame and maybe an ACK (receiving). This module builds
and parses exactly those packets with a few calls each, and hands everything else to aioquic.

Sending (:meth:`BulkStreamFastPath._write_application`): when nothing but one stream's data is
waiting (no ACK due, no control frame, no retransmission of the FIN, no key update), full-size
packets are built directly: a precomputed header, one STREAM frame laid out as aioquic lays
it out, one AES-GCM call and header protection. Each packet still becomes a
``QuicSentPacket`` with the stream's delivery handler and goes through the builder, so
aioquic's ``_flush_builder`` registers it with loss recovery and congestion control exactly as
its own packets; pacing is applied per packet as aioquic does; flow control limits are the
same. Whatever is left (an ACK, a short packet at the end of the window, the FIN, control
frames) is then written by aioquic's own ``_write_application`` in the same call.

Receiving (:meth:`BulkStreamFastPath.receive_datagram`): a short-header packet on the active
path and connection id, in the current key phase, whose frames are only PADDING, at most one
ACK and at most one STREAM frame (no FIN, on an existing stream, within flow control) is
decrypted and applied here. Anything else, and any packet that fails a check, goes to
aioquic's ``receive_datagram`` untouched: the checks come before any state changes, so the
packet is processed once, by one of the two.

The aioquic internals used are listed in ``peerit/nat/quic_connection.py``'s docstring (and in
docs/quic.md); they were checked against aioquic 1.7.2.
"""

import dataclasses

from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.connection import END_STATES, QuicConnection, QuicConnectionState
from aioquic.quic.packet import (
    QuicFrameType, QuicPacketType, QuicStreamFrame, decode_packet_number, pull_ack_frame,
    push_ack_frame)
from aioquic.quic.packet_builder import QuicDeliveryState, QuicSentPacket
from aioquic.quic.congestion.reno import RenoCongestionControl
from aioquic.quic.recovery import MAX_ACK_RANGES
from cryptography.exceptions import InvalidTag

from peerit.shims.aioquic import FAST_PATH

ONE_RTT = tls.Epoch.ONE_RTT
ZERO_RTT = tls.Epoch.ZERO_RTT
ONE_RTT_PACKET = QuicPacketType.ONE_RTT
CONNECTED = QuicConnectionState.CONNECTED
AEAD_TAG_SIZE = 16
SAMPLE_SIZE = 16
PACKET_NUMBER_SEND_SIZE = 2  # aioquic's: every packet it sends has a 2-byte packet number
STREAM_FRAME = 0x08  # | 0x04 offset present | 0x02 length present | 0x01 FIN
#: room for an ACK frame in a fast-path packet; the oldest ranges beyond it are left out,
#: as aioquic does when its packet is full (RFC 9000 section 13.2.3)
ACK_FRAME_BYTES = 256


def _uint_var(value: int) -> bytes:
    if value <= 0x3F:
        return value.to_bytes(1, "big")
    if value <= 0x3FFF:
        return (value | 0x4000).to_bytes(2, "big")
    if value <= 0x3FFFFFFF:
        return (value | 0x80000000).to_bytes(4, "big")
    return (value | 0xC000000000000000).to_bytes(8, "big")


def _pull_uint_var(data: bytes, pos: int) -> tuple[int, int]:
    """A QUIC variable-length integer at ``pos``; IndexError/ValueError when truncated."""
    first = data[pos]
    size = 1 << (first >> 6)
    if size == 1:
        return first, pos + 1
    end = pos + size
    if end > len(data):
        raise ValueError("truncated variable-length integer")
    return int.from_bytes(data[pos:end], "big") & ((1 << (8 * size - 2)) - 1), end


class BulkStreamFastPath(QuicConnection):
    """Mixed into a ``QuicConnection``: the fast paths, with counters for tests.

    Subclasses tell whether flow-control credit frames are waiting to go out
    (:meth:`_credit_pending`), since that depends on how they grant credit.
    """

    #: False: every packet goes through aioquic's own code (the reference, in tests)
    fast_path = FAST_PATH  # peerit.shims.aioquic: the internals used are as checked

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        #: packets built / parsed by the fast path, and received packets left to aioquic
        self.fast_sent = 0
        self.fast_received = 0
        self.slow_received = 0
        self._fast_recv = self._fast_space = self._fast_event = None
        self._fast_close_at = self._fast_idle_timeout = None
        self._parsed_ack_at = None
        #: acknowledged ranges of fast-path packets, handed to their stream once per ACK frame
        self._acked_ranges: list = []
        #: a run of consecutive packet numbers received on the fast path and not yet added
        #: to the ACK queue and the duplicate window (:meth:`_flush_received`)
        self._run_start = self._run_stop = -1
        self._fast_zero_rtt_recv = self._fast_host_cid = None
        self._fast_receivable: dict[int, bool] = {}

    def _credit_pending(self) -> bool:
        """Whether a MAX_DATA / MAX_STREAMS / MAX_STREAM_DATA frame would be written now."""
        raise NotImplementedError

    # -- sending ----------------------------------------------------------------------------

    def _write_application(self, builder, network_path, now: float) -> None:
        if self.fast_path:
            self._write_stream_burst(builder, network_path, now)
        super()._write_application(builder, network_path, now)

    def _bulk_stream(self, network_path, now: float):
        """The one stream whose data may go out in fast-path packets now, or None when
        anything else is waiting to be sent (aioquic's code must write it)."""
        if (not self._handshake_confirmed or self._quic_logger is not None
                or self._state is not CONNECTED):
            return None
        if (self._handshake_done_pending or self._ping_pending or self._probe_pending
                or self._streams_blocked_pending or self._datagrams_pending
                or self._retire_connection_ids or network_path.remote_challenges
                or not network_path.is_validated
                or not self._crypto_streams[ONE_RTT].sender.buffer_is_empty):
            return None
        for connection_id in self._host_cids:
            if not connection_id.was_sent:
                return None
        found = None
        for stream in self._streams.values():
            sender = stream.sender
            if (stream.is_finished or stream.receiver.stop_pending or sender.reset_pending):
                return None
            if not sender.buffer_is_empty and not stream.is_blocked:
                if found is not None:
                    return None  # several streams: aioquic's round robin decides
                found = stream
        if found is None or self._credit_pending():
            return None
        return found

    def _write_stream_burst(self, builder, network_path, now: float) -> None:
        """Full-size STREAM packets of the bulk stream, while the congestion window, the
        pacer and flow control allow."""
        if (builder._packet is not None or builder._buffer.tell()
                or builder.max_total_bytes is not None):
            return
        crypto = self._cryptos[ONE_RTT]
        send = crypto.send
        if send.aead is None or crypto._update_key_requested or send.hp._is_chacha20:
            return
        stream = self._bulk_stream(network_path, now)
        if stream is None:
            return
        sender = stream.sender
        try:
            pending = sender._pending[0]
        except IndexError:
            return  # only the FIN is left: aioquic sends it
        offset = pending.start
        end = pending.stop
        if sender._buffer_fin is not None and end >= sender._buffer_fin:
            end = sender._buffer_fin - 1  # the frame carrying the FIN is aioquic's
        max_offset = min(sender.highest_offset + self._remote_max_data
                         - self._remote_max_data_used, stream.max_stream_data_remote)
        if end > max_offset:
            end = max_offset
        if end <= offset:
            return

        max_datagram = self._max_datagram_size
        flight_left = (builder.max_flight_bytes - builder._flight_bytes
                       if builder.max_flight_bytes is not None else 1 << 62)
        pacer = self._loss._pacer
        packet_time = pacer.packet_time
        if packet_time is not None:
            pacer.update_bucket(now=now)
        # An ACK that is due goes first in the first packet, as aioquic puts it. (Leaving it
        # to aioquic made aioquic write the whole burst behind it: on a seeder, which gets
        # requests all the time, that was most packets.)
        ack = None
        space = self._spaces[ONE_RTT]
        if space.ack_at is not None and space.ack_at <= now:
            if (packet_time is not None and pacer.bucket_time <= 0) \
                    or flight_left < max_datagram:
                return  # an ACK is not paced nor limited: aioquic sends it alone
            ack = self._ack_frame(space, now, builder._packet_number)
            if ack is None:
                return
        peer_cid = self._peer_cid.cid
        first_byte = (0x40 | (self._spin_bit << 5) | (crypto.key_phase << 2)
                      | (PACKET_NUMBER_SEND_SIZE - 1))
        header_prefix = bytes((first_byte,)) + peer_cid
        header_size = len(header_prefix) + PACKET_NUMBER_SEND_SIZE
        stream_id = stream.stream_id
        stream_id_bytes = _uint_var(stream_id)
        # The frame's head for offsets of 4-byte varints (16 KiB to 1 GiB, nearly all of a
        # transfer): type, stream id, then offset and 2-byte length as one 6-byte integer.
        long_head = bytes((STREAM_FRAME | 0x04 | 0x02,)) + stream_id_bytes
        long_room = (max_datagram - header_size - AEAD_TAG_SIZE - len(long_head) - 6)
        aead = send.aead
        encrypt = aead._aead.encrypt
        iv = aead._iv
        mask_of = send.hp._encryptor.update
        on_delivery = self._on_fast_delivery
        data = memoryview(sender._buffer)  # sliced without a copy; joined once below
        buffer_start = sender._buffer_start
        datagrams = builder._datagrams
        sent_packets = space.sent_packets
        sent_packet = _sent_packet
        packet_number = first_packet_number = builder._packet_number
        first_offset = offset
        sent_bytes = 0
        try:
            while offset < end:
                if flight_left < max_datagram:
                    break  # the rest of the window: aioquic fills it with a shorter packet
                if packet_time is not None:
                    if pacer.bucket_time <= 0:
                        self._pacing_at = now + packet_time
                        break
                    if pacer.bucket_time < packet_time:
                        pacer.bucket_time = 0.0
                    else:
                        pacer.bucket_time -= packet_time
                # aioquic's layout: type, stream id, [offset], 2-byte length, data
                if ack is None and 0x4000 <= offset <= 0x3FFFFFFF:
                    stop = end if end - offset <= long_room else offset + long_room
                    payload = (long_head
                               + (((offset | 0x80000000) << 16) | (stop - offset) | 0x4000)
                               .to_bytes(6, "big")
                               + data[offset - buffer_start:stop - buffer_start])
                    handlers = [(on_delivery, (sender, offset, stop))]
                else:
                    offset_bytes = _uint_var(offset) if offset else b""
                    room = (max_datagram - header_size - AEAD_TAG_SIZE - 3
                            - len(stream_id_bytes) - len(offset_bytes))
                    if ack is not None:
                        room -= len(ack[0])
                    stop = end if end - offset <= room else offset + room
                    frame_type = STREAM_FRAME | 0x02 | (0x04 if offset else 0)
                    payload = (bytes((frame_type,)) + stream_id_bytes + offset_bytes
                               + ((stop - offset) | 0x4000).to_bytes(2, "big")
                               + data[offset - buffer_start:stop - buffer_start])
                    handlers = [(on_delivery, (sender, offset, stop))]
                    if ack is not None:
                        payload = ack[0] + payload
                        handlers.insert(0, ack[1])
                        space.ack_at = None
                        ack = None
                number = packet_number & 0xFFFF
                protected = encrypt((iv ^ packet_number).to_bytes(12, "big"), payload,
                                    header_prefix + number.to_bytes(2, "big"))
                mask = mask_of(protected[4 - PACKET_NUMBER_SEND_SIZE:
                                         4 - PACKET_NUMBER_SEND_SIZE + SAMPLE_SIZE])
                datagram = (bytes((first_byte ^ (mask[0] & 0x1F),)) + peer_cid
                            + (number ^ ((mask[1] << 8) | mask[2])).to_bytes(2, "big")
                            + protected)
                size = len(datagram)
                sent_packets[packet_number] = sent_packet(packet_number, now, size, handlers)
                datagrams.append(datagram)
                flight_left -= size
                sent_bytes += size
                packet_number += 1
                offset = stop
        finally:
            data.release()  # the stream may resize its buffer later: no export may remain
        if offset == first_offset:
            return
        builder._packet_number = packet_number
        builder._flight_bytes += sent_bytes
        builder._total_bytes += sent_bytes
        count = packet_number - first_packet_number
        self.fast_sent += count
        self._register_sent(space, first_packet_number, count, sent_bytes, now)
        sender._pending.subtract(first_offset, offset)
        if offset > sender.highest_offset:
            self._remote_max_data_used += offset - sender.highest_offset
            sender.highest_offset = offset

    def _register_sent(self, space, first: int, count: int, sent_bytes: int,
                       now: float) -> None:
        """What ``_flush_builder`` and ``QuicPacketRecovery.on_packet_sent`` do for each
        packet aioquic sends, once for a run of fast-path packets (already entered in
        ``space.sent_packets``, in packet-number order, with ``sent_time`` set): all are
        in flight and ack-eliciting, 1-RTT, sent at ``now``."""
        loss = self._loss
        space.ack_eliciting_in_flight += count
        if loss.handshake_confirmed or not space.is_application_data:
            loss._time_of_last_sent_ack_eliciting_packet = now
        cc = loss._cc
        if type(cc) is RenoCongestionControl:
            cc.bytes_in_flight += sent_bytes  # all Reno's on_packet_sent does
        else:
            sent_packets = space.sent_packets
            for number in range(first, first + count):
                cc.on_packet_sent(packet=sent_packets[number])
        # Restart the idle timer on the first ack-eliciting packet sent since the last one
        # received (RFC 9000 section 10.1), as _flush_builder does.
        if not self._ack_eliciting_sent_since_receipt:
            self._close_at = now + self._idle_timeout()
            self._ack_eliciting_sent_since_receipt = True

    def _ack_frame(self, space, now: float, packet_number: int):
        """aioquic's ``_write_ack_frame`` for the first fast-path packet: ``(frame,
        delivery handler)``, or None where aioquic must write it (an ACK-of-ACK PING)."""
        delay = int((now - space.largest_received_time) * 1000000) \
            >> self._local_ack_delay_exponent
        buf = Buffer(capacity=ACK_FRAME_BYTES)
        buf.push_uint8(QuicFrameType.ACK)
        ranges = push_ack_frame(buf, space.ack_queue, delay, ACK_FRAME_BYTES - 1)
        if ranges > 1 and packet_number % 8 == 0:
            return None  # aioquic adds a PING to get this ACK acknowledged
        return buf.data, (self._on_ack_delivery, (space, space.largest_received_packet))

    def _on_fast_delivery(self, delivery, sender, start: int, stop: int) -> None:
        """Delivery handler of a fast-path packet. A loss goes to the stream at once (its
        data is sent again); acknowledgements are collected and handed over merged once the
        ACK frame is done (:meth:`_deliver_acked`): one ``on_data_delivery`` per run of
        packets instead of one per packet. Acknowledged ranges only add up, so the order of
        those calls does not matter."""
        if delivery == QuicDeliveryState.ACKED:
            self._acked_ranges.append((sender, start, stop))
        else:
            sender.on_data_delivery(delivery, start, stop, False)

    def _deliver_acked(self) -> None:
        ranges = self._acked_ranges
        if not ranges:
            return
        self._acked_ranges = []
        ranges.sort(key=_range_start)  # packet order is offset order, except after a loss
        sender, start, stop = ranges[0]
        for other, other_start, other_stop in ranges[1:]:
            if other is sender and other_start == stop:
                stop = other_stop
                continue
            sender.on_data_delivery(QuicDeliveryState.ACKED, start, stop, False)
            sender, start, stop = other, other_start, other_stop
        sender.on_data_delivery(QuicDeliveryState.ACKED, start, stop, False)

    def _handle_ack_frame(self, context, frame_type: int, buf) -> None:
        # aioquic's, for ACKs in packets the fast path leaves to it
        super()._handle_ack_frame(context, frame_type, buf)
        self._deliver_acked()

    # -- receiving --------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr, now: float) -> None:
        if not (self.fast_path and self._receive_bulk(data, addr, now)):
            self.slow_received += 1
            self._flush_received()
            super().receive_datagram(data, addr, now)

    def receive_datagrams(self, datagrams, addr, now: float) -> None:
        """:meth:`receive_datagram` for each of a read's datagrams from ``addr``. What
        holds for the whole connection (its state, path, connection id, keys) is checked
        once, and again after any packet left to aioquic (which may change it)."""
        if not self.fast_path:
            for data in datagrams:
                self.slow_received += 1
                QuicConnection.receive_datagram(self, data, addr, now)
            return
        ready = self._fast_receive_ready(addr)
        receive_packet = self._receive_bulk_packet
        for data in datagrams:
            if ready and receive_packet(data, now):
                continue
            self.slow_received += 1
            self._flush_received()
            QuicConnection.receive_datagram(self, data, addr, now)
            ready = self._fast_receive_ready(addr)

    def datagrams_to_send(self, now: float):
        self._flush_received()  # the ACK frames written here read the ACK queue
        return super().datagrams_to_send(now)

    def _flush_received(self) -> None:
        """Add the pending run of received packet numbers to the ACK queue and the
        duplicate window: one range instead of one call each per packet. Done before
        anything of aioquic's reads them (an ACK frame, a packet it parses)."""
        start = self._run_start
        if start < 0:
            return
        stop = self._run_stop
        self._run_start = self._run_stop = -1
        space = self._fast_space
        space.ack_queue.add(start, stop)
        if len(space.ack_queue) > MAX_ACK_RANGES:
            space.ack_queue.shift()
        window = space.received_packets
        if stop - start > 1:
            window._received.update(range(max(start, window._lower), stop - 1))
        window.add(stop - 1)  # slides the window as the per-packet adds would have

    def _receive_bulk(self, data: bytes, addr, now: float) -> bool:
        """Handle one short-header data packet; False (and nothing changed) when it is not
        one the fast path takes."""
        return self._fast_receive_ready(addr) and self._receive_bulk_packet(data, now)

    def _fast_receive_ready(self, addr) -> bool:
        """Whether packets from ``addr`` may take the fast path now, as far as the
        connection is concerned (each packet is checked by :meth:`_receive_bulk_packet`).
        Only a packet handled by aioquic changes what is checked here."""
        if (self._state is not CONNECTED or not self._handshake_confirmed
                or self._quic_logger is not None or self._close_at is None):
            return False
        network_path = self._network_paths[0]
        if network_path.addr != addr or not network_path.is_validated:
            return False
        if self._peer_cid.sequence_number is None:
            return False
        recv = self._fast_recv
        if recv is None:
            # The crypto context and packet space live as long as the connection (a key
            # update changes the context's AEAD and key phase in place).
            recv = self._fast_recv = self._cryptos[ONE_RTT].recv
            self._fast_space = self._spaces[ONE_RTT]
            # (looked up once: the dicts are keyed by an Enum, hashed by a Python call)
            self._fast_zero_rtt_recv = self._cryptos[ZERO_RTT].recv
        if recv.aead is None or recv.hp._is_chacha20:
            return False
        if not self._is_client and self._fast_zero_rtt_recv.aead is not None:
            return False
        self._fast_host_cid = self.host_cid
        return True

    def _receive_bulk_packet(self, data: bytes, now: float) -> bool:
        """One packet, once :meth:`_fast_receive_ready` said yes: False (and nothing
        changed) when it is not one the fast path takes."""
        host_cid = self._fast_host_cid
        number_offset = 1 + len(host_cid)
        if data[0] & 0x80 or data[1:number_offset] != host_cid:
            return False
        recv = self._fast_recv
        aead = recv.aead
        sample_at = number_offset + 4
        if len(data) < sample_at + SAMPLE_SIZE:
            return False
        mask = recv.hp._encryptor.update(data[sample_at:sample_at + SAMPLE_SIZE])
        first_byte = data[0] ^ (mask[0] & 0x1F)
        if first_byte & 0x18 or (first_byte >> 2) & 1 != recv.key_phase:
            return False  # reserved bits (aioquic closes) or a key update
        number_size = (first_byte & 0x03) + 1
        payload_offset = number_offset + number_size
        truncated = (int.from_bytes(data[number_offset:payload_offset], "big")
                     ^ int.from_bytes(mask[1:1 + number_size], "big"))
        space = self._fast_space
        # decode_packet_number (RFC 9000 appendix A.3)
        expected = space.expected_packet_number
        window = 1 << (number_size * 8)
        packet_number = (expected & ~(window - 1)) | truncated
        if packet_number <= expected - (window >> 1) and packet_number < (1 << 62) - window:
            packet_number += window
        elif packet_number > expected + (window >> 1) and packet_number >= window:
            packet_number -= window
        try:
            payload = aead._aead.decrypt(
                (aead._iv ^ packet_number).to_bytes(12, "big"), data[payload_offset:],
                bytes((first_byte,)) + host_cid + truncated.to_bytes(number_size, "big"))
        except InvalidTag:
            return False  # aioquic drops it
        if packet_number <= space.largest_received_packet and (
                packet_number in space.received_packets
                or self._run_start <= packet_number < self._run_stop):
            return False  # a duplicate: aioquic drops it

        # Parse and check every frame before changing anything. The common packet, one
        # STREAM frame with offset and length on a 1-byte stream id, is read inline.
        ack_at = None
        frame_type = payload[0]
        if frame_type == 0x0E and payload[1] < 0x40 and len(payload) > 4:
            stream_id = payload[1]
            size = 1 << (payload[2] >> 6)
            offset = int.from_bytes(payload[2:2 + size], "big") & _VARINT_MASK[size]
            data_at = 2 + size + 2
            length = int.from_bytes(payload[2 + size:data_at], "big") ^ 0x4000
            if length >> 14 or data_at + length != len(payload):
                stream_frame = self._parse_frames(payload)  # not a 2-byte length, or more
            elif self._receive_in_order(payload, stream_id, offset, data_at, length,
                                        packet_number, expected, first_byte, space, now):
                return True
            else:
                stream_frame = (stream_id, offset, data_at, length)
        else:
            stream_frame = self._parse_frames(payload)
        if stream_frame is None:
            return False
        if stream_frame is _ACK_ONLY:
            stream_frame = None
            ack_at = self._parsed_ack_at
        elif len(stream_frame) == 5:
            ack_at = stream_frame[4]
        newly_received = 0
        if stream_frame is not None:
            stream_id, offset, data_at, length = stream_frame[:4]
            stream = self._streams.get(stream_id)
            if stream is None:
                return False
            can_receive = self._fast_receivable.get(stream_id)
            if can_receive is None:  # depends on the id and our role only
                can_receive = self._fast_receivable[stream_id] = \
                    self._stream_can_receive(stream_id)
            if not can_receive:
                return False
            receiver = stream.receiver
            if receiver.is_finished or receiver._final_size is not None:
                return False
            end = offset + length
            if end > stream.max_stream_data_local:
                return False  # aioquic closes with FLOW_CONTROL_ERROR
            if end > receiver.highest_offset:
                newly_received = end - receiver.highest_offset
                local_max_data = self._local_max_data
                if local_max_data.used + newly_received > local_max_data.value:
                    return False  # aioquic closes with FLOW_CONTROL_ERROR

        # Apply, in aioquic's order.
        self.fast_received += 1
        if packet_number > expected:
            space.expected_packet_number = packet_number + 1
        if packet_number > self._spin_highest_pn:
            spin_bit = bool(first_byte & 0x20)
            self._spin_bit = not spin_bit if self._is_client else spin_bit
            self._spin_highest_pn = packet_number
        ack_first = ack_at is not None and (stream_frame is None or ack_at < stream_frame[2])
        if ack_first:
            self._receive_ack(payload, ack_at, now)
        if stream_frame is not None:
            chunk = payload[data_at:data_at + length]
            if offset == receiver._buffer_start and length and not receiver._buffer:
                # in order, nothing buffered: what aioquic's receiver does on its fast path
                receiver._buffer_start = end
                if newly_received:
                    receiver.highest_offset = end
                    self._local_max_data.used += newly_received
                event = self._fast_event
                if (event is not None and event.stream_id == stream_id and self._events
                        and self._events[-1] is event):
                    event.chunks.append(chunk)  # _add_stream_chunk's common case, inline
                else:
                    self._add_stream_chunk(stream_id, chunk)
            else:
                event = receiver.handle_frame(
                    QuicStreamFrame(offset=offset, data=chunk, fin=False))
                if event is not None:
                    self._add_stream_chunk(stream_id, event.data)
                self._local_max_data.used += newly_received
        if ack_at is not None and not ack_first:
            self._receive_ack(payload, ack_at, now)
        if self._state is not CONNECTED or self._close_pending:
            return True
        # aioquic re-arms the idle timer with every packet; its length only changes with
        # the RTT estimate, i.e. when an ACK was processed (here or by aioquic).
        if ack_at is not None or self._close_at != self._fast_close_at:
            self._fast_idle_timeout = self._idle_timeout()
        self._close_at = self._fast_close_at = now + self._fast_idle_timeout
        self._ack_eliciting_sent_since_receipt = False
        if not space.discarded:
            if packet_number > space.largest_received_packet:
                space.largest_received_packet = packet_number
                space.largest_received_time = now
            if packet_number == self._run_stop:
                self._run_stop = packet_number + 1
            else:
                self._flush_received()
                self._run_start = packet_number
                self._run_stop = packet_number + 1
            if stream_frame is not None and space.ack_at is None:
                space.ack_at = now + self._ack_delay
        return True

    def _receive_in_order(self, payload: bytes, stream_id: int, offset: int, data_at: int,
                          length: int, packet_number: int, expected: int, first_byte: int,
                          space, now: float) -> bool:
        """The bulk of a transfer: a decrypted packet of one STREAM frame (no ACK), the next
        data of its stream with nothing buffered, the next packet number, the data event of
        this read already open, the number following the last one received. Applied as the general code below would, with only the
        steps that case takes; False (nothing changed) for anything else."""
        event = self._fast_event
        if (packet_number < expected or packet_number != self._run_stop
                or event is None or event.stream_id != stream_id or not self._events
                or self._events[-1] is not event or not length
                or self._close_at != self._fast_close_at or space.discarded):
            return False
        stream = self._streams.get(stream_id)
        if stream is None or not self._fast_receivable.get(stream_id):
            return False
        receiver = stream.receiver
        if (offset != receiver._buffer_start or receiver._buffer or receiver.is_finished
                or receiver._final_size is not None):
            return False
        end = offset + length
        if end > stream.max_stream_data_local:
            return False
        newly_received = end - receiver.highest_offset
        local_max_data = self._local_max_data
        if newly_received > 0 and local_max_data.used + newly_received > local_max_data.value:
            return False
        # Apply, as _receive_bulk_packet's general steps do for this case.
        self.fast_received += 1
        if packet_number > expected:  # (aioquic's rule: not when it is the expected one)
            space.expected_packet_number = packet_number + 1
        if packet_number > self._spin_highest_pn:
            spin_bit = bool(first_byte & 0x20)
            self._spin_bit = not spin_bit if self._is_client else spin_bit
            self._spin_highest_pn = packet_number
        receiver._buffer_start = end
        if newly_received > 0:
            receiver.highest_offset = end
            local_max_data.used += newly_received
        event.chunks.append(payload[data_at:])
        if self._state is not CONNECTED or self._close_pending:
            return True
        self._close_at = self._fast_close_at = now + self._fast_idle_timeout
        self._ack_eliciting_sent_since_receipt = False
        if packet_number > space.largest_received_packet:
            space.largest_received_packet = packet_number
            space.largest_received_time = now
        self._run_stop = packet_number + 1
        if space.ack_at is None:
            space.ack_at = now + self._ack_delay
        return True

    def _parse_frames(self, payload: bytes):
        """Frames of a payload the inline reader did not take: ``(stream_id, offset,
        data_at, length[, ack_at])`` for one STREAM frame (and maybe one ACK frame),
        ``_ACK_ONLY`` for an ACK and PADDING, None when aioquic must handle the packet."""
        stream_frame = ack_at = None
        position, size = 0, len(payload)
        try:
            while position < size:
                frame_type = payload[position]
                if frame_type == 0x00:  # PADDING
                    position += 1
                elif STREAM_FRAME <= frame_type <= 0x0F:
                    if stream_frame is not None or frame_type & 0x01:
                        return None  # a second STREAM frame, or a FIN
                    stream_id, position = _pull_uint_var(payload, position + 1)
                    offset = 0
                    if frame_type & 0x04:
                        offset, position = _pull_uint_var(payload, position)
                    if frame_type & 0x02:
                        length, position = _pull_uint_var(payload, position)
                    else:
                        length = size - position
                    if position + length > size:
                        return None
                    stream_frame = (stream_id, offset, position, length)
                    position += length
                elif frame_type in (0x02, 0x03):  # ACK, ACK_ECN
                    if ack_at is not None:
                        return None
                    ack_at = position
                    buf = Buffer(data=payload)
                    buf.seek(position + 1)
                    pull_ack_frame(buf)
                    if frame_type == 0x03:
                        buf.pull_uint_var()
                        buf.pull_uint_var()
                        buf.pull_uint_var()
                    position = buf.tell()
                else:
                    return None
        except (ValueError, IndexError):
            return None  # malformed: aioquic reports the error
        if stream_frame is None:
            if ack_at is None:
                return None
            self._parsed_ack_at = ack_at
            return _ACK_ONLY
        return stream_frame if ack_at is None else stream_frame + (ack_at,)

    def _add_stream_chunk(self, stream_id: int, chunk: bytes) -> None:
        """Received in-order data: appended to the last event when that is ours already,
        so a burst of packets makes one event (one ``dataReceived`` upstream)."""
        event = self._fast_event
        if event is None or event.stream_id != stream_id or not self._events \
                or self._events[-1] is not event:
            event = self._fast_event = StreamChunksReceived(stream_id)
            self._events.append(event)
        event.chunks.append(chunk)

    def _receive_ack(self, payload: bytes, position: int, now: float) -> None:
        """aioquic's ACK frame handling (``_handle_ack_frame``) for a 1-RTT packet."""
        buf = Buffer(data=payload)
        buf.seek(position + 1)
        ranges, delay_encoded = pull_ack_frame(buf)
        loss = self._loss
        if not loss.peer_completed_address_validation:
            loss.peer_completed_address_validation = True
        loss.on_ack_received(
            ack_rangeset=ranges,
            ack_delay=(delay_encoded << self._remote_ack_delay_exponent) / 1000000,
            now=now, space=self._fast_space)
        self._deliver_acked()


class StreamChunksReceived(events.QuicEvent):
    """In-order data of one stream received on the fast path, as a list of chunks (aioquic
    reports it as one ``StreamDataReceived`` per packet). Never carries a FIN."""

    __slots__ = ("stream_id", "chunks")

    def __init__(self, stream_id: int):
        self.stream_id = stream_id
        self.chunks: list[bytes] = []


def _range_start(acked: tuple) -> int:
    return acked[1]


def _sent_packet_by_keywords(packet_number: int, sent_time: float, size: int,
                             handlers: list) -> QuicSentPacket:
    return QuicSentPacket(
        epoch=ONE_RTT, in_flight=True, is_ack_eliciting=True, is_crypto_packet=False,
        packet_number=packet_number, packet_type=ONE_RTT_PACKET, sent_time=sent_time,
        sent_bytes=size, delivery_handlers=handlers)


def _sent_packet_by_position(packet_number: int, sent_time: float, size: int,
                             handlers: list) -> QuicSentPacket:
    return QuicSentPacket(ONE_RTT, True, True, False, packet_number, ONE_RTT_PACKET, sent_time,
                          size, handlers, [])


# Positional arguments are a third of the cost of keywords; use them while the fields are
# the ones they were written for (aioquic 1.7.2).
_SENT_PACKET_FIELDS = ("epoch", "in_flight", "is_ack_eliciting", "is_crypto_packet",
                       "packet_number", "packet_type", "sent_time", "sent_bytes",
                       "delivery_handlers", "quic_logger_frames")
_sent_packet = (
    _sent_packet_by_position
    if tuple(field.name for field in dataclasses.fields(QuicSentPacket)) == _SENT_PACKET_FIELDS
    else _sent_packet_by_keywords)

_ACK_ONLY = object()
_VARINT_MASK = {1: 0x3F, 2: 0x3FFF, 4: 0x3FFFFFFF, 8: 0x3FFFFFFFFFFFFFFF}
