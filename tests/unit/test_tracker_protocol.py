"""The tracker's TLS adapter in memory (iosim, real pyOpenSSL): proven ids, pins, plain TCP."""

import random

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from peerit.identity import Identity
from peerit.tls import PinnedClientTLS
from peerit.tracker.protocol import CLOSE_GRACE, tls_factory
from peerit.tracker.session import ACTIVE, Limits, Tracker
from peerit.tracker.store import MemorySwarmStore
from peerit.wire import tracker as wire
from peerit.wire.framing import FrameDecoder, frame

TRACKER_ID = Identity.generate("tracker")
ALICE = Identity.generate("alice")
MALLORY = Identity.generate("mallory")
SWARM = b"S" * 32


@implementer(IHandshakeListener)
class RecordingClient(Protocol):
    """A bare daemon stand-in: says Hello once TLS is up and records what comes back."""

    def __init__(self, hello=True):
        self.hello = hello
        self.decoder = FrameDecoder(wire.MAX_TRACKER_FRAME_SIZE)
        self.received = []
        self.handshake_done = False
        self.lost = None

    def handshakeCompleted(self):
        self.handshake_done = True
        if self.hello:
            self.send(wire.Hello(6881, 0, ("10.0.0.2",)))

    def send(self, message):
        self.transport.write(frame(wire.build(message)))

    def dataReceived(self, data):
        self.received += [wire.parse(b) for b in self.decoder.feed(data)]

    def connectionLost(self, reason):
        self.lost = reason


class TLSSessionTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.tracker = Tracker(self.clock, MemorySwarmStore(random.Random(1)),
                               Limits(handshake_timeout=5), random.Random(1))
        self.server_factory = tls_factory(TRACKER_ID, self.tracker)

    def connect(self, client_protocol, wrap_client, source="198.51.100.20", port=40001):
        server = self.server_factory.buildProtocol(None)
        client = wrap_client(client_protocol)
        server_transport = FakeTransport(
            server, isServer=True, hostAddress=IPv4Address("TCP", "192.0.2.1", 59000),
            peerAddress=IPv4Address("TCP", source, port))
        client_transport = FakeTransport(
            client, isServer=False, hostAddress=IPv4Address("TCP", source, port),
            peerAddress=IPv4Address("TCP", "192.0.2.1", 59000))
        pump = connect(server, server_transport, client, client_transport, clock=self.clock)
        return server, pump

    def pinned(self, identity, expected):
        return lambda p: TLSMemoryBIOFactory(
            PinnedClientTLS(identity, expected), True, Factory.forProtocol(lambda: p),
            clock=self.clock).buildProtocol(None)

    def test_the_session_is_bound_to_the_key_the_client_proved(self):
        alice = RecordingClient()
        server, pump = self.connect(alice, self.pinned(ALICE, TRACKER_ID.peer_id))
        pump.flush()
        [welcome] = alice.received
        self.assertEqual(welcome.peer_id, ALICE.peer_id)
        self.assertEqual(welcome.observed, wire.Endpoint("198.51.100.20", 40001))
        session = self.tracker.session_of(ALICE.peer_id)
        self.assertEqual(session.state, ACTIVE)
        alice.send(wire.Announce(SWARM, "started", 10))
        pump.flush()
        self.assertEqual(self.tracker.store.role(SWARM, ALICE.peer_id), False)

    def test_a_client_pinning_another_fingerprint_refuses_the_tracker(self):
        alice = RecordingClient()
        server, pump = self.connect(alice, self.pinned(ALICE, MALLORY.peer_id))
        pump.flush()
        self.assertFalse(alice.handshake_done)
        self.assertIsNotNone(alice.lost)
        self.assertEqual(alice.received, [])
        self.assertIsNone(self.tracker.session_of(ALICE.peer_id))
        self.assertEqual(self.tracker.session_count, 0)

    def test_another_client_is_bound_to_its_own_key_and_cannot_touch_alices_entry(self):
        """Whatever Mallory sends is hers: TLS 1.3 makes her prove the key she presents."""
        alice, mallory = RecordingClient(), RecordingClient()
        _, alice_pump = self.connect(alice, self.pinned(ALICE, TRACKER_ID.peer_id))
        alice_pump.flush()
        alice.send(wire.Announce(SWARM, "started", 10))
        alice_pump.flush()
        _, pump = self.connect(mallory, self.pinned(MALLORY, TRACKER_ID.peer_id),
                               source="198.51.100.66")
        pump.flush()
        self.assertEqual(mallory.received[0].peer_id, MALLORY.peer_id)
        mallory.send(wire.Announce(SWARM, "stopped", 0))
        mallory.send(wire.PeerListRequest(SWARM, 10))
        pump.flush()
        self.assertEqual([p.peer_id for p in mallory.received[-1].peers], [ALICE.peer_id])

    def test_plain_tcp_is_refused_without_harming_the_tracker(self):
        plain = RecordingClient(hello=False)
        server, pump = self.connect(plain, lambda p: p)
        plain.transport.write(frame(wire.build(wire.Hello(1))))
        pump.flush()
        self.assertIsNotNone(plain.lost)
        self.assertEqual(plain.received, [])
        self.assertEqual(self.tracker.session_count, 0)
        alice = RecordingClient()
        self.connect(alice, self.pinned(ALICE, TRACKER_ID.peer_id))[1].flush()
        self.assertEqual(len(alice.received), 1)

    def test_a_silent_tcp_connection_is_dropped_at_the_handshake_timeout(self):
        silent = Protocol()
        server, pump = self.connect(silent, lambda p: p)
        self.assertEqual(self.tracker.session_count, 1)
        self.clock.advance(5)
        pump.flush()
        self.assertEqual(self.tracker.session_count, 0)

    def test_a_closing_connection_is_aborted_after_a_grace_period(self):
        alice = RecordingClient()
        server, pump = self.connect(alice, self.pinned(ALICE, TRACKER_ID.peer_id))
        pump.flush()
        wrapped = server.wrappedProtocol
        aborted = []
        wrapped.transport.abortConnection = lambda: aborted.append(True)
        wrapped.close()
        self.clock.advance(CLOSE_GRACE)
        self.assertEqual(aborted, [True])
