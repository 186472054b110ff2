"""The tracker's relay: tokens, pairing, splicing with back-pressure and a rate cap, bounds.

Connections are ``RelayConnection`` protocols on in-memory transports: ``StringTransport``
(records writes, producer state), a bounded variant that pushes back like a TCP transport
whose send buffer fills, and ``iosim`` pumps for bytes end to end. Time is ``task.Clock``.
"""

import hashlib
import itertools

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from peerit.tracker.relay import (
    CLOSE_GRACE, RELAY_HELLO_MAGIC, RelayBroker, RelayFactory, RelayLimits, RelayRefused,
    TRANSITIONS, Side, relay_hello)

A, B, C = b"A" * 32, b"B" * 32, b"C" * 32


class BoundedTransport(StringTransport):
    """A transport whose send buffer holds ``limit`` bytes: like Twisted's TCP transports, it
    pauses its registered streaming producer when the buffer goes over, and resumes it once
    :meth:`drain` empties the buffer (the peer read everything)."""

    def __init__(self, limit, **kwargs):
        super().__init__(**kwargs)
        self.limit = limit
        self.most_buffered = 0
        self.received = bytearray()
        self._producer_paused = False

    def write(self, data):
        super().write(data)
        buffered = len(self.value())
        self.most_buffered = max(self.most_buffered, buffered)
        if buffered > self.limit and self.producer is not None and not self._producer_paused:
            self._producer_paused = True
            self.producer.pauseProducing()

    def drain(self):
        self.received += self.value()
        self.clear()
        if self._producer_paused and self.producer is not None:
            self._producer_paused = False
            self.producer.resumeProducing()


class RelayTestCase(SynchronousTestCase):
    def make(self, **limits):
        self.clock = Clock()
        self.limits = RelayLimits(**limits)
        counter = itertools.count(1)
        self.broker = RelayBroker(self.clock, self.limits,
                                  lambda n: bytes([next(counter)]) * n)
        self.factory = RelayFactory(self.broker)
        self.ports = itertools.count(40000)

    def connect(self, transport=None):
        connection = self.factory.buildProtocol(None)
        if transport is None:
            transport = StringTransport()
        transport.peerAddr = IPv4Address("TCP", "198.51.100.1", next(self.ports))
        connection.makeConnection(transport)
        return connection, transport

    def pair(self, transports=(None, None)):
        token = self.broker.offer(A, B)
        c1, t1 = self.connect(transports[0])
        c1.dataReceived(relay_hello(token))
        c2, t2 = self.connect(transports[1])
        c2.dataReceived(relay_hello(token))
        self.assertEqual((c1.state, c2.state), (Side.SPLICED, Side.SPLICED))
        return (c1, t1), (c2, t2), token


class PairingTests(RelayTestCase):
    def setUp(self):
        self.make()

    def test_two_sides_with_the_same_token_are_spliced_both_ways(self):
        token = self.broker.offer(A, B)
        c1, t1 = self.connect()
        c1.dataReceived(relay_hello(token) + b"sent early")
        self.assertIs(c1.state, Side.WAITING)
        c2, t2 = self.connect()
        c2.dataReceived(relay_hello(token) + b"hello back")
        self.assertEqual(t2.value(), b"sent early", "what the first side sent while waiting")
        self.assertEqual(t1.value(), b"hello back")
        c1.dataReceived(b"more")
        c2.dataReceived(b"and more")
        self.assertEqual((t2.value(), t1.value()), (b"sent earlymore", b"hello backand more"))
        self.assertEqual((self.broker.pending, len(self.broker.splices)), (0, 1))

    def test_the_hello_may_arrive_in_pieces(self):
        token = self.broker.offer(A, B)
        c1, _ = self.connect()
        for byte in relay_hello(token):
            c1.dataReceived(bytes([byte]))
        self.assertIs(c1.state, Side.WAITING)

    def test_an_unknown_token_is_closed_without_a_reply(self):
        self.broker.offer(A, B)
        c, t = self.connect()
        c.dataReceived(relay_hello(b"\xee" * 32))
        self.assertTrue(t.disconnected)
        self.assertEqual(t.value(), b"")

    def test_a_byte_that_cannot_be_the_magic_closes_at_once(self):
        c, t = self.connect()
        c.dataReceived(RELAY_HELLO_MAGIC[:5] + b"X")
        self.assertTrue(t.disconnected)
        c2, t2 = self.connect()
        c2.dataReceived(b"GET / HTTP/1.1\r\n")
        self.assertTrue(t2.disconnected)

    def test_no_hello_within_the_preamble_timeout_closes(self):
        c, t = self.connect()
        c.dataReceived(RELAY_HELLO_MAGIC)
        self.clock.advance(self.limits.preamble_timeout - 0.1)
        self.assertFalse(t.disconnected)
        self.clock.advance(0.1)
        self.assertTrue(t.disconnected)

    def test_a_token_works_once_a_third_connection_is_closed(self):
        (_, _), (_, _), token = self.pair()
        c3, t3 = self.connect()
        c3.dataReceived(relay_hello(token))
        self.assertTrue(t3.disconnected)

    def test_an_unmatched_token_expires_and_the_waiting_side_is_closed(self):
        token = self.broker.offer(A, B)
        c1, t1 = self.connect()
        c1.dataReceived(relay_hello(token))
        self.clock.advance(self.limits.token_lifetime)
        self.assertTrue(t1.disconnected)
        c1.connectionLost()
        c2, t2 = self.connect()
        c2.dataReceived(relay_hello(token))
        self.assertTrue(t2.disconnected, "an expired token")
        self.assertEqual(self.broker.pending, 0)

    def test_a_side_that_drops_while_waiting_may_come_back_with_the_token(self):
        token = self.broker.offer(A, B)
        c1, _ = self.connect()
        c1.dataReceived(relay_hello(token))
        c1.connectionLost()
        again, t_again = self.connect()
        again.dataReceived(relay_hello(token))
        c2, t2 = self.connect()
        c2.dataReceived(relay_hello(token) + b"x")
        self.assertIs(again.state, Side.SPLICED)
        self.assertEqual(t_again.value(), b"x")

    def test_withdrawn_and_closed_all(self):
        token = self.broker.offer(A, B)
        c1, t1 = self.connect()
        c1.dataReceived(relay_hello(token))
        self.broker.withdraw(token)
        self.assertTrue(t1.disconnected)
        (_, t2), (_, t3), _ = self.pair()
        self.broker.close_all()
        self.assertTrue(t2.disconnected and t3.disconnected)


class CapTests(RelayTestCase):
    def test_sessions_are_capped_and_tokens_count(self):
        self.make(max_sessions=2)
        self.broker.offer(A, B)
        self.pair()
        with self.assertRaises(RelayRefused) as caught:
            self.broker.offer(A, C)
        self.assertEqual(caught.exception.code, "relay_unavailable")

    def test_relays_per_peer_are_capped_until_one_ends(self):
        self.make(per_peer=1)
        (c1, _), (_, _), _ = self.pair()
        with self.assertRaises(RelayRefused) as caught:
            self.broker.offer(C, B)
        self.assertEqual(caught.exception.code, "too_many_attempts")
        c1.connectionLost()
        self.broker.offer(C, B)

    def test_connections_are_capped_before_any_byte_is_read(self):
        self.make(max_connections=2)
        self.connect()
        self.connect()
        _, t3 = self.connect()
        self.assertTrue(t3.disconnected)

    def test_bytes_sent_before_the_partner_arrives_are_capped_then_reading_pauses(self):
        self.make(hold_limit=1000)
        token = self.broker.offer(A, B)
        c1, t1 = self.connect()
        c1.dataReceived(relay_hello(token) + b"a" * 600)
        self.assertEqual(t1.producerState, "producing")
        c1.dataReceived(b"b" * 600)
        self.assertEqual(t1.producerState, "paused")
        self.assertEqual(c1.held_bytes, 1200)
        c2, t2 = self.connect()
        c2.dataReceived(relay_hello(token))
        self.assertEqual(t2.value(), b"a" * 600 + b"b" * 600)
        self.assertEqual(t1.producerState, "producing", "reading resumes once spliced")


class SpliceTests(RelayTestCase):
    def test_each_side_is_the_producer_of_the_others_transport(self):
        self.make()
        (c1, t1), (c2, t2), _ = self.pair()
        self.assertIs(t2.producer, c1)
        self.assertIs(t1.producer, c2)
        c1.pauseProducing()     # t2's send buffer is full: stop reading c1
        self.assertEqual(t1.producerState, "paused")
        self.assertEqual(t2.producerState, "producing")
        c1.resumeProducing()
        self.assertEqual(t1.producerState, "producing")

    def test_back_pressure_bounds_what_is_buffered_and_loses_nothing(self):
        """A fast sender into a slow reader: the relay reads the sender only while the
        reader's buffer has room, so at most the buffer plus one read is ever queued."""
        self.make(rate=1e12)
        limit, chunk = 64 * 1024, 16 * 1024
        (c1, t1), (c2, t2), _ = self.pair((StringTransport(), BoundedTransport(limit)))
        data = hashlib.sha256(b"seed").digest() * (4 * 1024 * 1024 // 32)
        sent = 0
        while sent < len(data):
            if t1.producerState == "producing":
                c1.dataReceived(data[sent:sent + chunk])   # the kernel delivers a read
                sent += chunk
            else:
                t2.drain()                                  # the reader catches up
        t2.drain()
        self.assertEqual(bytes(t2.received), data)
        self.assertLessEqual(t2.most_buffered, limit + chunk)

    def test_each_direction_is_capped_at_the_rate(self):
        rate = 200_000
        self.make(rate=rate)
        (c1, t1), (c2, t2), _ = self.pair()
        chunk, step, seconds = 8 * 1024, 0.001, 10.0
        for _ in range(int(seconds / step)):
            if t1.producerState == "producing":
                c1.dataReceived(b"x" * chunk)
            if t2.producerState == "producing":
                c2.dataReceived(b"y" * (chunk // 2))
            self.clock.advance(step)
        burst = self.limits.burst
        for delivered in (len(t2.value()), len(t1.value())):
            achieved = (delivered - burst) / seconds
            self.assertGreater(achieved, rate * 0.9)
            self.assertLess(achieved, rate * 1.05)

    def test_when_one_side_closes_the_other_gets_its_bytes_then_is_closed(self):
        self.make()
        (c1, t1), (c2, t2), _ = self.pair()
        c1.dataReceived(b"last words")
        c1.connectionLost()
        self.assertEqual(t2.value(), b"last words")
        self.assertTrue(t2.disconnecting)
        self.assertFalse(t2.disconnected, "a graceful close first")
        self.assertIsNone(t2.producer, "the gone side no longer produces for it")
        self.clock.advance(CLOSE_GRACE)
        self.assertTrue(t2.disconnected, "a side that will not take its bytes is aborted")
        c2.connectionLost()
        self.assertEqual((len(self.broker.splices), self.broker.sessions_completed,
                          self.broker.bytes_relayed), (0, 1, len(b"last words")))
        self.assertEqual(len(self.broker.connections), 0)

    def test_a_splice_silent_both_ways_is_closed_after_the_idle_timeout(self):
        self.make(idle_timeout=60)
        (c1, t1), (c2, t2), _ = self.pair()
        self.clock.advance(40)
        c2.dataReceived(b"still here")
        self.clock.advance(40)
        self.assertFalse(t1.disconnecting)
        self.clock.advance(20)
        self.assertTrue(t1.disconnecting and t2.disconnecting)
        self.assertEqual(len(self.broker.splices), 0)


class _Client(Protocol):
    def __init__(self):
        self.received = bytearray()

    def dataReceived(self, data):
        self.received += data


class EndToEndTests(RelayTestCase):
    def test_bytes_cross_the_relay_intact_both_ways(self):
        self.make()
        token = self.broker.offer(A, B)
        pumps, clients = [], []
        for _ in range(2):
            server = self.factory.buildProtocol(None)
            client = _Client()
            pump = iosim.connect(server, iosim.makeFakeServer(server),
                                 client, iosim.makeFakeClient(client), greet=False)
            client.transport.write(relay_hello(token))
            pump.flush()
            pumps.append(pump)
            clients.append(client)
        one = hashlib.sha256(b"one").digest() * 20000
        two = hashlib.sha256(b"two").digest() * 15000
        clients[0].transport.write(one)
        clients[1].transport.write(two)
        for _ in range(3):
            for pump in pumps:
                pump.flush()
        self.assertEqual(bytes(clients[1].received), one)
        self.assertEqual(bytes(clients[0].received), two)


class SideMachineTests(RelayTestCase):
    """Each side's state is moved by that side only, along ``TRANSITIONS``."""

    def setUp(self):
        self.make()

    def test_a_spliced_pair_ends_closing_then_closed_each_side_on_its_own(self):
        (c1, t1), (c2, t2), _ = self.pair()
        c1.connectionLost()
        self.assertIs(c1.state, Side.CLOSED)
        self.assertIs(c2.state, Side.CLOSING)  # told to finish; drains within the grace
        self.assertTrue(t2.disconnecting)
        self.assertFalse(t2.disconnected)
        self.clock.advance(CLOSE_GRACE)
        self.assertTrue(t2.disconnected)
        c2.connectionLost()
        self.assertIs(c2.state, Side.CLOSED)
        self.assertEqual((len(self.broker.splices), len(self.broker.connections)), (0, 0))
        self.assertEqual(self.broker.sessions_completed, 1)

    def test_a_connection_over_the_cap_is_closed_at_once_and_never_counted(self):
        self.make(max_connections=1)
        c1, _ = self.connect()
        c2, t2 = self.connect()
        self.assertIs(c2.state, Side.CLOSED)
        self.assertTrue(t2.disconnected)
        c2.connectionLost()
        self.assertEqual(self.broker.connections, {c1})

    def test_an_aborted_side_is_closing_until_its_loss_and_forwards_nothing(self):
        (c1, t1), (c2, t2), _ = self.pair()
        self.broker.close_all()
        self.assertEqual((c1.state, c2.state), (Side.CLOSING, Side.CLOSING))
        c1.dataReceived(b"late")
        self.assertEqual(t2.value(), b"")
        c1.connectionLost()
        c2.connectionLost()
        self.assertEqual((c1.state, c2.state), (Side.CLOSED, Side.CLOSED))
        self.assertEqual(self.broker.sessions_completed, 1)

    def test_moves_the_table_does_not_list_are_refused(self):
        c, _ = self.connect()
        with self.assertRaises(AssertionError):
            c._move(Side.PREAMBLE)
        c.close()
        with self.assertRaises(AssertionError):
            c._move(Side.SPLICED)
        self.assertEqual(TRANSITIONS[Side.CLOSED], set())
        self.assertEqual(set(TRANSITIONS), set(Side))
