"""One swarm (one info-hash) as this daemon takes part in it: logic only, no sockets.

Links (TCP+TLS, QUIC or relayed; the swarm cannot tell) are attached once their handshake has
proven the peer's id. The swarm answers their messages, decides what to request from whom
(``Picker``), whom to upload to (``Choker``), checks every completed piece against its SHA-256
before it counts, and bans a peer that sends bad data twice. Nothing unverified is ever
announced or served: ``have`` only gains a piece after its hash matched.
"""

from dataclasses import dataclass, field

from twisted.logger import Logger

from peerit.bitfield import Bitfield
from peerit.daemon.choker import Choker, PeerView
from peerit.daemon.metadata_fetch import metadata_answer
from peerit.daemon.picker import Picker
from peerit.daemon.rates import RateMeter
from peerit.daemon.recent_blocks import RecentBlocks
from peerit.daemon.stats import DaemonStats
from peerit.daemon.swarmtrace import from_environment as trace_from_environment
from peerit.errors import MalformedMessage, PeeritError
from peerit.wire import peer as wire

log = Logger()


SIMULTANEOUS_DIAL = 10.0  # two links to one peer within this long: both ends dialed at once


@dataclass
class SwarmConfig:
    block_size: int = wire.DEFAULT_BLOCK_SIZE
    # Bytes requested and not yet received, per peer: a peer's recent rate times
    # pipeline_seconds, within these bounds (and at least two blocks).
    min_in_flight: int = 4 << 20
    max_in_flight: int = 32 << 20
    pipeline_seconds: float = 0.5
    max_upload_queue: int = 512  # requests a peer may have queued with us
    max_peers: int = 50
    rechoke_interval: float = 10.0
    request_timeout: float = 30.0  # a peer that delivers nothing this long is dropped
    stall_cooloff: float = 300.0  # ...and not taken back for this long
    strikes_to_ban: int = 2
    upload_slots: int = 4
    # While seeding nobody gives back, so there is no tit-for-tat to keep slots few: as
    # libtorrent (8 slots), serve more downloaders at once. In a swarm of fresh downloaders
    # every one of them then starts from the seeder at once, with pieces the others lack,
    # instead of the first five holding all of its bandwidth until its next rechoke round,
    # which a fast swarm never reaches.
    seed_upload_slots: int = 8
    # Received blocks kept in memory to serve the peers that ask for them next (only while
    # an attached peer lacks their piece): see recent_blocks.py. 32 blocks of 256 KiB; the
    # daemon passes one RecentBlocks of this size to all its swarms.
    recent_blocks_bytes: int = 8 << 20


class CancelledBlocks:
    """The blocks we cancelled with one peer, the oldest forgotten past ``limit``.

    A late copy of a cancelled block comes within a round trip, after at most a pipeline's
    worth (``max_in_flight``: 128 blocks) of other cancellations; without a bound the set
    would grow with every choke and endgame for as long as the link lives.
    """

    def __init__(self, limit: int = 4096):
        self.limit = limit
        self._keys: dict = {}  # (piece, offset) -> None, oldest first

    def add(self, key) -> None:
        self._keys.pop(key, None)
        self._keys[key] = None
        if len(self._keys) > self.limit:
            del self._keys[next(iter(self._keys))]

    def update(self, keys) -> None:
        for key in keys:
            self.add(key)

    def discard(self, key) -> None:
        self._keys.pop(key, None)

    def __contains__(self, key) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)


@dataclass(eq=False)
class PeerState:
    link: object
    peer_id: bytes
    pieces: Bitfield
    download: RateMeter
    upload: RateMeter
    am_choking: bool = True
    am_interested: bool = False
    peer_choking: bool = True
    peer_interested: bool = False
    got_first_message: bool = False
    requested: dict = field(default_factory=dict)  # (piece, offset) -> (length, sent at)
    # Blocks we cancelled: one late copy of each is fine. A block asked for again stays here:
    # the copy of the cancelled request, still on its way, answers the new one, and the
    # copy of the new request must then not count as unsolicited.
    cancelled: CancelledBlocks = field(default_factory=CancelledBlocks)
    upload_queue: list = field(default_factory=list)  # (piece, offset, length)
    last_block_at: float = 0.0
    strikes: int = 0
    attached_at: float = 0.0
    snubbed_since: float | None = None  # sat on requests: they went to others meanwhile
    metadata_answers: int = 0  # metadata requests answered on this link

    @property
    def short_id(self) -> str:
        return self.peer_id.hex()[:12]


# Messages whose arrival the trace records as such (blocks, haves and requests have their
# own, richer events).
TRACED_MESSAGES = {wire.Interested: "peer_interested", wire.NotInterested: "peer_not_interested",
                   wire.Choke: "peer_choke", wire.Unchoke: "peer_unchoke",
                   wire.Reject: "peer_reject", wire.Cancel: "peer_cancel"}


class ProtocolViolation(Exception):
    """The peer broke the protocol; its link is closed with this reason."""


class Swarm:
    def __init__(self, metainfo, store, have: Bitfield, clock, rng, my_peer_id: bytes,
                 verify, on_verified=None, on_complete=None, config: SwarmConfig = None,
                 on_storage_error=None, write_block=None, trace=None,
                 stats: DaemonStats | None = None, recent: RecentBlocks | None = None):
        self.metainfo = metainfo
        self.info_hash = metainfo.info_hash
        self.store = store
        # (piece, offset, data) -> None; the daemon queues it to its writer thread. Raises
        # PeeritError for a storage failure (at once or one reported since).
        self.write_block = write_block or store.write_block
        self.have = have
        self.clock = clock
        self.rng = rng
        self.my_peer_id = my_peer_id
        self.verify = verify  # piece -> Deferred[digest], off the reactor thread in the daemon
        self.on_verified = on_verified or (lambda piece: None)
        self.on_complete = on_complete or (lambda: None)
        self.on_storage_error = on_storage_error  # PeeritError -> None; None: raise it
        self.on_peer_complete = None  # peer id -> None, when a peer comes to hold everything
        self.config = config or SwarmConfig()
        self.picker = Picker(metainfo.piece_count, metainfo.piece_size,
                             self.config.block_size, have, rng)
        self.choker = Choker(rng, self.config.upload_slots, self.config.seed_upload_slots)
        self.peers: dict[bytes, PeerState] = {}
        self.recent = recent if recent is not None else RecentBlocks(
            self.config.recent_blocks_bytes)
        self.banned: set[bytes] = set()
        self.stalled: dict[bytes, float] = {}  # peer id -> when it may attach again
        self.download = RateMeter(clock)
        self.upload = RateMeter(clock)
        self.downloading = not have.complete
        self.hash_failures = 0
        self.corrupt_bytes_discarded = 0
        self.stats = stats or DaemonStats()  # the daemon's, shared by its swarms
        self.started_at = clock.seconds()
        self._got_first_block = False
        self._timers = []
        self.running = False
        # An observer of events for bench/timeline.py (swarmtrace.py), None when off.
        self.trace = trace if trace is not None else trace_from_environment(
            self.info_hash, my_peer_id, clock)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self.running = True
        self.started_at = self.clock.seconds()

    def _start_timers(self) -> None:
        """Rechoke and stall checks run only while there are peers: a thousand idle shares
        must not wake the daemon up (the idle target: under 2% of a core)."""
        if not self._timers and self.running:
            self._schedule(self.config.rechoke_interval, self._rechoke_round)
            self._schedule(self.config.request_timeout / 3, self._check_stalls)

    def _schedule(self, delay, function):
        def fire():
            self._timers.remove(call)
            if self.running and self.peers:
                function()
                self._schedule(delay, function)
            else:
                for other in self._timers:
                    if other.active():
                        other.cancel()
                self._timers.clear()
        call = self.clock.callLater(delay, fire)
        self._timers.append(call)

    def stop(self, reason: str = "swarm stopped") -> None:
        self.running = False
        for call in self._timers:
            if call.active():
                call.cancel()
        self._timers.clear()
        for peer in list(self.peers.values()):
            peer.link.close(reason)
            self.detach(peer)
        self.recent.clear(self.info_hash)
        if self.trace is not None:
            self.trace("stop")
            self.trace.flush()

    @property
    def complete(self) -> bool:
        return self.have.complete

    # -- links ----------------------------------------------------------------------------
    def can_attach(self, peer_id: bytes) -> str | None:
        """Why a link from ``peer_id`` must be refused, or None."""
        if not self.running:
            return "swarm not active"
        if peer_id == self.my_peer_id:
            return "that is ourselves"
        if peer_id in self.banned:
            return "banned in this swarm"
        if self.stalled.get(peer_id, 0) > self.clock.seconds():
            return "stalled recently"
        if len(self.peers) >= self.config.max_peers:
            return "too many peers"
        return None

    def _preferred(self, link) -> bool:
        """Of two links to one peer (both dialed at once), both ends keep the same one: the
        link dialed by the side with the lower peer id."""
        dialer = self.my_peer_id if link.dialed_by_us else link.peer_id
        return dialer == min(self.my_peer_id, link.peer_id)

    def attach(self, link) -> PeerState | None:
        existing = self.peers.get(link.peer_id)
        if existing is not None:
            # Two links at once are a simultaneous dial: keep the preferred one. A new link
            # next to an older one means the peer lost the old one (a restart, a resume, a
            # close it never saw through): the old one is dead, keeping it would lock the
            # peer out until the idle timeout.
            simultaneous = self.clock.seconds() - existing.attached_at < SIMULTANEOUS_DIAL
            if simultaneous and (not self._preferred(link) or self._preferred(existing.link)):
                link.close("already connected")
                return None
            existing.link.close("replaced by a newer connection")
            self.detach(existing)
        reason = self.can_attach(link.peer_id)
        if reason is not None:
            link.close(reason)
            return None
        peer = PeerState(link, link.peer_id, Bitfield(self.metainfo.piece_count),
                         RateMeter(self.clock), RateMeter(self.clock),
                         last_block_at=self.clock.seconds(), attached_at=self.clock.seconds())
        self.peers[link.peer_id] = peer
        self._start_timers()
        if len(self.have):
            link.send(wire.Bitfield(self.have.to_bytes()))
        # Upload at once while a slot is free instead of waiting for the next round.
        if self.trace is not None:
            self.trace("attach", peer=peer.short_id, path=getattr(link, "path", "?"),
                       dialed=bool(getattr(link, "dialed_by_us", False)))
        log.info("swarm {swarm}: peer {peer} attached over {path}",
                 swarm=self.info_hash.hex()[:12], peer=peer.short_id,
                 path=getattr(link, "path", "?"))
        return peer

    def detach(self, peer: PeerState) -> None:
        if self.peers.get(peer.peer_id) is not peer:
            return
        del self.peers[peer.peer_id]
        self.stats.retire(peer.link, peer.download.total, peer.upload.total)
        if self.trace is not None:
            self.trace("detach", peer=peer.short_id)
        self.picker.remove_peer_pieces(peer.pieces)
        self.picker.release(peer)
        peer.requested.clear()
        peer.upload_queue.clear()
        if not self.peers:
            self.recent.clear(self.info_hash)  # nobody left to serve them to
        # Their outstanding blocks go to the others now.
        self._request_everywhere()
        if not peer.am_choking:
            self._fill_free_slots()

    # -- messages -------------------------------------------------------------------------
    def handle(self, peer: PeerState, message) -> None:
        """Act on one message; a protocol violation bans the peer from this swarm (closing
        the link alone let the transfer dial it again at once, to the same abuse)."""
        try:
            self._dispatch(peer, message)
        except ProtocolViolation as e:
            self.ban(peer, f"protocol violation: {e}")

    def _dispatch(self, peer: PeerState, message) -> None:
        first = not peer.got_first_message
        peer.got_first_message = True
        kind = type(message)
        if self.trace is not None and kind in TRACED_MESSAGES:
            self.trace(TRACED_MESSAGES[kind], peer=peer.short_id)
        if kind is wire.Block:
            self._on_block(peer, message)
        elif kind is wire.Request:
            self._on_request(peer, message)
        elif kind is wire.Have:
            self._on_have(peer, message.piece)
        elif kind is wire.Bitfield:
            if not first:
                raise ProtocolViolation("bitfield after the first message")
            self._on_bitfield(peer, message.bits)
        elif kind is wire.Interested:
            peer.peer_interested = True
            if peer.am_choking and self._unchoked_count() < self._slots() + 1:
                self._unchoke(peer, "interested")
        elif kind is wire.NotInterested:
            peer.peer_interested = False
            if not peer.am_choking:
                self._choke(peer, "not_interested")
                self._fill_free_slots()
        elif kind is wire.Choke:
            peer.peer_choking = True
            self._forget_requests(peer)
        elif kind is wire.Unchoke:
            peer.peer_choking = False
            self._request_more(peer)
        elif kind is wire.Cancel:
            key = (message.piece, message.offset, message.length)
            if key in peer.upload_queue:
                peer.upload_queue.remove(key)
        elif kind is wire.Reject:
            self._on_reject(peer, message)
        elif kind is wire.KeepAlive:
            pass
        elif kind is wire.MetadataRequest:
            self._on_metadata_request(peer, message.piece)
        else:
            raise ProtocolViolation(f"unexpected {kind.__name__}")

    def _check_piece(self, piece: int) -> None:
        if not 0 <= piece < self.metainfo.piece_count:
            raise ProtocolViolation(f"piece {piece} out of range")

    def _on_bitfield(self, peer: PeerState, bits: bytes) -> None:
        try:
            pieces = Bitfield(self.metainfo.piece_count, bits)
        except MalformedMessage as e:
            raise ProtocolViolation(str(e)) from None
        peer.pieces = pieces
        if self.trace is not None:
            self.trace("bitfield", peer=peer.short_id, pieces=len(pieces))
        self.picker.add_peer_pieces(pieces)
        if self.on_peer_complete is not None and pieces.complete:
            self.on_peer_complete(peer.peer_id)
        self._update_interest(peer)

    def _on_have(self, peer: PeerState, piece: int) -> None:
        self._check_piece(piece)
        if peer.pieces.add(piece):
            if self.trace is not None:
                self.trace("have", peer=peer.short_id, piece=piece)
            self.picker.add_peer_piece(piece)
            if self.on_peer_complete is not None and peer.pieces.complete:
                self.on_peer_complete(peer.peer_id)
            if not self.picker.wanted(piece):
                return  # nothing new to ask for (in a swarm, most Haves are such)
            if not peer.am_interested:
                self._update_interest(peer)
            elif not peer.peer_choking:
                self._request_more(peer)

    def _update_interest(self, peer: PeerState) -> None:
        interested = self.downloading and self.picker.interesting(peer.pieces)
        if interested and not peer.am_interested:
            peer.am_interested = True
            peer.link.send(wire.Interested())
            if self.trace is not None:
                self.trace("interested", peer=peer.short_id)
        elif not interested and peer.am_interested:
            peer.am_interested = False
            peer.link.send(wire.NotInterested())
            if self.trace is not None:
                self.trace("not_interested", peer=peer.short_id)
        if interested and not peer.peer_choking:
            self._request_more(peer)

    # -- downloading ----------------------------------------------------------------------
    def _pipeline_depth(self, peer: PeerState) -> int:
        c = self.config
        in_flight = max(c.min_in_flight, min(c.max_in_flight,
                                             peer.download.rate * c.pipeline_seconds))
        return max(2, int(in_flight // c.block_size))

    def _request_more(self, peer: PeerState) -> None:
        if (not self.downloading or peer.peer_choking or not peer.am_interested
                or peer.snubbed_since is not None):
            return
        room = self._pipeline_depth(peer) - len(peer.requested)
        if room <= 0:
            return
        blocks = self.picker.next_requests(peer, peer.pieces, room, len(peer.requested))
        if not blocks:
            if not peer.requested and not self.picker.interesting(peer.pieces):
                peer.am_interested = False
                peer.link.send(wire.NotInterested())
                if self.trace is not None:
                    self.trace("not_interested", peer=peer.short_id)
            return
        now = self.clock.seconds()
        for piece, offset, length in blocks:
            peer.requested[(piece, offset)] = (length, now)
            peer.link.send(wire.Request(piece, offset, length))
        if self.trace is not None:
            self.trace("request", peer=peer.short_id, blocks=len(blocks),
                       first=blocks[0][0], in_flight=len(peer.requested),
                       depth=room + len(peer.requested) - len(blocks),
                       endgame=self.picker.endgame)

    def _request_everywhere(self) -> None:
        for peer in list(self.peers.values()):
            self._request_more(peer)

    def _forget_requests(self, peer: PeerState) -> None:
        if peer.requested:
            self.picker.release(peer)
            peer.cancelled.update(peer.requested)
            peer.requested.clear()
            self._request_everywhere()

    def _on_reject(self, peer: PeerState, message) -> None:
        key = (message.piece, message.offset)
        if key in peer.requested:
            del peer.requested[key]
            self.picker.release(peer, {key})
            self._request_everywhere()

    def _on_block(self, peer: PeerState, block) -> None:
        key = (block.piece, block.offset)
        length = len(block.data)
        expected = peer.requested.pop(key, None)
        if expected is None:
            if key in peer.cancelled:
                peer.cancelled.discard(key)
                if peer.snubbed_since is not None:  # slow, not dead: ask it again
                    peer.snubbed_since = None
                    peer.last_block_at = self.clock.seconds()
                    self._request_more(peer)
                return  # we cancelled it; a late copy is not the peer's fault
            raise ProtocolViolation(f"unsolicited block {block.piece}:{block.offset}")
        if expected[0] != length:
            raise ProtocolViolation(
                f"block {block.piece}:{block.offset} has {length} bytes, asked {expected[0]}")
        now = self.clock.seconds()
        if not self._got_first_block:
            self._got_first_block = True
            self.stats.first_byte_seconds.observe(now - self.started_at)
        peer.last_block_at = now
        peer.download.add(length)
        self.download.add(length)
        if self.trace is not None:
            self.trace("block", peer=peer.short_id, piece=block.piece, offset=block.offset,
                       length=length, in_flight=len(peer.requested))
        accepted, others, piece_done = self.picker.block_received(
            peer, block.piece, block.offset, length)
        if accepted:
            try:
                self.write_block(block.piece, block.offset, block.data)
            except PeeritError as e:
                # A full disk is not the peer's fault and no other peer can help: stop
                # with one clear error instead of failing every link, then redialing.
                if self.on_storage_error is None:
                    raise
                self.on_storage_error(e)
                return
            if self._someone_lacks(block.piece):
                self.recent.add(self.info_hash, block.piece, block.offset, block.data)
            for other in others:
                if other.requested.pop(key, None) is not None:
                    other.cancelled.add(key)
                    other.link.send(wire.Cancel(block.piece, block.offset, length))
            if piece_done:
                self._verify_piece(block.piece)
        self._request_more(peer)

    def _someone_lacks(self, piece: int) -> bool:
        for peer in self.peers.values():
            if piece not in peer.pieces:
                return True
        return False

    def _verify_piece(self, piece: int) -> None:
        contributors = self.picker.start_verifying(piece)
        d = self.verify(piece)
        d.addCallback(self._verified, piece, contributors)
        d.addErrback(self._verify_error, piece)

    def _verified(self, digest: bytes, piece: int, contributors: set) -> None:
        if self.trace is not None:
            self.trace("verified" if digest == self.metainfo.piece_hash(piece)
                       else "hash_failed", piece=piece)
        if digest == self.metainfo.piece_hash(piece):
            self.stats.pieces_verified += 1
            self.picker.piece_verified(piece)
            self.on_verified(piece)
            for peer in list(self.peers.values()):
                peer.link.send(wire.Have(piece))
            if self.have.complete:
                self._completed()
            return
        self.recent.drop_piece(self.info_hash, piece)
        self.hash_failures += 1
        self.stats.pieces_failed += 1
        self.corrupt_bytes_discarded += self.metainfo.piece_size(piece)
        log.warn("swarm {swarm}: piece {piece} failed its hash check (from {peers})",
                 swarm=self.info_hash.hex()[:12], piece=piece,
                 peers=",".join(p.short_id for p in contributors))
        if len(contributors) == 1:
            (culprit,) = contributors
            culprit.strikes += 1
            if culprit.strikes >= self.config.strikes_to_ban:
                self.ban(culprit, "sent corrupt data twice")
            self.picker.piece_failed(piece)
        else:
            # Several sources: fetch it again from one peer alone to learn who lied.
            self.picker.piece_failed(piece, exclusive=True)
        self._request_everywhere()

    def _verify_error(self, failure, piece: int) -> None:
        log.failure("swarm {swarm}: could not check piece {piece}", failure,
                    swarm=self.info_hash.hex()[:12], piece=piece)
        self.recent.drop_piece(self.info_hash, piece)
        self.picker.piece_failed(piece)

    def ban(self, peer: PeerState, reason: str) -> None:
        log.warn("swarm {swarm}: banning {peer}: {reason}", swarm=self.info_hash.hex()[:12],
                 peer=peer.short_id, reason=reason)
        self.banned.add(peer.peer_id)
        peer.link.close(f"banned: {reason}")
        self.detach(peer)

    def _completed(self) -> None:
        self.downloading = False
        if self.trace is not None:
            self.trace("complete")
            self.trace.flush()
        log.info("swarm {swarm}: download complete and verified",
                 swarm=self.info_hash.hex()[:12])
        for peer in list(self.peers.values()):
            if peer.am_interested:
                peer.am_interested = False
                peer.link.send(wire.NotInterested())
            if peer.pieces.complete:
                peer.link.close("both sides complete")
                self.detach(peer)
        self._fill_free_slots()
        self.on_complete()

    # -- uploading ------------------------------------------------------------------------
    def _on_request(self, peer: PeerState, request) -> None:
        self._check_piece(request.piece)
        size = self.metainfo.piece_size(request.piece)
        if (request.length <= 0 or request.length > wire.MAX_BLOCK_SIZE
                or request.offset < 0 or request.offset + request.length > size):
            raise ProtocolViolation(
                f"bad request {request.piece}:{request.offset}+{request.length}")
        key = (request.piece, request.offset, request.length)
        if peer.am_choking or request.piece not in self.have:
            peer.link.send(wire.Reject(*key))
            return
        if len(peer.upload_queue) >= self.config.max_upload_queue:
            raise ProtocolViolation("too many queued requests")
        peer.upload_queue.append(key)
        if len(peer.upload_queue) == 1:
            peer.link.want_to_upload()

    def _on_metadata_request(self, peer: PeerState, piece: int) -> None:
        """Serve our info section to a peer that holds only a link (we hold verified
        metadata: its hash is our info-hash). Each piece at most twice per link."""
        peer.metadata_answers += 1
        limit = 2 * -(-len(self.metainfo.info_bytes) // wire.METADATA_PIECE_SIZE)
        if peer.metadata_answers > limit:
            raise ProtocolViolation("too many metadata requests")
        answer = metadata_answer(self.metainfo.info_bytes, piece,
                                 peer.metadata_answers > 1)
        if answer is None:
            raise ProtocolViolation(f"metadata piece {piece} out of range")
        for message in answer:
            peer.link.send(message)

    def next_upload(self, peer: PeerState):
        """The next block to send to ``peer`` as (piece, offset, data), or None."""
        if peer.am_choking or not peer.upload_queue:
            return None
        # In the order asked: serving blocks still in memory first let a request for an
        # older block wait behind every newer one (a straggler's last blocks, at the end).
        piece, offset, length = peer.upload_queue.pop(0)
        data = self.recent.get(self.info_hash, piece, offset, length)
        if data is None:
            data = self.store.read_block(piece, offset, length)
        else:
            data = bytes(data)  # as the store gives it: every link's transport takes bytes
        if self.trace is not None:
            self.trace("upload", peer=peer.short_id, piece=piece, offset=offset,
                       length=length, queued=len(peer.upload_queue))
        peer.upload.add(length)
        self.upload.add(length)
        return piece, offset, data

    def _fill_free_slots(self) -> None:
        """A slot freed (its peer lost interest or left, or we just finished) goes to a
        waiting interested peer now, not at the next rechoke round: in a fast swarm the
        round (10 s) came after everyone else had finished, and one downloader, choked by
        all, waited for it (a 10 s straggler in a 4 s swarm)."""
        free = self._slots() + 1 - self._unchoked_count()
        if free <= 0:
            return
        waiting = [p for p in self.peers.values() if p.peer_interested and p.am_choking]
        if not waiting:
            return
        # The round's own order: by what they gave us (downloading) or took (seeding),
        # random among equals.
        self.rng.shuffle(waiting)
        if self.downloading:
            waiting.sort(key=lambda p: p.download.rate, reverse=True)
        else:
            waiting.sort(key=lambda p: p.upload.rate, reverse=True)
        for peer in waiting[:free]:
            self._unchoke(peer, "free_slot")

    def _slots(self) -> int:
        """Regular upload slots now (one optimistic slot comes on top)."""
        return self.config.upload_slots if self.downloading else self.config.seed_upload_slots

    def _unchoked_count(self) -> int:
        return sum(1 for p in self.peers.values() if not p.am_choking)

    def _unchoke(self, peer: PeerState, why: str) -> None:
        peer.am_choking = False
        peer.link.send(wire.Unchoke())
        if self.trace is not None:
            self.trace("unchoke", peer=peer.short_id, why=why)

    def _choke(self, peer: PeerState, why: str) -> None:
        if self.trace is not None:
            self.trace("choke", peer=peer.short_id, why=why,
                       dropped=len(peer.upload_queue))
        peer.am_choking = True
        for key in peer.upload_queue:
            peer.link.send(wire.Reject(*key))
        peer.upload_queue.clear()
        peer.link.send(wire.Choke())

    def _rechoke_round(self) -> None:
        views = [PeerView(p, p.peer_interested, p.download.rate, p.upload.rate)
                 for p in self.peers.values()]
        chosen = self.choker.rechoke(views, seeding=not self.downloading)
        for peer in list(self.peers.values()):
            if peer in chosen and peer.am_choking:
                self._unchoke(peer, "round")
            elif peer not in chosen and not peer.am_choking:
                self._choke(peer, "round")

    def _check_stalls(self) -> None:
        """Drop peers that sit on our requests without delivering."""
        now = self.clock.seconds()
        snub_after = self.config.request_timeout / 3
        for peer in list(self.peers.values()):
            if (peer.snubbed_since is None and peer.requested
                    and now - peer.last_block_at > snub_after):
                # Its blocks (and an exclusive retry it owns) go to others at once; the peer
                # stays, asked nothing more, until it delivers or the full timeout passes.
                peer.snubbed_since = now
                self._forget_requests(peer)
                continue
            if (peer.snubbed_since is not None
                    and now - peer.snubbed_since > self.config.request_timeout):
                log.info("swarm {swarm}: dropping stalled peer {peer}",
                         swarm=self.info_hash.hex()[:12], peer=peer.short_id)
                # Taken back at once, it grabbed new requests (an exclusive retry too)
                # and held the download up for another whole timeout.
                self.stalled[peer.peer_id] = now + self.config.stall_cooloff
                peer.link.close("stalled: no data for requested blocks")
                self.detach(peer)

    # -- status ---------------------------------------------------------------------------
    def peer_summaries(self) -> list[dict]:
        return [{
            "peer_id": p.peer_id.hex(),
            "path": getattr(p.link, "path", "?"),
            "address": getattr(p.link, "remote", ""),
            "connect_seconds": getattr(p.link, "connect_seconds", 0.0),
            "pieces": len(p.pieces),
            "download_rate": p.download.rate,
            "upload_rate": p.upload.rate,
            "downloaded": p.download.total,
            "uploaded": p.upload.total,
            "choked_by_us": p.am_choking,
            "choking_us": p.peer_choking,
            "interested": p.am_interested,
            "peer_interested": p.peer_interested,
        } for p in self.peers.values()]
