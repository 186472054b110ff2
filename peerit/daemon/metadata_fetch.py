"""Fetching a share's info section from its swarm, for a downloader that holds only a link.

No I/O here: peers are keys with a ``send`` callable, time is an injected clock, and the
outcome leaves through callbacks (``on_done(info_bytes)``, ``on_ban(key, reason)``).

The rules (docs/links.md): a peer's announced size is checked against the cap before
anything is allocated; pieces of 16 KiB are requested from several peers at once; the
assembled bytes are hashed and accepted only if they give the info-hash, and only then handed
on to be parsed. When the hash fails, a lone contributor is banned at once; with several, the
whole is fetched again from one peer at a time, so that the liar is found and banned and the
honest peers are not.

``MetadataSwarm`` puts a fetch where a peer link expects a swarm (attach, handle, detach,
ban), so links in the metadata phase need nothing of their own; ``metadata_answer`` is the
serving side, used by a swarm that holds verified metadata.
"""

import hashlib
from dataclasses import dataclass, field

from twisted.logger import Logger

from peerit.wire import peer as wire

log = Logger()

REQUEST_TIMEOUT = 10.0  # a piece not answered this long is asked of another peer
REQUESTS_PER_PEER = 4  # pieces in flight per peer (16 KiB each)
STRIKES_TO_DROP = 2  # timeouts before a peer is no longer asked (it is not banned)


@dataclass(eq=False)
class _Source:
    key: object
    send: object
    size: int | None = None  # what it announced
    rejected: bool = False  # holds no verified metadata (yet)
    strikes: int = 0
    pending: dict = field(default_factory=dict)  # piece -> deadline
    digests: dict = field(default_factory=dict)  # piece -> SHA-256 of what it sent


class MetadataFetch:
    """Assemble and verify the info section named by ``info_hash``."""

    def __init__(self, info_hash: bytes, clock, on_done, on_ban,
                 max_size: int = wire.MAX_METADATA_SIZE,
                 request_timeout: float = REQUEST_TIMEOUT):
        self.info_hash = info_hash
        self.clock = clock
        self.on_done = on_done  # info bytes -> None, once, after the hash matched
        self.on_ban = on_ban  # (key, reason) -> None; the key is never asked again
        self.max_size = max_size
        self.request_timeout = request_timeout
        self.sources: dict[object, _Source] = {}
        self.banned: set = set()
        self.problem = ""  # why the fetch is not progressing, for the user
        self.mismatches = 0  # peers banned for metadata that failed the info-hash
        self.oversized = 0  # peers announcing metadata above the cap
        self.size: int | None = None
        self.done = False
        self._buffer: bytearray | None = None
        self._owner: dict[int, object] = {}  # piece -> key of the peer that sent it
        self._wanted: dict[int, object] = {}  # piece -> key asked for it
        self._suspects: list | None = None  # after a failed hash: keys to try one at a time
        self._timer = None

    # -- peers ----------------------------------------------------------------------------
    def add_peer(self, key, send) -> None:
        if self.done or key in self.banned or key in self.sources:
            return
        source = _Source(key, send)
        self.sources[key] = source
        # The first request on a link also asks for the size (the answer starts with it).
        self._ask(source, 0)

    def remove_peer(self, key) -> None:
        source = self.sources.pop(key, None)
        if source is None:
            return
        self._release(source)
        self._request_more()

    def _release(self, source: _Source) -> None:
        for piece in source.pending:
            if self._wanted.get(piece) == source.key:
                del self._wanted[piece]
        source.pending.clear()

    def _ban(self, source: _Source, reason: str) -> None:
        log.warn("metadata {ih}: banning a peer: {reason}", ih=self.info_hash.hex()[:12],
                 reason=reason)
        self.banned.add(source.key)
        self.sources.pop(source.key, None)
        self._release(source)
        if self._suspects is not None and source.key in self._suspects:
            self._suspects.remove(source.key)
        self.on_ban(source.key, reason)

    # -- messages -------------------------------------------------------------------------
    def received(self, key, message) -> None:
        source = self.sources.get(key)
        if source is None or self.done:
            return
        kind = type(message)
        if kind is wire.MetadataSize:
            self._on_size(source, message.size)
        elif kind is wire.MetadataPiece:
            self._on_piece(source, message.piece, message.data)
        elif kind is wire.MetadataReject:
            source.rejected = True
            self._release(source)
            if not self._usable():
                self.problem = "no peer holds the metadata yet"
        self._request_more()

    def _on_size(self, source: _Source, size: int) -> None:
        if source.size is not None:
            if size != source.size:
                self._ban(source, "announced two metadata sizes")
            return
        if size == 0:
            self._ban(source, "announced empty metadata")
            return
        source.size = size
        if size > self.max_size:
            self.oversized += 1
            # Not proof of lying (the share may be that big), but we will not allocate it.
            self.problem = (f"peers announce {size} bytes of metadata, over the "
                            f"{self.max_size} byte cap")
            self._release(source)
            return
        if self.size is None:
            self._start_round(size)

    def _start_round(self, size: int) -> None:
        self.size = size
        self._buffer = bytearray(size)  # only now, and only within the cap
        self._owner.clear()
        self.problem = ""

    def _on_piece(self, source: _Source, piece: int, data) -> None:
        if piece not in source.pending:
            self._ban(source, f"sent metadata piece {piece} it was not asked for")
            return
        if source.size is None:
            self._ban(source, "sent metadata before its size")
            return
        del source.pending[piece]
        if self._wanted.get(piece) == source.key:
            del self._wanted[piece]
        source.strikes = 0
        # Kept even when unused, so that once the whole is verified a liar whose copy was
        # not the one used is still found out.
        source.digests[piece] = hashlib.sha256(data).digest()
        if source.size != self.size or piece in self._owner:
            return  # asked when its size was unknown, or a late duplicate: not used
        start = piece * wire.METADATA_PIECE_SIZE
        expected = min(wire.METADATA_PIECE_SIZE, self.size - start)
        if len(data) != expected:
            self._ban(source, f"metadata piece {piece} of {len(data)} bytes, "
                              f"expected {expected}")
            return
        self._buffer[start:start + expected] = data
        self._owner[piece] = source.key
        if len(self._owner) == self._piece_count():
            self._verify()

    # -- verification ---------------------------------------------------------------------
    def _verify(self) -> None:
        data = bytes(self._buffer)
        contributors = list(dict.fromkeys(self._owner.values()))
        if hashlib.sha256(data).digest() == self.info_hash:
            self._unmask(data)
            self.done = True
            self._buffer = None
            self._cancel_timer()
            self.problem = ""
            self.on_done(data)
            return
        if len(contributors) == 1:
            self.mismatches += 1
            source = self.sources.get(contributors[0])
            if source is not None:
                self._ban(source, "served metadata that does not match the info-hash")
            else:
                self.banned.add(contributors[0])
                self.on_ban(contributors[0], "served metadata that does not match the "
                                             "info-hash")
            self.problem = "metadata from a peer does not match the info-hash: peer banned"
        else:
            if self._suspects is None:
                # Who lied is unknown: ask the contributors again, one at a time, for all.
                self._suspects = [k for k in contributors if k in self.sources]
            self.problem = ("metadata from peers does not match the info-hash; fetching "
                            "it again from one peer at a time")
        self._owner.clear()
        self._next_size_if_exhausted()

    def _unmask(self, data: bytes) -> None:
        """With the true metadata known, ban every peer that announced another size or sent
        a piece that differs from it."""
        step = wire.METADATA_PIECE_SIZE
        for source in list(self.sources.values()):
            if source.size is not None and source.size != len(data):
                self._ban(source, f"announced {source.size} bytes of metadata, not "
                                  f"{len(data)}")
                continue
            for piece, digest in source.digests.items():
                if hashlib.sha256(data[piece * step:(piece + 1) * step]).digest() != digest:
                    self.mismatches += 1
                    self._ban(source, "served metadata that does not match the info-hash")
                    break

    def _next_size_if_exhausted(self) -> None:
        """When no peer with the current size remains, try a size another peer announced."""
        if any(s.size == self.size for s in self.sources.values()):
            return
        others = [s.size for s in self.sources.values()
                  if s.size is not None and s.size <= self.max_size]
        self.size, self._buffer = None, None
        if others:
            self._start_round(others[0])

    # -- requests -------------------------------------------------------------------------
    def _piece_count(self) -> int:
        return -(-self.size // wire.METADATA_PIECE_SIZE)

    def _usable(self) -> list[_Source]:
        usable = [s for s in self.sources.values()
                  if not s.rejected and s.strikes < STRIKES_TO_DROP
                  and s.size == self.size and self.size is not None]
        if self._suspects:
            # One suspect at a time serves the whole; the others wait their turn.
            first = self._suspects[0]
            usable = [s for s in usable if s.key == first]
        return usable

    def _ask(self, source: _Source, piece: int) -> None:
        source.pending[piece] = self.clock.seconds() + self.request_timeout
        self._wanted[piece] = source.key
        source.send(wire.MetadataRequest(piece))
        self._arm_timer()

    def _request_more(self) -> None:
        if self.done:
            return
        if self.size is None:
            self._next_size_if_exhausted()
            if self.size is None:
                return
        if self._suspects is not None:
            self._suspects = [k for k in self._suspects if k in self.sources]
            if not self._suspects:
                self._suspects = None  # every suspect banned or gone: spread again
        usable = self._usable()
        if not usable:
            return
        missing = [p for p in range(self._piece_count())
                   if p not in self._owner and p not in self._wanted]
        # Round robin over the peers that have not been late; the late ones only when the
        # punctual ones' pipelines are full.
        for strikes in sorted({s.strikes for s in usable}):
            group = [s for s in usable if s.strikes == strikes]
            turn = 0
            while missing:
                free = [s for s in group if len(s.pending) < REQUESTS_PER_PEER]
                if not free:
                    break
                self._ask(free[turn % len(free)], missing.pop(0))
                turn += 1

    # -- timeouts -------------------------------------------------------------------------
    def _arm_timer(self) -> None:
        if self._timer is None or not self._timer.active():
            self._timer = self.clock.callLater(self.request_timeout / 2, self._check_timeouts)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _check_timeouts(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        waiting = False
        for source in list(self.sources.values()):
            late = [p for p, deadline in source.pending.items() if deadline <= now]
            for piece in late:
                del source.pending[piece]
                if self._wanted.get(piece) == source.key:
                    del self._wanted[piece]
            if late:
                source.strikes += 1
                if self._suspects and self._suspects[0] == source.key \
                        and source.strikes >= STRIKES_TO_DROP:
                    self._suspects.pop(0)  # a silent suspect: the next one's turn
            waiting = waiting or bool(source.pending)
        self._request_more()
        if waiting or any(s.pending for s in self.sources.values()):
            self._arm_timer()

    def stuck(self) -> str | None:
        """``too large`` or ``mismatch`` when no peer is left to ask and that is why."""
        if self.done or self._usable() or any(s.pending for s in self.sources.values()):
            return None
        if self.oversized:
            return "too large"
        if self.mismatches:
            return "mismatch"
        return None

    def stop(self) -> None:
        self.done = True
        self._cancel_timer()
        self._buffer = None


def metadata_answer(info_bytes: bytes | None, piece: int, size_sent: bool) -> list:
    """What a peer says to a MetadataRequest: a reject while it holds no verified metadata,
    else the size (first answer on a link) and the piece. None for a piece out of range
    (a protocol violation)."""
    if info_bytes is None:
        return [wire.MetadataReject(piece)]
    start = piece * wire.METADATA_PIECE_SIZE
    if start >= len(info_bytes):
        return None
    answer = [] if size_sent else [wire.MetadataSize(len(info_bytes))]
    answer.append(wire.MetadataPiece(piece, info_bytes[start:start + wire.METADATA_PIECE_SIZE]))
    return answer


MAX_HAVES_KEPT = 1 << 16  # pieces a peer may announce before the metadata says how many


@dataclass(eq=False)
class MetadataPeer:
    """What a link in the metadata phase holds as its swarm state, and what the peer said
    about its pieces meanwhile (replayed to the swarm of the data when the link moves on)."""
    link: object
    peer_id: bytes
    upload_queue: tuple = ()  # nothing to upload before the metadata is known
    bitfield: bytes | None = None
    haves: set = field(default_factory=set)


class MetadataSwarm:
    """A fetch in the place of a swarm: what peer links attach to while the share's metadata
    is not known. Links send nothing but metadata requests (no bitfield, no interest), and
    whatever data-phase messages peers send meanwhile are ignored."""

    def __init__(self, fetch: MetadataFetch, my_peer_id: bytes, max_peers: int = 30):
        self.fetch = fetch
        self.info_hash = fetch.info_hash
        self.my_peer_id = my_peer_id
        self.max_peers = max_peers
        self.peers: dict[bytes, object] = {}  # peer id -> link
        self.states: dict[bytes, MetadataPeer] = {}
        self.running = True
        self.downloading = True  # what a transfer's dialing asks of its swarm

    def can_attach(self, peer_id: bytes) -> str | None:
        if not self.running:
            return "swarm not active"
        if peer_id == self.my_peer_id:
            return "that is ourselves"
        if peer_id in self.fetch.banned:
            return "banned in this swarm"
        if len(self.peers) >= self.max_peers:
            return "too many peers"
        return None

    def attach(self, link):
        reason = self.can_attach(link.peer_id)
        if reason is None and link.peer_id in self.peers:
            reason = "already connected"
        if reason is not None:
            link.close(reason)
            return None
        self.peers[link.peer_id] = link
        self.fetch.add_peer(link.peer_id, link.send)
        state = self.states[link.peer_id] = MetadataPeer(link, link.peer_id)
        return state

    def detach(self, peer: MetadataPeer) -> None:
        if self.peers.get(peer.peer_id) is peer.link:
            del self.peers[peer.peer_id]
            self.states.pop(peer.peer_id, None)
            self.fetch.remove_peer(peer.peer_id)

    def handle(self, peer: MetadataPeer, message) -> None:
        kind = type(message)
        if kind is wire.MetadataRequest:
            # We hold no verified metadata: say so rather than leave the asker waiting.
            peer.link.send(wire.MetadataReject(message.piece))
        elif kind in (wire.MetadataSize, wire.MetadataPiece, wire.MetadataReject):
            self.fetch.received(peer.peer_id, message)
        elif kind is wire.Bitfield:
            peer.bitfield = message.bits[:wire.MAX_FRAME_SIZE]
        elif kind is wire.Have and len(peer.haves) < MAX_HAVES_KEPT:
            peer.haves.add(message.piece)

    def ban(self, peer: MetadataPeer, reason: str) -> None:
        """A link's protocol breaker (a malformed message)."""
        self.peers.pop(peer.peer_id, None)
        self.states.pop(peer.peer_id, None)
        self.fetch.banned.add(peer.peer_id)
        self.fetch.remove_peer(peer.peer_id)
        peer.link.close(f"banned: {reason}")

    def banned_by_fetch(self, peer_id, reason: str) -> None:
        """The fetch's ``on_ban``: close the liar's link."""
        link = self.peers.pop(peer_id, None)
        self.states.pop(peer_id, None)
        if link is not None:
            link.close(f"banned: {reason}")

    def next_upload(self, peer: MetadataPeer):
        return None

    def hand_over(self) -> list[MetadataPeer]:
        """End the phase keeping the links open (they move on to the swarm of the data):
        their peers, and what each said about its pieces."""
        self.running = False
        self.fetch.stop()
        moving = list(self.states.values())
        self.peers.clear()
        self.states.clear()
        return moving

    def stop(self, reason: str = "metadata phase over") -> None:
        self.running = False
        self.fetch.stop()
        for link in list(self.peers.values()):
            link.close(reason)
        self.peers.clear()
        self.states.clear()

    def peer_summaries(self) -> list[dict]:
        return []
