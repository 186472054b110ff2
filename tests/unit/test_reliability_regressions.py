"""Regression tests for the product bugs the reliability suites (tests/reliability) found.

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
        protocol = control_factory(daemon.operations).buildProtocol(None)
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
        protocol = control_factory(daemon.operations).buildProtocol(None)
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
        from peerit.daemon.tracker_client import TrackerClient
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


class FullDiskStopsTheDownloadWithOneError(SynchronousTestCase):
    """Suite 6 (disk full): on a file system without preallocation, a write failing with
    ENOSPC in the middle of a download escaped from the peer link's ``dataReceived``: the
    link was dropped with an unhandled error, the peer redialed, the same write failed
    again, and the download never said why it did not progress."""

    def test_write_error_goes_to_the_handler_not_the_link(self):
        from peerit.errors import NoSpace

        metainfo = make_metainfo(os.urandom(4 * PIECE), PIECE)

        class FullStore(MemoryStore):
            def write_block(self, piece, offset, data):
                raise NoSpace("no space left on device for /small/x")

        errors = []
        swarm = Swarm(metainfo, FullStore(metainfo), Bitfield(metainfo.piece_count), Clock(),
                      random.Random(1), peer_id(0), verify=lambda p: succeed(b""),
                      config=SwarmConfig(block_size=BLOCK), on_storage_error=errors.append)
        swarm.start()
        link = FakeLink(MemoryNetwork(), peer_id(5), dialed_by_us=True)
        link.swarm = swarm
        state = swarm.attach(link)
        swarm.handle(state, wire.Bitfield(Bitfield.full(metainfo.piece_count).to_bytes()))
        swarm.handle(state, wire.Unchoke())
        piece, offset = next(iter(state.requested))
        swarm.handle(state, wire.Block(piece, offset, b"x" * BLOCK))  # must not raise
        self.assertEqual([type(e) for e in errors], [NoSpace])
        self.assertNotIn(peer_id(5), swarm.banned)  # not the peer's fault


class ClosingALinkReallyClosesIt(SynchronousTestCase):
    """Suites 3 and 6 (bad peers, disk full): ``PeerLink.close`` on a handshaken TLS link
    called ``loseConnection`` while the link was still the transport's registered producer;
    TLS then waits for the producer forever, so the connection stayed open. A banned or
    finished peer kept its socket, and after a pause/resume (or a full disk and resume) the
    other side still held the old link and refused the new one as "already connected" for
    the 120 s idle timeout."""

    def test_close_of_a_handshaken_tls_link_reaches_the_other_side(self):
        from twisted.internet.address import IPv4Address
        from twisted.internet.interfaces import IHandshakeListener
        from twisted.internet.protocol import Factory, Protocol
        from twisted.protocols.tls import TLSMemoryBIOFactory
        from twisted.test.iosim import FakeTransport, connect
        from zope.interface import implementer

        from peerit.identity import Identity
        from peerit.tls import IdentityServerTLS, PinnedClientTLS

        clock = Clock()
        server_identity, client_identity = Identity.generate(), Identity.generate()
        metainfo = make_metainfo(os.urandom(4 * PIECE), PIECE)
        swarm = leecher(metainfo, clock)

        class Router:
            upload_limiter = None

            def authorize(self, info_hash, pid):
                return succeed(None)

            def swarm_for(self, info_hash):
                return swarm

        links = []

        def build():
            link = PeerLink(Router(), clock, server_identity.peer_id)
            links.append(link)
            return link

        @implementer(IHandshakeListener)
        class Client(Protocol):
            lost = None

            def handshakeCompleted(self):
                self.transport.write(framing.frame(wire.build(wire.Handshake(
                    wire.PROTOCOL_VERSION, metainfo.info_hash, client_identity.peer_id))))

            def connectionLost(self, reason):
                self.lost = reason

        server = TLSMemoryBIOFactory(IdentityServerTLS(server_identity), False,
                                     Factory.forProtocol(build), clock=clock
                                     ).buildProtocol(None)
        client_protocol = Client()
        client = TLSMemoryBIOFactory(PinnedClientTLS(client_identity, server_identity.peer_id),
                                     True, Factory.forProtocol(lambda: client_protocol),
                                     clock=clock).buildProtocol(None)
        a, b = IPv4Address("TCP", "192.0.2.1", 1), IPv4Address("TCP", "192.0.2.2", 2)
        pump = connect(server, FakeTransport(server, True, a, b), client,
                       FakeTransport(client, False, b, a), clock=clock)
        pump.flush()
        self.assertIn(client_identity.peer_id, swarm.peers)
        links[0].close("banned: test")
        pump.flush()
        clock.advance(0)
        pump.flush()
        self.assertIsNotNone(client_protocol.lost)


class StalledPeersAreNotTakenBackAtOnce(SynchronousTestCase):
    """Suite 3 (bad peers): a peer dropped for sitting on requests was dialed again two
    seconds later, took new requests (among them a piece that only it could retry after a
    failed hash check) and held the download up for another whole request timeout."""

    def test_a_stalled_peer_is_refused_for_the_cooloff_then_allowed(self):
        metainfo = make_metainfo(os.urandom(4 * PIECE), PIECE)
        clock = Clock()
        swarm = leecher(metainfo, clock)
        link = FakeLink(MemoryNetwork(), peer_id(6), dialed_by_us=True)
        link.swarm = swarm
        state = swarm.attach(link)
        swarm.handle(state, wire.Bitfield(Bitfield.full(metainfo.piece_count).to_bytes()))
        swarm.handle(state, wire.Unchoke())
        self.assertTrue(state.requested)
        # Its requests are taken back first (after a third of the timeout), then it is
        # dropped once silent for a whole timeout more.
        for _ in range(7):
            clock.advance(swarm.config.request_timeout / 3)
        self.assertNotIn(peer_id(6), swarm.peers)
        self.assertEqual(swarm.can_attach(peer_id(6)), "stalled recently")
        clock.advance(swarm.config.stall_cooloff)
        self.assertIsNone(swarm.can_attach(peer_id(6)))


class ANewLinkReplacesAnOldDeadOne(SynchronousTestCase):
    """Suite 6 (disk full, resume): the seeder still held the link the downloader had
    closed (the close never reached it) and refused the downloader's new link as "already
    connected" until its 120 s idle timeout. A second link from a peer that is not a
    simultaneous dial now replaces the first."""

    def _ids(self):
        me = peer_id(0)
        other = next(peer_id(n) for n in range(1, 100) if peer_id(n) < me)
        return me, other

    def _swarm(self, clock, me):
        metainfo = make_metainfo(os.urandom(4 * PIECE), PIECE)
        store = MemoryStore(metainfo, bytes(4 * PIECE))
        swarm = Swarm(metainfo, store, Bitfield.full(metainfo.piece_count), clock,
                      random.Random(1), me, verify=verifier(store),
                      config=SwarmConfig(block_size=BLOCK))
        swarm.start()
        return swarm

    def test_later_link_replaces_the_old_one(self):
        clock = Clock()
        me, other = self._ids()
        swarm = self._swarm(clock, me)
        old = FakeLink(MemoryNetwork(), other, dialed_by_us=False)
        swarm.attach(old)
        clock.advance(60)
        new = FakeLink(MemoryNetwork(), other, dialed_by_us=False)
        self.assertIsNotNone(swarm.attach(new))
        self.assertIsNone(new.closed)
        self.assertIsNotNone(old.closed)
        self.assertIs(swarm.peers[other].link, new)

    def test_simultaneous_dials_still_keep_one_link(self):
        clock = Clock()
        me, other = self._ids()
        swarm = self._swarm(clock, me)
        theirs = FakeLink(MemoryNetwork(), other, dialed_by_us=False)  # they dialed (lower id)
        swarm.attach(theirs)
        clock.advance(0.2)
        ours = FakeLink(MemoryNetwork(), other, dialed_by_us=True)
        self.assertIsNone(swarm.attach(ours))
        self.assertEqual(ours.closed, "already connected")
        self.assertIs(swarm.peers[other].link, theirs)
