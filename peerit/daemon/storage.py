"""Piece storage: the files of one share on disk, addressed by (piece, offset).

Paths come from the network (a .p2p from anyone), so every file is reached by walking its
directory components from the download root with ``O_NOFOLLOW`` relative to the parent's file
descriptor: a ``..`` cannot appear (the metainfo refuses it) and a symlink planted anywhere
below the root is refused instead of followed. Blocks are written by offset with ``pwrite``;
files are preallocated so a full disk shows up when the download starts, not in the middle.
"""

import errno
import hashlib
import os
import stat
import threading
from collections import OrderedDict

from zope.interface import Interface, implementer

from peerit.errors import NoSpace, PeeritError, PermissionDenied, UsageError

HASH_CHUNK = 1 << 20
MAX_OPEN_FILES = 64


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

    def __init__(self, metainfo, root: str, writable: bool = True):
        self.metainfo = metainfo
        self.root = os.path.abspath(root)
        self.writable = writable
        self._paths = [str(metainfo.relative_target(f)) for f in metainfo.files]
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._lock = threading.Lock()  # the fd cache is shared with hashing threads
        self._root_fd = None
        self._dirty: set[int] = set()

    def path_of(self, file_index: int) -> str:
        return os.path.join(self.root, self._paths[file_index])

    # -- opening --------------------------------------------------------------------------
    def open(self, create: bool = False) -> None:
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
        for index, entry in enumerate(self.metainfo.files):
            fd = self._open_file(index, create)
            if create:
                self._preallocate(fd, entry.size, self.path_of(index))
            else:
                size = os.fstat(fd).st_size
                if size != entry.size:
                    raise UsageError(
                        f"{self.path_of(index)} has {size} bytes, the share says {entry.size}")

    def _open_file(self, index: int, create: bool) -> int:
        with self._lock:
            fd = self._fds.get(index)
            if fd is not None:
                self._fds.move_to_end(index)
                return fd
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
                    os.mkdir(part, 0o755, dir_fd=dir_fd)
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
        with self._lock:
            self._fds[index] = fd
            while len(self._fds) > MAX_OPEN_FILES:
                old_index, old_fd = self._fds.popitem(last=False)
                if old_index in self._dirty:
                    os.fdatasync(old_fd)
                    self._dirty.discard(old_index)
                os.close(old_fd)
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

    def _fd(self, index: int) -> int:
        return self._open_file(index, False)

    # -- data -----------------------------------------------------------------------------
    def write_block(self, piece: int, offset: int, data) -> None:
        view = memoryview(data)
        done = 0
        for file_index, file_offset, length in self.metainfo.segments(piece, offset, len(view)):
            fd = self._fd(file_index)
            chunk = view[done:done + length]
            try:
                while chunk:
                    written = os.pwrite(fd, chunk, file_offset)
                    chunk = chunk[written:]
                    file_offset += written
            except OSError as e:
                raise _os_error(e, self.path_of(file_index)) from None
            self._dirty.add(file_index)
            done += length

    def read_block(self, piece: int, offset: int, length: int) -> bytes:
        segments = self.metainfo.segments(piece, offset, length)
        try:
            if len(segments) == 1:
                file_index, file_offset, seg_length = segments[0]
                data = os.pread(self._fd(file_index), seg_length, file_offset)
                if len(data) != seg_length:
                    raise PeeritError(f"{self.path_of(file_index)} is shorter than the share")
                return data
            parts = []
            for file_index, file_offset, seg_length in segments:
                data = os.pread(self._fd(file_index), seg_length, file_offset)
                if len(data) != seg_length:
                    raise PeeritError(f"{self.path_of(file_index)} is shorter than the share")
                parts.append(data)
            return b"".join(parts)
        except OSError as e:
            raise _os_error(e, self.root) from None

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
                got = os.preadv(self._fd(file_index), [view[:length]], file_offset)
                if got != length:
                    return b""  # a short file cannot match any hash
                digest.update(view[:length])
            position += want
        return digest.digest()

    def sync(self) -> None:
        with self._lock:
            dirty = [(i, self._fds[i]) for i in self._dirty if i in self._fds]
            self._dirty.clear()
        for _, fd in dirty:
            os.fdatasync(fd)

    def close(self) -> None:
        with self._lock:
            fds = list(self._fds.values())
            self._fds.clear()
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
