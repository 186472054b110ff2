"""The tracker's TLS transport (real pyOpenSSL in memory): when answers are encrypted and how
they reach the socket."""

import random

from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase

from peerit.identity import Identity
from peerit.tls import PinnedClientTLS
from peerit.tracker.protocol import tls_factory
from peerit.tracker.session import Limits, Tracker
from peerit.tracker.store import MemorySwarmStore
from peerit.tracker import transport
from peerit.tracker.transport import TrackerTLSProtocol
from peerit.wire import tracker as wire
from peerit.wire.framing import frame

from tests.unit.test_tracker_protocol import RecordingClient

TRACKER_ID = Identity.generate("tracker")
ALICE = Identity.generate("alice")


def flush_calls(clock):
    return [c for c in clock.getDelayedCalls()
            if getattr(c.func, "__name__", "") == "_scheduled_flush"]


class WritePathTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.tracker = Tracker(self.clock, MemorySwarmStore(random.Random(1)), Limits(),
                               random.Random(1))
        self.alice = RecordingClient()
        self.server = server = tls_factory(TRACKER_ID, self.tracker).buildProtocol(None)
        client = TLSMemoryBIOFactory(
            PinnedClientTLS(ALICE, TRACKER_ID.peer_id), True,
            Factory.forProtocol(lambda: self.alice), clock=self.clock).buildProtocol(None)
        self.server_io = FakeTransport(
            server, isServer=True, hostAddress=IPv4Address("TCP", "192.0.2.1", 59000),
            peerAddress=IPv4Address("TCP", "198.51.100.20", 40001))
        self.client_io = client_io = FakeTransport(
            client, isServer=False, hostAddress=IPv4Address("TCP", "198.51.100.20", 40001),
            peerAddress=IPv4Address("TCP", "192.0.2.1", 59000))
        self.pump = connect(server, self.server_io, client, client_io, clock=self.clock)
        self.pump.flush()
        self.assertEqual(len(self.alice.received), 1, "Welcome")

    def test_answers_to_one_read_leave_as_one_write_during_that_read(self):
        """No timer and no turn of delay: the read that brought three Pings writes the three
        Pongs, encrypted together, before it returns."""
        self.alice.transport.write(b"".join(frame(wire.build(wire.Ping(n))) for n in (1, 2, 3)))
        self.pump.pump()  # the client's write reaches the tracker, which answers
        self.assertEqual(len(self.server_io.stream), 1)
        self.assertEqual(flush_calls(self.clock), [])
        self.pump.flush()
        self.assertEqual(self.alice.received[1:], [wire.Pong(1), wire.Pong(2), wire.Pong(3)])

    def test_pushes_outside_a_read_are_gathered_until_the_next_turn(self):
        for nonce in (7, 8):
            self.assertTrue(self.tracker.send_to(ALICE.peer_id, wire.Ping(nonce)))
        self.assertEqual(self.server_io.stream, [])
        self.assertEqual(len(flush_calls(self.clock)), 1)
        self.clock.advance(0)
        self.assertEqual(len(self.server_io.stream), 1)
        self.pump.flush()
        self.assertEqual(self.alice.received[1:], [wire.Ping(7), wire.Ping(8)])

    def test_an_error_before_closing_is_sent_and_nothing_after_it(self):
        self.alice.transport.write(frame(b"\x63"))  # unknown opcode: fatal
        self.pump.flush()
        [error] = self.alice.received[1:]
        self.assertEqual(error.code, "unknown_message")
        self.assertIsNotNone(self.alice.lost)
        self.assertEqual(flush_calls(self.clock), [])


    def test_answers_larger_than_the_direct_buffer_arrive_whole_and_in_order(self):
        """20,000 KeepAlives in one write: 100 kB of echoes, more than the 64 KiB buffer
        the records are read out with, all in order."""
        self.alice.transport.write(frame(wire.build(wire.KeepAlive())) * 20000
                                   + frame(wire.build(wire.Ping(9))))
        self.pump.flush()
        self.assertEqual(len(self.alice.received), 1 + 20000 + 1)
        self.assertEqual(self.alice.received[-1], wire.Pong(9))
        self.assertEqual(set(self.alice.received[1:-1]), {wire.KeepAlive()})

    def test_a_record_split_across_reads_is_answered_once_it_is_whole(self):
        self.alice.transport.write(frame(wire.build(wire.Ping(5))))
        self.clock.advance(0)  # the client's TLS layer sends its record
        record = self.client_io.getOutBuffer()
        self.server.dataReceived(record[:7])
        self.assertEqual(self.server_io.stream, [])
        self.server.dataReceived(record[7:])
        self.assertEqual(len(self.server_io.stream), 1)
        self.pump.flush()
        self.assertEqual(self.alice.received[-1], wire.Pong(5))

    def test_a_client_closing_tls_ends_its_session(self):
        self.assertEqual(self.tracker.session_count, 1)
        self.alice.transport.loseConnection()
        self.pump.flush()
        self.assertEqual(self.tracker.session_count, 0)
        self.assertIsNone(self.tracker.session_of(ALICE.peer_id))

    def test_idle_sessions_release_their_tls_buffers_and_keep_working(self):
        """The tracker's connections run with MODE_RELEASE_BUFFERS (SSL_set_mode with no
        bits reads the mode back), peer links' servers without it; answers still arrive
        after idling."""
        from OpenSSL import SSL
        from OpenSSL._util import lib
        from peerit.tls import IdentityServerTLS

        def mode(connection):
            return lib.SSL_set_mode(connection._ssl, 0)
        self.assertTrue(mode(self.server._tlsConnection) & SSL.MODE_RELEASE_BUFFERS)
        peer_link = IdentityServerTLS(TRACKER_ID).serverConnectionForTLS(None)
        self.assertFalse(mode(peer_link) & SSL.MODE_RELEASE_BUFFERS)
        for nonce in (1, 2):
            self.clock.advance(30)
            self.alice.transport.write(frame(wire.build(wire.Ping(nonce))))
            self.pump.flush()
            self.assertEqual(self.alice.received[-1], wire.Pong(nonce))

    def test_the_binding_path_is_the_one_taken(self):
        """The direct calls into pyOpenSSL's binding are the tracker's measured fast path;
        this fails if a pyOpenSSL upgrade takes them away (the plain path still works)."""
        self.assertTrue(transport._DIRECT)
        self.alice.transport.write(frame(wire.build(wire.Ping(4))))
        self.pump.flush()
        self.assertEqual(self.alice.received[-1], wire.Pong(4))
        self.assertTrue(self.server._established)


class _QueuedTCP(tcp.Connection):
    """Twisted's TCP connection without a socket: ``writeSomeData`` takes ``accept`` bytes
    (or returns ``lost``), ``write`` records what would be queued for the reactor."""

    def __init__(self, accept=None, lost=None):
        self.connected = 1
        self._tempDataLen = 0  # as FileDescriptor.__init__ sets it: nothing queued
        self.accept = accept
        self.lost = lost
        self.sent = []
        self.queued = []

    def writeSomeData(self, data):
        if self.lost is not None:
            return self.lost
        taken = bytes(data[:self.accept if self.accept is not None else len(data)])
        self.sent.append(taken)
        return len(taken)

    def write(self, data):
        self.queued.append(bytes(data))
        self._tempDataLen += len(data)


class DirectSendTests(SynchronousTestCase):
    """Encrypted bytes go to the socket at once only when nothing is queued before them."""

    def protocol_on(self, transport):
        protocol = TrackerTLSProtocol.__new__(TrackerTLSProtocol)
        protocol.transport = transport
        protocol._direct_send = isinstance(transport, tcp.Connection)
        return protocol

    def test_an_idle_connection_sends_at_once(self):
        transport = _QueuedTCP()
        self.protocol_on(transport)._send(b"records")
        self.assertEqual((transport.sent, transport.queued), ([b"records"], []))

    def test_what_the_kernel_does_not_take_is_queued_in_order(self):
        transport = _QueuedTCP(accept=3)
        protocol = self.protocol_on(transport)
        protocol._send(b"abcdef")
        protocol._send(b"ghi")
        self.assertEqual(transport.sent, [b"abc"])
        self.assertEqual(transport.queued, [b"def", b"ghi"])

    def test_a_lost_connection_leaves_the_bytes_to_the_reactor_write_path(self):
        transport = _QueuedTCP(lost=ConnectionError("gone"))
        self.protocol_on(transport)._send(b"records")
        self.assertEqual(transport.queued, [b"records"])

    def test_a_closing_connection_is_written_the_usual_way(self):
        transport = _QueuedTCP()
        transport.disconnecting = True
        self.protocol_on(transport)._send(b"records")
        self.assertEqual((transport.sent, transport.queued), ([], [b"records"]))
