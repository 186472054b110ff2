"""Piece picking: rarest first with a random start, piece completion first, endgame."""

import random

from twisted.trial.unittest import SynchronousTestCase

from peerit.bitfield import Bitfield
from peerit.daemon.choker import Choker, PeerView
from peerit.daemon.picker import ENDGAME_IN_FLIGHT, Picker, RANDOM_FIRST_PIECES

PIECE, BLOCK = 4096, 1024


def picker(n=20, have=()):
    bits = Bitfield(n)
    for i in have:
        bits.add(i)
    return Picker(n, lambda i: PIECE, BLOCK, bits, random.Random(3))


def holding(n, pieces):
    b = Bitfield(n)
    for i in pieces:
        b.add(i)
    return b


class PickerTests(SynchronousTestCase):
    def test_rarest_piece_is_chosen_after_the_random_start(self):
        p = picker(20, have=range(RANDOM_FIRST_PIECES))
        everyone = holding(20, range(20))
        for _ in range(5):
            p.add_peer_pieces(everyone)
        p.add_peer_pieces(holding(20, [17]))
        p.availability[11] = 1  # only one peer has piece 11
        requests = p.next_requests("peer", everyone, 1)
        self.assertEqual(requests[0][0], 11)

    def test_random_start_spreads_first_pieces(self):
        """Fresh downloaders do not all start on the same piece."""
        firsts = set()
        for seed in range(10):
            p = Picker(50, lambda i: PIECE, BLOCK, Bitfield(50), random.Random(seed))
            everyone = holding(50, range(50))
            p.add_peer_pieces(everyone)
            firsts.add(p.next_requests("x", everyone, 1)[0][0])
        self.assertGreater(len(firsts), 3)

    def test_started_piece_is_finished_before_a_new_one(self):
        p = picker(20)
        everyone = holding(20, range(20))
        first = p.next_requests("a", everyone, 2)
        self.assertEqual({r[0] for r in first}, {first[0][0]})
        more = p.next_requests("b", everyone, 2)
        self.assertEqual(more[0][0], first[0][0])  # same piece, remaining blocks
        self.assertEqual(len({r[1] for r in first + more}), 4)

    def test_only_pieces_the_peer_has_are_requested(self):
        p = picker(20)
        requests = p.next_requests("a", holding(20, [5]), 10)
        self.assertEqual({r[0] for r in requests}, {5})
        self.assertEqual(len(requests), PIECE // BLOCK)

    def test_released_blocks_go_to_another_peer(self):
        p = picker(2)
        everyone = holding(2, [0])  # piece 1 is nowhere, so this is not endgame
        got = p.next_requests("a", everyone, 100)
        self.assertEqual(len(got), 4)
        self.assertFalse(p.endgame)
        self.assertEqual(p.next_requests("b", everyone, 100), [])
        p.release("a")
        again = p.next_requests("b", everyone, 100)
        self.assertEqual(sorted(again), sorted(got))

    def test_endgame_duplicates_requests_once_everything_is_asked(self):
        p = picker(1)
        everyone = holding(1, [0])
        a = p.next_requests("a", everyone, 100)
        self.assertTrue(p.endgame)
        b = p.next_requests("b", everyone, 100)
        self.assertEqual(len(b), ENDGAME_IN_FLIGHT)
        self.assertLessEqual(set(b), set(a))
        accepted, others, done = p.block_received("b", *b[0])
        self.assertTrue(accepted)
        self.assertEqual(others, ("a",))
        # a's copy of the same block is no longer wanted
        self.assertEqual(p.block_received("a", *b[0])[0], False)

    def test_endgame_duplicates_go_only_to_peers_with_little_in_flight(self):
        """A busy peer is not asked for duplicates (they would come late and be thrown
        away); an idle one is, up to ENDGAME_IN_FLIGHT blocks in flight."""
        p = picker(1)
        everyone = holding(1, [0])
        p.next_requests("a", everyone, 100)
        self.assertEqual(p.next_requests("busy", everyone, 100,
                                         in_flight=ENDGAME_IN_FLIGHT), [])
        self.assertEqual(len(p.next_requests("idle", everyone, 100,
                                             in_flight=ENDGAME_IN_FLIGHT - 1)), 1)

    def test_several_new_pieces_in_one_call_are_the_rarest(self):
        """A deep request (a fresh unchoke) takes the rarest pieces, not the first found."""
        p = picker(20, have=range(RANDOM_FIRST_PIECES))
        everyone = holding(20, range(20))
        for _ in range(3):
            p.add_peer_pieces(everyone)
        for rare in (6, 13, 19):
            p.availability[rare] = 1
        requests = p.next_requests("peer", everyone, 3 * PIECE // BLOCK)
        self.assertEqual({r[0] for r in requests}, {6, 13, 19})
        self.assertEqual(len(requests), 3 * PIECE // BLOCK)

    def test_short_last_piece_still_fills_the_request(self):
        """New pieces are counted in full-size pieces; a short last one leaves room that
        the same call fills from another piece."""
        bits = Bitfield(3)
        p = Picker(3, lambda i: PIECE if i < 2 else BLOCK, BLOCK, bits, random.Random(1))
        got = p.next_requests("a", holding(3, [0, 2]), PIECE // BLOCK + 1)
        self.assertEqual(len(got), PIECE // BLOCK + 1)
        self.assertEqual({r[0] for r in got}, {0, 2})

    def test_unrequested_block_is_refused(self):
        p = picker(2)
        self.assertEqual(p.block_received("a", 0, 0, BLOCK), (False, (), False))
        p.next_requests("a", holding(2, [0]), 1)
        self.assertFalse(p.block_received("b", 0, 0, BLOCK)[0])  # asked of a, not b
        self.assertFalse(p.block_received("a", 0, 0, BLOCK - 1)[0])  # wrong length

    def test_failed_piece_with_several_sources_goes_to_one_peer(self):
        p = picker(1)
        everyone = holding(1, [0])
        a = p.next_requests("a", everyone, 2)
        b = p.next_requests("b", everyone, 2)
        for peer, blocks in (("a", a), ("b", b)):
            for block in blocks:
                p.block_received(peer, *block)
        self.assertEqual(p.start_verifying(0), {"a", "b"})
        p.piece_failed(0, exclusive=True)
        first = p.next_requests("c", everyone, 1)
        self.assertEqual(len(first), 1)
        self.assertEqual(p.next_requests("d", everyone, 4), [])  # c owns the retry
        self.assertEqual(len(p.next_requests("c", everyone, 4)), 3)


class ChokerTests(SynchronousTestCase):
    def test_fastest_givers_get_the_regular_slots(self):
        choker = Choker(random.Random(1), slots=2)
        peers = [PeerView(i, True, download_rate=float(i), upload_rate=0) for i in range(6)]
        chosen = choker.rechoke(peers, seeding=False)
        self.assertTrue({5, 4} <= chosen)
        self.assertEqual(len(chosen), 3)

    def test_seeding_ranks_by_upload_rate_and_ignores_uninterested(self):
        choker = Choker(random.Random(1), slots=1)
        peers = [PeerView("slow", True, 0, 10), PeerView("fast", True, 0, 99),
                 PeerView("idle", False, 0, 500)]
        chosen = choker.rechoke(peers, seeding=True)
        self.assertIn("fast", chosen)
        self.assertNotIn("idle", chosen)

    def test_seeding_uses_the_seed_slots(self):
        """A seeder's round unchokes seed_slots regular peers (plus the optimistic one)."""
        choker = Choker(random.Random(1), slots=1, seed_slots=3)
        views = [PeerView(k, True, 0.0, float(k)) for k in range(6)]
        chosen = choker.rechoke(views, seeding=True)
        self.assertLessEqual({5, 4, 3}, chosen)
        self.assertEqual(len(chosen), 4)
        self.assertEqual(len(Choker(random.Random(1), slots=1, seed_slots=3)
                             .rechoke(views, seeding=False)), 2)

    def test_optimistic_slot_rotates(self):
        choker = Choker(random.Random(2), slots=1)
        peers = [PeerView(i, True, 100 if i == 0 else 0, 0) for i in range(8)]
        optimistic = set()
        for _ in range(30):
            optimistic |= choker.rechoke(peers, seeding=False) - {0}
        self.assertGreater(len(optimistic), 2)
