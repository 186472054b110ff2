"""Swarm logic end to end in memory: real peer messages, no sockets, a fake clock."""

import hashlib
import os
import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from peerit.bitfield import Bitfield
from peerit.daemon.swarm import CancelledBlocks, Swarm, SwarmConfig
from peerit.testing.swarms import MemoryNetwork, MemoryStore, make_metainfo, verifier
from peerit.wire import peer as wire

PIECE = 1 << 15
BLOCK = 1 << 13


def peer_id(n: int) -> bytes:
    return hashlib.sha256(b"peer %d" % n).digest()


class SwarmHarness:
    def __init__(self, data: bytes, seed: int = 1):
        self.data = data
        self.metainfo = make_metainfo(data, PIECE)
        self.clock = Clock()
        self.rng = random.Random(seed)
        self.network = MemoryNetwork()
        self.n = 0

    def swarm(self, complete: bool, corrupt: bool = False, **config):
        self.n += 1
        store = MemoryStore(self.metainfo, self.data if complete else None, corrupt=corrupt)
        have = Bitfield.full(self.metainfo.piece_count) if complete else \
            Bitfield(self.metainfo.piece_count)
        completed = []
        swarm = Swarm(self.metainfo, store, have, self.clock, self.rng, peer_id(self.n),
                      verify=verifier(store), on_complete=lambda: completed.append(True),
                      config=SwarmConfig(block_size=BLOCK, **config))
        swarm.completed = completed
        swarm.start()
        return swarm


class TransferTests(SynchronousTestCase):
    def test_single_seeder_to_leecher_is_byte_identical(self):
        """A leecher gets every piece from a seeder, verified, and says it is complete."""
        h = SwarmHarness(os.urandom(10 * PIECE + 123))
        seeder, leecher = h.swarm(True), h.swarm(False)
        h.network.connect(leecher, seeder)
        h.network.pump()
        self.assertTrue(leecher.complete)
        self.assertEqual(bytes(leecher.store.data), h.data)
        self.assertEqual(leecher.completed, [True])
        self.assertFalse(leecher.downloading)

    def test_downloads_from_several_peers_at_once(self):
        """With two seeders, blocks come from both."""
        h = SwarmHarness(os.urandom(40 * PIECE))
        a, b, leecher = h.swarm(True), h.swarm(True), h.swarm(False)
        h.network.connect(leecher, a)
        h.network.connect(leecher, b)
        h.network.pump()
        self.assertTrue(leecher.complete)
        uploaded = [s.upload.total for s in (a, b)]
        self.assertTrue(all(u > 0 for u in uploaded), uploaded)

    def test_leecher_serves_pieces_it_has(self):
        """Leecher 2 gets data from leecher 1, which only has what it downloaded."""
        h = SwarmHarness(os.urandom(16 * PIECE))
        seeder, first, second = h.swarm(True), h.swarm(False), h.swarm(False)
        h.network.connect(first, seeder)
        h.network.pump()
        self.assertTrue(first.complete)
        # The seeder leaves; the second leecher can only get data from the first.
        seeder.stop()
        h.network.connect(second, first)
        h.network.pump()
        self.assertTrue(second.complete)
        self.assertEqual(bytes(second.store.data), h.data)

    def test_corrupt_peer_is_banned_and_download_completes_from_honest(self):
        """Pieces from a lying peer fail their hash; twice means a ban; result is correct."""
        h = SwarmHarness(os.urandom(30 * PIECE))
        liar, honest, leecher = h.swarm(True, corrupt=True), h.swarm(True), h.swarm(False)
        h.network.connect(leecher, liar)
        h.network.connect(leecher, honest)
        h.network.pump()
        self.assertTrue(leecher.complete)
        self.assertEqual(bytes(leecher.store.data), h.data)
        self.assertIn(liar.my_peer_id, leecher.banned)
        self.assertNotIn(honest.my_peer_id, leecher.banned)
        self.assertGreaterEqual(leecher.hash_failures, 2)

    def test_a_downloader_serves_what_it_just_received_from_memory(self):
        """Blocks a downloader received are uploaded to a peer that lacks them without
        reading its store back (its disk, O_DIRECT, in the daemon), byte for byte."""
        h = SwarmHarness(os.urandom(16 * PIECE))
        seeder, middle, last = h.swarm(True), h.swarm(False), h.swarm(False)
        reads = []
        honest_read = middle.store.read_block
        middle.store.read_block = lambda *a: reads.append(a) or honest_read(*a)
        h.network.connect(middle, seeder)
        h.network.connect(last, middle)  # the last gets everything from the middle one
        h.network.pump()
        self.assertTrue(last.complete)
        self.assertEqual(bytes(last.store.data), h.data)
        self.assertEqual(reads, [])
        self.assertEqual(middle.recent.hits, len(h.data) // BLOCK)

    def test_a_download_whose_peers_hold_everything_keeps_no_blocks(self):
        """Nobody could ask for them: a 1->1 download holds no block buffer longer."""
        h = SwarmHarness(os.urandom(8 * PIECE))
        seeder, leecher = h.swarm(True), h.swarm(False)
        h.network.connect(leecher, seeder)
        h.network.pump()
        self.assertTrue(leecher.complete)
        self.assertEqual((len(leecher.recent), leecher.recent.bytes), (0, 0))

    def test_blocks_of_a_piece_that_failed_its_check_are_not_kept(self):
        """A lying peer's blocks are dropped with the piece they spoilt, so they can never
        be served on to the peers that lack it."""
        h = SwarmHarness(os.urandom(4 * PIECE))
        liar, leecher, other = h.swarm(True, corrupt=True), h.swarm(False), h.swarm(False)
        h.network.connect(leecher, liar)
        h.network.connect(other, leecher)
        h.network.pump()
        self.assertIn(liar.my_peer_id, leecher.banned)
        self.assertEqual(len(leecher.have), 0)
        self.assertEqual((len(leecher.recent), leecher.recent.bytes), (0, 0))

    def test_unsolicited_block_closes_the_link(self):
        """A block we never asked for is a protocol violation: never written, link closed."""
        h = SwarmHarness(os.urandom(4 * PIECE))
        seeder, leecher = h.swarm(True), h.swarm(False)
        dialer_end, acceptor_end = h.network.connect(leecher, seeder)
        h.network.queue.clear()
        leecher.handle(dialer_end.state, wire.Block(0, 0, b"x" * BLOCK))
        self.assertIsNotNone(dialer_end.closed)
        self.assertIn("unsolicited", dialer_end.closed)
        self.assertEqual(leecher.store.writes, 0)
        self.assertNotIn(seeder.my_peer_id, leecher.peers)

    def test_block_asked_again_after_a_cancel_may_come_twice(self):
        """A block cancelled (here by a choke) and asked for again can arrive twice: the copy
        of the first request, already on its way, then the copy of the second. Neither is
        unsolicited; the link stays up."""
        h = SwarmHarness(os.urandom(4 * PIECE))
        seeder, leecher = h.swarm(True), h.swarm(False)
        end, _ = h.network.connect(leecher, seeder)
        h.network.queue.clear()
        state = end.state
        leecher.handle(state, wire.Bitfield(seeder.have.to_bytes()))
        leecher.handle(state, wire.Unchoke())
        key = next(iter(state.requested))
        leecher.handle(state, wire.Choke())  # cancels every request
        leecher.handle(state, wire.Unchoke())
        self.assertIn(key, state.requested)  # asked again
        piece, offset = key
        data = h.data[piece * PIECE + offset:][:BLOCK]
        leecher.handle(state, wire.Block(piece, offset, data))
        leecher.handle(state, wire.Block(piece, offset, data))
        self.assertIsNone(end.closed)
        self.assertNotIn(seeder.my_peer_id, leecher.banned)
        self.assertEqual(leecher.store.writes, 1)

    def test_request_for_missing_piece_is_rejected(self):
        """An uploader that lacks a piece answers Reject instead of sending anything."""
        h = SwarmHarness(os.urandom(4 * PIECE))
        leecher_a, leecher_b = h.swarm(False), h.swarm(False)
        a_end, b_end = h.network.connect(leecher_a, leecher_b)
        b_end.state.am_choking = False
        leecher_b.handle(b_end.state, wire.Request(0, 0, BLOCK))
        self.assertEqual(b_end.sent[-1], "Reject")
        self.assertEqual(b_end.state.upload_queue, [])

    def test_bad_request_range_is_a_violation(self):
        h = SwarmHarness(os.urandom(4 * PIECE))
        seeder, leecher = h.swarm(True), h.swarm(False)
        _, acceptor_end = h.network.connect(leecher, seeder)
        seeder.handle(acceptor_end.state, wire.Request(0, PIECE - 10, 100))
        self.assertIn("bad request", acceptor_end.closed)

    def test_peer_leaving_mid_transfer_hands_its_requests_to_others(self):
        """When a seeder vanishes with requests outstanding, another seeder serves them."""
        h = SwarmHarness(os.urandom(20 * PIECE))
        a, b, leecher = h.swarm(True), h.swarm(True), h.swarm(False)
        a_end, _ = h.network.connect(leecher, a)
        h.network.connect(leecher, b)
        # Deliver a little, then drop A with requests in flight.
        for _ in range(30):
            if h.network.queue:
                link, data = h.network.queue.pop(0)
                if link.closed is None and link.state is not None:
                    link.swarm.handle(link.state, wire.parse(data))
        self.assertTrue(a_end.state.requested)
        a_end.close("gone")
        leecher.detach(a_end.state)
        h.network.pump()
        self.assertTrue(leecher.complete)
        self.assertEqual(bytes(leecher.store.data), h.data)

    def test_stalled_peer_is_dropped_after_request_timeout(self):
        """A peer that sits on requests is dropped when the clock passes the timeout."""
        h = SwarmHarness(os.urandom(4 * PIECE))
        seeder, leecher = h.swarm(True), h.swarm(False, request_timeout=30)
        dialer_end, acceptor_end = h.network.connect(leecher, seeder)
        # Let handshake traffic flow but never deliver the seeder's blocks.
        while h.network.queue:
            link, data = h.network.queue.pop(0)
            if link is dialer_end and type(wire.parse(data)) is wire.Block:
                continue
            if link.state is not None:
                link.swarm.handle(link.state, wire.parse(data))
            acceptor_end.wants_upload = False
        self.assertTrue(dialer_end.state.requested)
        h.clock.advance(25)
        # First its requests are taken back (for others), the link kept...
        self.assertIsNone(dialer_end.closed)
        self.assertEqual(dialer_end.state.requested, {})
        self.assertEqual(leecher.picker.in_progress, {})
        # ...then, still silent after the full timeout, it is dropped.
        h.clock.advance(40)
        self.assertIn("stalled", dialer_end.closed)

    def test_endgame_requests_duplicates_and_cancels(self):
        """In the last blocks, the same block goes to two peers; the loser gets a Cancel."""
        h = SwarmHarness(os.urandom(2 * PIECE))
        a, b, leecher = h.swarm(True), h.swarm(True), h.swarm(False)
        a_end, _ = h.network.connect(leecher, a)
        b_end, _ = h.network.connect(leecher, b)
        h.network.pump()
        self.assertTrue(leecher.complete)
        self.assertIn("Cancel", a_end.sent + b_end.sent)


class ChokingTests(SynchronousTestCase):
    def test_uploader_unchokes_at_most_slots_plus_optimistic(self):
        """With more interested peers than slots, only slots + 1 are unchoked."""
        h = SwarmHarness(os.urandom(8 * PIECE))
        seeder = h.swarm(True, seed_upload_slots=2, max_peers=50)
        leechers = [h.swarm(False) for _ in range(6)]
        for leecher in leechers:
            h.network.connect(leecher, seeder)
        # Deliver only control messages (the interested ones), no pumping of blocks.
        while h.network.queue:
            link, data = h.network.queue.pop(0)
            message = wire.parse(data)
            if link.state is not None and type(message) is not wire.Block:
                link.swarm.handle(link.state, message)
        unchoked = [p for p in seeder.peers.values() if not p.am_choking]
        self.assertEqual(len(unchoked), 3)
        h.clock.advance(10)  # a rechoke round keeps the bound
        unchoked = [p for p in seeder.peers.values() if not p.am_choking]
        self.assertLessEqual(len(unchoked), 3)

    def test_a_slot_freed_goes_to_a_waiting_peer_at_once(self):
        """When an unchoked peer loses interest, a choked interested one is unchoked now,
        not at the next rechoke round."""
        h = SwarmHarness(os.urandom(8 * PIECE))
        seeder = h.swarm(True, seed_upload_slots=1, max_peers=50)
        leechers = [h.swarm(False) for _ in range(4)]
        for leecher in leechers:
            h.network.connect(leecher, seeder)
        while h.network.queue:  # control messages only, as above
            link, data = h.network.queue.pop(0)
            message = wire.parse(data)
            if link.state is not None and type(message) is not wire.Block:
                link.swarm.handle(link.state, message)
        unchoked = [p for p in seeder.peers.values() if not p.am_choking]
        waiting = [p for p in seeder.peers.values() if p.am_choking and p.peer_interested]
        self.assertEqual((len(unchoked), len(waiting)), (2, 2))
        seeder.handle(unchoked[0], wire.NotInterested())
        now_unchoked = [p for p in seeder.peers.values() if not p.am_choking]
        self.assertEqual(len(now_unchoked), 2)
        self.assertNotIn(unchoked[0], now_unchoked)
        self.assertEqual(len([p for p in waiting if not p.am_choking]), 1)
        # ... and a peer that leaves frees its slot the same way.
        seeder.detach(unchoked[1])
        self.assertEqual(len([p for p in waiting if not p.am_choking]), 2)

    def test_a_seeder_serves_more_downloaders_at_once_than_a_downloader(self):
        """Seeding, seed_upload_slots + 1 interested peers are unchoked; downloading (tit for
        tat), upload_slots + 1."""
        h = SwarmHarness(os.urandom(8 * PIECE))
        seeder = h.swarm(True, upload_slots=2, seed_upload_slots=5, max_peers=50)
        leecher = h.swarm(False, upload_slots=2, seed_upload_slots=5, max_peers=50)
        others = [h.swarm(False) for _ in range(8)]
        for other in others:
            h.network.connect(other, seeder)
            h.network.connect(other, leecher)
        for s in (seeder, leecher):
            for peer in list(s.peers.values()):
                s.handle(peer, wire.Interested())
        self.assertEqual(len([p for p in seeder.peers.values() if not p.am_choking]), 6)
        self.assertEqual(len([p for p in leecher.peers.values() if not p.am_choking]), 3)

    def test_simultaneous_links_keep_the_same_one_on_both_sides(self):
        """If both peers dial each other, both keep the link dialed by the lower peer id."""
        h = SwarmHarness(os.urandom(2 * PIECE))
        x, y = h.swarm(False), h.swarm(False)
        first = h.network.connect(x, y)
        second = h.network.connect(y, x)
        kept = [pair for pair in (first, second) if pair[0].closed is None]
        self.assertEqual(len(kept), 1)
        self.assertIs(x.peers[y.my_peer_id].link in kept[0], True)
        self.assertIs(y.peers[x.my_peer_id].link in kept[0], True)


class CancelledBlocksTests(SynchronousTestCase):
    def test_the_oldest_cancellations_are_forgotten_past_the_limit(self):
        cancelled = CancelledBlocks(limit=3)
        cancelled.update([(0, 0), (0, 1), (0, 2)])
        cancelled.add((1, 0))
        self.assertEqual(len(cancelled), 3)
        self.assertNotIn((0, 0), cancelled)
        self.assertIn((1, 0), cancelled)

    def test_cancelling_again_makes_a_block_the_newest(self):
        cancelled = CancelledBlocks(limit=2)
        cancelled.update([(0, 0), (0, 1)])
        cancelled.add((0, 0))
        cancelled.add((0, 2))
        self.assertIn((0, 0), cancelled)
        self.assertNotIn((0, 1), cancelled)
        cancelled.discard((0, 0))
        self.assertNotIn((0, 0), cancelled)
        self.assertEqual(len(cancelled), 1)

    def test_a_long_lived_link_keeps_a_bounded_number(self):
        cancelled = CancelledBlocks()
        for piece in range(10_000):
            cancelled.add((piece, 0))
        self.assertEqual(len(cancelled), cancelled.limit)
        self.assertIn((9_999, 0), cancelled)
