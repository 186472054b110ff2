"""Blocks kept in memory for uploading again: a byte cap, exact lengths, failed pieces out."""

from twisted.trial.unittest import SynchronousTestCase

from peerit.daemon.recentblocks import RecentBlocks


class RecentBlocksTests(SynchronousTestCase):
    def test_oldest_blocks_go_first_past_the_cap(self):
        recent = RecentBlocks(capacity=300)
        for piece in range(4):
            recent.add(piece, 0, bytes([piece]) * 100)
        self.assertEqual(recent.size, 300)
        self.assertIsNone(recent.get(0, 0, 100))
        self.assertEqual(recent.get(3, 0, 100), b"\x03" * 100)
        self.assertEqual((recent.hits, recent.misses), (1, 1))

    def test_a_block_larger_than_the_cap_is_not_kept(self):
        recent = RecentBlocks(capacity=10)
        recent.add(0, 0, b"x" * 11)
        self.assertEqual((len(recent), recent.size), (0, 0))

    def test_zero_capacity_keeps_nothing(self):
        recent = RecentBlocks(capacity=0)
        recent.add(0, 0, b"x")
        self.assertIsNone(recent.get(0, 0, 1))

    def test_only_the_asked_length_is_served(self):
        """A request for another length than the block kept is read from the store."""
        recent = RecentBlocks(capacity=100)
        recent.add(1, 0, b"y" * 20)
        self.assertIsNone(recent.get(1, 0, 10))
        self.assertEqual(recent.get(1, 0, 20), b"y" * 20)

    def test_replacing_a_block_counts_its_bytes_once(self):
        recent = RecentBlocks(capacity=100)
        recent.add(1, 0, b"a" * 40)
        recent.add(1, 0, b"b" * 30)
        self.assertEqual((len(recent), recent.size), (1, 30))
        self.assertEqual(recent.get(1, 0, 30), b"b" * 30)

    def test_dropping_a_piece_removes_all_its_blocks_only(self):
        recent = RecentBlocks(capacity=1000)
        for offset in (0, 10, 20):
            recent.add(5, offset, b"p" * 10)
        recent.add(6, 0, b"q" * 10)
        recent.drop_piece(5, piece_size=30, block_size=10)
        self.assertEqual((len(recent), recent.size), (1, 10))
        self.assertIsNone(recent.get(5, 10, 10))
        self.assertEqual(recent.get(6, 0, 10), b"q" * 10)
