"""peer-it's TLS layer in memory (iosim, real pyOpenSSL): the cipher both ends pick, and
records decrypted straight into a protocol's buffer (DirectTLS)."""

import random

from hypothesis import given, settings, strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from peerit import tls
from peerit.identity import Identity
from peerit.wire.framing import FrameDecoder, frame

SERVER = Identity.generate("server")
ACK = b"a" * (70 * 1024)
CLIENT = Identity.generate("client")


@implementer(IHandshakeListener)
class Sink(Protocol):
    """Collects what arrives through dataReceived."""

    def __init__(self):
        self.received = bytearray()
        self.lost = None
        self.handshake_done = False

    def handshakeCompleted(self):
        self.handshake_done = True

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = reason


class BufferedSink(Sink):
    """Offers its own buffers (of the sizes ``sizes`` cycles through) and collects from them;
    dataReceived must not be used on the direct path."""

    def __init__(self, sizes=(1 << 20,)):
        super().__init__()
        self.sizes = list(sizes)
        self.calls = 0
        self._buffer = None

    def get_buffer(self):
        self._buffer = memoryview(bytearray(self.sizes[self.calls % len(self.sizes)]))
        self.calls += 1
        return self._buffer

    def buffer_updated(self, nbytes):
        self.received += self._buffer[:nbytes]
        self.calls_updated = getattr(self, "calls_updated", 0) + 1

    def dataReceived(self, data):
        raise AssertionError("the direct path should have been taken")


def tls_pair(server_protocol, client_protocol, clock):
    server = tls.server_factory(SERVER, Factory.forProtocol(lambda: server_protocol),
                                clock=clock).buildProtocol(None)
    client = tls.client_factory(CLIENT, SERVER.peer_id,
                                Factory.forProtocol(lambda: client_protocol),
                                clock=clock).buildProtocol(None)
    server_address = IPv4Address("TCP", "127.0.0.1", 59000)
    client_address = IPv4Address("TCP", "127.0.0.1", 40000)
    pump = connect(server, FakeTransport(server, True, server_address, client_address),
                   client, FakeTransport(client, False, client_address, server_address),
                   clock=clock)
    pump.flush()
    return server, client, pump


class DirectReceiveTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()

    def send(self, server, client, pump, payload: bytes, chunk=100_000):
        for i in range(0, len(payload), chunk):
            server.write(payload[i:i + chunk])
            self.clock.advance(0)  # Twisted's TLS joins small writes on the next turn
            pump.flush()

    def test_both_ends_pick_aes_128_gcm(self):
        server, client, _ = tls_pair(Sink(), Sink(), self.clock)
        self.assertEqual(client._tlsConnection.get_cipher_name(), "TLS_AES_128_GCM_SHA256")
        self.assertEqual(server._tlsConnection.get_cipher_name(), "TLS_AES_128_GCM_SHA256")

    def test_records_are_decrypted_into_the_protocols_buffer(self):
        sink = BufferedSink()
        server, client, pump = tls_pair(Sink(), sink, self.clock)
        self.assertTrue(sink.handshake_done)
        payload = random.Random(1).randbytes(1 << 20)
        self.send(server, client, pump, payload)
        self.assertEqual(bytes(sink.received), payload)
        self.assertGreaterEqual(client.direct_reads, 1)  # and dataReceived never ran

    def test_buffers_smaller_than_a_record_get_it_in_parts(self):
        """A frame's last bytes may need only part of a record: the rest waits in OpenSSL
        for the next buffer, nothing is lost or reordered."""
        sink = BufferedSink(sizes=(7, 1000, 16 * 1024 + 1, 3))
        server, client, pump = tls_pair(Sink(), sink, self.clock)
        payload = random.Random(2).randbytes(300_000)
        self.send(server, client, pump, payload, chunk=65_536)
        self.assertEqual(bytes(sink.received), payload)

    def test_writes_small_large_and_sequences_arrive_in_order(self):
        """Small writes are aggregated, large ones and header+block sequences are sealed
        from the caller's memory: whatever the mix, the bytes arrive in write order."""
        sink = BufferedSink()
        server, client, pump = tls_pair(Sink(), sink, self.clock)
        rng = random.Random(4)
        expected = bytearray()
        for n in range(30):
            kind = n % 3
            if kind == 0:
                data = rng.randbytes(rng.randrange(1, 200))
                server.write(data)
                expected += data
            elif kind == 1:
                data = bytearray(rng.randbytes(rng.randrange(64 * 1024, 300_000)))
                server.write(bytes(data))
                expected += data
            else:
                header, block = rng.randbytes(13), rng.randbytes(256 * 1024)
                server.writeSequence([header, block])
                expected += header + block
        self.clock.advance(0)
        pump.flush()
        self.assertEqual(bytes(sink.received), bytes(expected))
        self.assertGreaterEqual(server.direct_writes, 20)

    def test_a_header_and_block_sequence_goes_out_in_one_write(self):
        """The small headers ride in the payload's first record and the whole sequence's
        records reach TCP together: one write, not one per part (three per block)."""
        sink = BufferedSink()
        server, client, pump = tls_pair(Sink(), sink, self.clock)
        writes = []
        tcp_write = server.transport.write
        server.transport.write = lambda data: writes.append(len(data)) or tcp_write(data)
        frame_header, block_header = b"\x00\x04\x00\x09", b"\x05" + bytes(8)
        block = random.Random(5).randbytes(256 * 1024)
        server.writeSequence([frame_header, block_header, block])
        self.assertEqual(len(writes), 1)
        records = -(-(len(block) + 13) // tls.RECORD)
        # TLS 1.3 with AES-GCM: 5 bytes of header, 1 of content type and 16 of tag a record,
        # and no record of the headers' own.
        self.assertEqual(writes[0], len(block) + 13 + records * 22)
        pump.flush()
        self.assertEqual(bytes(sink.received), frame_header + block_header + block)

    def test_a_protocol_writing_from_its_callback_keeps_the_connection(self):
        """A peer link answers (writes) while its data is being delivered: the end-of-read
        check must not be confused by that write's effect on the TLS state."""

        class Answering(BufferedSink):
            def buffer_updated(self, nbytes):
                super().buffer_updated(nbytes)
                self.transport.write(ACK)  # large: sealed at once, not aggregated

        sink = Answering(sizes=(5000, 70_000))
        echo = Sink()
        server, client, pump = tls_pair(echo, sink, self.clock)
        payload = random.Random(7).randbytes(400_000)
        self.send(server, client, pump, payload, chunk=50_000)
        self.clock.advance(0)
        pump.flush()
        self.assertEqual(bytes(sink.received), payload)
        self.assertIsNone(sink.lost)
        self.assertEqual(bytes(echo.received), ACK * sink.calls_updated)

    def test_a_protocol_without_buffers_gets_data_received(self):
        sink = Sink()
        server, client, pump = tls_pair(Sink(), sink, self.clock)
        payload = random.Random(3).randbytes(200_000)
        self.send(server, client, pump, payload)
        self.assertEqual(bytes(sink.received), payload)
        self.assertEqual(client.direct_reads, 0)

    def test_close_notify_ends_the_connection_cleanly(self):
        sink = BufferedSink()
        server, client, pump = tls_pair(Sink(), sink, self.clock)
        server.write(b"last words")
        server.loseConnection()
        self.clock.advance(0)
        pump.flush()
        self.assertEqual(bytes(sink.received), b"last words")
        self.assertIsNotNone(sink.lost)
        self.assertTrue(sink.lost.check(ConnectionDone))

    def test_garbage_after_the_handshake_fails_the_connection(self):
        sink = BufferedSink()
        server, client, pump = tls_pair(Sink(), sink, self.clock)
        client.dataReceived(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # a record nobody sealed
        self.clock.advance(0)
        pump.flush()
        self.assertIsNotNone(sink.lost)
        self.assertFalse(sink.lost.check(ConnectionDone))
        self.assertEqual(bytes(sink.received), b"")


class FrameDecoderInPlaceTests(SynchronousTestCase):
    @settings(max_examples=100, deadline=None)
    @given(seed=st.integers(0, 2 ** 32), fills=st.lists(st.integers(1, 40_000), min_size=1,
                                                         max_size=50))
    def test_in_place_filling_gives_the_same_frames_as_feed(self, seed, fills):
        """Whatever amounts the TLS layer writes per call, the frames are those of the
        stream: small ones and large (in-place) ones alike."""
        rng = random.Random(seed)
        bodies = [rng.randbytes(rng.choice([0, 5, 300, 70_000, 200_000])) for _ in range(8)]
        stream = b"".join(frame(b) for b in bodies)
        decoder = FrameDecoder(1 << 20)
        got, position, i = [], 0, 0
        while position < len(stream):
            view = decoder.get_buffer()
            n = min(len(view), fills[i % len(fills)], len(stream) - position)
            i += 1
            view[:n] = stream[position:position + n]
            position += n
            got += [bytes(f) for f in decoder.buffer_updated(n)]
        self.assertEqual(got, bodies)
        self.assertEqual(decoder.buffered, 0)
