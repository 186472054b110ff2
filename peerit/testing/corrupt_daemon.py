"""A real peer-it daemon whose uploads lie: every block it serves has its first byte flipped.

For tests of what honest daemons do with a bad peer. Run exactly like twistd:
``python -m peerit.testing.corrupt_daemon -n --pidfile= peerit-daemon --data-dir ...``.
Its own data and hash checks are untouched, so it shares normally and only lies on the wire.
"""

from peerit.daemon import storage

_honest_read = storage.FileStore.read_block


def _lying_read(self, piece, offset, length):
    block = bytearray(_honest_read(self, piece, offset, length))
    block[0] ^= 0xFF
    return bytes(block)


storage.FileStore.read_block = _lying_read

if __name__ == "__main__":
    from twisted.scripts.twistd import run
    run()
