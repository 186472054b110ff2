"""Received blocks kept in memory to upload them again, the oldest dropped past a byte cap.

In a swarm a downloader serves a piece soon after verifying it: over 1 seeder + 8
downloaders (128 MiB), half of its uploads came within 0.45 s of the piece's verification
and nine in ten within 1.1 s (``bench/timeline.py``), while a download is written with
O_DIRECT, so every upload read it back from the device on the reactor thread (``FileStore.
_read_into`` was the largest single cost of the downloaders' reactors in py-spy). The block
objects are the received frames' own buffers (no copy); holding one only keeps
``framing.BodyPool`` from reusing it. No I/O, no clock: the swarm decides what to keep and
drops a piece whose hash check failed.
"""

from collections import OrderedDict


class RecentBlocks:
    def __init__(self, capacity: int):
        self.capacity = capacity  # bytes; 0 keeps nothing
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._blocks: OrderedDict = OrderedDict()  # (piece, offset) -> bytes-like

    def __len__(self) -> int:
        return len(self._blocks)

    def add(self, piece: int, offset: int, data) -> None:
        if len(data) > self.capacity:
            return
        old = self._blocks.pop((piece, offset), None)
        if old is not None:
            self.size -= len(old)
        self._blocks[(piece, offset)] = data
        self.size += len(data)
        while self.size > self.capacity:
            _, dropped = self._blocks.popitem(last=False)
            self.size -= len(dropped)

    def get(self, piece: int, offset: int, length: int):
        """The block's bytes if kept with this length, else None."""
        data = self._blocks.get((piece, offset))
        if data is None or len(data) != length:
            self.misses += 1
            return None
        self.hits += 1
        return data

    def drop_piece(self, piece: int, piece_size: int, block_size: int) -> None:
        for offset in range(0, piece_size, block_size):
            data = self._blocks.pop((piece, offset), None)
            if data is not None:
                self.size -= len(data)

    def clear(self) -> None:
        self._blocks.clear()
        self.size = 0
