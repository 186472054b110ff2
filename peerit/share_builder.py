"""Creating a share: scanning a file or directory tree and hashing its pieces into a
:class:`peerit.metainfo.Metainfo`, on several threads.

Creating a share follows one rule for links and special files: the path the user names may be a
symbolic link (it is followed: the user names what they mean), but inside a shared directory
symbolic links, FIFOs, sockets and devices are refused, naming the first one found. A .p2p can
only describe regular files; following links could publish files outside the tree (or loop),
and skipping them silently would publish a tree different from the one the user sees. Empty
directories are not recorded; only files are.
"""

import bisect
import hashlib
import itertools
import os
import queue
import stat
import threading
import time
from dataclasses import dataclass
from typing import Callable

from peerit.addresses import TrackerAddress
from peerit.errors import MetainfoError, UsageError
from peerit.metainfo import FileEntry, Metainfo, _file_error
from peerit.wire import metainfo as wire

# Piece length for a new share: about TARGET_PIECE_COUNT pieces, within these bounds, so a
# 100 GiB share needs 6400 pieces (200 KiB of hashes) and a small one still gets 256 KiB pieces.
TARGET_PIECE_COUNT = 512  # fewer, larger pieces: less per-piece work at speed
DEFAULT_MIN_PIECE_LENGTH = 256 * 1024
DEFAULT_MAX_PIECE_LENGTH = 16 * 1024 * 1024

# Hashing reads this much at a time: large enough that Python's per-call cost vanishes next to
# SHA-256 and the copy, small enough to stay in cache-friendly, bounded memory per thread.
READ_BLOCK = 4 * 1024 * 1024
MAX_HASH_THREADS = 4


@dataclass(frozen=True)
class LocalShare:
    """Files on disk about to be shared: the entries in canonical order and where each is."""
    name: str
    is_directory: bool
    files: tuple[FileEntry, ...]
    local_paths: tuple[str, ...]

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


def scan_share(path: str) -> LocalShare:
    """The files of a single file or a directory tree, following the rule on links above."""
    absolute = os.path.abspath(path)
    name = os.path.basename(absolute)
    try:
        wire.check_component(name)
    except MetainfoError as e:
        raise UsageError(f"cannot share {path}: its name is unusable ({e})") from None
    try:
        top = os.stat(absolute)
    except OSError as e:
        raise _file_error(e, path, "share") from None
    if stat.S_ISREG(top.st_mode):
        return LocalShare(name, False, (FileEntry(name, top.st_size),), (absolute,))
    if not stat.S_ISDIR(top.st_mode):
        raise UsageError(f"cannot share {path}: not a regular file or directory")
    found: list[tuple[bytes, FileEntry, str]] = []
    pending = [("", absolute)]
    while pending:
        relative_dir, local_dir = pending.pop()
        try:
            with os.scandir(local_dir) as entries:
                entries = list(entries)
        except OSError as e:
            raise _file_error(e, local_dir, "list") from None
        for entry in entries:
            relative = f"{relative_dir}/{entry.name}" if relative_dir else entry.name
            try:
                wire.check_component(entry.name, "file name")
                wire.check_relative_path(relative)
            except MetainfoError as e:
                raise UsageError(f"cannot share {entry.path}: {e}") from None
            try:
                if entry.is_symlink():
                    raise UsageError(
                        f"cannot share {entry.path}: symbolic links inside a shared directory "
                        f"are refused (copy the target in or remove the link)")
                if entry.is_dir(follow_symlinks=False):
                    pending.append((relative, entry.path))
                elif entry.is_file(follow_symlinks=False):
                    size = entry.stat(follow_symlinks=False).st_size
                    found.append((relative.encode(), FileEntry(relative, size), entry.path))
                    if len(found) > wire.MAX_FILES:
                        raise UsageError(f"cannot share {path}: more than {wire.MAX_FILES} "
                                         f"files")
                else:
                    raise UsageError(f"cannot share {entry.path}: not a regular file "
                                     f"(FIFOs, sockets and devices are refused)")
            except OSError as e:
                raise _file_error(e, entry.path, "share") from None
    found.sort(key=lambda item: item[0])
    return LocalShare(name, True, tuple(f for _, f, _ in found),
                      tuple(local for _, _, local in found))


def choose_piece_length(total_size: int) -> int:
    """The smallest power of two giving at most TARGET_PIECE_COUNT pieces, within the default
    bounds, raised further only if the share would otherwise exceed the piece-count cap."""
    target = -(-total_size // TARGET_PIECE_COUNT)
    length = 1 << max(0, (target - 1).bit_length())
    length = max(DEFAULT_MIN_PIECE_LENGTH, min(DEFAULT_MAX_PIECE_LENGTH, length))
    while (wire.piece_count_for(total_size, length) > wire.MAX_PIECES
           and length < wire.MAX_PIECE_LENGTH):
        length *= 2
    return length


def create_metainfo(path: str, piece_length: int | None = None,
                    trackers: tuple[TrackerAddress, ...] = (), comment: str = "",
                    progress: Callable[[int], None] | None = None,
                    now: Callable[[], float] = time.time,
                    threads: int | None = None) -> Metainfo:
    """Hash a file or directory tree into a :class:`Metainfo`.

    ``progress(bytes_done)`` is called on the calling thread with the running total of bytes
    hashed. ``threads`` hash in parallel (default: one per CPU, at most MAX_HASH_THREADS);
    SHA-256 and reads release the GIL, so two threads on two cores beat a single loop.
    Every limit of the format is checked before the first byte is read.
    """
    return create_metainfo_from_share(scan_share(path), piece_length, trackers, comment,
                                      progress, now, threads)


def create_metainfo_from_share(share: LocalShare, piece_length: int | None = None,
                               trackers: tuple[TrackerAddress, ...] = (), comment: str = "",
                               progress: Callable[[int], None] | None = None,
                               now: Callable[[], float] = time.time,
                               threads: int | None = None) -> Metainfo:
    """:func:`create_metainfo` for files already scanned (to size a progress bar first)."""
    total_size = share.total_size
    if piece_length is None:
        piece_length = choose_piece_length(total_size)
    try:
        wire.check_piece_length(piece_length)
    except MetainfoError as e:
        raise UsageError(str(e)) from None
    piece_count = wire.piece_count_for(total_size, piece_length)
    if piece_count > wire.MAX_PIECES:
        raise UsageError(f"{total_size} bytes in pieces of {piece_length} make {piece_count} "
                         f"pieces, over the limit of {wire.MAX_PIECES}: use longer pieces")
    trackers = tuple(trackers)
    tracker_fields = [{"host": t.host, "port": t.port, "fingerprint": t.fingerprint}
                      for t in trackers]
    try:
        wire.check_trackers(tracker_fields)
        wire.check_comment(comment)
    except MetainfoError as e:
        raise UsageError(str(e)) from None
    size = wire.encoded_size(share.name, (f.path for f in share.files), piece_count,
                             tracker_fields, comment)
    if size > wire.MAX_METAINFO_SIZE:
        raise UsageError(f"the .p2p would be {size} bytes, over the limit of "
                         f"{wire.MAX_METAINFO_SIZE}: use longer pieces or fewer files")
    hasher = PieceHasher(share.local_paths, [f.size for f in share.files], piece_length,
                         threads=threads)
    piece_hashes = hasher.run(progress)
    return Metainfo(
        name=share.name, piece_length=piece_length, total_size=total_size,
        is_directory=share.is_directory, files=share.files, piece_hashes=piece_hashes,
        trackers=trackers, created=int(now()), comment=comment)


class PieceHasher:
    """SHA-256 of every piece of files laid end to end, hashed by a few threads.

    Threads claim batches of whole pieces (about READ_BLOCK bytes) from a shared counter, read
    them with positioned reads into their own reusable buffer and hash them; the calling thread
    only collects progress. Sizes are checked again as files are opened, so a file changed
    since the scan fails the run instead of producing wrong hashes.
    """

    def __init__(self, local_paths, sizes, piece_length: int, threads: int | None = None):
        self.local_paths = tuple(local_paths)
        self.sizes = tuple(sizes)
        self.piece_length = piece_length
        self.total_size = sum(self.sizes)
        self.piece_count = wire.piece_count_for(self.total_size, piece_length)
        self._starts = list(itertools.accumulate(self.sizes, initial=0))[:-1]
        if piece_length <= READ_BLOCK:
            self._pieces_per_batch = READ_BLOCK // piece_length
            self._buffer_size = piece_length * self._pieces_per_batch
        else:
            self._pieces_per_batch = 1
            self._buffer_size = READ_BLOCK
        self._buffer_size = max(1, min(self._buffer_size, self.total_size))
        batches = -(-self.piece_count // self._pieces_per_batch)
        wanted = threads or min(os.cpu_count() or 1, MAX_HASH_THREADS)
        self.threads = max(1, min(wanted, batches))
        self._digests = bytearray(self.piece_count * wire.HASH_SIZE)
        self._next_batch = itertools.count().__next__  # atomic under the GIL
        self._stop = threading.Event()
        self._events: queue.SimpleQueue = queue.SimpleQueue()

    def run(self, progress: Callable[[int], None] | None = None) -> bytes:
        if not self.piece_count:
            return b""
        workers = [threading.Thread(target=self._work, name=f"piece-hasher-{n}", daemon=True)
                   for n in range(self.threads)]
        for worker in workers:
            worker.start()
        done = 0
        running = len(workers)
        failure = None
        try:
            while running:
                event = self._events.get()
                if event is None:
                    running -= 1
                elif isinstance(event, BaseException):
                    failure = failure or event
                    self._stop.set()
                else:
                    done += event
                    if progress is not None and failure is None:
                        progress(done)
        finally:
            # Also on KeyboardInterrupt: each worker stops after its current block.
            self._stop.set()
            for worker in workers:
                worker.join()
        if failure is not None:
            raise failure
        return bytes(self._digests)

    def _work(self) -> None:
        reader = _PieceSpaceReader(self.local_paths, self.sizes, self._starts)
        view = memoryview(bytearray(self._buffer_size))
        piece_length = self.piece_length
        digests = self._digests
        sha256 = hashlib.sha256
        size = wire.HASH_SIZE
        try:
            while not self._stop.is_set():
                first = self._next_batch() * self._pieces_per_batch
                if first >= self.piece_count:
                    break
                last = min(first + self._pieces_per_batch, self.piece_count)
                start = first * piece_length
                end = min(last * piece_length, self.total_size)
                if piece_length <= len(view) or end - start <= len(view):
                    # Whole pieces fit in the buffer: one read, one hash call per piece.
                    chunk = view[:end - start]
                    reader.read_into(start, chunk)
                    for piece, offset in enumerate(range(0, end - start, piece_length), first):
                        digests[piece * size:(piece + 1) * size] = sha256(
                            chunk[offset:offset + piece_length]).digest()
                else:
                    # A piece longer than the buffer (batches are then one piece).
                    hasher = sha256()
                    position = start
                    while position < end and not self._stop.is_set():
                        chunk = view[:min(len(view), end - position)]
                        reader.read_into(position, chunk)
                        hasher.update(chunk)
                        position += len(chunk)
                    digests[first * size:(first + 1) * size] = hasher.digest()
                self._events.put(end - start)
        except BaseException as e:  # handed to the calling thread, which raises it
            self._events.put(e)
        finally:
            reader.close()
            self._events.put(None)


class _PieceSpaceReader:
    """Positioned reads of the piece space, keeping the last file it used open."""

    def __init__(self, local_paths, sizes, starts):
        self.local_paths = local_paths
        self.sizes = sizes
        self.starts = starts
        self._open_index = -1
        self._fd = -1

    def read_into(self, position: int, view: memoryview) -> None:
        filled = 0
        while filled < len(view):
            index = bisect.bisect_right(self.starts, position) - 1
            fd = self._file(index)
            offset = position - self.starts[index]
            want = min(len(view) - filled, self.sizes[index] - offset)
            try:
                got = os.preadv(fd, [view[filled:filled + want]], offset)
            except OSError as e:
                raise _file_error(e, self.local_paths[index], "read") from None
            if got <= 0:
                raise UsageError(f"{self.local_paths[index]} shrank while it was being hashed")
            filled += got
            position += got

    def _file(self, index: int) -> int:
        if index != self._open_index:
            self.close()
            path = self.local_paths[index]
            try:
                self._fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise _file_error(e, path, "read") from None
            self._open_index = index
            status = os.fstat(self._fd)
            if not stat.S_ISREG(status.st_mode) or status.st_size != self.sizes[index]:
                raise UsageError(f"{path} changed while the share was being hashed")
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        self._open_index = -1
