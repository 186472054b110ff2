"""The QUIC bulk fast path (peerit.nat.quic_fastpath) against aioquic's own code as the
reference: a fast-path sender to an aioquic receiver and the reverse, with loss and
reordering; the fast path taken in the common case and left to aioquic where it must be."""

import hashlib

from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.quic.packet import pull_quic_header
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from peerit.identity import Identity
from peerit.nat.quic import QuicEndpoint, QuicSettings
from peerit.nat import quic_fastpath
from peerit.nat.quic_connection import PinnedQuicConnection
from peerit.testing.datagrams import DatagramNetwork, drop_fraction, run_until

from tests.unit.test_quic import ACCEPTOR, DIALER, A, B, Factory

FAST = QuicSettings(max_datagram_size=1452)
STOCK = QuicSettings(max_datagram_size=1452, fast_path=False)


def pattern(size: int, seed: bytes = b"") -> bytes:
    block = b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(2048))
    return (block * (size // len(block) + 1))[:size]


class Reordering:
    """Delivers every ``every``-th datagram ``delay`` seconds late, so later ones overtake it."""

    def __init__(self, clock, receive, every: int = 5, delay: float = 0.003):
        self.clock, self.receive, self.every, self.delay = clock, receive, every, delay
        self.count = 0
        self.reordered = 0

    def __call__(self, data, src):
        self.count += 1
        if self.count % self.every == 0:
            self.reordered += 1
            self.clock.callLater(self.delay, self.receive, data, src)
        else:
            self.receive(data, src)


class TransferTestCase(SynchronousTestCase):
    """Two endpoints on an in-memory network; each side may use the fast path or not."""

    def make(self, dialer_settings, acceptor_settings, loss=None, reorder=False):
        self.clock = task.Clock()
        self.net = DatagramNetwork(self.clock, latency=0.005, loss=loss)
        to_dialer = lambda data, src: self.dialer.datagram_received(data, src)  # noqa: E731
        to_acceptor = lambda data, src: self.acceptor.datagram_received(data, src)  # noqa: E731
        if reorder:
            to_dialer = self.reorder_dialer = Reordering(self.clock, to_dialer)
            to_acceptor = self.reorder_acceptor = Reordering(self.clock, to_acceptor)
        self.dialer = QuicEndpoint(DIALER, self.net.attach(A, to_dialer), self.clock,
                                   dialer_settings)
        self.acceptor = QuicEndpoint(ACCEPTOR, self.net.attach(B, to_acceptor), self.clock,
                                     acceptor_settings)
        dialer_factory, acceptor_factory = Factory(), Factory()
        accepted = self.acceptor.accept_from(A, [DIALER.peer_id], acceptor_factory)
        connected = self.dialer.connect(B, ACCEPTOR.peer_id, dialer_factory)
        self.assertTrue(run_until(self.clock, lambda: connected.called and accepted.called, 10))
        self.client = self.successResultOf(connected)
        self.server = self.successResultOf(accepted)
        self.client_conn = self.dialer._links[B][0].conn
        self.server_conn = self.acceptor._links[A][0].conn

    def transfer(self, sender, receiver, data: bytes, timeout: float = 600.0):
        sender.transport.write(data)
        self.assertTrue(run_until(self.clock, lambda: len(receiver.data) >= len(data),
                                  timeout))
        self.assertEqual(len(receiver.data), len(data))
        self.assertEqual(hashlib.sha256(receiver.data).digest(),
                         hashlib.sha256(data).digest())


class FastPathAgainstAioquicTests(TransferTestCase):

    def test_fast_sender_to_aioquic_receiver_with_loss_and_reordering(self):
        """Stream packets built by the fast path are read by aioquic's own code: 4 MiB
        arrive intact through 3 % loss and reordering, and most packets were fast-built."""
        self.make(FAST, STOCK, loss=drop_fraction(0.03, seed=7, after=20), reorder=True)
        data = pattern(4 * 1024 * 1024, b"fast to stock")
        self.transfer(self.client, self.server, data)
        packets = len(data) // 1400
        self.assertGreater(self.client_conn.fast_sent, packets // 2)
        self.assertEqual(self.server_conn.fast_received, 0)
        self.assertGreater(self.net.dropped, 50)
        self.assertGreater(self.reorder_acceptor.reordered, 100)

    def test_aioquic_sender_to_fast_receiver_with_loss_and_reordering(self):
        """Stream packets built by aioquic are parsed by the fast path: 4 MiB arrive intact
        through 3 % loss and reordering, and most packets took the fast path."""
        self.make(STOCK, FAST, loss=drop_fraction(0.03, seed=8, after=20), reorder=True)
        data = pattern(4 * 1024 * 1024, b"stock to fast")
        self.transfer(self.client, self.server, data)
        packets = len(data) // 1400
        self.assertEqual(self.client_conn.fast_sent, 0)
        self.assertGreater(self.server_conn.fast_received, packets // 2)
        self.assertGreater(self.net.dropped, 50)

    def test_both_fast_both_directions_at_once(self):
        """Both sides send 3 MiB at the same time through loss (packets then carry ACKs
        and data together); both streams arrive intact."""
        self.make(FAST, FAST, loss=drop_fraction(0.02, seed=9, after=20), reorder=True)
        up, down = pattern(3 * 1024 * 1024, b"up"), pattern(3 * 1024 * 1024, b"down")
        self.client.transport.write(up)
        self.server.transport.write(down)
        self.assertTrue(run_until(
            self.clock,
            lambda: len(self.server.data) >= len(up) and len(self.client.data) >= len(down),
            600))
        self.assertEqual(self.server.data, up)
        self.assertEqual(self.client.data, down)
        for conn in (self.client_conn, self.server_conn):
            self.assertGreater(conn.fast_sent, 500)
            self.assertGreater(conn.fast_received, 500)

    def test_fast_path_delivers_the_same_bytes_as_aioquic_for_a_whole_stream(self):
        """A clean close after the data: the FIN goes through aioquic on both sides and the
        receiver sees every byte then the end of the stream."""
        self.make(FAST, FAST)
        data = pattern(2 * 1024 * 1024 + 123, b"close")
        self.client.transport.write(data)
        self.client.transport.loseConnection()
        self.assertTrue(run_until(self.clock, lambda: self.server.lost is not None, 60))
        self.assertEqual(self.server.data, data)
        self.assertGreater(self.client_conn.fast_sent, 1000)
        self.assertGreater(self.server_conn.fast_received, 1000)


def connected_pair(receive_window: int = 64 * 1024 * 1024, congestion_control: str = "reno"):
    """A client and a server PinnedQuicConnection after the handshake, driven by hand."""
    settings = QuicSettings(max_datagram_size=1452, congestion_control=congestion_control)
    a = QuicEndpoint(DIALER, None, None, settings)
    b = QuicEndpoint(ACCEPTOR, None, None, settings)
    client = PinnedQuicConnection(configuration=a._configuration(True),
                                  allowed_peer_ids={ACCEPTOR.peer_id},
                                  receive_window=receive_window)
    client.connect(B, 0.0)
    flight = client.datagrams_to_send(0.0)
    header = pull_quic_header(Buffer(data=flight[0][0]), host_cid_length=8)
    server = PinnedQuicConnection(configuration=b._configuration(False),
                                  allowed_peer_ids={DIALER.peer_id},
                                  receive_window=receive_window,
                                  original_destination_connection_id=header.destination_cid)
    now = 0.0
    for step in range(20):
        if step == 10:  # open both streams, so the tests see only packets on open streams
            client.send_stream_data(2, b"c")
            server.send_stream_data(3, b"s")
        for data, _ in flight:
            server.receive_datagram(data, A, now)
        for data, _ in server.datagrams_to_send(now):
            client.receive_datagram(data, B, now)
        flight = client.datagrams_to_send(now)
        now += 0.01
        for data, _ in server.datagrams_to_send(now):
            client.receive_datagram(data, B, now)
    assert client.handshake_confirmed()
    assert stream_bytes(client) == b"s" and stream_bytes(server) == b"c"
    for conn in (client, server):
        conn.fast_sent = conn.fast_received = conn.slow_received = 0
    return client, server, now


def unlimited(conn) -> None:
    """No congestion window or pacing limit: one datagrams_to_send sends everything."""
    conn._loss._cc.congestion_window = 1 << 40
    conn._loss._pacer.packet_time = None


def stream_bytes(conn) -> bytes:
    chunks = []
    while (event := conn.next_event()) is not None:
        chunks.extend(getattr(event, "chunks", None) or [getattr(event, "data", b"")])
    return b"".join(chunks)


class FastPathChoiceTests(SynchronousTestCase):

    def test_plain_stream_packets_take_the_fast_path_both_ways(self):
        """With only stream data waiting, every full packet is fast-built and fast-parsed;
        the bytes arrive in order."""
        client, server, now = connected_pair()
        data = pattern(200 * 1400 + 5, b"plain")
        unlimited(client)
        client.send_stream_data(2, data)
        datagrams = client.datagrams_to_send(now)
        self.assertGreater(len(datagrams), 190)
        self.assertEqual(client.fast_sent, len(datagrams))
        for datagram, _ in datagrams:
            server.receive_datagram(datagram, A, now)
        self.assertEqual(server.fast_received, len(datagrams))
        self.assertEqual(server.slow_received, 0)
        self.assertEqual(stream_bytes(server), data)

    def test_a_packet_with_another_frame_is_left_to_aioquic(self):
        """A PING waiting: the sender builds the burst with aioquic's code (the PING shares a
        packet with data), and the receiver hands that packet to aioquic while the plain
        ones that follow take the fast path."""
        client, server, now = connected_pair()
        data = pattern(20 * 1400, b"ping")
        unlimited(client)
        client.send_stream_data(2, data)
        client.send_ping(1)
        datagrams = client.datagrams_to_send(now)
        self.assertEqual(client.fast_sent, 0)
        received = []
        for datagram, _ in datagrams:
            server.receive_datagram(datagram, A, now)
        received.append(stream_bytes(server))
        self.assertEqual(server.slow_received, 1)  # the PING's packet
        self.assertEqual(server.fast_received, len(datagrams) - 1)
        self.assertEqual(b"".join(received), data)

    def test_fin_and_duplicates_and_reordering_on_receive(self):
        """Out-of-order packets are reassembled, a duplicate is dropped once, and the packet
        with the FIN is left to aioquic, which reports the end of the stream."""
        client, server, now = connected_pair()
        data = pattern(30 * 1400 + 77, b"fin")
        unlimited(client)
        client.send_stream_data(2, data, end_stream=True)
        datagrams = [d for d, _ in client.datagrams_to_send(now)]
        order = datagrams[1:5] + datagrams[:1] + datagrams[5:] + [datagrams[3]]
        events = []
        for datagram in order:
            server.receive_datagram(datagram, A, now)
        while (event := server.next_event()) is not None:
            events.append(event)
        received = b"".join(
            b"".join(e.chunks) if hasattr(e, "chunks") else e.data for e in events)
        self.assertEqual(received, data)
        self.assertTrue(getattr(events[-1], "end_stream", False))
        self.assertEqual(server.slow_received, 2)  # the FIN's packet and the duplicate
        self.assertEqual(server.fast_received, len(datagrams) - 1)

    def test_runs_of_received_packets_reach_the_ack_queue_and_duplicates_are_dropped(self):
        """Packet numbers taken by the fast path join the ACK queue as runs: a duplicate of
        a packet still in the pending run is dropped, a gap makes two ranges, and the ACK
        queue and duplicate window end up as aioquic's per-packet adds leave them."""
        client, server, now = connected_pair()
        unlimited(client)
        data = pattern(12 * 1400, b"runs")
        client.send_stream_data(2, data)
        datagrams = [d for d, _ in client.datagrams_to_send(now)]
        order = datagrams[:4] + [datagrams[2]] + datagrams[6:] + datagrams[4:6]
        server.receive_datagrams(order, A, now)
        self.assertEqual(server.slow_received, 1)  # the duplicate, left to aioquic (dropped)
        self.assertEqual(stream_bytes(server), data)
        space = server._spaces[tls.Epoch.ONE_RTT]
        self.assertEqual(len(datagrams), 12)
        server.datagrams_to_send(now)  # writes the ACK from the flushed queue
        first = space.largest_received_packet - 11
        for number in range(first, first + 12):
            self.assertIn(number, space.received_packets)
        server.receive_datagram(datagrams[7], A, now)  # a duplicate after the flush
        self.assertEqual(server.slow_received, 2)
        self.assertEqual(stream_bytes(server), b"")

    def test_in_order_packets_leave_the_receiver_as_aioquic_leaves_it(self):
        """The in-order shortcut (the bulk of a transfer) changes the connection's receive
        state exactly as aioquic's code does for the same packets: packet numbers, ACK
        queue, stream offsets, connection credit used, the ACK timer and the data."""
        def receive(fast: bool):
            client, server, now = connected_pair()
            server.fast_path = fast
            unlimited(client)
            client.send_stream_data(2, pattern(40 * 1400, b"in order"))
            datagrams = [d for d, _ in client.datagrams_to_send(now)]
            self.assertEqual(len(datagrams), 40)
            server.receive_datagrams(datagrams[:17], A, now)
            server.receive_datagrams(datagrams[17:], A, now + 0.0005)
            space = server._spaces[tls.Epoch.ONE_RTT]
            receiver = server._streams[2].receiver
            state = (space.expected_packet_number, space.largest_received_packet,
                     space.largest_received_time, space.ack_at, receiver.highest_offset,
                     receiver._buffer_start, server._local_max_data.used, server._spin_bit,
                     server._close_at, stream_bytes(server))
            server.datagrams_to_send(now + 0.001)  # flushes the pending run first
            return state + (list(space.ack_queue), sorted(space.received_packets._received)
                            if hasattr(space.received_packets, "_received") else None,
                            server.fast_received)
        fast, reference = receive(True), receive(False)
        self.assertEqual(fast[-1], 40)
        self.assertEqual(reference[-1], 0)
        self.assertEqual(fast[:-1], reference[:-1])

    def test_a_due_ack_rides_in_the_first_fast_packet(self):
        """An ACK due when data goes out is written at the head of the first fast-built
        packet (not left to aioquic with the whole burst behind it); the peer's aioquic
        code takes it as an ACK, and its acknowledgement clears our ACK queue."""
        client, server, now = connected_pair()
        unlimited(server)
        server.send_stream_data(3, pattern(10 * 1400, b"to ack"))
        server_sent = server.datagrams_to_send(now)
        for datagram, _ in server_sent:
            client.receive_datagram(datagram, B, now)
        self.assertGreater(server._loss.bytes_in_flight, 0)
        now += 0.01  # past the ACK delay: an ACK is due
        space = client._spaces[tls.Epoch.ONE_RTT]
        self.assertLessEqual(space.ack_at, now)
        acked_up_to = space.largest_received_packet
        unlimited(client)
        client.send_stream_data(2, pattern(20 * 1400, b"data"))
        datagrams = client.datagrams_to_send(now)
        self.assertEqual(client.fast_sent, len(datagrams))
        self.assertIsNone(space.ack_at)
        server.fast_path = False  # aioquic's own code parses the ACK
        for datagram, _ in datagrams[:1]:
            server.receive_datagram(datagram, A, now)
        self.assertEqual(server._loss.bytes_in_flight, 0)
        for datagram, _ in datagrams[1:]:
            server.receive_datagram(datagram, A, now)
        self.assertEqual(stream_bytes(server), pattern(20 * 1400, b"data"))
        self.assertEqual(stream_bytes(client), pattern(10 * 1400, b"to ack"))
        for datagram, _ in server.datagrams_to_send(now + 0.03):
            client.receive_datagram(datagram, B, now + 0.03)
        self.assertEqual(client._loss.bytes_in_flight, 0)
        # our ACK was acknowledged: what it covered is no longer in the queue
        self.assertTrue(all(r.start > acked_up_to for r in space.ack_queue))

    def test_credit_due_leaves_the_burst_to_aioquic(self):
        """When a MAX_DATA/MAX_STREAM_DATA frame is due, the packets go through aioquic's
        builder (it writes the credit ahead of the data)."""
        client, server, now = connected_pair(receive_window=256 * 1024)
        client.send_stream_data(2, pattern(4000))
        unlimited(server)
        server.send_stream_data(3, pattern(1024 * 1024))
        for datagram, _ in server.datagrams_to_send(now):
            client.receive_datagram(datagram, B, now)
        client.consumed(3, len(stream_bytes(client)))
        self.assertTrue(client._credit_pending())
        before = client.fast_sent
        client.datagrams_to_send(now)
        self.assertEqual(client.fast_sent, before)
        self.assertFalse(client._credit_pending())

    def test_congestion_control_sees_every_fast_packet(self):
        """Every fast-built packet is registered with loss recovery: bytes in flight grow
        by their sizes and acknowledging them all brings it back to zero."""
        self.check_registration("reno")

    def test_congestion_control_sees_every_fast_packet_with_cubic(self):
        """The same with CUBIC (its on_packet_sent is called per packet)."""
        self.check_registration("cubic")

    def check_registration(self, congestion_control: str):
        client, server, now = connected_pair(congestion_control=congestion_control)
        self.assertEqual(type(client._loss._cc).__name__.lower()[:4], congestion_control[:4])
        self.assertEqual(client._spaces[tls.Epoch.ONE_RTT].ack_eliciting_in_flight, 0)
        flight_before = client._loss.bytes_in_flight
        self.assertEqual(flight_before, 0)
        sent = client._spaces[tls.Epoch.ONE_RTT].sent_packets
        sent_before = set(sent)
        client.send_stream_data(2, pattern(100 * 1400))
        datagrams = client.datagrams_to_send(now)
        # full packets while the window has room for one; aioquic fills what is left
        self.assertGreater(len(datagrams), 5)
        self.assertIn(client.fast_sent, (len(datagrams) - 1, len(datagrams)))
        self.assertEqual(client._loss.bytes_in_flight - flight_before,
                         sum(len(d) for d, _ in datagrams))
        new = [sent[number] for number in sent if number not in sent_before]
        self.assertEqual([packet.sent_bytes for packet in new], [len(d) for d, _ in datagrams])
        self.assertTrue(all(packet.in_flight and packet.sent_time == now for packet in new))
        self.assertEqual(client._spaces[tls.Epoch.ONE_RTT].ack_eliciting_in_flight, len(new))
        now += 0.01
        for datagram, _ in datagrams:
            server.receive_datagram(datagram, A, now)
        for datagram, _ in server.datagrams_to_send(now + 0.03):
            client.receive_datagram(datagram, B, now + 0.03)
        self.assertEqual(client._loss.bytes_in_flight, 0)
        self.assertEqual(len(client._spaces[tls.Epoch.ONE_RTT].sent_packets), 0)
        self.assertEqual(client._spaces[tls.Epoch.ONE_RTT].ack_eliciting_in_flight, 0)
        # the stream learnt of every acknowledged byte (merged per ACK frame) and let it go
        sender = client._streams[2].sender
        self.assertEqual(client.held_bytes(2, sender.highest_offset), 0)
        self.assertEqual(len(sender._buffer), sender._buffer_stop - sender.highest_offset)

    def test_fast_sent_packets_are_what_aioquic_would_record(self):
        """The positional QuicSentPacket constructor matches the keyword one (the fields are
        checked at import; this checks the values)."""
        handlers = [(print, (None, 0, 10))]
        self.assertEqual(quic_fastpath._sent_packet(7, 2.5, 1452, handlers),
                         quic_fastpath._sent_packet_by_keywords(7, 2.5, 1452, handlers))
