"""The writer thread and hashing pieces from memory (peerit/daemon/writer.py), and the
store's fd leases that keep a file open while another thread uses it."""

import hashlib
import os
import random
import tempfile
import threading
import weakref

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from peerit.daemon import storage
from peerit.daemon.storage import FileStore
from peerit.daemon.writer import BlockWriter, PieceHashes
from peerit.errors import PeeritError
from tests.unit.test_storage_state import directory_metainfo

PIECE = 64 * 1024
BLOCK = 16 * 1024


def piece_blocks(seed: int, piece_size: int = PIECE, block: int = BLOCK):
    data = random.Random(seed).randbytes(piece_size)
    return data, [(o, memoryview(data)[o:o + block]) for o in range(0, piece_size, block)]


class PieceHashesTests(SynchronousTestCase):
    def hashes(self, max_held=1 << 20):
        return PieceHashes(lambda piece: PIECE, max_held=max_held)

    def test_blocks_in_order_give_the_pieces_digest(self):
        data, blocks = piece_blocks(1)
        hashes = self.hashes()
        for offset, block in blocks:
            hashes.add(7, offset, block)
        self.assertEqual(hashes.finish(7), hashlib.sha256(data).digest())
        self.assertEqual(hashes.pieces_open, 0)

    def test_blocks_out_of_order_are_held_until_the_gap_fills(self):
        data, blocks = piece_blocks(2)
        hashes = self.hashes()
        for offset, block in [blocks[2], blocks[1], blocks[3]]:
            hashes.add(0, offset, block)
        self.assertEqual(hashes.held_bytes, 3 * BLOCK)
        hashes.add(0, *blocks[0])
        self.assertEqual(hashes.held_bytes, 0)
        self.assertEqual(hashes.finish(0), hashlib.sha256(data).digest())

    def test_a_missing_block_gives_no_digest(self):
        _, blocks = piece_blocks(3)
        hashes = self.hashes()
        for offset, block in blocks[:-1]:
            hashes.add(0, offset, block)
        self.assertIsNone(hashes.finish(0))

    def test_a_block_seen_twice_spoils_the_piece(self):
        """Overlapping bytes cannot be placed: the check must read the piece back."""
        _, blocks = piece_blocks(4)
        hashes = self.hashes()
        hashes.add(0, *blocks[0])
        hashes.add(0, *blocks[0])
        for offset, block in blocks[1:]:
            hashes.add(0, offset, block)
        self.assertIsNone(hashes.finish(0))

    def test_held_bytes_are_capped_and_released_when_a_piece_spoils(self):
        _, blocks = piece_blocks(5)
        hashes = self.hashes(max_held=2 * BLOCK)
        hashes.add(0, *blocks[1])
        hashes.add(0, *blocks[2])
        self.assertEqual(hashes.held_bytes, 2 * BLOCK)
        hashes.add(0, *blocks[3])  # over the cap
        self.assertEqual(hashes.held_bytes, 0)
        hashes.add(0, *blocks[0])
        self.assertIsNone(hashes.finish(0))

    def test_a_failed_write_spoils_and_a_refetch_is_hashed_afresh(self):
        data, blocks = piece_blocks(6)
        hashes = self.hashes()
        hashes.add(0, *blocks[0])
        hashes.spoil(0)
        for offset, block in blocks[1:]:
            hashes.add(0, offset, block)
        self.assertIsNone(hashes.finish(0))
        for offset, block in blocks:  # the piece failed its check and came again
            hashes.add(0, offset, block)
        self.assertEqual(hashes.finish(0), hashlib.sha256(data).digest())

    @settings(max_examples=200, deadline=None)
    @given(seed=st.integers(0, 2 ** 32), cap_blocks=st.integers(0, 4),
           drop=st.booleans(), duplicate=st.booleans())
    def test_a_digest_given_is_always_the_right_one(self, seed, cap_blocks, drop, duplicate):
        """Whatever the order, cap, gaps or repeats: the digest is right or absent, and
        nothing stays held once the piece is finished."""
        rng = random.Random(seed)
        data, blocks = piece_blocks(seed)
        arrivals = list(blocks)
        rng.shuffle(arrivals)
        if drop:
            arrivals.pop()
        if duplicate:  # a block that did arrive comes again
            arrivals.insert(rng.randrange(len(arrivals) + 1), rng.choice(arrivals))
        hashes = self.hashes(max_held=cap_blocks * BLOCK)
        for offset, block in arrivals:
            hashes.add(3, offset, block)
        digest = hashes.finish(3)
        self.assertIn(digest, (None, hashlib.sha256(data).digest()))
        if not drop and not duplicate and arrivals == blocks:
            self.assertIsNotNone(digest)
        if drop or duplicate:
            self.assertIsNone(digest)
        self.assertEqual(hashes.held_bytes, 0)


class ThreadedReactor:
    """Collects callFromThread calls; the test runs them after the writer has stopped."""

    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    def callFromThread(self, f, *args, **kwargs):
        with self.lock:
            self.calls.append((f, args, kwargs))

    def run(self):
        for f, args, kwargs in self.calls:
            f(*args, **kwargs)


class BlockWriterTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = ThreadedReactor()
        self.writer = BlockWriter(self.reactor, max_queued=4 * BLOCK)
        self.writer.start()
        self.addCleanup(self.writer.stop, 5.0)

    def test_calls_run_in_order_and_results_come_back_through_the_reactor(self):
        order = []
        for n in range(50):
            self.writer.submit(BLOCK, order.append, n)
        d = self.writer.call(lambda: list(order))
        results = []
        d.addCallback(results.append)
        self.writer.stop(5.0)
        self.assertEqual(results, [])  # nothing fires on the writer thread
        self.reactor.run()
        self.assertEqual(results, [list(range(50))])
        self.assertEqual(self.writer.queued_bytes, 0)

    def test_a_failing_call_errbacks_and_the_writer_goes_on(self):
        failures, after = [], []
        self.writer.call(lambda: 1 / 0).addErrback(failures.append)
        self.writer.call(lambda: "still working").addCallback(after.append)
        self.writer.stop(5.0)
        self.reactor.run()
        self.assertTrue(failures[0].check(ZeroDivisionError))
        self.assertEqual(after, ["still working"])

    def test_submit_waits_for_the_disk_beyond_the_queue_cap(self):
        """Back-pressure: a slow disk makes the submitter wait; memory stays bounded."""
        release = threading.Event()
        self.writer.submit(BLOCK, release.wait, 5.0)  # the "disk" is stuck
        for _ in range(3):
            self.writer.submit(BLOCK, lambda: None)
        self.assertEqual(self.writer.queued_bytes, 4 * BLOCK)
        submitted = threading.Event()

        def submit_one_more():
            self.writer.submit(BLOCK, lambda: None)
            submitted.set()
        thread = threading.Thread(target=submit_one_more)
        thread.start()
        self.assertFalse(submitted.wait(0.2))  # over the cap: waiting
        self.assertLessEqual(self.writer.queued_bytes, 4 * BLOCK)
        release.set()
        self.assertTrue(submitted.wait(5.0))
        thread.join(5.0)
        self.assertEqual(self.writer.waits, 1)

    def test_a_waiting_submitter_gets_room_item_by_item_not_at_the_end_of_a_batch(self):
        """Items queued while the thread is busy run as one batch; the room each frees goes
        to a waiting submitter as soon as that item is done."""
        started, first = threading.Event(), threading.Event()
        c_started, third, fourth = threading.Event(), threading.Event(), threading.Event()
        order = []
        self.writer.submit(BLOCK, lambda: (started.set(), first.wait(5.0)))
        self.assertTrue(started.wait(5.0))
        # b, c, d: queued while the thread is busy, one batch after the first item
        self.writer.submit(BLOCK, order.append, "b")
        self.writer.submit(BLOCK, lambda: (order.append("c"), c_started.set(),
                                           third.wait(5.0)))
        self.writer.submit(BLOCK, lambda: (order.append("d"), fourth.wait(5.0)))
        first.set()
        self.assertTrue(c_started.wait(5.0))
        self.writer.submit(BLOCK, order.append, "e")
        submitted = threading.Event()

        def submit_one_more():
            self.writer.submit(BLOCK, order.append, "f")
            submitted.set()
        thread = threading.Thread(target=submit_one_more)
        thread.start()
        self.assertFalse(submitted.wait(0.2))  # c is stuck, d and e wait: over the cap
        self.assertLessEqual(self.writer.queued_bytes, 4 * BLOCK)
        third.set()  # c is done; d, in the same batch, is stuck: the room goes out already
        self.assertTrue(submitted.wait(5.0))
        thread.join(5.0)
        self.assertEqual(order, ["b", "c", "d"])
        fourth.set()
        self.writer.stop(5.0)
        self.assertEqual(order, ["b", "c", "d", "e", "f"])
        self.assertEqual(self.writer.queued_bytes, 0)
        self.assertEqual(self.writer.waits, 1)

    def test_a_block_is_let_go_once_run_not_at_the_end_of_its_batch(self):
        """Memory stays within the cap: the thread holds no reference to an item it ran
        while it runs the rest of the batch."""
        class Block:
            pass
        started, first, second_started, second = (threading.Event() for _ in range(4))
        self.writer.submit(BLOCK, lambda: (started.set(), first.wait(5.0)))
        self.assertTrue(started.wait(5.0))
        block = Block()
        gone = weakref.ref(block)
        self.writer.submit(BLOCK, lambda b: None, block)
        self.writer.submit(BLOCK, lambda: (second_started.set(), second.wait(5.0)))
        del block
        first.set()
        self.assertTrue(second_started.wait(5.0))  # the block's item ran; its batch goes on
        self.assertIsNone(gone())
        second.set()

    def test_nothing_is_accepted_after_stop(self):
        self.writer.stop(5.0)
        self.assertRaises(RuntimeError, self.writer.submit, 1, lambda: None)


class FileLeaseTests(SynchronousTestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp()
        self.addCleanup(lambda: os.system(f"rm -rf {self.root}"))

    def test_close_waits_for_a_write_in_progress_then_refuses(self):
        metainfo, data = directory_metainfo([("a.bin", 4096)])
        store = FileStore(metainfo, self.root)
        store.open(create=True)
        fd = store._lease(0)  # another thread is inside a pwrite
        closed = threading.Event()
        closer = threading.Thread(target=lambda: (store.close(), closed.set()))
        closer.start()
        self.assertFalse(closed.wait(0.2))
        os.fstat(fd)  # still open: close did not pull it from under the writer
        store._unlease(0)
        self.assertTrue(closed.wait(5.0))
        closer.join(5.0)
        self.assertRaises(OSError, os.fstat, fd)
        self.assertRaises(PeeritError, store.write_block, 0, 0, data[:1024])

    def test_eviction_never_closes_a_leased_file(self):
        self.patch(storage, "MAX_OPEN_FILES", 2)
        metainfo, data = directory_metainfo([(f"f{i}.bin", 1024) for i in range(5)])
        store = FileStore(metainfo, self.root)
        store.open(create=True)
        self.addCleanup(store.close)
        fd = store._lease(0)
        for piece in range(1, 5):  # opens the other files: the cache must evict
            store.write_block(piece, 0, data[piece * 1024:(piece + 1) * 1024])
        self.assertLessEqual(len(store._fds), 3)
        self.assertEqual(store._fds.get(0), fd)
        os.fstat(fd)
        store._unlease(0)
        store.write_block(0, 0, data[:1024])
        for piece in range(5):
            self.assertEqual(store.piece_digest(piece), metainfo.piece_hash(piece))

    def test_closing_for_the_cap_does_not_flush_and_sync_flushes_every_written_file(self):
        """Evicting an fd (the cap on open files) costs no fdatasync; ``sync`` then flushes
        every file written since the last one, reopening those closed meanwhile."""
        self.patch(storage, "MAX_OPEN_FILES", 2)
        metainfo, data = directory_metainfo([(f"f{i}.bin", 1024) for i in range(5)])
        store = FileStore(metainfo, self.root)
        store.open(create=True)
        self.addCleanup(store.close)
        flushed = []
        self.patch(storage.os, "fdatasync", lambda fd: flushed.append(os.fstat(fd).st_ino))
        for piece in range(4):
            store.write_block(piece, 0, data[piece * 1024:(piece + 1) * 1024])
        self.assertEqual(flushed, [])
        store.sync()
        self.assertEqual(sorted(flushed), sorted(os.stat(store.path_of(i)).st_ino
                                                 for i in range(4)))
        flushed.clear()
        store.sync()
        self.assertEqual(flushed, [])  # nothing written since
