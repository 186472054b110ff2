"""Piece storage on disk (safe paths, preallocation, offsets) and the resume state."""

import hashlib
import os
import tempfile
import threading

from twisted.trial.unittest import SynchronousTestCase

from peerit.daemon.state import StateDB, SwarmRecord
from peerit.daemon import storage
from peerit.daemon.storage import FileStore
from peerit.errors import NoSpace, PeeritError, UsageError
from peerit.metainfo import FileEntry, Metainfo


def directory_metainfo(files, piece_length=1024, name="share"):
    data = b"".join(bytes([i + 1]) * size for i, (_, size) in enumerate(files))
    hashes = b"".join(hashlib.sha256(data[i:i + piece_length]).digest()
                      for i in range(0, len(data), piece_length))
    return Metainfo(name=name, piece_length=piece_length, total_size=len(data),
                    is_directory=True,
                    files=tuple(FileEntry(p, s) for p, s in sorted(files)),
                    piece_hashes=hashes), data


class FileStoreTests(SynchronousTestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp()
        self.addCleanup(lambda: os.system(f"rm -rf {self.root}"))

    def test_blocks_written_by_offset_across_files_read_back_and_hash(self):
        """Pieces span file boundaries; writes land at the right offsets in each file."""
        metainfo, data = directory_metainfo([("a/x.bin", 1500), ("a/y/z.bin", 10),
                                             ("b.bin", 2000)])
        store = FileStore(metainfo, self.root)
        store.open(create=True)
        for piece in reversed(range(metainfo.piece_count)):  # out of order on purpose
            start = piece * 1024
            store.write_block(piece, 0, data[start:start + metainfo.piece_size(piece)])
        for piece in range(metainfo.piece_count):
            self.assertEqual(store.piece_digest(piece), metainfo.piece_hash(piece))
            self.assertEqual(store.read_block(piece, 100, 50),
                             data[piece * 1024 + 100:piece * 1024 + 150])
        store.close()
        with open(os.path.join(self.root, "share", "a", "y", "z.bin"), "rb") as f:
            self.assertEqual(f.read(), data[1500:1510])

    def test_no_block_is_written_before_the_files_are_made(self):
        """open_root alone makes the root, not the files; a write until open_files has run
        is refused (not a file made on the fly, not a write into nothing)."""
        metainfo, data = directory_metainfo([("a/x.bin", 1500), ("b.bin", 600)])
        store = FileStore(metainfo, self.root)
        self.addCleanup(store.close)
        store.open_root(create=True)
        self.assertTrue(os.path.isdir(self.root))
        self.assertFalse(os.path.exists(os.path.join(self.root, "share")))
        with self.assertRaises(PeeritError):
            store.write_block(0, 0, data[:1024])
        self.assertFalse(os.path.exists(os.path.join(self.root, "share", "a", "x.bin")))
        store.open_files(create=True)
        store.write_block(0, 0, data[:1024])
        self.assertEqual(store.piece_digest(0), metainfo.piece_hash(0))

    def test_files_are_preallocated_to_their_size(self):
        metainfo, _ = directory_metainfo([("one.bin", 5000), ("two.bin", 0)])
        store = FileStore(metainfo, self.root)
        store.open(create=True)
        store.close()
        self.assertEqual(os.path.getsize(os.path.join(self.root, "share", "one.bin")), 5000)
        self.assertEqual(os.path.getsize(os.path.join(self.root, "share", "two.bin")), 0)

    def test_symlink_planted_in_target_is_refused(self):
        """A symlink where a directory of the share should be is never followed."""
        outside = tempfile.mkdtemp()
        self.addCleanup(lambda: os.system(f"rm -rf {outside}"))
        os.makedirs(os.path.join(self.root, "share"))
        os.symlink(outside, os.path.join(self.root, "share", "a"))
        metainfo, _ = directory_metainfo([("a/x.bin", 10)])
        store = FileStore(metainfo, self.root)
        with self.assertRaises(UsageError) as caught:
            store.open(create=True)
        self.assertIn("symlink", str(caught.exception))
        self.assertEqual(os.listdir(outside), [])

    def test_a_tree_of_many_directories_is_made_by_several_threads(self):
        """Each directory's files by one thread, several directories at once; every file
        made at its size, parents shared between the threads made once."""
        files = [(f"top/d{d:02d}/f{i}.bin", 100 + d) for d in range(12) for i in range(5)]
        metainfo, _ = directory_metainfo(files)
        store = FileStore(metainfo, self.root)
        threads = set()
        group = store._open_group

        def recording(indexes, create):
            threads.add(threading.current_thread().name)
            return group(indexes, create)
        store._open_group = recording
        store.open(create=True)
        store.close()
        self.assertGreater(len(threads), 1)
        self.assertLessEqual(len(threads), storage.CREATE_THREADS)
        for path, size in files:
            self.assertEqual(os.path.getsize(os.path.join(self.root, "share", path)), size)

    def test_a_parent_made_meanwhile_by_another_thread_is_used(self):
        """The directory appears between the failed open and the mkdir: no error."""
        metainfo, _ = directory_metainfo([("a/x.bin", 10), ("b/y.bin", 10)])
        store = FileStore(metainfo, self.root)
        self.addCleanup(store.close)
        real_mkdir = os.mkdir

        def racing_mkdir(path, mode=0o777, *, dir_fd=None):
            real_mkdir(path, mode, dir_fd=dir_fd)  # the other thread wins the race
            real_mkdir(path, mode, dir_fd=dir_fd)
        self.patch(storage.os, "mkdir", racing_mkdir)
        store.open(create=True)
        self.assertEqual(os.path.getsize(os.path.join(self.root, "share", "a", "x.bin")), 10)

    def test_a_symlink_in_one_of_several_directories_fails_the_whole_tree(self):
        """The parallel path raises the refusal as the single-threaded one does."""
        outside = tempfile.mkdtemp()
        self.addCleanup(lambda: os.system(f"rm -rf {outside}"))
        os.makedirs(os.path.join(self.root, "share"))
        os.symlink(outside, os.path.join(self.root, "share", "d3"))
        metainfo, _ = directory_metainfo([(f"d{d}/x.bin", 10) for d in range(8)])
        store = FileStore(metainfo, self.root)
        with self.assertRaises(UsageError) as caught:
            store.open(create=True)
        self.assertIn("symlink", str(caught.exception))
        self.assertFalse(store.files_ready)
        self.assertEqual(os.listdir(outside), [])

    def test_symlinked_file_is_refused(self):
        os.makedirs(os.path.join(self.root, "share"))
        victim = os.path.join(self.root, "victim")
        with open(victim, "wb") as f:
            f.write(b"precious")
        os.symlink(victim, os.path.join(self.root, "share", "x.bin"))
        metainfo, _ = directory_metainfo([("x.bin", 10)])
        with self.assertRaises(UsageError):
            FileStore(metainfo, self.root).open(create=True)
        with open(victim, "rb") as f:
            self.assertEqual(f.read(), b"precious")

    def test_full_disk_is_reported_as_no_space(self):
        """Preallocation beyond the filesystem's size fails up front with NoSpace."""
        if not os.path.exists("/dev/shm"):
            self.skipTest("no /dev/shm")
        size, piece = 1 << 40, 1 << 26
        metainfo = Metainfo(name="share", piece_length=piece, total_size=size,
                            is_directory=True, files=(FileEntry("huge.bin", size),),
                            piece_hashes=bytes(32 * (size // piece)))
        store = FileStore(metainfo, tempfile.mkdtemp(dir="/dev/shm"))
        with self.assertRaises(NoSpace):
            store.open(create=True)

    def test_seed_with_wrong_size_file_is_refused(self):
        metainfo, data = directory_metainfo([("x.bin", 100)])
        os.makedirs(os.path.join(self.root, "share"))
        with open(os.path.join(self.root, "share", "x.bin"), "wb") as f:
            f.write(b"short")
        with self.assertRaises(UsageError):
            FileStore(metainfo, self.root, writable=False).open(create=False)

    def test_delete_files_keeps_unrelated_files(self):
        metainfo, _ = directory_metainfo([("d/x.bin", 10)])
        store = FileStore(metainfo, self.root)
        store.open(create=True)
        mine = os.path.join(self.root, "share", "notes.txt")
        with open(mine, "w") as f:
            f.write("user file")
        store.delete_files()
        self.assertFalse(os.path.exists(os.path.join(self.root, "share", "d")))
        self.assertTrue(os.path.exists(mine))


class StateTests(SynchronousTestCase):
    def test_records_survive_reopen_and_unclean_shutdown_is_noticed(self):
        path = os.path.join(tempfile.mkdtemp(), "state.sqlite3")
        db = StateDB(path)
        self.assertTrue(db.clean_shutdown)
        record = SwarmRecord(b"h" * 32, b"meta", "/root", "download", False, None, None,
                             None, 1.0, None)
        db.add(record)
        db.set_verified(b"h" * 32, b"\xff\x80")
        # No close(): as if the process was killed.
        again = StateDB(path)
        self.assertFalse(again.clean_shutdown)
        (restored,) = again.records()
        self.assertEqual(restored.verified, b"\xff\x80")
        again.close()
        self.assertTrue(StateDB(path).clean_shutdown)


class EmptyShareTests(SynchronousTestCase):
    def test_empty_directory_share_creates_the_directory(self):
        root = tempfile.mkdtemp()
        metainfo = Metainfo(name="nothing", piece_length=1 << 18, total_size=0,
                            is_directory=True, files=(), piece_hashes=b"")
        FileStore(metainfo, root).open(create=True)
        self.assertTrue(os.path.isdir(os.path.join(root, "nothing")))


class JournalTests(SynchronousTestCase):
    def test_journaled_pieces_survive_a_kill_and_a_torn_tail_is_ignored(self):
        path = os.path.join(tempfile.mkdtemp(), "state.sqlite3")
        db = StateDB(path)
        h = b"j" * 32
        db.add(SwarmRecord(h, b"meta", "/r", "download", False, b"\x80\x00", None, None,
                           1.0, None))
        db.journal_verified(h, 3)
        db.journal_verified(h, 9)
        with open(os.path.join(db.journal_dir, h.hex() + ".log"), "ab") as f:
            f.write(b"\x00\x00")  # a write cut short by the crash
        again = StateDB(path)  # no close(): the process was killed
        (record,) = again.records(lambda meta: 12)
        self.assertEqual(record.verified, bytes([0b10010000, 0b01000000]))
        # Writing the full set empties the journal, so a later check's verdict wins.
        again.set_verified(h, b"\x00\x00")
        (record,) = again.records(lambda meta: 12)
        self.assertEqual(record.verified, b"\x00\x00")

    def test_out_of_range_journal_entries_are_ignored(self):
        path = os.path.join(tempfile.mkdtemp(), "state.sqlite3")
        db = StateDB(path)
        h = b"k" * 32
        db.add(SwarmRecord(h, b"meta", "/r", "download", False, None, None, None, 1.0, None))
        db.journal_verified(h, 10_000)
        db.journal_verified(h, 1)
        (record,) = StateDB(path).records(lambda meta: 8)
        self.assertEqual(record.verified, b"\x40")


class BytesLeftTests(SynchronousTestCase):
    def test_constant_time_count_matches_a_sum(self):
        from peerit.bitfield import Bitfield
        from peerit.daemon.transfer import bytes_left
        import random
        rng = random.Random(1)
        for total in (0, 1, 1024, 1025, 5000, 4096 * 7 - 3):
            metainfo = Metainfo(name="x", piece_length=1024, total_size=total,
                                is_directory=False, files=(FileEntry("x", total),),
                                piece_hashes=bytes(32 * (-(-total // 1024))))
            have = Bitfield(metainfo.piece_count)
            for i in range(metainfo.piece_count):
                if rng.random() < 0.5:
                    have.add(i)
            expected = total - sum(metainfo.piece_size(i) for i in have)
            self.assertEqual(bytes_left(metainfo, have), expected)


def direct_io_supported(directory: str) -> bool:
    """O_DIRECT works in this filesystem (ext4/xfs yes, tmpfs no)."""
    path = os.path.join(directory, ".direct-probe")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    os.unlink(path)
    return True


class DirectIOTests(SynchronousTestCase):
    """A download's store writes and reads back with O_DIRECT where ranges are aligned, and
    buffered everywhere else: whatever the mix, the bytes are the share's."""

    def setUp(self):
        self.root = tempfile.mkdtemp()
        self.addCleanup(lambda: os.system(f"rm -rf {self.root}"))
        # Small files keep these tests fast; the size rule has its own test below.
        self.patch(storage, "DIRECT_MIN_FILE_SIZE", 0)

    def check(self, files, piece_length, block):
        import random
        metainfo, data = directory_metainfo(files, piece_length=piece_length)
        data = random.Random(5).randbytes(len(data))  # not runs of one byte: offsets matter
        hashes = b"".join(hashlib.sha256(data[i:i + piece_length]).digest()
                          for i in range(0, len(data), piece_length))
        metainfo = Metainfo(name=metainfo.name, piece_length=piece_length,
                            total_size=len(data), is_directory=True, files=metainfo.files,
                            piece_hashes=hashes)
        store = FileStore(metainfo, self.root, direct=True)
        store.open(create=True)
        self.addCleanup(store.close)
        order = [(p, o) for p in range(metainfo.piece_count)
                 for o in range(0, metainfo.piece_size(p), block)]
        random.Random(6).shuffle(order)
        for piece, offset in order:
            start = piece * piece_length + offset
            length = min(block, metainfo.piece_size(piece) - offset)
            store.write_block(piece, offset, memoryview(data)[start:start + length])
        # Reads try the page cache first: drop whatever clean pages the kernel kept of these
        # files, so that whether a read goes around the cache does not depend on its mood.
        for path, _ in files:
            with open(os.path.join(self.root, "share", path), "rb") as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        for piece in range(metainfo.piece_count):
            self.assertEqual(store.piece_digest(piece), metainfo.piece_hash(piece), piece)
            start = piece * piece_length
            self.assertEqual(bytes(store.read_block(piece, 0, metainfo.piece_size(piece))),
                             data[start:start + metainfo.piece_size(piece)])
        store.sync()
        on_disk = b""
        for path, _ in sorted(files):
            with open(os.path.join(self.root, "share", path), "rb") as f:
                on_disk += f.read()
        self.assertEqual(on_disk, data)
        return store

    def test_single_file_aligned_blocks_go_direct(self):
        store = self.check([("big.bin", 3 * 65536 + 1000)], piece_length=65536, block=16384)
        if direct_io_supported(self.root):
            # everything but the unaligned tail of the last block went around the cache
            self.assertEqual(store.direct_bytes_written, 3 * 65536)
            self.assertGreater(store.direct_bytes_read, 0)
        else:
            self.assertEqual(store.direct_bytes_written, 0)

    def test_files_at_unaligned_offsets_mix_direct_and_buffered(self):
        store = self.check([("a.bin", 5000), ("b/c.bin", 70000), ("d.bin", 12345)],
                           piece_length=32768, block=16384)
        if direct_io_supported(self.root):
            self.assertGreater(store.direct_bytes_written, 0)

    def test_files_below_the_direct_size_go_through_the_page_cache(self):
        """An O_DIRECT write waits for the device: a small file is written buffered (no
        second fd either), a large one direct, in the same download."""
        self.patch(storage, "DIRECT_MIN_FILE_SIZE", 65536)
        store = self.check([("small.bin", 65536 - 4096), ("large.bin", 2 * 65536)],
                           piece_length=65536, block=16384)
        if direct_io_supported(self.root):
            self.assertEqual(store.direct_bytes_written, 2 * 65536)
            self.assertEqual([store.metainfo.files[i].path for i in store._direct_fds],
                             ["large.bin"])

    def test_a_store_without_direct_never_uses_it(self):
        metainfo, data = directory_metainfo([("x.bin", 65536)], piece_length=65536)
        store = FileStore(metainfo, self.root)
        store.open(create=True)
        self.addCleanup(store.close)
        store.write_block(0, 0, data)
        self.assertEqual(store.direct_bytes_written, 0)
        self.assertEqual(store.read_block(0, 0, 100), data[:100])

    def test_an_alignment_the_device_refuses_falls_back_to_the_page_cache(self):
        """O_DIRECT refusing our alignment (EINVAL) is not a storage failure: the store
        goes on buffered and the data is still right."""
        self.patch(storage, "DIRECT_ALIGN", 100)  # no device accepts 100-byte alignment
        store = self.check([("big.bin", 3 * 65536 + 1000)], piece_length=65536, block=16384)
        if direct_io_supported(self.root):
            self.assertTrue(store._direct_refused)
            self.assertEqual(store.direct_bytes_written, 0)
