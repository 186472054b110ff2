"""Length-prefixed framing shared by the tracker and peer protocols (no I/O here).

A frame is a 4-byte big-endian body length followed by the body. The length is checked
against the protocol's maximum before any of the body is buffered.
"""

import sys

from construct import Int32ub

from peerit.errors import FrameTooLarge
from peerit.shims.refcount import POOL_ALONE, REFCOUNTS

LENGTH = Int32ub  # the declared format; the two functions below are its measured fast path
LENGTH_SIZE = LENGTH.sizeof()


def _parse_length(data) -> int:
    # int.from_bytes is the same big-endian u32 as LENGTH, without construct's per-call
    # overhead, which was a fifth of the tracker's CPU under load (docs/tracker.md).
    return int.from_bytes(data, "big")


def frame_header(body_length: int) -> bytes:
    """The length prefix for a body of ``body_length`` bytes."""
    return body_length.to_bytes(LENGTH_SIZE, "big")


def frame(body: bytes) -> bytes:
    return frame_header(len(body)) + body


LARGE_FRAME = 64 * 1024  # bodies at least this big are assembled in place


class BodyPool:
    """Buffers for large frame bodies, reused once nobody refers to them any more.

    A fresh 256 KiB bytearray per block cost a downloader's reactor 12% (py-spy): zeroing
    it and faulting in new pages (glibc returns freed large chunks to the kernel). A buffer
    goes back into use only when the pool holds the last reference to it (CPython's
    reference count, :mod:`peerit.shims.refcount`): the hasher and writer threads, a block
    held for an out-of-order piece, any memoryview of it, all keep it out of reuse, so no
    one's bytes are ever overwritten. Only the reactor thread allocates; other threads only
    drop references. Without usable reference counts nothing is retained: every body gets a
    fresh buffer.
    """

    def __init__(self, keep: int = 48, refcounts: bool = REFCOUNTS):
        # buffers retained (48 x 256 KiB blocks: 12 MiB at most)
        self.keep = keep if refcounts else 0
        self._buffers: list[bytearray] = []
        self.reused = 0

    def get(self, size: int) -> bytearray:
        for buffer in self._buffers:
            # Only the pool's references: the list, the loop variable, getrefcount's argument.
            if len(buffer) == size and sys.getrefcount(buffer) == POOL_ALONE:
                self.reused += 1
                return buffer
        buffer = bytearray(size)
        if len(self._buffers) < self.keep:
            self._buffers.append(buffer)
        elif self._buffers:
            self._buffers[self.reused % self.keep] = buffer  # rotate: sizes can change
        return buffer


class FrameDecoder:
    """Cuts a byte stream into frames, holding at most one partial frame.

    ``feed`` returns the complete frame bodies found so far and keeps the rest. Small bodies
    come back as ``bytes``; a large one (piece data) is collected straight into a buffer of
    its announced size and returned as that ``bytearray``, so its bytes are copied once, not
    twice. A length above ``max_frame_size`` raises :class:`FrameTooLarge` at once (before
    anything is allocated for it); the caller should drop the connection.
    """

    def __init__(self, max_frame_size: int, pool: BodyPool | None = None):
        self.max_frame_size = max_frame_size
        self.pool = pool  # reuse large bodies' buffers (peer links share one)
        self._buffer = bytearray()
        self._need = None  # body length of the frame being collected, once known
        self._large = None  # the large body being filled, and how much of it is filled
        self._filled = 0
        self._scratch = None  # get_buffer's buffer when no large body is being filled

    @property
    def buffered(self) -> int:
        return len(self._buffer) + self._filled

    def feed(self, data) -> list:
        frames = []
        if self._large is not None:
            data = self._fill_large(data, frames)
            if not data:
                return frames
        if not self._buffer and self._need is None and type(data) is bytes:
            # Nothing pending (the common case for small messages): cut whole frames
            # straight from ``data`` and buffer only an incomplete tail (1.8 -> 0.85 us for
            # a read of two frames; feed was 6-9% of the tracker's CPU). Not for other
            # types: a memoryview may be a reused scratch buffer.
            data = self._cut_whole_frames(data, frames)
            if not data:
                return frames
        buf = self._buffer
        buf += data
        pos = 0
        end = len(buf)
        view = memoryview(buf)
        try:
            while True:
                if self._need is None:
                    if end - pos < LENGTH_SIZE:
                        break
                    need = _parse_length(view[pos:pos + LENGTH_SIZE])
                    if need > self.max_frame_size:
                        raise FrameTooLarge(
                            f"frame of {need} bytes exceeds the limit of "
                            f"{self.max_frame_size}")
                    self._need = need
                    pos += LENGTH_SIZE
                if end - pos < self._need:
                    if self._need >= LARGE_FRAME:
                        # Everything left belongs to this frame: move it to its own buffer.
                        self._large = (self.pool.get(self._need) if self.pool is not None
                                       else bytearray(self._need))
                        self._filled = end - pos
                        self._large[:self._filled] = view[pos:end]
                        pos = end
                    break
                frames.append(view[pos:pos + self._need].tobytes())
                pos += self._need
                self._need = None
        finally:
            view.release()
        if pos:
            del buf[:pos]
        return frames

    def _cut_whole_frames(self, data: bytes, frames: list) -> bytes:
        pos, end, limit = 0, len(data), self.max_frame_size
        while end - pos >= LENGTH_SIZE:
            need = int.from_bytes(data[pos:pos + LENGTH_SIZE], "big")
            if need > limit:
                raise FrameTooLarge(f"frame of {need} bytes exceeds the limit of {limit}")
            if end - pos - LENGTH_SIZE < need:
                break
            pos += LENGTH_SIZE
            frames.append(data[pos:pos + need])
            pos += need
        return data[pos:] if pos else data

    # -- receiving in place (asyncio's BufferedProtocol shape) ------------------------------
    SCRATCH_SIZE = 16 * 1024 + 256  # one TLS record's plaintext

    def get_buffer(self) -> memoryview:
        """Where the next received bytes should go: the rest of the large body being
        collected (so a block's payload is decrypted straight into its buffer), else a
        scratch buffer. Fill at most ``len()`` bytes of it, then call :meth:`buffer_updated`."""
        if self._large is not None:
            return memoryview(self._large)[self._filled:]
        if self._scratch is None:
            self._scratch = memoryview(bytearray(self.SCRATCH_SIZE))
        return self._scratch

    def buffer_updated(self, nbytes: int) -> list:
        """``nbytes`` were written at the start of the last :meth:`get_buffer`; returns the
        frames completed, as :meth:`feed` does."""
        if self._large is not None:
            self._filled += nbytes
            if self._filled < len(self._large):
                return []
            frame = self._large
            self._large, self._filled, self._need = None, 0, None
            return [frame]
        return self.feed(self._scratch[:nbytes])

    def _fill_large(self, data, frames: list):
        """Copy the next part of ``data`` into the large body; return what is left over."""
        take = min(len(data), len(self._large) - self._filled)
        self._large[self._filled:self._filled + take] = memoryview(data)[:take]
        self._filled += take
        if self._filled < len(self._large):
            return b""
        frames.append(self._large)
        self._large, self._filled, self._need = None, 0, None
        return data[take:]
