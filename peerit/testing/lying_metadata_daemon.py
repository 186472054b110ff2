"""A real peer-it daemon that serves tampered metadata: every metadata piece it sends to a
downloader holding only a link has its first byte flipped.

For tests of what honest daemons do with such a peer. Run exactly like twistd:
``python -m peerit.testing.lying_metadata_daemon -n --pidfile= peerit-daemon --data-dir ...``.
Its files, hashes and piece uploads are untouched: it only lies about the info section.
"""

from peerit.daemon import swarm
from peerit.wire import peer as wire

_honest_answer = swarm.metadata_answer


def _lying_answer(info_bytes, piece, size_sent):
    answer = _honest_answer(info_bytes, piece, size_sent)
    if answer is None:
        return None
    lied = []
    for message in answer:
        if isinstance(message, wire.MetadataPiece):
            data = bytearray(message.data)
            data[0] ^= 0xFF
            message = wire.MetadataPiece(message.piece, bytes(data))
        lied.append(message)
    return lied


swarm.metadata_answer = _lying_answer

if __name__ == "__main__":
    from twisted.scripts.twistd import run
    run()
