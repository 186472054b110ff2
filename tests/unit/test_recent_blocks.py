"""The blocks a daemon keeps in memory to upload again: bounds, lookups, dropped pieces."""

from twisted.trial.unittest import SynchronousTestCase

from peerit.daemon.recent_blocks import RecentBlocks

A, B = b"swarm a", b"swarm b"


class RecentBlocksTests(SynchronousTestCase):
    def test_keeps_the_last_blocks_within_its_byte_bound(self):
        """Past the bound the oldest blocks go first; the total never exceeds it."""
        recent = RecentBlocks(max_bytes=300)
        for piece in range(5):
            recent.add(A, piece, 0, bytes([piece]) * 100)
        self.assertEqual(len(recent), 3)
        self.assertEqual(recent.bytes, 300)
        self.assertIsNone(recent.get(A, 1, 0, 100))
        self.assertEqual(recent.get(A, 4, 0, 100), b"\x04" * 100)
        self.assertEqual(recent.get(A, 2, 0, 100), b"\x02" * 100)
        self.assertEqual(recent.hits, 2)

    def test_swarms_share_one_bound_and_never_see_each_others_blocks(self):
        recent = RecentBlocks(max_bytes=200)
        recent.add(A, 0, 0, b"a" * 100)
        recent.add(B, 0, 0, b"b" * 100)
        recent.add(B, 1, 0, b"c" * 100)
        self.assertIsNone(recent.get(A, 0, 0, 100))  # the oldest, whoever's it was
        self.assertEqual(recent.get(B, 0, 0, 100), b"b" * 100)
        self.assertIsNone(recent.get(A, 1, 0, 100))
        self.assertEqual((recent.held(A), recent.held(B), recent.bytes), (0, 2, 200))

    def test_a_block_larger_than_the_bound_is_not_kept(self):
        recent = RecentBlocks(max_bytes=50)
        recent.add(A, 0, 0, b"x" * 51)
        self.assertEqual((len(recent), recent.bytes), (0, 0))

    def test_only_the_exact_length_asked_is_served(self):
        """A request of another length than the block kept reads the disk (None here)."""
        recent = RecentBlocks(max_bytes=1000)
        recent.add(A, 3, 200, b"y" * 100)
        self.assertIsNone(recent.get(A, 3, 200, 50))
        self.assertIsNone(recent.get(A, 3, 0, 100))
        self.assertEqual(recent.get(A, 3, 200, 100), b"y" * 100)

    def test_a_block_received_again_replaces_the_first_copy(self):
        recent = RecentBlocks(max_bytes=1000)
        recent.add(A, 0, 0, b"a" * 10)
        recent.add(A, 0, 0, b"b" * 10)
        self.assertEqual((len(recent), recent.bytes), (1, 10))
        self.assertEqual(recent.get(A, 0, 0, 10), b"b" * 10)

    def test_a_dropped_piece_is_forgotten_and_only_it(self):
        """A piece that failed its check: none of its blocks is served any more."""
        recent = RecentBlocks(max_bytes=1000)
        recent.add(A, 1, 0, b"a" * 10)
        recent.add(A, 1, 10, b"b" * 10)
        recent.add(A, 2, 0, b"c" * 10)
        recent.add(B, 1, 0, b"d" * 10)
        recent.drop_piece(A, 1)
        self.assertIsNone(recent.get(A, 1, 0, 10))
        self.assertIsNone(recent.get(A, 1, 10, 10))
        self.assertEqual(recent.get(A, 2, 0, 10), b"c" * 10)
        self.assertEqual(recent.get(B, 1, 0, 10), b"d" * 10)
        self.assertEqual(recent.bytes, 20)

    def test_clear_forgets_one_swarms_blocks(self):
        recent = RecentBlocks(max_bytes=1000)
        recent.add(A, 0, 0, b"a" * 10)
        recent.add(B, 0, 0, b"b" * 10)
        recent.clear(A)
        self.assertIsNone(recent.get(A, 0, 0, 10))
        self.assertEqual(recent.get(B, 0, 0, 10), b"b" * 10)
        self.assertEqual((len(recent), recent.bytes), (1, 10))
