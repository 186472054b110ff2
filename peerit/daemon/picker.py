"""Which block to ask which peer for: rarest first, a random start, and endgame (no I/O).

Pieces are cut into blocks of ``block_size``. A piece already in progress is finished before
a new one is started, so verified pieces (which we can then upload) appear early. A new piece
is the rarest one the peer has, ties broken by a random scan start; the first few pieces are
random instead, so a newcomer quickly holds something worth trading. When every missing block
has been requested, endgame allows duplicates from other peers, and the first copy to arrive
cancels the rest; a peer is asked for duplicates only once it has (almost) nothing else in
flight, as libtorrent does: duplicates asked of busy peers arrive late anyway, and every one
is a block's worth of bytes sent, decrypted and thrown away.

Choosing runs once per block received, so it stays linear in the pieces a call looks at:
pieces in progress with nothing left to ask are skipped before the peer's bitfield is read,
and several new pieces are picked from one pass over the candidates.
"""

from dataclasses import dataclass, field

from peerit.bitfield import Bitfield

RANDOM_FIRST_PIECES = 4
ENDGAME_DUPLICATES = 2  # at most this many peers asked for the same block in endgame
ENDGAME_IN_FLIGHT = 2  # endgame duplicates go only to a peer with fewer blocks in flight


@dataclass(eq=False)
class PieceInProgress:
    index: int
    size: int
    block_size: int
    received: set = field(default_factory=set)  # block offsets stored
    requested: dict = field(default_factory=dict)  # offset -> set of peer keys
    free: list = field(default=None)  # offsets neither received nor requested, next last
    # After a failed hash check with several contributors, the next try comes from one peer
    # only (the first to take it), so a second failure names the culprit.
    exclusive: bool = False
    owner: object = None

    def __post_init__(self):
        if self.free is None:
            self.free = list(reversed(self.offsets))

    @property
    def offsets(self) -> range:
        return range(0, self.size, self.block_size)

    def block_length(self, offset: int) -> int:
        return min(self.block_size, self.size - offset)

    @property
    def complete(self) -> bool:
        return len(self.received) == len(self.offsets)

    def open_to(self, peer) -> bool:
        return not self.exclusive or self.owner in (None, peer)


class Picker:
    def __init__(self, piece_count: int, piece_size, block_size: int, have: Bitfield, rng):
        self.piece_count = piece_count
        self.piece_size = piece_size  # callable(index) -> size
        self.block_size = block_size
        self.have = have
        self.rng = rng
        self.availability = [0] * piece_count
        self.in_progress: dict[int, PieceInProgress] = {}
        self.verifying: set[int] = set()  # complete, hash check running
        # Pieces nobody works on yet: new pieces are chosen from here, not from all pieces.
        self.untouched: set[int] = {i for i in range(piece_count) if i not in have}

    # -- availability ---------------------------------------------------------------------
    def add_peer_pieces(self, pieces: Bitfield) -> None:
        availability = self.availability
        for index in pieces:
            availability[index] += 1

    def remove_peer_pieces(self, pieces: Bitfield) -> None:
        availability = self.availability
        for index in pieces:
            availability[index] -= 1

    def add_peer_piece(self, index: int) -> None:
        self.availability[index] += 1

    def wanted(self, index: int) -> bool:
        return index not in self.have and index not in self.verifying

    def interesting(self, pieces: Bitfield) -> bool:
        """Does a peer holding ``pieces`` have anything we still need?"""
        if len(pieces) == 0 or self.have.complete:
            return False
        for index in pieces:
            if self.wanted(index):
                return True
        return False

    @property
    def endgame(self) -> bool:
        """Every missing block is requested or received: duplicates now pay off."""
        if self.untouched:
            return False
        return not any(p.free for p in self.in_progress.values())

    # -- choosing -------------------------------------------------------------------------
    def next_requests(self, peer, pieces: Bitfield, count: int,
                      in_flight: int = 0) -> list[tuple[int, int, int]]:
        """Up to ``count`` (piece, offset, length) blocks to request from ``peer``, which has
        ``in_flight`` blocks requested and not yet received."""
        out: list[tuple[int, int, int]] = []
        if count <= 0:
            return out
        for progress in self.in_progress.values():
            # ``free`` first: most pieces in progress are fully asked for, and this check
            # costs less than the bitfield's.
            if progress.free and progress.index in pieces and progress.open_to(peer):
                self._take(progress, peer, count, out)
                if len(out) >= count:
                    return out
        while len(out) < count:
            # As many new pieces as full-size ones would fill the request (a short last
            # piece leaves room: the loop picks again).
            per_piece = -(-self.piece_size(0) // self.block_size)
            new = self._new_pieces(pieces, -(-(count - len(out)) // per_piece))
            if not new:
                break
            for index in new:
                progress = PieceInProgress(index, self.piece_size(index), self.block_size)
                self.in_progress[index] = progress
                self.untouched.discard(index)
                self._take(progress, peer, count, out)
        if len(out) >= count:
            return out
        room = min(count, ENDGAME_IN_FLIGHT - in_flight)
        if len(out) < room and self.endgame:
            self._take_duplicates(peer, pieces, room, out)
        return out

    def _take(self, progress: PieceInProgress, peer, count: int, out: list) -> None:
        if progress.exclusive:
            progress.owner = peer
        free = progress.free
        while free and len(out) < count:
            offset = free.pop()
            progress.requested[offset] = {peer}
            out.append((progress.index, offset, progress.block_length(offset)))

    def _take_duplicates(self, peer, pieces: Bitfield, count: int, out: list) -> None:
        for progress in self.in_progress.values():
            if progress.index not in pieces or progress.exclusive:
                continue
            for offset in progress.offsets:
                if offset in progress.received:
                    continue
                askers = progress.requested.setdefault(offset, set())
                if peer in askers or len(askers) >= ENDGAME_DUPLICATES:
                    continue
                askers.add(peer)
                out.append((progress.index, offset, progress.block_length(offset)))
                if len(out) >= count:
                    return

    def _new_pieces(self, pieces: Bitfield, wanted: int) -> list[int]:
        """Up to ``wanted`` untouched pieces that ``pieces`` holds, rarest first (random among
        equally rare), or random ones while we hold fewer than ``RANDOM_FIRST_PIECES``."""
        untouched = self.untouched
        candidates = list(untouched) if pieces.complete else pieces.having(untouched)
        if not candidates or wanted <= 0:
            return []
        if len(self.have) < RANDOM_FIRST_PIECES:
            return self.rng.sample(candidates, min(wanted, len(candidates)))
        availability = self.availability
        if wanted == 1:  # the usual call (one block came in): no sort
            rarest = min(map(availability.__getitem__, candidates))
            return [self.rng.choice([i for i in candidates if availability[i] == rarest])]
        self.rng.shuffle(candidates)
        candidates.sort(key=availability.__getitem__)  # stable: ties stay shuffled
        return candidates[:wanted]

    # -- outcomes -------------------------------------------------------------------------
    def block_received(self, peer, piece: int, offset: int, length: int):
        """Record a block. Returns (accepted, other_peers_to_cancel, piece_complete).

        A block is accepted only if we asked for it (from anyone) and do not hold it yet;
        unsolicited or duplicate blocks are refused so they are never written.
        """
        progress = self.in_progress.get(piece)
        if (progress is None or offset % self.block_size or offset >= progress.size
                or progress.block_length(offset) != length or offset in progress.received):
            return False, (), False
        askers = progress.requested.get(offset)
        if not askers or peer not in askers:
            return False, (), False
        progress.received.add(offset)
        others = tuple(p for p in askers if p != peer)
        progress.requested[offset] = {peer}
        return True, others, progress.complete

    def contributors(self, piece: int) -> set:
        progress = self.in_progress.get(piece)
        if progress is None:
            return set()
        return set().union(*[progress.requested.get(o, set()) for o in progress.received]) \
            if progress.received else set()

    def start_verifying(self, piece: int) -> set:
        """The piece is complete: stop tracking its blocks; returns who contributed."""
        contributors = self.contributors(piece)
        self.in_progress.pop(piece, None)
        self.verifying.add(piece)
        return contributors

    def piece_verified(self, piece: int) -> None:
        self.verifying.discard(piece)
        self.have.add(piece)

    def piece_failed(self, piece: int, exclusive: bool = False) -> None:
        """Throw the piece's blocks away; optionally have one peer alone fetch it again."""
        self.verifying.discard(piece)
        if exclusive:
            progress = PieceInProgress(piece, self.piece_size(piece), self.block_size)
            progress.exclusive = True
            self.in_progress[piece] = progress
        else:
            self.untouched.add(piece)

    def release(self, peer, blocks=None) -> None:
        """``peer`` will not deliver ``blocks`` (all of its requests when None)."""
        for progress in list(self.in_progress.values()):
            for offset, askers in list(progress.requested.items()):
                if offset in progress.received or peer not in askers:
                    continue
                if blocks is not None and (progress.index, offset) not in blocks:
                    continue
                askers.discard(peer)
                if not askers:
                    del progress.requested[offset]
                    progress.free.append(offset)
            if progress.owner == peer:
                progress.owner = None
            if not progress.received and not progress.requested and not progress.exclusive:
                del self.in_progress[progress.index]
                self.untouched.add(progress.index)
