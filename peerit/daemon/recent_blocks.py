"""The last blocks the daemon's downloads received, kept in memory to upload them again.

No I/O. Why: in a swarm of fresh downloaders every piece one of them verifies is asked of it
by the others soon after (it is the rarest piece they know of). Its bytes were written with
O_DIRECT, so they are not in the page cache, and reading them back meant a disk read on the
reactor thread per block served: 1.2-1.8 ms per 256 KiB block in the 1 seeder + 8
downloaders benchmark, a third of a downloader's busy time, during which it neither received
nor requested. The received buffers are still alive when those requests come; keeping a
reference to the last few serves them from memory.

Only bytes that are exactly what was written are kept (the frame decoder's buffer, which
nobody changes after it was filled); a piece that fails its check is dropped. Each swarm
decides which of its blocks are worth keeping (a 1->1 download, whose only peer holds
everything, keeps none) and names itself by a ``scope`` (its info-hash). One instance serves
the whole daemon, so many downloads at once share one bound; the oldest blocks go first.
"""

import collections


class RecentBlocks:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0  # diagnostics and tests: uploads served from here
        # (scope, piece, offset) -> data, oldest first
        self._blocks: collections.OrderedDict = collections.OrderedDict()

    def add(self, scope, piece: int, offset: int, data) -> None:
        size = len(data)
        if size > self.max_bytes:
            return
        old = self._blocks.pop((scope, piece, offset), None)
        if old is not None:
            self.bytes -= len(old)
        while self._blocks and self.bytes + size > self.max_bytes:
            _, evicted = self._blocks.popitem(last=False)
            self.bytes -= len(evicted)
        self._blocks[(scope, piece, offset)] = data
        self.bytes += size

    def get(self, scope, piece: int, offset: int, length: int):
        """The block's bytes if kept with exactly this length, else None (read the disk)."""
        data = self._blocks.get((scope, piece, offset))
        if data is None or len(data) != length:
            return None
        self.hits += 1
        return data

    def drop_piece(self, scope, piece: int) -> None:
        """Forget a piece's blocks (it failed its hash check: they are not its bytes)."""
        for key in [k for k in self._blocks if k[0] == scope and k[1] == piece]:
            self.bytes -= len(self._blocks.pop(key))

    def clear(self, scope) -> None:
        """Forget every block of ``scope`` (its swarm stopped, or nobody is left to ask)."""
        for key in [k for k in self._blocks if k[0] == scope]:
            self.bytes -= len(self._blocks.pop(key))

    def held(self, scope) -> int:
        """Blocks of ``scope`` kept now."""
        return sum(1 for k in self._blocks if k[0] == scope)

    def __len__(self) -> int:
        return len(self._blocks)
