"""Focused, synchronous tests for the product bugs the reliability suites found.

Each one failed before its fix; the suite that found it is named in the docstring.
"""

import hashlib
import os
import random

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from peerit.bitfield import Bitfield
from peerit.daemon.peerlink import PeerLink
from peerit.daemon.swarm import Swarm, SwarmConfig
from peerit.testing.swarms import FakeLink, MemoryNetwork, MemoryStore, make_metainfo, verifier
from peerit.wire import framing
from peerit.wire import peer as wire

PIECE = 1 << 15
BLOCK = 1 << 13


def peer_id(n: int) -> bytes:
    return hashlib.sha256(b"fix peer %d" % n).digest()


def leecher(metainfo, clock) -> Swarm:
    store = MemoryStore(metainfo)
    swarm = Swarm(metainfo, store, Bitfield(metainfo.piece_count), clock, random.Random(1),
                  peer_id(0), verify=verifier(store), config=SwarmConfig(block_size=BLOCK))
    swarm.start()
    return swarm


class ProtocolBreakersAreBanned(SynchronousTestCase):
    """Suite 3 (bad peers): a peer pushing unsolicited blocks was only disconnected, so the
    daemon dialed it again every couple of seconds and took the same abuse (21 links and
    14 MB of unsolicited data during one 8 MiB download)."""

    def test_unsolicited_block_bans_the_sender(self):
        metainfo = make_metainfo(os.urandom(4 * PIECE), PIECE)
        swarm = leecher(metainfo, Clock())
        link = FakeLink(MemoryNetwork(), peer_id(9), dialed_by_us=True)
        link.swarm = swarm
        state = swarm.attach(link)
        swarm.handle(state, wire.Bitfield(Bitfield.full(metainfo.piece_count).to_bytes()))
        swarm.handle(state, wire.Block(3, 0, b"x" * BLOCK))  # never requested
        self.assertIsNotNone(link.closed)
        self.assertIn(peer_id(9), swarm.banned)
        self.assertIsNotNone(swarm.can_attach(peer_id(9)))

    def test_malformed_frame_from_an_attached_peer_bans_it(self):
        """Oversized or unparsable frames after the handshake ban the peer too."""
        metainfo = make_metainfo(os.urandom(4 * PIECE), PIECE)
        clock = Clock()
        swarm = leecher(metainfo, clock)

        class Router:
            upload_limiter = None

            def authorize(self, info_hash, pid):
                return succeed(None)

            def swarm_for(self, info_hash):
                return swarm

        link = PeerLink(Router(), clock, peer_id(0))
        transport = StringTransport()
        transport.peer_id = peer_id(7)  # as QUIC/relay transports prove it
        link.makeConnection(transport)
        hello = wire.Handshake(wire.PROTOCOL_VERSION, metainfo.info_hash, peer_id(7))
        link.dataReceived(framing.frame(wire.build(hello)))
        self.assertIn(peer_id(7), swarm.peers)
        link.dataReceived(framing.frame(bytes([200]) + b"junk"))  # no such opcode
        self.assertIn(peer_id(7), swarm.banned)
        self.assertNotIn(peer_id(7), swarm.peers)
        self.assertTrue(transport.disconnecting)


class MalformedControlArgumentsAreBadRequests(SynchronousTestCase):
    """Suite 4 (fuzzing, AMP arguments): a control command whose argument is not of its
    type (``List`` with ``offset=/dev/zero``) got AMP's opaque UNHANDLED "Unknown Error" and a
    traceback in the daemon's log; it is now the contract's BAD_REQUEST with a reason."""

    def test_wrongly_typed_argument_gets_bad_request(self):
        import io

        from twisted.internet.error import ConnectionDone
        from twisted.protocols import amp
        from twisted.python.failure import Failure

        from peerit.daemon.control import control_factory
        from peerit.daemon.service import Daemon
        daemon = Daemon(Clock(), self.mktemp(), "unix:/nonexistent/c.sock")
        protocol = control_factory(daemon).buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(amp.AmpBox(_command=b"List", _ask=b"1", offset=b"/dev/zero",
                                         limit=b"5").serialize())
        (answer,) = amp.parse(io.BytesIO(transport.value()))
        self.assertEqual(answer[b"_error_code"], b"BAD_REQUEST")
        self.assertIn(b"malformed List request", answer[b"_error_description"])
        protocol.connectionLost(Failure(ConnectionDone()))

    def test_path_with_a_nul_gets_bad_request(self):
        """Suite 4 again: ``Download`` with a NUL in its path raised ValueError from
        ``os.open`` deep in ``Metainfo.read`` (UNHANDLED, traceback in the log)."""
        import io

        from twisted.internet.error import ConnectionDone
        from twisted.protocols import amp
        from twisted.python.failure import Failure

        from peerit.daemon.control import control_factory
        from peerit.daemon.service import Daemon
        daemon = Daemon(Clock(), self.mktemp(), "unix:/nonexistent/c.sock")
        protocol = control_factory(daemon).buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(amp.AmpBox(_command=b"Download", _ask=b"1",
                                         metainfo_path=b"/tmp/x\x00.p2p",
                                         target_dir=b"").serialize())
        (answer,) = amp.parse(io.BytesIO(transport.value()))
        self.assertEqual(answer[b"_error_code"], b"BAD_REQUEST")
        self.assertIn(b"NUL", answer[b"_error_description"])
        protocol.connectionLost(Failure(ConnectionDone()))


class TrackerClientRetriesOftenEnoughAfterLongOutages(SynchronousTestCase):
    """Suite 2 (tracker loss): the client's reconnect backoff grew to 60 s (plus jitter), so
    after an outage of a few minutes a daemon could stay out of the restarted tracker's
    table for up to a minute; the issue asks for every daemon back within 30 s."""

    def test_reconnect_attempt_within_30s_of_the_tracker_coming_back(self):
        from twisted.internet.defer import Deferred, fail

        from peerit.addresses import TrackerAddress
        from peerit.identity import Identity
        from peerit.tracker.client import TrackerClient
        from peerit.wire import tracker as tracker_wire

        clock = Clock()
        back_at = 600.0  # a ten-minute outage
        attempts = []

        class Endpoint:
            def connect(self, factory):
                attempts.append(clock.seconds())
                if clock.seconds() < back_at:
                    return fail(ConnectionRefusedError("tracker down"))
                return Deferred()

        client = TrackerClient(
            clock, Identity.generate(), TrackerAddress("127.0.0.1", 1, b"\x01" * 32),
            hello=lambda: tracker_wire.Hello(tcp_port=1), announces=lambda: [],
            on_push=lambda m: None, endpoint=Endpoint())
        client.startService()
        while clock.seconds() < back_at + 120 and not (attempts and attempts[-1] >= back_at):
            clock.advance(0.5)
        self.assertLessEqual(attempts[-1] - back_at, 30.0)
        # Whenever the tracker comes back, the next attempt is at most one gap away.
        gaps = [b - a for a, b in zip(attempts, attempts[1:])]
        self.assertLessEqual(max(gaps), 30.0)
        client.stopService()
