"""The performance shims over private APIs (peerit.shims): each probe finds the internals of
the pinned versions, says no when one is missing, and every caller works with its probe forced
off (the plain, public path)."""

import random
import sys

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

import test_tls
import test_tracker_transport
from peerit import tls
from peerit.nat.quic import QuicSettings
from peerit.nat.udp import DatagramKind, UdpMux
from peerit.nat.udp_batch import DatagramReader
from peerit.shims import aioquic as aioquic_shim
from peerit.shims import openssl, refcount, twisted_tcp, twisted_udp
from peerit.tracker import transport
from peerit.wire.framing import BodyPool

QUIC = b"\x41" + b"q" * 100
STUN = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12)


class ProbesTests(SynchronousTestCase):
    def test_the_pinned_versions_pass_every_probe(self):
        self.assertTrue(openssl.BINDING)
        self.assertTrue(openssl.binding_has("SSL_read", "SSL_write", "SSL_ERROR_WANT_READ"))
        self.assertTrue(aioquic_shim.FAST_PATH)
        self.assertTrue(twisted_udp.READER_REPLACEABLE)
        self.assertTrue(twisted_tcp.SEND_LIMIT_TUNABLE)
        self.assertTrue(refcount.REFCOUNTS)

    def test_a_missing_binding_function_fails_the_openssl_probe(self):
        self.assertFalse(openssl.binding_has("SSL_read", "SSL_no_such_function"))
        self.patch(openssl, "BINDING", False)
        self.assertFalse(openssl.binding_has("SSL_read"))

    def test_a_missing_aioquic_internal_fails_the_fast_path_probe(self):
        self.assertFalse(aioquic_shim._probe(
            aioquic_shim.FAST_PATH_CONNECTION + ("_no_such_attribute",)))
        self.assertFalse(aioquic_shim._probe(
            recovery_names=aioquic_shim.FAST_PATH_RECOVERY + ("_no_such_attribute",)))

    def test_quic_settings_default_to_the_probe(self):
        self.assertEqual(QuicSettings().fast_path, aioquic_shim.FAST_PATH)

    def test_refcount_tells_a_held_buffer_from_a_free_one(self):
        pool = [bytearray(8)]
        for buffer in pool:
            self.assertEqual(sys.getrefcount(buffer), refcount.POOL_ALONE)


class SendLimitTests(SynchronousTestCase):
    class Transport:
        SEND_LIMIT = 128 * 1024

    def test_the_limit_is_raised_per_connection(self):
        one, other = self.Transport(), self.Transport()
        self.assertTrue(twisted_tcp.set_send_limit(one, 1 << 20))
        self.assertEqual((one.SEND_LIMIT, other.SEND_LIMIT), (1 << 20, 128 * 1024))

    def test_probe_off_leaves_twisteds_limit(self):
        self.patch(twisted_tcp, "SEND_LIMIT_TUNABLE", False)
        one = self.Transport()
        self.assertFalse(twisted_tcp.set_send_limit(one, 1 << 20))
        self.assertEqual(one.SEND_LIMIT, 128 * 1024)


class FakeSocket:
    """Options and sends of a UDP socket, no network."""

    def __init__(self):
        self.sent = []

    def setsockopt(self, *args):
        pass

    def getsockopt(self, *args):
        return 1 << 22

    def sendto(self, data, addr):
        self.sent.append((data, addr))


class FakePort:
    maxPacketSize = 8192

    def __init__(self):
        self.socket = FakeSocket()

    def doRead(self):
        return "twisted's own"

    def getHost(self):
        return None


class UdpReaderTests(SynchronousTestCase):
    def mux_on(self, port):
        mux = UdpMux(task.Clock())
        got = []
        mux.set_handler(DatagramKind.QUIC, lambda d, a: got.append(("quic", d)))
        mux.set_handler(DatagramKind.STUN, lambda d, a: got.append(("stun", d)))
        mux.makeConnection(port)
        self.addCleanup(mux.doStop)
        return mux, got

    def test_the_mux_installs_the_batched_reader(self):
        port = FakePort()
        self.mux_on(port)
        self.assertIsInstance(port.doRead, DatagramReader)

    def test_probe_off_keeps_twisteds_reader_and_every_datagram_still_arrives(self):
        self.patch(twisted_udp, "READER_REPLACEABLE", False)
        port = FakePort()
        mux, got = self.mux_on(port)
        self.assertEqual(port.doRead(), "twisted's own")
        # Twisted's doRead hands each datagram to datagramReceived: classified as always.
        mux.datagramReceived(QUIC, ("192.0.2.1", 1))
        mux.datagramReceived(STUN, ("192.0.2.1", 1))
        self.assertEqual(got, [("quic", QUIC), ("stun", STUN)])
        self.assertEqual(mux.send_many([QUIC, QUIC], ("192.0.2.1", 1)), 0)


class BodyPoolWithoutRefcountsTests(SynchronousTestCase):
    def test_no_buffer_is_retained_or_reused(self):
        """Probed off, every body gets a fresh buffer; probed on, a free one is reused."""
        plain, pooled = BodyPool(keep=4, refcounts=False), BodyPool(keep=4)
        for _ in range(3):
            plain.get(1000)
            pooled.get(1000)
        self.assertEqual((plain.reused, plain._buffers), (0, []))
        self.assertEqual(pooled.reused, 2)


class TlsWithoutBindingTests(test_tls.DirectReceiveTests):
    """Every peer-link TLS test with pyOpenSSL's binding probed off: pyOpenSSL's recv/send."""

    def setUp(self):
        self.patch(tls, "_DIRECT_READ", False)
        # Without the binding, a protocol offering buffers gets dataReceived like any other.
        self.patch(test_tls.BufferedSink, "dataReceived", test_tls.Sink.dataReceived)
        super().setUp()

    def test_records_are_decrypted_into_the_protocols_buffer(self):
        """Without the binding the records still arrive whole, through pyOpenSSL's recv."""
        sink = test_tls.BufferedSink()
        server, client, pump = test_tls.tls_pair(test_tls.Sink(), sink, self.clock)
        payload = random.Random(1).randbytes(1 << 20)
        self.send(server, client, pump, payload)
        self.assertEqual(bytes(sink.received), payload)
        self.assertEqual(client.direct_reads, 0)


    def test_writes_small_large_and_sequences_arrive_in_order(self):
        """Without the binding every write takes Twisted's path; the bytes arrive in order."""
        sink = test_tls.Sink()
        server, client, pump = test_tls.tls_pair(test_tls.Sink(), sink, self.clock)
        rng = random.Random(4)
        expected = bytearray()
        for n in range(30):
            if n % 3 == 0:
                data = rng.randbytes(rng.randrange(1, 200))
                server.write(data)
            elif n % 3 == 1:
                data = rng.randbytes(rng.randrange(64 * 1024, 300_000))
                server.write(data)
            else:
                data = rng.randbytes(13) + rng.randbytes(256 * 1024)
                server.writeSequence([data[:13], data[13:]])
            expected += data
        self.clock.advance(0)
        pump.flush()
        self.assertEqual(bytes(sink.received), bytes(expected))
        self.assertEqual(server.direct_writes, 0)

    def test_a_header_and_block_sequence_goes_out_in_one_write(self):
        """Without the binding a sequence is joined by Twisted's aggregator and sealed on the
        next reactor turn (Twisted's path, as before): the bytes arrive whole."""
        sink = test_tls.Sink()
        server, client, pump = test_tls.tls_pair(test_tls.Sink(), sink, self.clock)
        data = random.Random(5).randbytes(13 + 256 * 1024)
        server.writeSequence([data[:4], data[4:13], data[13:]])
        self.clock.advance(0)
        pump.flush()
        self.assertEqual(bytes(sink.received), data)
        self.assertEqual(server.direct_writes, 0)

    def test_a_protocol_writing_from_its_callback_keeps_the_connection(self):
        """A protocol answering from dataReceived keeps the connection on the plain path."""

        class Answering(test_tls.Sink):
            calls = 0

            def dataReceived(self, data):
                super().dataReceived(data)
                self.calls += 1
                self.transport.write(test_tls.ACK)

        sink, echo = Answering(), test_tls.Sink()
        server, client, pump = test_tls.tls_pair(echo, sink, self.clock)
        payload = random.Random(7).randbytes(400_000)
        self.send(server, client, pump, payload, chunk=50_000)
        self.clock.advance(0)
        pump.flush()
        self.assertEqual(bytes(sink.received), payload)
        self.assertIsNone(sink.lost)
        self.assertGreater(sink.calls, 0)
        self.assertEqual(bytes(echo.received), test_tls.ACK * sink.calls)


class TrackerTransportWithoutBindingTests(test_tracker_transport.WritePathTests):
    """Every tracker write-path test with the binding probed off: Twisted's TLS paths."""

    def setUp(self):
        self.patch(transport, "_DIRECT", False)
        super().setUp()

    def test_the_binding_path_is_the_one_taken(self):
        """Probed off, the plain path answers."""
        self.assertFalse(transport._DIRECT)
        self.alice.transport.write(test_tracker_transport.frame(
            test_tracker_transport.wire.build(test_tracker_transport.wire.Ping(4))))
        self.pump.flush()
        self.assertEqual(self.alice.received[-1], test_tracker_transport.wire.Pong(4))
