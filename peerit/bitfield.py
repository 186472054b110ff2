"""A fixed-size set of piece indices, in the wire's bit order (piece 0 = high bit of byte 0)."""

from peerit.errors import MalformedMessage


class Bitfield:
    __slots__ = ("size", "_bits", "_count")

    def __init__(self, size: int, data: bytes | None = None):
        self.size = size
        nbytes = (size + 7) // 8
        if data is None:
            self._bits = bytearray(nbytes)
            self._count = 0
        else:
            if len(data) != nbytes:
                raise MalformedMessage(
                    f"bitfield of {len(data)} bytes, expected {nbytes} for {size} pieces")
            spare = nbytes * 8 - size
            if spare and data[-1] & ((1 << spare) - 1):
                raise MalformedMessage("bitfield has bits set past the last piece")
            self._bits = bytearray(data)
            self._count = sum(bin(b).count("1") for b in self._bits)

    @classmethod
    def full(cls, size: int) -> "Bitfield":
        field = cls(size)
        for i in range(size):
            field.add(i)
        return field

    def __contains__(self, index: int) -> bool:
        return bool(self._bits[index >> 3] & (0x80 >> (index & 7)))

    def having(self, indices) -> list:
        """The members of ``indices`` that are set (one loop, no method call per index:
        the piece picker asks this of every piece it could start)."""
        bits = self._bits
        return [i for i in indices if bits[i >> 3] & (0x80 >> (i & 7))]

    def add(self, index: int) -> bool:
        """Set ``index``; return True if it was not set before."""
        if not 0 <= index < self.size:
            raise IndexError(index)
        mask = 0x80 >> (index & 7)
        if self._bits[index >> 3] & mask:
            return False
        self._bits[index >> 3] |= mask
        self._count += 1
        return True

    def discard(self, index: int) -> None:
        mask = 0x80 >> (index & 7)
        if self._bits[index >> 3] & mask:
            self._bits[index >> 3] &= ~mask & 0xFF
            self._count -= 1

    def __len__(self) -> int:
        return self._count

    @property
    def complete(self) -> bool:
        return self._count == self.size

    def __iter__(self):
        bits = self._bits
        for byte_index, byte in enumerate(bits):
            if byte:
                base = byte_index << 3
                for bit in range(8):
                    if byte & (0x80 >> bit):
                        yield base + bit

    def missing(self):
        for i in range(self.size):
            if i not in self:
                yield i

    def to_bytes(self) -> bytes:
        return bytes(self._bits)

    def copy(self) -> "Bitfield":
        return Bitfield(self.size, bytes(self._bits))
