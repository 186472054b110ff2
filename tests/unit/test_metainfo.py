"""The metainfo model: creating shares from files, piece <-> file mapping, reading and writing."""

import hashlib
import os
import stat
import tempfile
import threading
from pathlib import Path, PurePosixPath

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from peerit.addresses import TrackerAddress
from peerit.errors import MetainfoError, UsageError
from peerit.metainfo import FileEntry, Metainfo, Segment
from peerit.share_builder import (
    READ_BLOCK, PieceHasher, choose_piece_length, create_metainfo, scan_share)
from peerit.wire import metainfo as wire

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def expected_hashes(data: bytes, piece_length: int) -> bytes:
    """The piece hashes computed independently: slice the concatenation and hash."""
    return b"".join(hashlib.sha256(data[i:i + piece_length]).digest()
                    for i in range(0, len(data), piece_length))


def pseudo_random(size: int, seed: int) -> bytes:
    out = bytearray()
    block = hashlib.sha256(seed.to_bytes(8, "big")).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:size])


class TempDirMixin:
    def make_root(self) -> Path:
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        return Path(directory.name)


class PieceLengthTests(SynchronousTestCase):
    def test_small_shares_get_the_minimum(self):
        self.assertEqual(choose_piece_length(0), 256 * KiB)
        self.assertEqual(choose_piece_length(10 * MiB), 256 * KiB)
        self.assertEqual(choose_piece_length(128 * MiB), 256 * KiB)

    def test_about_512_pieces(self):
        """The smallest power of two giving at most 512 pieces."""
        self.assertEqual(choose_piece_length(128 * MiB + 1), 512 * KiB)
        self.assertEqual(choose_piece_length(512 * MiB), 1 * MiB)
        self.assertEqual(choose_piece_length(1 * GiB), 2 * MiB)
        self.assertEqual(choose_piece_length(3 * GiB), 8 * MiB)

    def test_100_gib_share_stays_small(self):
        """A 100 GiB share: 16 MiB pieces, 6400 of them, a .p2p of about 200 KiB."""
        length = choose_piece_length(100 * GiB)
        self.assertEqual(length, 16 * MiB)
        count = wire.piece_count_for(100 * GiB, length)
        self.assertEqual(count, 6400)
        self.assertLess(wire.encoded_size("big.iso", ["big.iso"], count), 210 * KiB)

    def test_giant_shares_raise_it_past_the_default_cap(self):
        """Beyond 16 TiB the piece count cap forces longer pieces, up to the format's maximum."""
        length = choose_piece_length(40 * 1024 * GiB)
        self.assertEqual(length, 64 * MiB)
        self.assertLessEqual(wire.piece_count_for(40 * 1024 * GiB, length), wire.MAX_PIECES)


class CreateTests(TempDirMixin, SynchronousTestCase):
    def test_single_file_not_a_multiple_of_piece_length(self):
        root = self.make_root()
        data = pseudo_random(3 * 16 * KiB + 123, 1)
        (root / "movie.mkv").write_bytes(data)
        metainfo = create_metainfo(str(root / "movie.mkv"), piece_length=16 * KiB,
                                   now=lambda: 1234.9)
        self.assertEqual(metainfo.name, "movie.mkv")
        self.assertFalse(metainfo.is_directory)
        self.assertEqual(metainfo.files, (FileEntry("movie.mkv", len(data)),))
        self.assertEqual(metainfo.piece_count, 4)
        self.assertEqual(metainfo.piece_size(3), 123)
        self.assertEqual(metainfo.piece_size(0), 16 * KiB)
        self.assertEqual(metainfo.piece_hashes, expected_hashes(data, 16 * KiB))
        self.assertEqual(metainfo.piece_hash(3), hashlib.sha256(data[-123:]).digest())
        self.assertEqual(metainfo.created, 1234)
        self.assertEqual(metainfo.relative_target(metainfo.files[0]),
                         PurePosixPath("movie.mkv"))

    def test_directory_tree(self):
        """Nested folders and an empty file; files in byte order; pieces span files."""
        root = self.make_root()
        share = root / "album"
        (share / "disc 1" / "extras").mkdir(parents=True)
        (share / "disc 2").mkdir()
        contents = {
            "disc 1/01.flac": pseudo_random(40 * KiB + 7, 2),
            "disc 1/extras/notes.txt": b"liner notes\n" * 50,
            "disc 1/empty.cue": b"",
            "disc 2/01.flac": pseudo_random(17 * KiB, 3),
            "cover.jpg": pseudo_random(5000, 4),
            "Z-last": b"z",
        }
        for path, data in contents.items():
            (share / path).write_bytes(data)
        (share / "empty dir").mkdir()
        metainfo = create_metainfo(str(share), piece_length=16 * KiB)
        order = sorted(contents, key=lambda p: p.encode())
        self.assertEqual([f.path for f in metainfo.files], order)
        self.assertEqual([f.size for f in metainfo.files], [len(contents[p]) for p in order])
        self.assertTrue(metainfo.is_directory)
        self.assertEqual(metainfo.total_size, sum(map(len, contents.values())))
        joined = b"".join(contents[p] for p in order)
        self.assertEqual(metainfo.piece_hashes, expected_hashes(joined, 16 * KiB))
        self.assertEqual(metainfo.relative_target(metainfo.files[0]),
                         PurePosixPath("album", order[0]))
        self.assertEqual(Metainfo.from_bytes(metainfo.to_bytes()), metainfo)

    def test_many_small_files_and_thread_counts(self):
        """Many files inside one piece, and the same hashes whatever the thread count."""
        root = self.make_root()
        share = root / "small"
        share.mkdir()
        joined = b""
        for n in range(300):
            data = pseudo_random(n * 37 % 1000, n)
            (share / f"f{n:03d}").write_bytes(data)
            joined += data
        results = {threads: create_metainfo(str(share), piece_length=16 * KiB,
                                            threads=threads).piece_hashes
                   for threads in (1, 2, 3)}
        self.assertEqual(results[1], expected_hashes(joined, 16 * KiB))
        self.assertEqual(results[2], results[1])
        self.assertEqual(results[3], results[1])

    def test_pieces_longer_than_the_read_block(self):
        """Pieces bigger than one read are hashed incrementally, across files."""
        root = self.make_root()
        share = root / "large"
        share.mkdir()
        first = pseudo_random(READ_BLOCK + 1000, 5)
        second = pseudo_random(READ_BLOCK * 2, 6)
        (share / "a").write_bytes(first)
        (share / "b").write_bytes(second)
        metainfo = create_metainfo(str(share), piece_length=2 * READ_BLOCK, threads=2)
        self.assertEqual(metainfo.piece_count, 2)
        self.assertEqual(metainfo.piece_hashes,
                         expected_hashes(first + second, 2 * READ_BLOCK))

    def test_progress(self):
        """progress gets the running total on the calling thread, ending at the total size."""
        root = self.make_root()
        data = pseudo_random(3 * READ_BLOCK + 5, 7)
        (root / "f").write_bytes(data)
        seen = []
        create_metainfo(str(root / "f"), piece_length=1 * MiB, threads=2,
                        progress=lambda done: seen.append((done, threading.get_ident())))
        totals = [done for done, _ in seen]
        self.assertEqual(totals, sorted(totals))
        self.assertEqual(totals[-1], len(data))
        self.assertEqual({ident for _, ident in seen}, {threading.get_ident()})

    def test_same_content_same_info_hash(self):
        """Trackers, comment and time differ; the info-hash does not."""
        root = self.make_root()
        (root / "f").write_bytes(b"same bytes" * 1000)
        one = create_metainfo(str(root / "f"), now=lambda: 1)
        two = create_metainfo(str(root / "f"), now=lambda: 2, comment="other",
                              trackers=(TrackerAddress("t", 1, bytes(32)),))
        self.assertNotEqual(one.to_bytes(), two.to_bytes())
        self.assertEqual(one.info_hash, two.info_hash)
        (root / "f").write_bytes(b"other bytes" * 1000)
        self.assertNotEqual(create_metainfo(str(root / "f")).info_hash, one.info_hash)

    def test_empty_share(self):
        root = self.make_root()
        (root / "nothing").write_bytes(b"")
        metainfo = create_metainfo(str(root / "nothing"))
        self.assertEqual((metainfo.total_size, metainfo.piece_count), (0, 0))
        self.assertEqual(Metainfo.from_bytes(metainfo.to_bytes()), metainfo)
        (root / "empty-dir").mkdir()
        metainfo = create_metainfo(str(root / "empty-dir"))
        self.assertEqual((metainfo.files, metainfo.piece_count), ((), 0))
        self.assertEqual(Metainfo.from_bytes(metainfo.to_bytes()), metainfo)

    def test_top_level_symlink_is_followed(self):
        root = self.make_root()
        (root / "real.bin").write_bytes(b"x" * 100)
        (root / "link.bin").symlink_to(root / "real.bin")
        metainfo = create_metainfo(str(root / "link.bin"))
        self.assertEqual(metainfo.name, "link.bin")
        self.assertEqual(metainfo.total_size, 100)

    def test_symlink_inside_directory_is_refused(self):
        root = self.make_root()
        (root / "share").mkdir()
        (root / "share" / "ok").write_bytes(b"1")
        (root / "share" / "escape").symlink_to("/etc")
        with self.assertRaises(UsageError) as caught:
            create_metainfo(str(root / "share"))
        self.assertIn("symbolic link", str(caught.exception))
        self.assertIn("escape", str(caught.exception))

    def test_fifo_inside_directory_is_refused(self):
        root = self.make_root()
        (root / "share").mkdir()
        os.mkfifo(root / "share" / "pipe")
        with self.assertRaises(UsageError) as caught:
            create_metainfo(str(root / "share"))
        self.assertIn("not a regular file", str(caught.exception))

    def test_missing_path(self):
        root = self.make_root()
        with self.assertRaises(UsageError) as caught:
            create_metainfo(str(root / "nope"))
        self.assertIn("no such file", str(caught.exception))

    def test_unshareable_names(self):
        """Names the format cannot carry are refused before hashing, naming the file."""
        root = self.make_root()
        (root / "share").mkdir()
        (root / "share" / "back\\slash").write_bytes(b"")
        with self.assertRaises(UsageError) as caught:
            create_metainfo(str(root / "share"))
        self.assertIn("backslash", str(caught.exception))
        (root / "share2").mkdir()
        with open(os.path.join(os.fsencode(root / "share2"), b"latin1-\xe9"), "wb"):
            pass
        with self.assertRaises(UsageError) as caught:
            create_metainfo(str(root / "share2"))
        self.assertIn("UTF-8", str(caught.exception))
        with self.assertRaises(UsageError):
            create_metainfo("/")

    def test_bad_piece_length(self):
        root = self.make_root()
        (root / "f").write_bytes(b"x")
        for length in (1000, 8 * KiB, 128 * MiB):
            with self.assertRaises(UsageError):
                create_metainfo(str(root / "f"), piece_length=length)

    def test_too_many_pieces_refused_before_hashing(self):
        """A sparse 20 GiB file at 16 KiB pieces would need 1.3M pieces: refused at once."""
        root = self.make_root()
        with open(root / "sparse", "wb") as f:
            f.truncate(20 * GiB)
        with self.assertRaises(UsageError) as caught:
            create_metainfo(str(root / "sparse"), piece_length=16 * KiB,
                            progress=lambda done: self.fail("hashing started"))
        self.assertIn("over the limit", str(caught.exception))

    def test_file_changed_while_hashing(self):
        """A file whose size no longer matches the scan fails instead of hashing wrong data."""
        root = self.make_root()
        (root / "f").write_bytes(b"x" * 100)
        share = scan_share(str(root / "f"))
        (root / "f").write_bytes(b"x" * 50)
        hasher = PieceHasher(share.local_paths, [f.size for f in share.files], 16 * KiB)
        with self.assertRaises(UsageError) as caught:
            hasher.run()
        self.assertIn("changed", str(caught.exception))


class SegmentTests(SynchronousTestCase):
    @staticmethod
    def metainfo(sizes, piece_length) -> Metainfo:
        total = sum(sizes)
        files = tuple(FileEntry(f"f{n:03d}", size) for n, size in enumerate(sizes))
        count = wire.piece_count_for(total, piece_length)
        return Metainfo("s", piece_length, total, True, files, bytes(32 * count))

    @staticmethod
    def brute_force(metainfo, piece, offset, length):
        """Byte by byte: which file and offset holds each byte, merged into runs."""
        owner = []
        for index, entry in enumerate(metainfo.files):
            owner += [(index, at) for at in range(entry.size)]
        runs = []
        start = piece * metainfo.piece_length + offset
        for file_index, file_offset in owner[start:start + length]:
            if runs and runs[-1][0] == file_index:
                runs[-1][2] += 1
            else:
                runs.append([file_index, file_offset, 1])
        return [Segment(*run) for run in runs]

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.integers(0, 40), min_size=1, max_size=12),
           st.sampled_from([1, 2, 4, 8, 16, 32]), st.data())
    def test_matches_brute_force(self, sizes, piece_length, data):
        """segments() equals the byte-by-byte mapping, empty files included."""
        metainfo = self.metainfo(sizes, piece_length)
        if not metainfo.piece_count:
            return
        piece = data.draw(st.integers(0, metainfo.piece_count - 1))
        size = metainfo.piece_size(piece)
        offset = data.draw(st.integers(0, size))
        length = data.draw(st.integers(0, size - offset))
        self.assertEqual(metainfo.segments(piece, offset, length),
                         self.brute_force(metainfo, piece, offset, length))
        self.assertEqual(metainfo.segments(piece),
                         self.brute_force(metainfo, piece, 0, size))

    def test_whole_piece_space_covered_once(self):
        metainfo = self.metainfo([0, 5, 0, 0, 11, 3, 0], 4)
        covered = [(s.file_index, s.file_offset + n)
                   for piece in range(metainfo.piece_count)
                   for s in metainfo.segments(piece) for n in range(s.length)]
        expected = [(i, at) for i, f in enumerate(metainfo.files) for at in range(f.size)]
        self.assertEqual(covered, expected)

    def test_out_of_range(self):
        metainfo = self.metainfo([10], 4)
        self.assertRaises(IndexError, metainfo.segments, 3)
        self.assertRaises(IndexError, metainfo.piece_size, -1)
        self.assertRaises(ValueError, metainfo.segments, 2, 1, 2)
        self.assertRaises(ValueError, metainfo.segments, 0, -1, 1)


class ReadWriteTests(TempDirMixin, SynchronousTestCase):
    def sample(self) -> Metainfo:
        return Metainfo("f", 16 * KiB, 3, False, (FileEntry("f", 3),), bytes(32),
                        (TrackerAddress("127.0.0.1", 59000),), 7, "c")

    def test_write_then_read(self):
        root = self.make_root()
        path = str(root / "f.p2p")
        self.sample().write(path)
        self.assertEqual(Metainfo.read(path), self.sample())
        self.assertEqual(sorted(os.listdir(root)), ["f.p2p"])  # no temporary left behind
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o644)

    def test_write_without_overwrite(self):
        root = self.make_root()
        path = root / "f.p2p"
        path.write_bytes(b"keep me")
        with self.assertRaises(UsageError) as caught:
            self.sample().write(str(path), overwrite=False)
        self.assertIn("already exists", str(caught.exception))
        self.assertEqual(path.read_bytes(), b"keep me")
        self.assertEqual(sorted(os.listdir(root)), ["f.p2p"])
        self.sample().write(str(path))
        self.assertEqual(Metainfo.read(str(path)), self.sample())

    def test_write_into_missing_directory(self):
        root = self.make_root()
        with self.assertRaises(UsageError):
            self.sample().write(str(root / "no" / "f.p2p"))

    def test_read_missing(self):
        root = self.make_root()
        with self.assertRaises(UsageError) as caught:
            Metainfo.read(str(root / "missing.p2p"))
        self.assertIn("no such file", str(caught.exception))

    def test_read_directory_or_fifo(self):
        """Neither is read; the FIFO is refused without waiting for a writer."""
        root = self.make_root()
        with self.assertRaises(UsageError):
            Metainfo.read(str(root))
        os.mkfifo(root / "pipe")
        with self.assertRaises(UsageError) as caught:
            Metainfo.read(str(root / "pipe"))
        self.assertIn("not a regular file", str(caught.exception))

    def test_read_garbage_names_the_file(self):
        root = self.make_root()
        (root / "bad.p2p").write_bytes(b"not a metainfo file")
        with self.assertRaises(MetainfoError) as caught:
            Metainfo.read(str(root / "bad.p2p"))
        self.assertIn("bad.p2p is not a valid .p2p file: not a .p2p file",
                      str(caught.exception))

    def test_read_oversized(self):
        """A file over the limit is refused after reading just past the limit."""
        root = self.make_root()
        with open(root / "huge.p2p", "wb") as f:
            f.truncate(wire.MAX_METAINFO_SIZE * 4)
        with self.assertRaises(MetainfoError) as caught:
            Metainfo.read(str(root / "huge.p2p"))
        self.assertIn("larger than", str(caught.exception))
