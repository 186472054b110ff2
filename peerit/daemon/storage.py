"""Piece storage: the files of one share on disk, addressed by (piece, offset).

Paths come from the network (a .p2p from anyone), so every file is reached by walking its
directory components from the download root with ``O_NOFOLLOW`` relative to the parent's file
descriptor: a ``..`` cannot appear (the metainfo refuses it) and a symlink planted anywhere
below the root is refused instead of followed. Blocks are written by offset with ``pwrite``;
files are preallocated so a full disk shows up when the download starts, not in the middle.
"""

import errno
import hashlib
import mmap
import os
import stat
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from twisted.logger import Logger
from zope.interface import Interface, implementer

from peerit.errors import NoSpace, PeeritError, PermissionDenied, UsageError

log = Logger()

HASH_CHUNK = 1 << 20
MAX_OPEN_FILES = 64
# Direct I/O: offsets, lengths and buffer addresses in multiples of this (the largest
# logical block size in common use; 512-byte devices accept it too).
DIRECT_ALIGN = 4096
# Files smaller than this go through the page cache even in a download: an O_DIRECT write
# waits for the device, and a tree of small files paid that wait (and a second open) per
# file, while the page cache a small file fills is small.
DIRECT_MIN_FILE_SIZE = 1 << 20
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
# A new tree's files are made by this many threads, a directory's files by one thread each:
# creating a file is kernel CPU (inode allocation: on ext4 without a journal it scans past
# every inode freed in the last minutes), and creates in one directory are serialized by its
# lock, while different directories' run side by side.
CREATE_THREADS = 4


class _Bounce(threading.local):
    """A page-aligned buffer per thread for direct I/O (an anonymous mmap is aligned).

    Reused, so its pages are warm: the point of direct I/O here is not touching fresh memory.
    """

    def __init__(self):
        self.buffer = None
        self.view = None

    def get(self, size: int) -> memoryview:
        if self.buffer is None or len(self.buffer) < size:
            if self.view is not None:
                self.view.release()
            self.buffer = mmap.mmap(-1, max(size, HASH_CHUNK))
            self.view = memoryview(self.buffer)
        return self.view[:size]


_bounce = _Bounce()
_read_out = _Bounce()  # read_block's result before it is copied out (page-aligned)


class IPieceStore(Interface):
    def open(create):
        """Open (and with ``create``, make and preallocate) every file of the share."""

    def write_block(piece, offset, data):
        """Store ``data`` at ``offset`` within ``piece``."""

    def read_block(piece, offset, length):
        """The stored bytes of a block."""

    def piece_digest(piece):
        """SHA-256 of the piece as stored. Blocking: call it from a worker thread."""

    def sync():
        """Flush written data to stable storage. Blocking."""

    def close():
        """Release file descriptors."""

    def delete_files():
        """Remove the share's files (and directories it created and left empty)."""


def _os_error(e: OSError, path: str) -> PeeritError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"no space left on device for {path}")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(f"permission denied: {path}")
    if e.errno == errno.ELOOP:
        return UsageError(f"refusing to follow a symlink at {path}")
    if e.errno == errno.ENOTDIR:
        return UsageError(f"a file stands where a directory is needed in {path}")
    return PeeritError(f"{path}: {os.strerror(e.errno)}")


def _is_symlink(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


@implementer(IPieceStore)
class FileStore:
    """The files of ``metainfo`` under ``root`` (the directory that holds the share's name)."""

    def __init__(self, metainfo, root: str, writable: bool = True, direct: bool = False):
        self.metainfo = metainfo
        self.root = os.path.abspath(root)
        self.writable = writable
        # A download writes (and reads back what is not cached) with O_DIRECT where the
        # filesystem allows and the range is aligned: see _write_at / _read_into.
        self.direct = direct
        self._direct_fds: dict[int, int] = {}  # file index -> its O_DIRECT fd
        self._direct_refused = False  # the device refused our alignment once: no more
        self._retired_fds: list[int] = []  # direct fds dropped since; closed by close()
        self.direct_bytes_written = self.direct_bytes_read = 0  # diagnostics and tests
        self._paths = [str(metainfo.relative_target(f)) for f in metainfo.files]
        self._fds: OrderedDict[int, int] = OrderedDict()
        # The fd cache is shared by the reactor, the writer and hashing threads. An fd in use
        # (leased) is never closed under its user: closed and its number reused by another
        # open, a pending pwrite would land in some other file.
        self._lock = threading.Condition(threading.Lock())
        self._leases: dict[int, int] = {}  # file index -> operations using its fd now
        self._closed = False
        self._root_fd = None
        self._dirty: set[int] = set()
        # Set once open_files has opened (or made) every file: no block is written before.
        self.files_ready = False

    def path_of(self, file_index: int) -> str:
        return os.path.join(self.root, self._paths[file_index])

    # -- opening --------------------------------------------------------------------------
    def open(self, create: bool = False) -> None:
        self.open_root(create)
        self.open_files(create)

    def open_root(self, create: bool = False) -> None:
        """The download root (made with ``create``): quick, so a target the daemon cannot
        write is refused at once. The files come with :meth:`open_files`."""
        try:
            if create:
                os.makedirs(self.root, exist_ok=True)
            self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise _os_error(e, self.root) from None
        if create and self.metainfo.is_directory and not self.metainfo.files:
            # A share of an empty directory: the directory itself is the whole download.
            try:
                os.mkdir(self.metainfo.name, 0o755, dir_fd=self._root_fd)
            except FileExistsError:
                pass
            except OSError as e:
                raise _os_error(e, os.path.join(self.root, self.metainfo.name)) from None

    def open_files(self, create: bool = False) -> None:
        """Open (with ``create``: make and preallocate) every file. A thousand small files
        take 50-700 ms, so a new download runs this on its writer thread, queued ahead of
        every block (``Transfer.create_files``); until it has returned, writes are refused.
        Files in several directories are made by up to CREATE_THREADS threads."""
        by_directory: dict[str, list[int]] = {}
        for index, path in enumerate(self._paths):
            by_directory.setdefault(os.path.dirname(path), []).append(index)
        groups = list(by_directory.values())
        if create and len(groups) > 1:
            with ThreadPoolExecutor(min(CREATE_THREADS, len(groups)),
                                    thread_name_prefix="peerit-create") as pool:
                for done in [pool.submit(self._open_group, group, create) for group in groups]:
                    done.result()  # the first failure, as a single thread would raise it
        else:
            for group in groups:
                self._open_group(group, create)
        self.files_ready = True

    def _open_group(self, indexes: list[int], create: bool) -> None:
        for index in indexes:
            entry = self.metainfo.files[index]
            fd = self._lease(index, create)
            try:
                if create:
                    self._preallocate(fd, entry.size, self.path_of(index))
                else:
                    size = os.fstat(fd).st_size
                    if size != entry.size:
                        raise UsageError(f"{self.path_of(index)} has {size} bytes, "
                                         f"the share says {entry.size}")
            finally:
                self._unlease(index)

    def _lease(self, index: int, create: bool = False) -> int:
        """The file's fd, kept open (not evicted, not closed) until :meth:`_unlease`.

        The lease is taken before the file is opened: ``close`` then also waits for a walk
        from the root fd in progress, which must not see that fd closed (or reused).
        """
        with self._lock:
            if self._closed:
                raise PeeritError(f"{self.root}: the share's files are closed")
            self._leases[index] = self._leases.get(index, 0) + 1
            fd = self._fds.get(index)
            if fd is not None:
                self._fds.move_to_end(index)
                return fd
        try:
            fd = self._open_file(index, create)
        except BaseException:
            self._unlease(index)
            raise
        direct_fd = self._open_direct(fd) if self.direct and not self._direct_refused \
            and self.metainfo.files[index].size >= DIRECT_MIN_FILE_SIZE else None
        with self._lock:
            existing = self._fds.get(index)
            if existing is not None:  # another thread opened it meanwhile
                os.close(fd)
                if direct_fd is not None:
                    os.close(direct_fd)
                fd = existing
                self._fds.move_to_end(index)
            else:
                self._fds[index] = fd
                if direct_fd is not None:
                    self._direct_fds[index] = direct_fd
                self._evict()
        return fd

    def _open_direct(self, fd: int) -> int | None:
        """A second fd on the same open file with O_DIRECT, or None where the filesystem
        refuses it (tmpfs, some FUSE). Reopened through /proc so no path is walked again."""
        flags = (os.O_RDWR if self.writable else os.O_RDONLY) | getattr(os, "O_DIRECT", 0)
        if flags == os.O_RDWR or flags == os.O_RDONLY:
            return None
        try:
            return os.open(f"/proc/self/fd/{fd}", flags)
        except OSError:
            return None

    def _unlease(self, index: int, dirty: bool = False) -> None:
        with self._lock:
            left = self._leases[index] - 1
            if left:
                self._leases[index] = left
            else:
                del self._leases[index]
                if not self._leases:
                    self._lock.notify_all()  # close() may be waiting
            if dirty:
                self._dirty.add(index)

    def _evict(self) -> None:
        """Close the least recently used fds beyond MAX_OPEN_FILES (lock held)."""
        excess = len(self._fds) - MAX_OPEN_FILES
        if excess <= 0:
            return
        for old_index in [i for i in self._fds if i not in self._leases][:excess]:
            # Closed without fdatasync (its written pages stay the file's, and sync() flushes
            # it through a new fd): a flush per closed file cost a tree of 1,000 small files
            # 0.3 s of its download.
            os.close(self._fds.pop(old_index))
            direct_fd = self._direct_fds.pop(old_index, None)
            if direct_fd is not None:
                os.close(direct_fd)

    def _open_file(self, index: int, create: bool) -> int:
        parts = self._paths[index].split("/")
        path = self.path_of(index)
        dir_fd = self._root_fd
        part = parts[0]
        opened = []
        try:
            for part in parts[:-1]:  # ``part`` names the component on error
                try:
                    next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                      dir_fd=dir_fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(part, 0o755, dir_fd=dir_fd)
                    except FileExistsError:
                        pass  # made meanwhile by another creating thread; opened below
                    next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                      dir_fd=dir_fd)
                opened.append(next_fd)
                dir_fd = next_fd
            part = parts[-1]
            flags = (os.O_RDWR if self.writable else os.O_RDONLY) | os.O_NOFOLLOW
            if create:
                flags |= os.O_CREAT
            fd = os.open(parts[-1], flags, 0o644, dir_fd=dir_fd)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise UsageError(f"{path} is not a regular file")
        except OSError as e:
            if e.errno in (errno.ENOTDIR, errno.ELOOP) and _is_symlink(part, dir_fd):
                raise UsageError(f"refusing to follow a symlink at {path}") from None
            raise _os_error(e, path) from None
        finally:
            for d in opened:
                os.close(d)
        return fd

    def _preallocate(self, fd: int, size: int, path: str) -> None:
        try:
            current = os.fstat(fd).st_size
            if current > size:
                os.ftruncate(fd, size)
            elif size and current < size:
                try:
                    os.posix_fallocate(fd, 0, size)
                except OSError as e:
                    if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    os.ftruncate(fd, size)
        except OSError as e:
            raise _os_error(e, path) from None

    # -- data -----------------------------------------------------------------------------
    def write_block(self, piece: int, offset: int, data) -> None:
        if not self.files_ready:
            raise PeeritError(f"{self.root}: a block came before the share's files were made")
        view = memoryview(data)
        done = 0
        for file_index, file_offset, length in self.metainfo.segments(piece, offset, len(view)):
            fd = self._lease(file_index)
            try:
                self._write_at(file_index, fd, view[done:done + length], file_offset)
            except OSError as e:
                raise _os_error(e, self.path_of(file_index)) from None
            finally:
                self._unlease(file_index, dirty=True)
            done += length

    def _write_at(self, file_index: int, fd: int, chunk, file_offset: int) -> None:
        """Write ``chunk`` at ``file_offset``: its aligned head with O_DIRECT when we can.

        Why: a download's data never needs the page cache (pieces are hashed from memory),
        and filling fresh page-cache pages was the downloader's largest cost here: 1 GiB of
        buffered pwrite took 1.1-3.6 s of kernel time on this VM against 0.3 s with O_DIRECT
        (bench/bench_pagecache.py, docs/benchmarks.md). It also keeps a large download from
        evicting everything else cached, and the data is on the device at once.
        """
        direct_fd = self._direct_fds.get(file_index)
        if direct_fd is not None and not file_offset % DIRECT_ALIGN:
            head = len(chunk) - len(chunk) % DIRECT_ALIGN
            if head:
                bounce = _bounce.get(head)
                bounce[:] = chunk[:head]
                try:
                    while bounce:
                        written = os.pwrite(direct_fd, bounce, file_offset)
                        bounce = bounce[written:]
                        file_offset += written
                        chunk = chunk[written:]
                        self.direct_bytes_written += written
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    self._no_direct(e)  # alignment the device refuses: buffered from now on
        while chunk:
            written = os.pwrite(fd, chunk, file_offset)
            chunk = chunk[written:]
            file_offset += written

    def read_block(self, piece: int, offset: int, length: int) -> bytes:
        if not self.direct:
            parts = []
            for file_index, file_offset, seg_length in self.metainfo.segments(
                    piece, offset, length):
                fd = self._lease(file_index)
                try:
                    data = os.pread(fd, seg_length, file_offset)
                except OSError as e:
                    raise _os_error(e, self.path_of(file_index)) from None
                finally:
                    self._unlease(file_index)
                if len(data) != seg_length:
                    raise PeeritError(f"{self.path_of(file_index)} is shorter than the share")
                parts.append(data)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        # Read into this thread's aligned output buffer (O_DIRECT can fill it in place),
        # then one copy out: no zeroed bytearray per upload (memset was 2.5% of a swarm).
        view = _read_out.get(length)
        done = 0
        for file_index, file_offset, seg_length in self.metainfo.segments(piece, offset, length):
            fd = self._lease(file_index)
            try:
                got = self._read_into(file_index, fd, view[done:done + seg_length], file_offset,
                                      view_aligned=not done % DIRECT_ALIGN)
            except OSError as e:
                raise _os_error(e, self.path_of(file_index)) from None
            finally:
                self._unlease(file_index)
            if got != seg_length:
                raise PeeritError(f"{self.path_of(file_index)} is shorter than the share")
            done += seg_length
        return bytes(view)

    def _read_into(self, file_index: int, fd: int, view, file_offset: int,
                   view_aligned: bool = False) -> int:
        """Fill ``view`` from ``file_offset``; returns the bytes read (short only at EOF).

        From the page cache when the data is there (RWF_NOWAIT: no disk wait, no new pages);
        otherwise the aligned part with O_DIRECT into this thread's bounce buffer, so reading
        back a download does not fill fresh page-cache pages either.
        """
        want = len(view)
        done = 0
        if _RWF_NOWAIT:
            try:
                done = os.preadv(fd, [view], file_offset, _RWF_NOWAIT)
            except (BlockingIOError, OSError) as e:
                if not isinstance(e, BlockingIOError) and e.errno != errno.EOPNOTSUPP:
                    raise
                done = 0
            if done == want or (done and (file_offset + done) % DIRECT_ALIGN):
                return done if done == want else done + self._read_plain(
                    fd, view[done:], file_offset + done)
        direct_fd = self._direct_fds.get(file_index)
        position = file_offset + done
        if direct_fd is not None and not position % DIRECT_ALIGN:
            aligned = (want - done) - (want - done) % DIRECT_ALIGN
            while aligned:
                # ``view`` itself when its memory is page-aligned there, else the bounce.
                in_place = view_aligned and not done % DIRECT_ALIGN
                target = view[done:done + aligned] if in_place else _bounce.get(aligned)
                try:
                    got = os.preadv(direct_fd, [target], position)
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    self._no_direct(e)
                    break
                if not in_place:
                    view[done:done + got] = target[:got]
                self.direct_bytes_read += got
                done += got
                position += got
                if got < aligned:
                    return done  # end of file
                aligned = 0
        if done < want:
            done += self._read_plain(fd, view[done:], file_offset + done)
        return done

    def _no_direct(self, error: OSError) -> None:
        """The device wants another alignment than DIRECT_ALIGN: stop using O_DIRECT for
        this store (its fds close with the others)."""
        with self._lock:
            if self._direct_fds:
                log.info("{root}: direct I/O refused ({error}); using the page cache",
                         root=self.root, error=error)
            self._direct_refused = True
            # Not closed here: another thread may be inside a call on one (under its
            # file's lease). close() closes them.
            self._retired_fds += self._direct_fds.values()
            self._direct_fds.clear()

    @staticmethod
    def _read_plain(fd: int, view, file_offset: int) -> int:
        done = 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], file_offset + done)
            if not got:
                break
            done += got
        return done

    def piece_digest(self, piece: int) -> bytes:
        size = self.metainfo.piece_size(piece)
        digest = hashlib.sha256()
        buffer = bytearray(min(HASH_CHUNK, max(size, 1)))
        view = memoryview(buffer)
        position = 0
        while position < size:
            want = min(len(buffer), size - position)
            for file_index, file_offset, length in self.metainfo.segments(piece, position,
                                                                         want):
                fd = self._lease(file_index)
                try:
                    if self.direct:
                        got = self._read_into(file_index, fd, view[:length], file_offset)
                    else:
                        got = os.preadv(fd, [view[:length]], file_offset)
                finally:
                    self._unlease(file_index)
                if got != length:
                    return b""  # a short file cannot match any hash
                digest.update(view[:length])
            position += want
        return digest.digest()

    def sync(self) -> None:
        """fdatasync every file written since the last sync, reopening those whose fd was
        closed meanwhile (the cap on open files): fdatasync flushes a file, not an fd."""
        with self._lock:
            dirty = sorted(self._dirty)
            self._dirty.clear()
        for done, index in enumerate(dirty):
            try:
                fd = self._lease(index)
            except PeeritError:
                with self._lock:
                    self._dirty.update(dirty[done:])
                raise
            try:
                os.fdatasync(fd)
            except OSError as e:
                with self._lock:
                    self._dirty.update(dirty[done:])
                raise _os_error(e, self.path_of(index)) from None
            finally:
                self._unlease(index)

    def close(self) -> None:
        """Close every file once no thread is using it; later calls fail with PeeritError."""
        with self._lock:
            self._closed = True
            while self._leases:
                self._lock.wait()
            fds = list(self._fds.values()) + list(self._direct_fds.values()) + \
                self._retired_fds
            self._fds.clear()
            self._direct_fds.clear()
            self._retired_fds = []
        for fd in fds:
            os.close(fd)
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None

    def delete_files(self) -> None:
        self.close()
        directories = set()
        for index in range(len(self._paths)):
            path = self.path_of(index)
            try:
                if not os.path.islink(path):
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise _os_error(e, path) from None
            parent = os.path.dirname(self._paths[index])
            while parent:
                directories.add(parent)
                parent = os.path.dirname(parent)
        for directory in sorted(directories, key=lambda d: d.count("/"), reverse=True):
            try:
                os.rmdir(os.path.join(self.root, directory))
            except OSError:
                pass  # not empty (the user's own files) or already gone
