"""The QUIC adapter (peerit.nat.quic) between two endpoints on an in-memory datagram network,
driven by a task.Clock: identities, loss, timeouts, cancellation, back-pressure, endings."""

import io
import random

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from twisted.internet import defer, error, task
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.protocols.basic import FileSender
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from peerit.errors import IdentityMismatch, TimedOut
from peerit.identity import Identity
from peerit.nat.quic import (
    MAX_CONNECTIONS_PER_ADDRESS, QuicConnectionLost, QuicEndpoint, QuicHandshakeFailed,
    QuicSettings, destination_connection_id, is_quic_datagram)
from peerit.nat.quic_connection import MAX_ACK_DELAY_MS
from peerit.testing.datagrams import DatagramNetwork, drop_every, drop_fraction, run_until

DIALER = Identity.generate("dialer")
ACCEPTOR = Identity.generate("acceptor")
STRANGER = Identity.generate("stranger")
A = ("192.0.2.1", 40001)
B = ("198.51.100.2", 40002)


class Recorder(Protocol):
    """Keeps what it receives and how it ended."""

    def __init__(self, greeting: bytes = b""):
        self.greeting = greeting
        self.chunks: list[bytes] = []
        self.lost = None
        self.peer_id_when_made = None

    def connectionMade(self):
        self.peer_id_when_made = self.transport.peer_id
        if self.greeting:
            self.transport.write(self.greeting)

    def dataReceived(self, data):
        self.chunks.append(data)

    def connectionLost(self, reason):
        self.lost = reason

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


class Factory:
    """protocol_factory(peer_id) that remembers what it made."""

    def __init__(self, greeting: bytes = b""):
        self.greeting = greeting
        self.made: list[Recorder] = []

    def __call__(self, peer_id):
        protocol = Recorder(self.greeting)
        self.made.append(protocol)
        return protocol


class QuicTestCase(SynchronousTestCase):
    settings = QuicSettings()

    def setUp(self):
        self.clock = task.Clock()
        self.net = DatagramNetwork(self.clock, latency=0.005)
        self.dialer = QuicEndpoint(DIALER, self.net.attach(A, self._to_dialer), self.clock,
                                   self.settings)
        self.acceptor = QuicEndpoint(ACCEPTOR, self.net.attach(B, self._to_acceptor),
                                     self.clock, self.settings)
        self.sent_by_acceptor = 0

    def _to_dialer(self, data, src):
        self.dialer.datagram_received(data, src)

    def _to_acceptor(self, data, src):
        self.acceptor.datagram_received(data, src)

    def advance_until(self, predicate, timeout=60.0):
        return run_until(self.clock, predicate, timeout)

    def open_link(self, dialer_greeting=b"", acceptor_greeting=b""):
        dialer_factory, acceptor_factory = Factory(dialer_greeting), Factory(acceptor_greeting)
        accepted = self.acceptor.accept_from(A, [DIALER.peer_id], acceptor_factory)
        connected = self.dialer.connect(B, ACCEPTOR.peer_id, dialer_factory)
        self.assertTrue(self.advance_until(lambda: connected.called and accepted.called, 5))
        return self.successResultOf(connected), self.successResultOf(accepted)


class HandshakeTests(QuicTestCase):

    def test_both_sides_prove_and_pin_their_identity(self):
        """The dialer learns the acceptor's id and vice versa, before connectionMade; both
        may speak first and every byte arrives."""
        client, server = self.open_link(dialer_greeting=b"hello from dialer",
                                        acceptor_greeting=b"hello from acceptor")
        self.assertEqual(client.peer_id_when_made, ACCEPTOR.peer_id)
        self.assertEqual(server.peer_id_when_made, DIALER.peer_id)
        self.assertTrue(self.advance_until(lambda: client.chunks and server.chunks, 5))
        self.assertEqual(client.data, b"hello from acceptor")
        self.assertEqual(server.data, b"hello from dialer")
        self.assertEqual((client.transport.getPeer().host, client.transport.getPeer().port), B)
        self.assertEqual((server.transport.getPeer().host, server.transport.getPeer().port), A)
        self.assertEqual(client.transport.getPeer().type, "UDP")

    def test_each_side_announces_the_ack_delay_it_keeps(self):
        """Both sides announce MAX_ACK_DELAY_MS (not aioquic's fixed 25 ms), and each side's
        probe timeout uses the other's announcement."""
        self.open_link()
        for endpoint in (self.dialer, self.acceptor):
            ((link,),) = endpoint._links.values()
            self.assertEqual(link.conn._loss.max_ack_delay, MAX_ACK_DELAY_MS / 1000)
            self.assertLess(link.conn._loss.max_ack_delay, 0.025)

    def test_dialer_refuses_a_server_with_another_key(self):
        """Expecting STRANGER's id, the dialer fails with IdentityMismatch; no protocol is
        made on either side."""
        dialer_factory, acceptor_factory = Factory(), Factory(b"secret")
        accepted = self.acceptor.accept_from(A, [DIALER.peer_id], acceptor_factory)
        connected = self.dialer.connect(B, STRANGER.peer_id, dialer_factory)
        self.assertTrue(self.advance_until(lambda: connected.called and accepted.called, 10))
        failure = self.failureResultOf(connected, IdentityMismatch)
        self.assertIn("not the expected one", failure.getErrorMessage())
        self.failureResultOf(accepted, QuicHandshakeFailed)
        self.assertEqual(dialer_factory.made, [])
        self.assertEqual(acceptor_factory.made, [])

    def test_acceptor_refuses_a_client_it_was_not_told_about(self):
        """Armed for STRANGER only, the acceptor refuses DIALER's key; the dialer's connect
        fails too (it waits for HANDSHAKE_DONE) and nothing is delivered anywhere."""
        dialer_factory, acceptor_factory = Factory(b"secret"), Factory(b"secret")
        accepted = self.acceptor.accept_from(A, [STRANGER.peer_id], acceptor_factory)
        connected = self.dialer.connect(B, ACCEPTOR.peer_id, dialer_factory)
        self.assertTrue(self.advance_until(lambda: connected.called and accepted.called, 10))
        self.failureResultOf(accepted, IdentityMismatch)
        failure = self.failureResultOf(connected, QuicHandshakeFailed)
        self.assertIn("not the expected one", failure.getErrorMessage())
        self.assertEqual(dialer_factory.made, [])
        self.assertEqual(acceptor_factory.made, [])

    def test_client_without_certificate_is_refused(self):
        """A plain QUIC client that answers the certificate request with no certificate is
        refused: the acceptor never makes a protocol."""
        acceptor_factory = Factory()
        accepted = self.acceptor.accept_from(A, [DIALER.peer_id], acceptor_factory)
        raw = QuicConnection(configuration=QuicConfiguration(
            is_client=True, alpn_protocols=["peerit/1"], verify_mode=0))
        send = self.net.attach(A, lambda data, src: raw.receive_datagram(
            data, src, self.clock.seconds()))

        def flush():
            for data, addr in raw.datagrams_to_send(self.clock.seconds()):
                send(data, addr)
        raw.connect(B, self.clock.seconds())
        flush()
        self.advance_until(lambda: (flush() or accepted.called), 10)
        self.failureResultOf(accepted, IdentityMismatch)
        self.assertEqual(acceptor_factory.made, [])

    def test_initial_from_an_unarmed_address_is_dropped_unanswered(self):
        """Without accept_from, an Initial gets no reply at all and the dialer times out."""
        replies = []
        self.net.attach(A, lambda data, src: (replies.append(data),
                                              self.dialer.datagram_received(data, src)))
        connected = self.dialer.connect(B, ACCEPTOR.peer_id, Factory())
        self.assertTrue(self.advance_until(lambda: connected.called, 30))
        self.failureResultOf(connected, TimedOut)
        self.advance_until(lambda: False, 5)
        self.assertGreater(self.acceptor.dropped, 0)
        self.assertEqual(self.acceptor.links(), 0)
        self.assertEqual(replies, [])

    def test_arming_one_address_does_not_accept_another(self):
        """An acceptance armed for another address does not let A in."""
        accepted = self.acceptor.accept_from(("203.0.113.9", 1), [DIALER.peer_id], Factory(),
                                             timeout=60)
        connected = self.dialer.connect(B, ACCEPTOR.peer_id, Factory())
        self.assertTrue(self.advance_until(lambda: connected.called, 30))
        self.failureResultOf(connected, TimedOut)
        self.assertNoResult(accepted)
        self.assertGreater(self.acceptor.dropped, 0)
        accepted.cancel()
        self.failureResultOf(accepted, defer.CancelledError)

    def test_handshake_timeout_fires_with_a_clear_error(self):
        """A connect that gets no answer fails with TimedOut at handshake_timeout, not
        before, and the connection is forgotten."""
        connected = self.dialer.connect(B, ACCEPTOR.peer_id, Factory())
        self.clock.advance(0)
        self.advance_until(lambda: False, self.settings.handshake_timeout - 0.1)
        self.assertNoResult(connected)
        self.advance_until(lambda: connected.called, 0.2)
        failure = self.failureResultOf(connected, TimedOut)
        self.assertIn("did not complete in 10 s", failure.getErrorMessage())
        self.assertTrue(self.advance_until(lambda: self.dialer.links() == 0, 10))

    def test_accept_timeout(self):
        """An armed acceptance nobody uses fails with TimedOut after its timeout."""
        accepted = self.acceptor.accept_from(A, [DIALER.peer_id], Factory(), timeout=5)
        self.clock.advance(4.9)
        self.assertNoResult(accepted)
        self.clock.advance(0.2)
        self.failureResultOf(accepted, TimedOut)

    def test_cancelling_connect_closes_the_connection(self):
        """Cancelling connect mid-handshake fails it with CancelledError, tells the peer
        (its acceptance fails) and forgets the connection."""
        acceptor_factory = Factory()
        accepted = self.acceptor.accept_from(A, [DIALER.peer_id], acceptor_factory)
        connected = self.dialer.connect(B, ACCEPTOR.peer_id, Factory())
        self.assertTrue(self.advance_until(lambda: self.acceptor.links() == 1, 1))
        connected.cancel()
        self.failureResultOf(connected, defer.CancelledError)
        self.assertTrue(self.advance_until(lambda: accepted.called, 5))
        self.failureResultOf(accepted, QuicHandshakeFailed)
        self.assertEqual(acceptor_factory.made, [])
        self.assertTrue(self.advance_until(lambda: self.dialer.links() == 0, 10))

    def test_cancelling_accept_disarms(self):
        """After accept_from is cancelled, the remote's Initials are dropped again."""
        accepted = self.acceptor.accept_from(A, [DIALER.peer_id], Factory())
        accepted.cancel()
        self.failureResultOf(accepted, defer.CancelledError)
        connected = self.dialer.connect(B, ACCEPTOR.peer_id, Factory())
        self.assertTrue(self.advance_until(lambda: connected.called, 30))
        self.failureResultOf(connected, TimedOut)
        self.assertGreater(self.acceptor.dropped, 0)

    def test_connections_with_one_address_are_capped(self):
        """Connects and armed acceptances with one address stop at the cap, with a clear
        error; another address is not affected."""
        for _ in range(MAX_CONNECTIONS_PER_ADDRESS):
            self.dialer.connect(B, ACCEPTOR.peer_id, Factory())
        failure = self.failureResultOf(self.dialer.connect(B, ACCEPTOR.peer_id, Factory()),
                                       QuicHandshakeFailed)
        self.assertIn(f"{MAX_CONNECTIONS_PER_ADDRESS} QUIC connections", str(failure.value))
        self.assertEqual(self.dialer.links_with(B), MAX_CONNECTIONS_PER_ADDRESS)
        for _ in range(MAX_CONNECTIONS_PER_ADDRESS):
            self.acceptor.accept_from(A, [DIALER.peer_id], Factory())
        self.failureResultOf(self.acceptor.accept_from(A, [DIALER.peer_id], Factory()),
                             QuicHandshakeFailed)
        self.assertNoResult(self.acceptor.accept_from(("203.0.113.9", 1), [DIALER.peer_id],
                                                      Factory()))


class TransferTests(QuicTestCase):
    settings = QuicSettings(receive_window=512 * 1024, send_buffer_limit=256 * 1024)

    def test_stream_survives_loss_intact(self):
        """With 5% of datagrams dropped (seeded), 3 MiB one way and 1 MiB the other arrive
        intact and in order."""
        client, server = self.open_link()
        self.net.loss = drop_fraction(0.05, seed=7)
        rng = random.Random(1)
        upload, download = rng.randbytes(3 * 1024 * 1024), rng.randbytes(1024 * 1024)
        client.transport.write(upload)
        server.transport.write(download)
        self.assertTrue(self.advance_until(lambda: len(server.data) == len(upload)
                                 and len(client.data) == len(download), 120))
        self.assertEqual(server.data, upload)
        self.assertEqual(client.data, download)
        self.assertGreater(self.net.dropped, 100)

    def test_regular_loss_during_handshake_and_transfer(self):
        """Every 7th datagram lost from the very first one: the handshake still completes
        and 1 MiB arrives intact."""
        self.net.loss = drop_every(7)
        client, server = self.open_link()
        payload = random.Random(2).randbytes(1024 * 1024)
        client.transport.write(payload)
        self.assertTrue(self.advance_until(lambda: len(server.data) == len(payload), 120))
        self.assertEqual(server.data, payload)

    def test_push_producer_is_paused_and_resumed(self):
        """While the receiver stops reading, the sender's producer ends up paused (its
        window full, the unacknowledged bytes over the cap) and is resumed when reading
        resumes; the sender never holds more than the cap plus one chunk, the receiver no
        more than its window."""
        client, server = self.open_link()
        chunk = 64 * 1024
        total = 4 * 1024 * 1024

        @implementer(IPushProducer)
        class Producer:
            paused = False
            pauses = resumes = written = 0
            max_held = 0

            def pauseProducing(self):
                self.paused = True
                self.pauses += 1

            def resumeProducing(self):
                self.paused = False
                self.resumes += 1
                self.pump()

            def pump(self):
                while not self.paused and self.written < total:
                    client.transport.write(bytes([self.written // chunk % 256]) * chunk)
                    self.written += chunk
                    link = client.transport._link
                    self.max_held = max(self.max_held, link.held())

            def stopProducing(self):
                pass

        producer = Producer()
        server.transport.pauseProducing()
        client.transport.registerProducer(producer, True)
        producer.pump()
        self.advance_until(lambda: False, 5)
        # The receiver's window fills, then acknowledgements stop freeing the send buffer:
        # the producer stays paused with at most window + cap + one chunk written.
        self.assertTrue(producer.paused)
        self.assertGreaterEqual(producer.pauses, 1)
        self.assertLessEqual(producer.written, self.settings.receive_window
                             + self.settings.send_buffer_limit + chunk)
        self.assertEqual(server.data, b"")
        held_by_receiver = sum(map(len, server.transport._link._held_input))
        self.assertLessEqual(held_by_receiver, self.settings.receive_window)
        server.transport.resumeProducing()
        self.assertTrue(self.advance_until(lambda: len(server.data) == total, 60))
        self.assertGreaterEqual(producer.resumes, 1)
        self.assertLessEqual(producer.max_held, self.settings.send_buffer_limit + chunk)
        expected = b"".join(bytes([i % 256]) * chunk for i in range(total // chunk))
        self.assertEqual(server.data, expected)

    def test_pull_producer_sends_a_whole_file_without_buffering_it(self):
        """Twisted's FileSender (a pull producer) streams 2 MiB; the link never holds more
        than the cap plus one FileSender chunk."""
        client, server = self.open_link()
        payload = random.Random(3).randbytes(2 * 1024 * 1024)
        link = client.transport._link
        held = []
        original_write = link.write

        def write(data):
            original_write(data)
            held.append(link.held())
        link.write = write
        sent = FileSender().beginFileTransfer(io.BytesIO(payload), client.transport)
        self.assertTrue(self.advance_until(lambda: len(server.data) == len(payload), 60))
        self.assertEqual(server.data, payload)
        self.assertTrue(sent.called)
        self.assertLessEqual(max(held), self.settings.send_buffer_limit + FileSender.CHUNK_SIZE)


class EndingTests(QuicTestCase):
    settings = QuicSettings(idle_timeout=30.0, keepalive_interval=10.0)

    def test_lose_connection_delivers_everything_then_closes_both_sides(self):
        """loseConnection after a write: the peer gets every byte, then both sides see a
        clean ConnectionDone."""
        client, server = self.open_link()
        payload = random.Random(4).randbytes(300_000)
        client.transport.write(payload)
        client.transport.loseConnection()
        self.assertTrue(self.advance_until(lambda: client.lost and server.lost, 30))
        self.assertEqual(server.data, payload)
        client.lost.trap(error.ConnectionDone)
        server.lost.trap(error.ConnectionDone)
        self.assertTrue(self.advance_until(lambda: self.dialer.links() == 0
                                 and self.acceptor.links() == 0, 10))

    def test_abort_is_immediate_and_the_peer_learns_why(self):
        client, server = self.open_link()
        client.transport.abortConnection()
        client.lost.trap(error.ConnectionAborted)
        self.assertTrue(self.advance_until(lambda: server.lost is not None, 10))
        server.lost.trap(QuicConnectionLost)
        self.assertIn("aborted", server.lost.getErrorMessage())

    def test_idle_timeout_when_the_path_dies(self):
        """When every datagram is lost, both sides get connectionLost (idle timeout) within
        a bounded time."""
        client, server = self.open_link()
        self.net.loss = lambda *_: True
        self.assertTrue(self.advance_until(lambda: client.lost and server.lost, 120))
        client.lost.trap(QuicConnectionLost)
        server.lost.trap(QuicConnectionLost)
        self.assertIn("Idle timeout", client.lost.getErrorMessage())
        self.assertEqual(self.dialer.links(), 0)

    def test_keepalive_holds_a_quiet_link_open(self):
        """A link with nothing to say stays open well past the idle timeout."""
        client, server = self.open_link()
        self.advance_until(lambda: client.lost or server.lost, 300)
        self.assertIsNone(client.lost)
        self.assertIsNone(server.lost)
        client.transport.write(b"still there")
        self.assertTrue(self.advance_until(lambda: server.data == b"still there", 5))

    def test_closing_the_endpoint_ends_its_links_and_tells_the_peer(self):
        client, server = self.open_link()
        self.dialer.close()
        self.assertIsNotNone(client.lost)
        self.assertTrue(self.advance_until(lambda: server.lost is not None, 10))
        server.lost.trap(QuicConnectionLost)
        self.failureResultOf(self.dialer.connect(B, ACCEPTOR.peer_id, Factory()),
                             QuicHandshakeFailed)

    def test_writes_after_close_are_ignored(self):
        client, server = self.open_link()
        client.transport.abortConnection()
        client.transport.write(b"too late")
        self.advance_until(lambda: False, 5)
        self.assertEqual(server.data, b"")


class HelperTests(SynchronousTestCase):

    def test_quic_datagrams_are_told_by_the_fixed_bit(self):
        self.assertTrue(is_quic_datagram(b"\x40"))
        self.assertTrue(is_quic_datagram(b"\xc3rest"))
        self.assertFalse(is_quic_datagram(b"\x00\x01"))
        self.assertFalse(is_quic_datagram(b"\xa5PIT"))
        self.assertFalse(is_quic_datagram(b""))

    def test_settings_refuse_datagrams_below_quics_minimum(self):
        self.assertRaises(ValueError, QuicSettings, max_datagram_size=1199)
        self.assertRaises(ValueError, QuicSettings, congestion_control="bbr")
        self.assertEqual(QuicSettings(max_datagram_size=1452).max_datagram_size, 1452)


class ProtocolErrorTests(QuicTestCase):

    def test_a_failing_protocol_ends_only_its_own_link(self):
        """An exception in dataReceived aborts that link (the peer is told) and is logged;
        the endpoint goes on working."""
        client, server = self.open_link()

        def broken(data):
            raise RuntimeError("bug")
        server.dataReceived = broken
        client.transport.write(b"boom")
        self.assertTrue(self.advance_until(lambda: client.lost and server.lost, 10))
        server.lost.trap(error.ConnectionAborted)
        client.lost.trap(QuicConnectionLost)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(self.advance_until(lambda: self.dialer.links() == 0
                                           and self.acceptor.links() == 0, 10))
        client2, server2 = self.open_link(dialer_greeting=b"again")
        self.assertTrue(self.advance_until(lambda: server2.data == b"again", 5))


class SharedPathTests(QuicTestCase):
    """Several links (one per swarm) between the same two addresses, each its own QUIC
    connection on the one 4-tuple, told apart by connection id."""
    settings = QuicSettings(receive_window=256 * 1024, send_buffer_limit=128 * 1024)

    def open_links(self, n: int):
        factories = [(Factory(), Factory()) for _ in range(n)]
        accepted = [self.acceptor.accept_from(A, [DIALER.peer_id], acceptor)
                    for _, acceptor in factories]
        connected = [self.dialer.connect(B, ACCEPTOR.peer_id, dialer)
                     for dialer, _ in factories]
        self.assertTrue(self.advance_until(
            lambda: all(d.called for d in connected + accepted), 10))
        clients = [self.successResultOf(d) for d in connected]
        servers = [self.successResultOf(d) for d in accepted]
        # Acceptances are interchangeable (each Initial takes the oldest free one): pair the
        # ends by what they say.
        for i, client in enumerate(clients):
            client.transport.write(b"link %d" % i)
        self.assertTrue(self.advance_until(lambda: all(s.data for s in servers), 5))
        by_greeting = {server.data: server for server in servers}
        for server in servers:
            server.chunks.clear()
        return [(client, by_greeting[b"link %d" % i]) for i, client in enumerate(clients)]

    def test_three_links_on_one_address_each_carry_their_own_bytes(self):
        """Three connections between A and B at once: each pins the other's id, and 300 KB
        each way per link arrive on that link only, in order, with 3% loss."""
        pairs = self.open_links(3)
        self.assertEqual(self.dialer.links_with(B), 3)
        self.assertEqual(self.acceptor.links_with(A), 3)
        self.net.loss = drop_fraction(0.03, seed=11)
        rng = random.Random(9)
        payloads = []
        for client, server in pairs:
            self.assertEqual(client.peer_id_when_made, ACCEPTOR.peer_id)
            self.assertEqual(server.peer_id_when_made, DIALER.peer_id)
            up, down = rng.randbytes(300_000), rng.randbytes(300_000)
            client.transport.write(up)
            server.transport.write(down)
            payloads.append((up, down))
        self.assertTrue(self.advance_until(lambda: all(
            len(s.data) == len(up) and len(c.data) == len(down)
            for (c, s), (up, down) in zip(pairs, payloads)), 120))
        for (client, server), (up, down) in zip(pairs, payloads):
            self.assertEqual(server.data, up)
            self.assertEqual(client.data, down)
        self.assertGreater(self.net.dropped, 10)

    def test_a_link_closing_or_aborting_leaves_the_others_open(self):
        """One link closes cleanly and another is aborted: the third still carries data, and
        each connection is gone once its link is."""
        (c1, s1), (c2, s2), (c3, s3) = self.open_links(3)
        c1.transport.loseConnection()
        c2.transport.abortConnection()
        self.assertTrue(self.advance_until(lambda: c1.lost and s1.lost and s2.lost, 10))
        s1.lost.trap(error.ConnectionDone)
        s2.lost.trap(QuicConnectionLost)
        self.assertTrue(self.advance_until(lambda: self.dialer.links_with(B) == 1
                                           and self.acceptor.links_with(A) == 1, 10))
        self.assertIsNone(c3.lost)
        self.assertIsNone(s3.lost)
        s3.transport.write(b"still here")
        self.assertTrue(self.advance_until(lambda: c3.data == b"still here", 5))
        c3.transport.loseConnection()
        self.assertTrue(self.advance_until(lambda: self.dialer.links() == 0
                                           and self.acceptor.links() == 0, 10))
        self.assertEqual(self.dialer._cids, {})
        self.assertEqual(self.acceptor._cids, {})

    def test_each_link_proves_the_identity_itself(self):
        """A second connect on the open path expecting another id fails with
        IdentityMismatch; the open link is untouched."""
        [(client, server)] = self.open_links(1)
        self.acceptor.accept_from(A, [DIALER.peer_id], Factory())
        wrong = self.dialer.connect(B, STRANGER.peer_id, Factory())
        self.assertTrue(self.advance_until(lambda: wrong.called, 10))
        self.failureResultOf(wrong, IdentityMismatch)
        self.assertIsNone(client.lost)
        client.transport.write(b"fine")
        self.assertTrue(self.advance_until(lambda: server.data == b"fine", 5))

    def test_an_initial_without_a_free_acceptance_is_dropped(self):
        """With one link open and no acceptance armed, a second connect's Initials are
        dropped (not fed to the open connection) and it times out; the open link lives."""
        [(client, server)] = self.open_links(1)
        dropped = self.acceptor.dropped
        extra = self.dialer.connect(B, ACCEPTOR.peer_id, Factory())
        self.assertTrue(self.advance_until(lambda: extra.called, 30))
        self.failureResultOf(extra, TimedOut)
        self.assertGreater(self.acceptor.dropped, dropped)
        self.assertEqual(self.acceptor.links_with(A), 1)
        client.transport.write(b"fine")
        self.assertTrue(self.advance_until(lambda: server.data == b"fine", 5))

    def test_a_batched_read_is_split_among_its_connections(self):
        """Datagrams of two connections read in one batch (a GRO read) each reach their own
        connection, in order."""
        batch = []

        def to_acceptor(data, src):
            if not batch:
                self.clock.callLater(0, flush)
            batch.append((data, src))

        def flush():
            taken = list(batch)
            batch.clear()
            for src in {src for _, src in taken}:
                self.acceptor.datagrams_received([d for d, s in taken if s == src], src)
        self.net.attach(B, to_acceptor)
        pairs = self.open_links(2)
        payloads = [random.Random(i).randbytes(200_000) for i in range(2)]
        for (client, _), payload in zip(pairs, payloads):
            client.transport.write(payload)
        self.assertTrue(self.advance_until(lambda: all(
            len(s.data) == len(p) for (_, s), p in zip(pairs, payloads)), 60))
        for (_, server), payload in zip(pairs, payloads):
            self.assertEqual(server.data, payload)

    def test_destination_connection_id_of_long_and_short_headers(self):
        self.assertEqual(destination_connection_id(
            bytes([0xc3, 0, 0, 0, 1, 4]) + b"abcd" + b"rest"), b"abcd")
        self.assertEqual(destination_connection_id(bytes([0x41]) + b"12345678" + b"x"),
                         b"12345678")
        self.assertEqual(destination_connection_id(bytes([0xc3, 0, 0])), b"")
