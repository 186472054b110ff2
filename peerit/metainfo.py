"""The .p2p metainfo model: what a share holds and how its pieces map onto its files
(:mod:`peerit.share_builder` creates one from files on disk).

A share is a single file or a directory tree. Its files are laid end to end, in canonical
order (sorted by the UTF-8 bytes of their relative paths), in one *piece space* cut into pieces
of ``piece_length`` bytes (the last one shorter); a piece may span several files. Empty files
occupy no bytes of the piece space, so storage creates them without any piece.
"""

import bisect
import errno
import os
import stat
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import PurePosixPath
from typing import NamedTuple

from peerit.addresses import TrackerAddress
from peerit.errors import MetainfoError, NoSpace, PermissionDenied, UsageError
from peerit.wire import metainfo as wire

@dataclass(frozen=True)
class FileEntry:
    """One file of a share: its path relative to the share's directory, and its size."""
    path: str
    size: int


class Segment(NamedTuple):
    """A run of the piece space stored contiguously in one file."""
    file_index: int
    file_offset: int
    length: int


@dataclass(frozen=True)
class Metainfo:
    """The content of a .p2p file. ``info_hash`` covers only the info-section fields (name,
    piece length, total size, layout, files and piece hashes)."""

    name: str
    piece_length: int
    total_size: int
    is_directory: bool
    files: tuple[FileEntry, ...]
    piece_hashes: bytes
    trackers: tuple[TrackerAddress, ...] = ()
    created: int = 0
    comment: str = ""

    # -- identity ---------------------------------------------------------------------------

    @cached_property
    def info_hash(self) -> bytes:
        return wire.info_hash(self.info_bytes)

    @cached_property
    def info_bytes(self) -> bytes:
        """The canonical info section: what the info-hash is taken over, and what peers
        serve to a downloader holding only a link."""
        return wire.build_info(self._info())

    @property
    def info_hash_hex(self) -> str:
        return self.info_hash.hex()

    # -- pieces -----------------------------------------------------------------------------

    @cached_property  # immutable (frozen); asked per block and per piece by the swarm
    def piece_count(self) -> int:
        return len(self.piece_hashes) // wire.HASH_SIZE

    def piece_size(self, index: int) -> int:
        self._check_piece(index)
        if index == self.piece_count - 1:
            return self.total_size - index * self.piece_length
        return self.piece_length

    def piece_hash(self, index: int) -> bytes:
        self._check_piece(index)
        return self.piece_hashes[index * wire.HASH_SIZE:(index + 1) * wire.HASH_SIZE]

    def _check_piece(self, index: int) -> None:
        if not 0 <= index < self.piece_count:
            raise IndexError(f"piece {index} out of range 0..{self.piece_count - 1}")

    # -- piece space <-> files --------------------------------------------------------------

    @cached_property
    def _file_starts(self) -> list[int]:
        starts = []
        position = 0
        for entry in self.files:
            starts.append(position)
            position += entry.size
        return starts

    def segments(self, piece_index: int, offset: int = 0,
                 length: int | None = None) -> list[Segment]:
        """The file runs holding ``length`` bytes at ``offset`` in a piece (default: the rest
        of the piece), in order. Empty files never appear."""
        size = self.piece_size(piece_index)
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise ValueError(f"range {offset}+{length} outside piece {piece_index} "
                             f"of {size} bytes")
        position = piece_index * self.piece_length + offset
        end = position + length
        starts = self._file_starts
        # The last file starting at or before the position; an empty file shares its start
        # with the next one, so bisect_right never stops on it inside the piece space.
        index = bisect.bisect_right(starts, position) - 1
        runs = []
        while position < end:
            file_end = starts[index] + self.files[index].size
            take = min(end, file_end) - position
            if take > 0:
                runs.append(Segment(index, position - starts[index], take))
                position += take
            index += 1
        return runs

    def relative_target(self, entry: FileEntry) -> PurePosixPath:
        """Where a file goes, relative to the download directory."""
        if self.is_directory:
            return PurePosixPath(self.name, entry.path)
        return PurePosixPath(self.name)

    # -- bytes and files ---------------------------------------------------------------------

    def _info(self) -> dict:
        return wire.info_dict(self.name, self.piece_length, self.total_size, self.is_directory,
                              ((f.path, f.size) for f in self.files), self.piece_hashes)

    def to_bytes(self) -> bytes:
        trackers = [{"host": t.host, "port": t.port, "fingerprint": t.fingerprint}
                    for t in self.trackers]
        return wire.build(self._info(), trackers, self.created, self.comment)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Metainfo":
        parsed = wire.parse(data)
        metainfo = cls._from_parsed_info(
            parsed.info.value,
            trackers=tuple(TrackerAddress(t.host, t.port, t.fingerprint)
                           for t in parsed.trackers),
            created=parsed.created,
            comment=parsed.comment,
        )
        # The bytes just hashed are the canonical encoding: no need to build them again.
        metainfo.__dict__["info_hash"] = wire.info_hash(parsed.info.data)
        return metainfo

    @classmethod
    def from_info(cls, info_bytes: bytes, trackers=()) -> "Metainfo":
        """A share from its info section alone (metadata fetched from peers, already checked
        against the info-hash), with the trackers of the link it came from."""
        metainfo = cls._from_parsed_info(wire.parse_info(info_bytes), trackers=tuple(trackers))
        metainfo.__dict__["info_bytes"] = bytes(info_bytes)
        return metainfo

    @classmethod
    def _from_parsed_info(cls, info, **rest) -> "Metainfo":
        return cls(
            name=info.name,
            piece_length=info.piece_length,
            total_size=info.total_size,
            is_directory=info.layout == "directory",
            files=tuple(FileEntry(f.path, f.size) for f in info.files),
            piece_hashes=info.piece_hashes,
            **rest,
        )

    @classmethod
    def read(cls, path: str) -> "Metainfo":
        """Load a .p2p file, reading no more than the format's size limit."""
        try:
            # O_NONBLOCK: opening a FIFO someone named by mistake must not hang.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise _file_error(e, path, "read") from None
        limit = wire.MAX_METAINFO_SIZE
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise UsageError(f"{path} is not a regular file")
            data = b""
            if status.st_size <= limit:
                # One byte more than announced, in case the file grew since fstat.
                with os.fdopen(fd, "rb", closefd=False) as f:
                    data = f.read(status.st_size + 1)
                    if len(data) > status.st_size:
                        data += f.read(limit + 1 - len(data))
        except OSError as e:
            raise _file_error(e, path, "read") from None
        finally:
            os.close(fd)
        if status.st_size > limit or len(data) > limit:
            raise MetainfoError(f"{path} is larger than the {wire.MAX_METAINFO_SIZE} byte "
                                f"limit for .p2p files")
        try:
            return cls.from_bytes(data)
        except MetainfoError as e:
            raise MetainfoError(f"{path} is not a valid .p2p file: {e}") from None

    def write(self, path: str, overwrite: bool = True) -> None:
        """Write atomically: a temporary file in the same directory, fsync, then rename (or,
        when not overwriting, link, which fails if ``path`` appeared meanwhile)."""
        data = self.to_bytes()
        directory = os.path.dirname(os.path.abspath(path))
        try:
            fd, temporary = tempfile.mkstemp(
                dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        except OSError as e:
            raise _file_error(e, path, "write") from None
        try:
            with open(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), 0o644)  # a .p2p is meant to be passed around
                os.fsync(f.fileno())
            if overwrite:
                os.replace(temporary, path)
            else:
                os.link(temporary, path)
                os.unlink(temporary)
        except FileExistsError:
            os.unlink(temporary)
            raise UsageError(f"{path} already exists") from None
        except OSError as e:
            _remove_quietly(temporary)
            raise _file_error(e, path, "write") from None
        except BaseException:
            _remove_quietly(temporary)
            raise
        _fsync_directory(directory)


def _file_error(error: OSError, path: str, doing: str) -> Exception:
    if isinstance(error, FileNotFoundError):
        return UsageError(f"cannot {doing} {path}: no such file or directory")
    if isinstance(error, PermissionError):
        return PermissionDenied(f"cannot {doing} {path}: permission denied")
    if isinstance(error, IsADirectoryError):
        return UsageError(f"cannot {doing} {path}: it is a directory")
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"cannot {doing} {path}: no space left on device")
    return UsageError(f"cannot {doing} {path}: {error.strerror or error}")


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_directory(directory: str) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
