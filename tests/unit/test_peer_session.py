"""The peer session's state machine, driven through its thin protocol on in-memory
transports with a fake clock."""

import hashlib
import os
import random

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from peerit.bitfield import Bitfield
from peerit.daemon.peer_session import (
    CLOSE_GRACE, HANDSHAKE_TIMEOUT, IDLE_TIMEOUT, KEEPALIVE_INTERVAL, TRANSITIONS, State)
from peerit.daemon.peer_transport import IPeerTransport, ProvenStream, TlsStream
from peerit.daemon.peerlink import PeerLink
from peerit.daemon.swarm import Swarm, SwarmConfig
from peerit.testing.swarms import MemoryStore, make_metainfo, verifier
from peerit.wire import framing
from peerit.wire import peer as wire

PIECE = 1 << 15


def peer_id(n: int) -> bytes:
    return hashlib.sha256(b"session peer %d" % n).digest()


ME, THEM = peer_id(0), peer_id(1)


class Router:
    upload_limiter = None

    def __init__(self, swarm=None, refusal=None):
        self.swarm = swarm
        self.refusal = refusal
        self.asked = []

    def authorize(self, info_hash, pid):
        self.asked.append((info_hash, pid))
        return self.refusal if isinstance(self.refusal, Deferred) else succeed(self.refusal)

    def swarm_for(self, info_hash):
        return self.swarm


def proven_transport(pid: bytes = THEM) -> StringTransport:
    """As a QUIC stream: the identity is known before any byte."""
    transport = StringTransport()
    transport.peer_id = pid
    return transport


class TlsTransport(StringTransport):
    """A TLS transport whose handshake has not (yet) proven anybody."""

    def getPeerCertificate(self):
        return None


def frames(transport: StringTransport) -> list:
    data = transport.value()
    out = []
    while data:
        size = int.from_bytes(data[:4], "big")
        out.append(wire.parse(data[4:4 + size]))
        data = data[4 + size:]
    return out


def handshake(info_hash: bytes, pid: bytes = THEM) -> bytes:
    return framing.frame(wire.build(wire.Handshake(wire.PROTOCOL_VERSION, info_hash, pid)))


class SessionTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.metainfo = make_metainfo(os.urandom(4 * PIECE), PIECE)
        store = MemoryStore(self.metainfo)
        self.swarm = Swarm(self.metainfo, store, Bitfield(self.metainfo.piece_count),
                           self.clock, random.Random(1), ME, verify=verifier(store),
                           config=SwarmConfig(block_size=1 << 13))
        self.swarm.start()
        self.states = []

    def link(self, router=None, transport=None, **kwargs) -> PeerLink:
        link = PeerLink(router or Router(self.swarm), self.clock, ME, **kwargs)
        moves = self.states
        original = link.session._move

        def recording_move(to):
            original(to)
            moves.append(to)
        link.session._move = recording_move
        link.makeConnection(transport if transport is not None else proven_transport())
        return link

    def test_inbound_link_is_secured_handshaken_authorized_then_attached(self):
        router = Router(self.swarm)
        link = self.link(router)
        self.assertEqual(self.states, [State.SECURED])
        self.assertEqual(link.transport.value(), b"")  # the acceptor speaks second
        link.dataReceived(handshake(self.metainfo.info_hash))
        self.assertEqual(self.states, [State.SECURED, State.HANDSHAKEN, State.AUTHORIZED,
                                       State.ATTACHED])
        self.assertEqual(router.asked, [(self.metainfo.info_hash, THEM)])
        answer = frames(link.transport)[0]
        self.assertEqual((answer.info_hash, answer.peer_id), (self.metainfo.info_hash, ME))
        self.assertIn(THEM, self.swarm.peers)

    def test_inbound_link_waits_handshaken_until_the_daemon_authorizes(self):
        pending = Deferred()
        link = self.link(Router(self.swarm, refusal=pending))
        link.dataReceived(handshake(self.metainfo.info_hash))
        self.assertIs(link.session.state, State.HANDSHAKEN)
        self.assertEqual(link.transport.value(), b"")
        pending.callback(None)
        self.assertIs(link.session.state, State.ATTACHED)

    def test_refused_peer_is_closed_and_never_attached(self):
        link = self.link(Router(self.swarm, refusal="peer not announced in this swarm"))
        link.dataReceived(handshake(self.metainfo.info_hash))
        self.assertIs(link.session.state, State.CLOSING)
        self.assertEqual(link.session.close_reason, "peer not announced in this swarm")
        self.assertNotIn(THEM, self.swarm.peers)
        self.assertTrue(link.transport.disconnecting)

    def test_dialer_sends_first_and_is_ready_but_not_attached_until_picked(self):
        ready, failed = [], []
        link = self.link(info_hash=self.metainfo.info_hash, expected_peer_id=THEM,
                         on_ready=ready.append, on_failed=failed.append)
        (hello,) = frames(link.transport)
        self.assertEqual((hello.info_hash, hello.peer_id), (self.metainfo.info_hash, ME))
        link.dataReceived(handshake(self.metainfo.info_hash))
        self.assertEqual(ready, [link.session])
        self.assertIs(link.session.state, State.AUTHORIZED)
        self.assertNotIn(THEM, self.swarm.peers)
        ready[0].attach()
        self.assertIs(link.session.state, State.ATTACHED)
        self.assertIn(THEM, self.swarm.peers)
        link.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(failed, [])  # a link that was ready is no failed attempt
        self.assertNotIn(THEM, self.swarm.peers)

    def test_dialer_reports_failure_once_with_the_reason_it_closed(self):
        failed = []
        link = self.link(info_hash=self.metainfo.info_hash, expected_peer_id=THEM,
                         on_failed=failed.append, on_ready=lambda s: None)
        link.dataReceived(handshake(b"\x09" * 32))
        self.assertEqual(link.session.close_reason, "peer answered for another swarm")
        link.connectionLost(Failure(ConnectionDone()))
        link.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(failed, ["peer answered for another swarm"])
        self.assertIs(link.session.state, State.CLOSED)

    def test_peer_proving_another_identity_than_dialed_is_aborted(self):
        link = self.link(transport=proven_transport(peer_id(5)),
                         info_hash=self.metainfo.info_hash, expected_peer_id=THEM)
        self.assertEqual(link.session.close_reason,
                         "peer proved another identity than announced")
        self.assertTrue(link.transport.disconnected)  # aborted, not drained
        self.assertEqual(link.transport.value(), b"")

    def test_handshake_naming_another_peer_than_the_certificate_is_refused(self):
        link = self.link()
        link.dataReceived(handshake(self.metainfo.info_hash, pid=peer_id(6)))
        self.assertEqual(link.session.close_reason,
                         "handshake names another peer than its certificate")
        self.assertNotIn(peer_id(6), self.swarm.peers)

    def test_bytes_before_the_tls_handshake_close_the_link(self):
        link = self.link(transport=TlsTransport())
        self.assertIs(link.session.state, State.CONNECTING)
        link.dataReceived(handshake(self.metainfo.info_hash))
        self.assertEqual(link.session.close_reason, "message before the TLS handshake")
        self.assertTrue(link.transport.disconnected)

    def test_tls_handshake_that_proves_nobody_closes_the_link(self):
        link = self.link(transport=TlsTransport())
        link.handshakeCompleted()
        self.assertEqual(link.session.close_reason, "no identity proven")

    def test_handshake_times_out_on_the_injected_clock(self):
        link = self.link()
        self.clock.advance(HANDSHAKE_TIMEOUT - 0.1)
        self.assertIs(link.session.state, State.SECURED)
        self.clock.advance(0.2)
        self.assertEqual(link.session.close_reason, "handshake timed out")
        self.assertTrue(link.transport.disconnected)

    def test_keepalive_when_quiet_and_idle_timeout_when_the_peer_is_silent(self):
        link = self.link()
        link.dataReceived(handshake(self.metainfo.info_hash))
        link.transport.clear()
        self.clock.advance(KEEPALIVE_INTERVAL)
        self.assertIsInstance(frames(link.transport)[-1], wire.KeepAlive)
        while self.clock.seconds() < IDLE_TIMEOUT + KEEPALIVE_INTERVAL:
            self.clock.advance(KEEPALIVE_INTERVAL)
        self.assertEqual(link.session.close_reason, "idle timeout")

    def test_closing_an_attached_link_drains_then_aborts_after_the_grace(self):
        link = self.link()
        link.dataReceived(handshake(self.metainfo.info_hash))
        link.close("both sides complete")
        self.assertIs(link.session.state, State.CLOSING)
        self.assertIsNone(link.transport.producer)  # TLS closes only without a producer
        self.assertTrue(link.transport.disconnecting)
        self.assertFalse(link.transport.disconnected)
        self.clock.advance(CLOSE_GRACE)
        self.assertTrue(link.transport.disconnected)
        link.connectionLost(Failure(ConnectionDone()))
        self.assertIs(link.session.state, State.CLOSED)
        self.assertEqual(link.session._timers, {})  # keep-alive and grace timers gone
        self.assertNotIn(THEM, self.swarm.peers)

    def test_a_link_closed_before_its_connection_is_made_aborts_it_when_it_comes(self):
        link = PeerLink(Router(self.swarm), self.clock, ME)
        link.close("attempt cancelled")
        transport = proven_transport()
        link.makeConnection(transport)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_transition_table_refuses_moves_it_does_not_list(self):
        session = PeerLink(Router(), self.clock, ME).session
        with self.assertRaises(AssertionError):
            session._move(State.ATTACHED)
        for state, targets in TRANSITIONS.items():
            if state is not State.CLOSED:
                self.assertIn(State.CLOSED, targets | TRANSITIONS.get(State.CLOSING))
        self.assertEqual(TRANSITIONS[State.CLOSED], set())

    def test_uploads_pause_with_transport_back_pressure(self):
        """The pump stops while the transport's buffer is full and resumes when it drains."""
        class Seeding:
            def __init__(self):
                self.upload_queue = [(0, 0, 8)]

        link = self.link()
        link.dataReceived(handshake(self.metainfo.info_hash))
        session = link.session
        served = []

        def next_upload(peer):
            if not peer.upload_queue:
                return None
            piece, offset, length = peer.upload_queue.pop(0)
            served.append((piece, offset))
            return piece, offset, b"x" * length
        session.swarm = type("S", (), {"next_upload": staticmethod(next_upload),
                                       "detach": lambda self, p: None})()
        session.peer = Seeding()
        link.pauseProducing()
        session.want_to_upload()
        self.clock.advance(0)
        self.assertEqual(served, [])
        link.resumeProducing()
        self.clock.advance(0)
        self.assertEqual(served, [(0, 0)])
        self.assertIsInstance(frames(link.transport)[-1], wire.Block)

    def test_a_dialer_that_joined_its_swarm_is_no_failed_attempt_when_closed_later(self):
        failed = []
        link = self.link(info_hash=self.metainfo.info_hash, expected_peer_id=THEM,
                         on_failed=failed.append)  # no on_ready: it attaches by itself
        link.dataReceived(handshake(self.metainfo.info_hash))
        self.assertIs(link.session.state, State.ATTACHED)
        link.close("both sides complete")
        link.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(failed, [])


class TransportTests(SynchronousTestCase):
    def test_every_peer_transport_provides_the_one_interface(self):
        for adapter in (TlsStream(TlsTransport(), "tcp"), TlsStream(TlsTransport(), "relay"),
                        ProvenStream(proven_transport(), "quic")):
            self.assertTrue(verifyObject(IPeerTransport, adapter))

    def test_the_adapter_calls_the_transport_with_no_frame_in_between(self):
        transport = proven_transport()
        adapter = ProvenStream(transport, "quic")
        self.assertEqual(adapter.writeSequence, transport.writeSequence)
        self.assertEqual(adapter.proven_peer_id(), THEM)
