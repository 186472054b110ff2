"""In-memory stand-ins for the swarm's collaborators: a piece store, and links that carry
real encoded peer messages between two ``Swarm`` objects, pumped by hand (no sockets)."""

import hashlib

from twisted.internet.defer import succeed
from zope.interface import implementer

from peerit.bitfield import Bitfield
from peerit.daemon.storage import IPieceStore
from peerit.metainfo import FileEntry, Metainfo
from peerit.wire import peer as wire


def make_metainfo(data: bytes, piece_length: int = 1 << 15, name: str = "data.bin"):
    hashes = b"".join(hashlib.sha256(data[i:i + piece_length]).digest()
                      for i in range(0, len(data), piece_length))
    return Metainfo(name=name, piece_length=piece_length, total_size=len(data),
                    is_directory=False, files=(FileEntry(name, len(data)),),
                    piece_hashes=hashes)


@implementer(IPieceStore)
class MemoryStore:
    """The share's bytes in memory; ``corrupt`` makes reads lie (a bad peer's store)."""

    def __init__(self, metainfo, data: bytes | None = None, corrupt: bool = False):
        self.metainfo = metainfo
        self.data = bytearray(data if data is not None else bytes(metainfo.total_size))
        self.corrupt = corrupt
        self.writes = 0

    def _base(self, piece: int) -> int:
        return piece * self.metainfo.piece_length

    def open(self, create=False):
        pass

    def write_block(self, piece, offset, data):
        start = self._base(piece) + offset
        self.data[start:start + len(data)] = data
        self.writes += 1

    def read_block(self, piece, offset, length):
        start = self._base(piece) + offset
        block = bytes(self.data[start:start + length])
        if self.corrupt:
            block = bytes(b ^ 0xFF for b in block[:16]) + block[16:]
        return block

    def piece_digest(self, piece):
        start = self._base(piece)
        return hashlib.sha256(self.data[start:start + self.metainfo.piece_size(piece)]).digest()

    def sync(self):
        pass

    def close(self):
        pass

    def delete_files(self):
        self.data[:] = bytes(len(self.data))


def verifier(store):
    """The swarm's ``verify`` done synchronously (the daemon uses a thread)."""
    return lambda piece: succeed(store.piece_digest(piece))


class FakeLink:
    """One end of an in-memory link. Messages are encoded and parsed as on the wire."""

    def __init__(self, network, peer_id: bytes, dialed_by_us: bool, path: str = "memory"):
        self.network = network
        self.peer_id = peer_id  # the id of the peer at the other end
        self.dialed_by_us = dialed_by_us
        self.path = path
        self.remote = "memory"
        self.other = None
        self.swarm = None
        self.state = None
        self.closed = None
        self.sent = []  # message types, for assertions
        self.wants_upload = False

    def send(self, message):
        if self.closed is not None:
            return
        self.sent.append(type(message).__name__)
        self.network.queue.append((self.other, wire.build(message)))

    def want_to_upload(self):
        self.wants_upload = True

    def close(self, reason):
        if self.closed is None:
            self.closed = reason
            if self.other is not None and self.other.closed is None:
                self.other.closed = "closed by peer"
                if self.other.state is not None:
                    self.other.swarm.detach(self.other.state)


class MemoryNetwork:
    """Delivers queued messages and upload blocks between attached swarms."""

    def __init__(self):
        self.queue = []
        self.links = []

    def connect(self, dialer_swarm, acceptor_swarm):
        a = FakeLink(self, acceptor_swarm.my_peer_id, True)
        b = FakeLink(self, dialer_swarm.my_peer_id, False)
        a.other, b.other = b, a
        a.swarm, b.swarm = dialer_swarm, acceptor_swarm
        a.state = dialer_swarm.attach(a)
        b.state = acceptor_swarm.attach(b)
        self.links += [a, b]
        return a, b

    def pump(self, max_rounds: int = 100000) -> int:
        """Deliver until quiet; returns the number of messages delivered."""
        delivered = 0
        for _ in range(max_rounds):
            progressed = False
            while self.queue:
                link, data = self.queue.pop(0)
                if link.closed is None and link.state is not None:
                    link.swarm.handle(link.state, wire.parse(data))
                    delivered += 1
                    progressed = True
            for link in self.links:
                if link.wants_upload and link.closed is None and link.state is not None:
                    link.wants_upload = False
                    while True:
                        item = link.swarm.next_upload(link.state)
                        if item is None:
                            break
                        piece, offset, data = item
                        link.sent.append("Block")
                        self.queue.append(
                            (link.other, wire.build(wire.Block(piece, offset, data))))
                        progressed = True
            if not progressed:
                return delivered
        raise AssertionError("network never went quiet")
