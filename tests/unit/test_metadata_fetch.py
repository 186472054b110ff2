"""Fetching an info section from peers: caps, spreading, verification and banning, over
in-memory peers that answer with the serving side's own logic."""

import hashlib
import os
import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from peerit.bitfield import Bitfield
from peerit.daemon.metadata_fetch import (
    MetadataFetch, MetadataSwarm, REQUEST_TIMEOUT, metadata_answer)
from peerit.daemon.swarm import Swarm
from peerit.metainfo import FileEntry, Metainfo
from peerit.testing.swarms import MemoryNetwork, MemoryStore, verifier
from peerit.wire import peer as wire

PIECES = 10
INFO = os.urandom((PIECES - 1) * wire.METADATA_PIECE_SIZE + 100)  # the last piece short
INFO_HASH = hashlib.sha256(INFO).digest()


class Peer:
    """A peer serving ``info`` (answers delivered when ``flush`` is called)."""

    def __init__(self, fetch, key, info=INFO, answer=True):
        self.fetch, self.key, self.info, self.answer = fetch, key, info, answer
        self.asked = []
        self.queue = []
        self.size_sent = False

    def send(self, message):
        self.asked.append(message.piece)
        if self.answer:
            replies = metadata_answer(self.info, message.piece, self.size_sent)
            self.size_sent = True
            self.queue += replies

    def flush(self):
        while self.queue:
            self.fetch.received(self.key, self.queue.pop(0))


class Harness:
    def __init__(self, max_size=wire.MAX_METADATA_SIZE):
        self.clock = Clock()
        self.done = []
        self.bans = []
        # What was handed on, by its hash (a failing comparison prints 32 bytes, not 150 KiB).
        self.fetch = MetadataFetch(INFO_HASH, self.clock,
                                   lambda data: self.done.append(hashlib.sha256(data).digest()),
                                   lambda key, reason: self.bans.append((key, reason)),
                                   max_size=max_size)
        self.peers = {}

    def add(self, key, **kwargs):
        peer = Peer(self.fetch, key, **kwargs)
        self.peers[key] = peer
        self.fetch.add_peer(key, peer.send)
        return peer

    def run(self, rounds=1000):
        """Deliver answers one message per peer in turn, as from links of equal speed."""
        for _ in range(rounds):
            if not any(p.queue for p in self.peers.values()):
                return
            for peer in list(self.peers.values()):
                if peer.queue:
                    self.fetch.received(peer.key, peer.queue.pop(0))


class FetchTests(SynchronousTestCase):
    def test_one_honest_peer_gives_the_verified_bytes(self):
        h = Harness()
        h.add("a")
        h.run()
        self.assertEqual(h.done, [INFO_HASH])
        self.assertEqual(h.bans, [])

    def test_requests_are_spread_over_several_peers(self):
        h = Harness()
        a, b, c = h.add("a"), h.add("b"), h.add("c")
        h.run()
        self.assertEqual(h.done, [INFO_HASH])
        self.assertTrue(all(set(p.asked) - {0} for p in (a, b, c)), [a.asked, b.asked, c.asked])
        # Each piece beyond the size probe was asked once in all.
        beyond = [piece for p in (a, b, c) for piece in p.asked if piece]
        self.assertEqual(sorted(beyond), list(range(1, PIECES)))

    def test_size_over_the_cap_allocates_nothing_and_says_why(self):
        h = Harness(max_size=len(INFO) - 1)
        h.add("a")
        h.run()
        self.assertEqual(h.done, [])
        self.assertIsNone(h.fetch._buffer)
        self.assertIn("over the", h.fetch.problem)
        self.assertEqual(h.peers["a"].asked, [0])  # not asked for more
        self.assertEqual(h.fetch.stuck(), "too large")

    def test_a_lone_peer_serving_tampered_metadata_is_banned(self):
        h = Harness()
        tampered = bytearray(INFO)
        tampered[5] ^= 1
        h.add("liar", info=bytes(tampered))
        h.run()
        self.assertEqual(h.done, [])
        self.assertEqual([k for k, _ in h.bans], ["liar"])
        self.assertIn("does not match the info-hash", h.bans[0][1])
        self.assertEqual(h.fetch.stuck(), "mismatch")
        h.add("honest")
        self.assertIsNone(h.fetch.stuck())  # someone left to ask
        h.run()
        self.assertEqual(h.done, [INFO_HASH])

    def test_a_liar_among_honest_peers_never_gets_an_honest_one_banned(self):
        h = Harness()
        tampered = bytearray(INFO)
        tampered[-1] ^= 1  # only the last piece differs
        h.add("honest1")
        h.add("liar", info=bytes(tampered))
        h.add("honest2")
        h.run(100)
        self.assertEqual(h.done, [INFO_HASH])
        # Whether or not the liar's last piece was used, an honest peer is never banned.
        self.assertNotIn("honest1", [k for k, _ in h.bans])
        self.assertNotIn("honest2", [k for k, _ in h.bans])

    def test_a_liar_whose_copy_was_not_used_is_still_banned_once_the_truth_is_known(self):
        h = Harness()
        tampered = bytearray(INFO)
        tampered[0] ^= 1  # piece 0: every peer is asked it first
        honest = h.add("honest")
        h.add("liar", info=bytes(tampered))
        for _ in range(2):  # the honest size and piece 0 arrive first: that copy is used
            h.fetch.received("honest", honest.queue.pop(0))
        h.run(100)
        self.assertEqual(h.done, [INFO_HASH])
        self.assertEqual([k for k, _ in h.bans], ["liar"])

    def test_liar_that_contributed_is_banned_after_the_one_at_a_time_round(self):
        """Every piece from the liar but one: the hash fails with two contributors, then
        each is asked for the whole alone; the liar fails alone and is banned."""
        h = Harness()
        tampered = bytearray(INFO)
        tampered[0] ^= 1
        liar = h.add("liar", info=bytes(tampered))
        liar.flush()  # the liar's size and piece 0 arrive first
        h.add("honest")
        h.run(100)
        self.assertEqual(h.done, [INFO_HASH])
        self.assertEqual([k for k, _ in h.bans], ["liar"])

    def test_wrong_piece_length_is_banned(self):
        h = Harness()
        peer = h.add("a")
        peer.answer = False
        h.fetch.received("a", wire.MetadataSize(len(INFO)))
        h.fetch.received("a", wire.MetadataPiece(0, b"short"))
        self.assertEqual([k for k, _ in h.bans], ["a"])

    def test_unsolicited_piece_and_piece_before_size_are_banned(self):
        h = Harness()
        h.add("a", answer=False)
        h.fetch.received("a", wire.MetadataPiece(0, b"x"))
        self.assertIn("before its size", h.bans[0][1])
        h.add("b", answer=False)
        h.fetch.received("b", wire.MetadataSize(len(INFO)))
        h.fetch.received("b", wire.MetadataPiece(PIECES - 1, b"x" * 100))
        self.assertIn("not asked for", h.bans[1][1])

    def test_two_sizes_from_one_peer_is_banned(self):
        h = Harness()
        h.add("a", answer=False)
        h.fetch.received("a", wire.MetadataSize(len(INFO)))
        h.fetch.received("a", wire.MetadataSize(len(INFO) + 1))
        self.assertIn("two metadata sizes", h.bans[0][1])

    def test_a_peer_that_rejects_is_not_asked_again_and_another_serves(self):
        h = Harness()
        h.add("empty", info=None)
        h.run()
        self.assertIn("no peer holds", h.fetch.problem)
        h.add("full")
        h.run()
        self.assertEqual(h.done, [INFO_HASH])
        self.assertEqual(h.peers["empty"].asked, [0])

    def test_a_silent_peer_times_out_and_its_pieces_go_to_another(self):
        h = Harness()
        slow = h.add("slow", answer=False)
        h.fetch.received("slow", wire.MetadataSize(len(INFO)))
        fast = h.add("fast")
        h.run()
        self.assertEqual(h.done, [])  # piece 0 is still with the silent one
        h.clock.advance(REQUEST_TIMEOUT)
        h.run()
        self.assertEqual(h.done, [INFO_HASH])
        self.assertIn(0, fast.asked)
        self.assertEqual(h.bans, [])
        self.assertEqual(slow.asked[0], 0)

    def test_a_peer_announcing_another_size_is_used_when_the_first_size_fails(self):
        """A liar announcing a wrong size first does not lock the fetch on its size."""
        h = Harness()
        bigger = INFO + b"extra"
        liar = h.add("liar", info=bigger)
        liar.flush()
        h.add("honest")
        h.run(100)
        self.assertEqual(h.done, [INFO_HASH])
        self.assertEqual([k for k, _ in h.bans], ["liar"])

    def test_nothing_happens_after_done(self):
        h = Harness()
        h.add("a")
        h.run()
        h.fetch.received("a", wire.MetadataSize(5))
        h.add("b")
        self.assertEqual(h.done, [INFO_HASH])
        self.assertEqual(h.peers["b"].asked, [])


class AnswerTests(SynchronousTestCase):
    def test_serving_side(self):
        self.assertEqual(metadata_answer(None, 0, False), [wire.MetadataReject(0)])
        first = metadata_answer(INFO, 0, False)
        self.assertEqual(first[0], wire.MetadataSize(len(INFO)))
        self.assertEqual(first[1], wire.MetadataPiece(0, INFO[:wire.METADATA_PIECE_SIZE]))
        last = PIECES - 1
        self.assertEqual(metadata_answer(INFO, last, True),
                         [wire.MetadataPiece(last, INFO[last * wire.METADATA_PIECE_SIZE:])])
        self.assertIsNone(metadata_answer(INFO, PIECES, True))


class FakeLink:
    def __init__(self, peer_id):
        self.peer_id = peer_id
        self.sent = []
        self.closed = None

    def send(self, message):
        self.sent.append(message)

    def close(self, reason):
        self.closed = reason


class MetadataSwarmTests(SynchronousTestCase):
    def make(self):
        clock = Clock()
        done, swarm_box = [], []
        fetch = MetadataFetch(INFO_HASH, clock, done.append,
                              lambda key, reason: swarm_box[0].banned_by_fetch(key, reason))
        swarm = MetadataSwarm(fetch, b"me" * 16)
        swarm_box.append(swarm)
        return swarm, done

    def test_links_attach_ask_for_metadata_and_liars_are_closed_and_refused(self):
        swarm, done = self.make()
        link = FakeLink(b"L" * 32)
        state = swarm.attach(link)
        self.assertEqual(link.sent, [wire.MetadataRequest(0)])
        tampered = b"\0" * len(INFO)
        for message in metadata_answer(tampered, 0, False):
            swarm.handle(state, message)
        for piece in range(1, PIECES):
            for message in metadata_answer(tampered, piece, True):
                swarm.handle(state, message)
        self.assertIn("banned", link.closed)
        self.assertEqual(swarm.can_attach(b"L" * 32), "banned in this swarm")
        again = FakeLink(b"L" * 32)
        self.assertIsNone(swarm.attach(again))
        self.assertEqual(again.closed, "banned in this swarm")

    def test_requests_to_a_fetching_daemon_are_rejected_and_data_messages_ignored(self):
        swarm, _ = self.make()
        link = FakeLink(b"P" * 32)
        state = swarm.attach(link)
        swarm.handle(state, wire.Bitfield(b"\xff"))
        swarm.handle(state, wire.MetadataRequest(0))
        self.assertEqual(link.sent[-1], wire.MetadataReject(0))
        self.assertIsNone(swarm.next_upload(state))
        self.assertEqual(state.upload_queue, ())

    def test_detach_releases_and_stop_closes_everyone(self):
        swarm, _ = self.make()
        a, b = FakeLink(b"A" * 32), FakeLink(b"B" * 32)
        state_a = swarm.attach(a)
        swarm.attach(b)
        swarm.detach(state_a)
        self.assertNotIn(b"A" * 32, swarm.fetch.sources)
        swarm.stop("got it")
        self.assertEqual(b.closed, "got it")
        self.assertEqual(swarm.can_attach(b"C" * 32), "swarm not active")


class OverMemoryLinksTests(SynchronousTestCase):
    """The fetch against real data-phase swarms, every message encoded and parsed."""

    def setUp(self):
        self.clock = Clock()
        self.network = MemoryNetwork()
        # Enough pieces for an info section of several metadata pieces (no data is moved:
        # the piece hashes need not match any).
        count = 2000
        self.metainfo = Metainfo("big.bin", 1 << 14, count << 14, False,
                                 (FileEntry("big.bin", count << 14),), os.urandom(32 * count))
        self.n = 0

        def seeder(complete=True):
            self.n += 1
            store = MemoryStore(self.metainfo, None)
            count = self.metainfo.piece_count
            swarm = Swarm(self.metainfo, store,
                          Bitfield.full(count) if complete else Bitfield(count), self.clock,
                          random.Random(self.n), hashlib.sha256(b"%d" % self.n).digest(),
                          verify=verifier(store))
            swarm.start()
            return swarm
        self.seeder = seeder

    def fetcher(self):
        done, bans = [], []
        box = []
        fetch = MetadataFetch(self.metainfo.info_hash, self.clock, done.append,
                              lambda key, reason: (bans.append(reason),
                                                   box[0].banned_by_fetch(key, reason)))
        swarm = MetadataSwarm(fetch, b"F" * 32)
        box.append(swarm)
        return swarm, done, bans

    def test_the_info_section_comes_from_several_swarms_and_parses_to_the_share(self):
        self.assertGreater(len(self.metainfo.info_bytes), 3 * wire.METADATA_PIECE_SIZE)
        fetcher, done, bans = self.fetcher()
        a, b = self.seeder(), self.seeder(complete=False)  # a leecher holds it verified too
        self.network.connect(fetcher, a)
        self.network.connect(fetcher, b)
        self.network.pump()
        self.assertEqual(bans, [])
        self.assertEqual(done, [self.metainfo.info_bytes])
        served = [s for s in (a, b) if any(p.metadata_answers for p in s.peers.values())]
        self.assertEqual(len(served), 2)
        parsed = Metainfo.from_info(done[0])
        self.assertEqual(parsed.info_hash, self.metainfo.info_hash)
        self.assertEqual(parsed.piece_hashes, self.metainfo.piece_hashes)

    def test_a_swarm_bans_a_peer_asking_the_same_metadata_over_and_over(self):
        seeder = self.seeder()
        fetcher, _, _ = self.fetcher()
        _, there = self.network.connect(fetcher, seeder)
        pieces = -(-len(self.metainfo.info_bytes) // wire.METADATA_PIECE_SIZE)
        for _ in range(2 * pieces + 1):
            seeder.handle(there.state, wire.MetadataRequest(0))
        self.assertIn("too many metadata requests", there.closed)
        self.assertIn(there.peer_id, seeder.banned)

    def test_a_request_beyond_the_metadata_is_a_protocol_violation(self):
        seeder = self.seeder()
        fetcher, _, _ = self.fetcher()
        _, there = self.network.connect(fetcher, seeder)
        seeder.handle(there.state, wire.MetadataRequest(10_000))
        self.assertIn("out of range", there.closed)
