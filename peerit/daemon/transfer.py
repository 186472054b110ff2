"""One share or download on this daemon: its files, its swarm, and the peers it knows.

A transfer checks data it cannot trust yet (an existing .p2p's data, files already at the
target, pieces not known to be on stable storage after a crash) before the swarm starts,
keeps the resume state current, and keeps enough links open: it asks its trackers for peers and
dials the ones it is not connected to, backing off from those that fail.

Its lifecycle (``State``) changes only here, by the moves ``TRANSITIONS`` lists: from
STOPPED it starts CHECKING, DOWNLOADING or SEEDING (checking first what it cannot trust yet),
or FETCHING the metadata of a download known only by its link (``metadata_phase.py``);
DOWNLOADING becomes SEEDING once complete; any of these may be PAUSED, end in ERROR (data
that no longer matches, a full disk) or be STOPPED (removed, daemon shutting down); resuming
from PAUSED or ERROR starts it again.

What it needs from the daemon is a :class:`TransferHost`, nothing more.
"""

import collections
import enum
import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from peerit.bitfield import Bitfield
from peerit.daemon.state import SwarmRecord
from peerit.daemon.stats import DaemonStats
from peerit.daemon.storage import FileStore
from peerit.daemon.swarm import Swarm, SwarmConfig
from peerit.daemon.writer import PieceHashes
from peerit.errors import PeeritError

log = Logger()

MAINTAIN_INTERVAL = 2.0
PEER_REFRESH = 30.0  # ask the trackers again this often while downloading...
PEER_REFRESH_ALONE = 5.0  # ...or this often while no peer is connected
MAX_DIALS_AT_ONCE = 8
WANT_PEERS = 20
BACKOFF_FIRST, BACKOFF_MAX = 5.0, 300.0
RATE_HISTORY = 300  # samples, one per event tick (1 s): five minutes


def bytes_left(metainfo, have: Bitfield) -> int:
    """O(1): every piece is ``piece_length`` long but the last. (A sum over the verified
    pieces here cost a watched download 18% of its CPU: status is polled often.)"""
    if not metainfo.piece_count:
        return 0
    last = metainfo.piece_count - 1
    done = len(have) * metainfo.piece_length
    if last in have:
        done -= metainfo.piece_length - metainfo.piece_size(last)
    return metainfo.total_size - done


class State(enum.Enum):
    STOPPED = "stopped"
    FETCHING = "fetching metadata"
    CHECKING = "checking"
    DOWNLOADING = "downloading"
    SEEDING = "seeding"
    PAUSED = "paused"
    ERROR = "error"


_RUNNING = {State.FETCHING, State.CHECKING, State.DOWNLOADING, State.SEEDING}
_STARTS = {State.FETCHING, State.CHECKING, State.DOWNLOADING, State.SEEDING}
# The only transitions there are; _move refuses any other. (A fetched link's metadata
# does not move its phase on: a new Transfer of the metadata takes its place.)
TRANSITIONS = {
    State.STOPPED: _STARTS | {State.PAUSED, State.ERROR},
    State.FETCHING: {State.PAUSED, State.ERROR, State.STOPPED},
    State.CHECKING: {State.DOWNLOADING, State.SEEDING, State.PAUSED, State.ERROR,
                     State.STOPPED},
    State.DOWNLOADING: {State.SEEDING, State.PAUSED, State.ERROR, State.STOPPED},
    State.SEEDING: {State.PAUSED, State.ERROR, State.STOPPED},
    State.PAUSED: _STARTS | {State.ERROR, State.STOPPED},
    State.ERROR: _STARTS | {State.PAUSED, State.STOPPED},
}


@dataclass(frozen=True)
class TransferHost:
    """What a transfer uses of the daemon that runs it."""
    clock: IReactorTime
    rng: object                              # random.Random: piece order
    peer_id: bytes                           # ours
    resume: object                           # StateDB: the resume state
    in_thread: Callable                      # (f, *args) -> Deferred, on the disk pool
    hasher: object                           # BlockWriter: received blocks hashed...
    writer: object                           # ...then written (peerit/daemon/writer.py)
    call_from_thread: Callable               # reactor.callFromThread
    trackers_for: Callable                   # (metainfo) -> [tracker session]
    connect_peer: Callable                   # (info_hash, PeerInfo) -> Deferred[session]
    events: object = None                    # EventHub the transfer publishes changes to
    stats: DaemonStats = field(default_factory=DaemonStats)  # counters for the metrics
    # A private send or receive admits one peer: (info_hash) -> its id, b"" for nobody
    # yet, None for a public transfer.
    pinned: Callable = lambda info_hash: None
    # (info_hash, peer_id) -> None when a peer comes to hold everything (a send's end).
    peer_complete: Callable = lambda info_hash, peer_id: None
    # Received blocks kept to upload again (recent_blocks.py), one bound for all swarms;
    # None: each swarm keeps its own.
    recent_blocks: object = None


def file_stamps(store: FileStore) -> str:
    stamps = []
    for index in range(len(store.metainfo.files)):
        st = os.stat(store.path_of(index), follow_symlinks=False)
        stamps.append([st.st_size, st.st_mtime_ns])
    return json.dumps(stamps)


class Transfer:
    def __init__(self, host: TransferHost, metainfo, root: str, role: str,
                 record: SwarmRecord = None):
        self.host = host
        self.clock = host.clock
        self.metainfo = metainfo
        self.info_hash = metainfo.info_hash
        self.event_key = ("transfer", self.info_hash.hex())
        self.root = root
        self.role = role
        self.store = FileStore(metainfo, root, writable=(role == "download"),
                               direct=(role == "download"))
        self.have = Bitfield(metainfo.piece_count)
        self.synced = Bitfield(metainfo.piece_count)
        self.state = State.STOPPED
        self.error = ""
        self.paused = False
        self.swarm: Swarm | None = None
        self.known: dict[bytes, object] = {}  # peer id -> tracker's PeerInfo
        self.dialing: dict[bytes, defer.Deferred] = {}
        self.backoff: dict[bytes, tuple[float, float]] = {}  # peer id -> (retry at, delay)
        self.last_peer_request = -1e9
        self.check_progress = (0, 0)
        self.completed_at = record.completed if record else None
        # (time, down, up) once per event tick while the rates move: the page's rate chart.
        self.rate_history = collections.deque(maxlen=RATE_HISTORY)
        self._checking = None
        self._maintain_call = None
        self._unsynced = 0
        self._hashes = None  # PieceHashes of the running swarm, touched by the hasher only
        self._write_failures = set()
        self._write_error = None  # PeeritError the writer thread met, raised on next write
        if record is not None:
            self.paused = record.paused
            if record.verified:
                self.have = Bitfield(metainfo.piece_count, record.verified)
            if record.synced:
                self.synced = Bitfield(metainfo.piece_count, record.synced)

    def _move(self, to: State) -> None:
        if to not in TRANSITIONS[self.state]:
            raise AssertionError(f"transfer: {self.state.name} -> {to.name}")
        # Completion and failure are what a follower (peerit-ctl download) waits for: said
        # at once; other moves at the next event tick.
        self._changed(now=to is State.ERROR or (to is State.SEEDING
                                                and self.state is State.DOWNLOADING))
        self.state = to

    def _changed(self, now: bool = False) -> None:
        """Tell the daemon's event hub (the page, followers) that this transfer changed."""
        events = self.host.events
        if events is not None:
            (events.changed_now if now else events.changed)(self.event_key)

    @property
    def data_swarm(self):
        """The swarm of pieces, whose rates and per-peer counters the page, the totals and
        the metrics read; None while there is none (a link's metadata phase)."""
        return self.swarm

    @property
    def short(self) -> str:
        return self.info_hash.hex()[:12]

    @property
    def name(self) -> str:
        return self.metainfo.name

    @property
    def path(self) -> str:
        return os.path.join(self.root, self.metainfo.name)

    @property
    def trackers(self):
        return self.host.trackers_for(self.metainfo)

    # -- starting -------------------------------------------------------------------------
    def open(self, create: bool) -> None:
        self.store.open(create=create)

    def create_files(self) -> defer.Deferred:
        """Make a new download's files on the writer thread; fires once they exist.

        Making and preallocating a thousand small files took the reactor 50-250 ms, before
        the download could announce or connect. Here the root is made at once (a target we
        cannot write is refused now) and the files are queued on the writer ahead of every
        block: blocks reach the writer only through the hasher, after this call, and the
        writer runs in order, so no block is written before its file exists (``FileStore``
        refuses one that would be). The swarm may start meanwhile.
        """
        self.store.open_root(create=True)
        return self.host.writer.call(self.store.open_files, True)

    def cannot_open(self, error: PeeritError) -> None:
        """A restored transfer whose files cannot be opened stays listed, in error."""
        self._move(State.ERROR)
        self.error = str(error)

    def start(self, check: list[int] | None = None) -> defer.Deferred:
        """Check ``check`` pieces (all if None and nothing is trusted) then join the swarm."""
        if self.paused:
            if self.state is not State.PAUSED:
                self._move(State.PAUSED)
            return defer.succeed(None)
        if check:
            return self._check_then_start(check)
        self._start_swarm()
        return defer.succeed(None)

    def _check_then_start(self, pieces: list[int]) -> defer.Deferred:
        self._move(State.CHECKING)
        self.check_progress = (0, len(pieces))
        cancelled = [False]

        def work():
            good = []
            for n, piece in enumerate(pieces):
                if cancelled[0]:
                    break
                if self.store.piece_digest(piece) == self.metainfo.piece_hash(piece):
                    good.append(piece)
                self.check_progress = (n + 1, len(pieces))
            return good

        d = self.host.in_thread(work)
        self._checking = cancelled

        def done(good):
            self._checking = None
            if cancelled[0]:
                return
            for piece in pieces:
                self.have.discard(piece)
            for piece in good:
                self.have.add(piece)
                self.synced.add(piece)
            self.host.resume.set_verified(self.info_hash, self.have.to_bytes())
            self.host.resume.set_synced(self.info_hash, self.synced.to_bytes())
            log.info("transfer {t}: checked {n} pieces, {good} good", t=self.short,
                     n=len(pieces), good=len(good))
            if self.role == "seed" and not self.have.complete:
                self._fail(f"the shared data no longer matches its .p2p "
                           f"({self.metainfo.piece_count - len(self.have)} pieces differ)")
                return
            if self.role == "seed":
                self.host.resume.set_file_stamps(self.info_hash, file_stamps(self.store))
            self._start_swarm()

        def failed(failure):
            self._checking = None
            self._fail(f"cannot check the data: {failure.getErrorMessage()}")
        d.addCallbacks(done, failed)
        return d

    def _storage_failed(self, error: PeeritError) -> None:
        """Writing failed (a full disk): stop in state error; ``resume`` tries again."""
        self.stop(f"cannot write: {error}")
        self._fail(f"{error}; free some space, then resume")

    def _fail(self, message: str) -> None:
        log.error("transfer {t}: {message}", t=self.short, message=message)
        self._move(State.ERROR)
        self.error = message

    def _start_swarm(self) -> None:
        # A fresh PieceHashes per swarm: blocks of an earlier run still in the writer's
        # queue feed the old one, which nobody asks again.
        self._hashes = PieceHashes(self.metainfo.piece_size)
        self._write_failures = set()  # pieces with a failed write (writer thread)
        self._write_error = None
        self.swarm = Swarm(
            self.metainfo, self.store, self.have, self.clock, self.host.rng,
            self.host.peer_id, verify=self._verify_piece, on_verified=self._piece_verified,
            on_complete=self._completed, config=SwarmConfig(),
            on_storage_error=self._storage_failed, write_block=self._write_block,
            stats=self.host.stats, recent=self.host.recent_blocks)
        self.swarm.on_peer_complete = lambda peer_id: self.host.peer_complete(
            self.info_hash, peer_id)
        self.swarm.start()
        self._move(State.SEEDING if self.have.complete else State.DOWNLOADING)
        self.error = ""
        self.announce("started")
        self._maintain_call = self.clock.callLater(0, self._maintain)

    def announce(self, event: str) -> None:
        for tracker in self.trackers:
            tracker.announce(self.info_hash, event, self.bytes_left)

    @property
    def bytes_left(self) -> int:
        return bytes_left(self.metainfo, self.have)

    # -- pieces ---------------------------------------------------------------------------
    # Received blocks go through two threads in order (peerit/daemon/writer.py): the hasher
    # feeds the piece's SHA-256 from the block's memory and passes the block on to the
    # writer, which writes it (O_DIRECT waits for the device: hashing the next block
    # meanwhile keeps the pipeline full). A piece's digest is taken on the hasher after its
    # blocks, then confirmed on the writer after their writes: verified means written.
    def _write_block(self, piece: int, offset: int, data) -> None:
        """Reactor thread: queue a received block."""
        if self._write_error is not None:
            raise self._write_error
        self.host.hasher.submit(len(data), self._hash_in_hasher, self._hashes,
                                  self._write_failures, self.swarm, piece, offset, data)

    def _hash_in_hasher(self, hashes: PieceHashes, failures: set, swarm, piece: int,
                        offset: int, data) -> None:
        hashes.add(piece, offset, data)
        self.host.writer.submit(len(data), self._write_in_writer, failures, swarm, piece,
                                  offset, data)

    def _write_in_writer(self, failures: set, swarm, piece: int, offset: int, data) -> None:
        try:
            self.store.write_block(piece, offset, data)
        except PeeritError as e:
            failures.add(piece)  # its check reads back what is (not) on disk
            if self._write_error is None and swarm is self.swarm:
                self._write_error = e
                self.host.call_from_thread(self._write_failed, swarm, e)

    def _write_failed(self, swarm, error: PeeritError) -> None:
        if swarm is self.swarm and swarm.running:
            self._storage_failed(error)

    def _verify_piece(self, piece: int) -> defer.Deferred:
        failures = self._write_failures
        d = self.host.hasher.call(self._hashes.finish, piece)
        d.addCallback(lambda digest: self.host.writer.call(
            self._digest_in_writer, failures, piece, digest))
        return d

    def _digest_in_writer(self, failures: set, piece: int, digest: bytes | None) -> bytes:
        if digest is None or piece in failures:
            failures.discard(piece)
            return self.store.piece_digest(piece)
        return digest

    def _piece_verified(self, piece: int) -> None:
        # Journaled at once: a SIGKILL a moment later must not cost this piece again.
        self.host.resume.journal_verified(self.info_hash, piece)
        self._unsynced += 1
        self._changed()

    def sync(self) -> defer.Deferred:
        """Flush written data, then mark the verified pieces as safely on disk."""
        if not self._unsynced or self.role != "download":
            return defer.succeed(None)
        self._unsynced = 0
        snapshot = self.have.copy()

        def mark(_):
            for piece in snapshot:
                self.synced.add(piece)
            # Everything verified so far (also since the snapshot) goes to the database in
            # one commit, in this reactor turn, and the journal starts empty again.
            self.host.resume.set_verified(self.info_hash, self.have.to_bytes())
            self.host.resume.set_synced(self.info_hash, self.synced.to_bytes())
        return self.host.in_thread(self.store.sync).addCallback(mark)

    def _completed(self) -> None:
        if self.state is State.DOWNLOADING:
            self._move(State.SEEDING)
        self.completed_at = time.time()
        self.host.resume.set_completed(self.info_hash, self.completed_at)
        self.announce("completed")
        self.sync()
        log.info("transfer {t}: {name} complete and verified", t=self.short,
                 name=self.metainfo.name)

    # -- peers ----------------------------------------------------------------------------
    def peers_found(self, peers) -> None:
        pinned = self.host.pinned(self.info_hash)  # a private send or receive
        for info in peers:
            if info.peer_id != self.host.peer_id and pinned in (None, info.peer_id):
                self.known[info.peer_id] = info
        if self.swarm is not None and self.swarm.downloading:
            self._dial_some()

    def _maintain(self) -> None:
        self._maintain_call = None
        if self.swarm is None or not self.swarm.running:
            return
        if not self.swarm.downloading:
            return  # a seed only waits for others: no timer per share (idle CPU)
        now = self.clock.seconds()
        refresh = PEER_REFRESH if self.swarm.peers else PEER_REFRESH_ALONE
        # Stamped only when a session took the request: a download added while its trackers
        # are still connecting must not wait a whole refresh once one comes up.
        if now - self.last_peer_request >= refresh and self._request_peers():
            self.last_peer_request = now
        self._dial_some()
        self._maintain_call = self.clock.callLater(MAINTAIN_INTERVAL, self._maintain)

    def look_up_peers(self) -> None:
        """Ask the trackers for peers before :meth:`start`: the peers found wait in
        ``known`` (a pinned transfer keeps only its one peer) and the start dials them at
        once instead of waiting for a tracker's answer first. A code's receiver does this
        while its sender confirms the exchange. The start still asks again (an answer that
        came too early to list the peer costs no refresh interval)."""
        self._request_peers()

    def _request_peers(self) -> bool:
        """Ask every connected tracker for peers; False when none could be asked."""
        asked = False
        for tracker in self.trackers:
            if tracker.connected:
                self._ask_for_peers(tracker)
                asked = True
        return asked

    def _ask_for_peers(self, tracker) -> None:
        d = tracker.request_peers(self.info_hash, 50)
        d.addCallback(self.peers_found)
        d.addErrback(lambda f: log.debug("peer list failed: {e}", e=f.getErrorMessage()))

    def tracker_up(self, tracker) -> None:
        """One of our trackers' sessions has just been welcomed: a download asks it for peers
        at once instead of at the next refresh (up to PEER_REFRESH_ALONE later)."""
        if (self.swarm is not None and self.swarm.downloading and tracker.connected
                and tracker in self.trackers):
            self.last_peer_request = self.clock.seconds()
            self._ask_for_peers(tracker)

    def _dial_some(self) -> None:
        swarm = self.swarm
        if swarm is None or not swarm.downloading:
            return
        now = self.clock.seconds()
        budget = min(MAX_DIALS_AT_ONCE - len(self.dialing),
                     WANT_PEERS - len(swarm.peers) - len(self.dialing))
        candidates = [info for peer_id, info in self.known.items()
                      if peer_id not in swarm.peers and peer_id not in self.dialing
                      and swarm.can_attach(peer_id) is None  # banned, stalled, full
                      and self.backoff.get(peer_id, (0, 0))[0] <= now]
        # Seeders first: they have everything.
        candidates.sort(key=lambda info: not info.seeder)
        for info in candidates[:max(0, budget)]:
            self._dial(info)

    def _dial(self, info) -> None:
        d = self.host.connect_peer(self.info_hash, info)
        self.dialing[info.peer_id] = d

        def connected(link):
            self.dialing.pop(info.peer_id, None)
            self.backoff.pop(info.peer_id, None)
            if self.swarm is None or not self.swarm.running:
                link.close("transfer stopped")
                return
            link.attach()

        def failed(failure):
            self.dialing.pop(info.peer_id, None)
            _, delay = self.backoff.get(info.peer_id, (0, BACKOFF_FIRST / 2))
            delay = min(BACKOFF_MAX, delay * 2)
            self.backoff[info.peer_id] = (self.clock.seconds() + delay, delay)
            if not failure.check(defer.CancelledError):
                log.info("transfer {t}: cannot reach {peer}: {why}", t=self.short,
                         peer=info.peer_id.hex()[:12], why=failure.getErrorMessage())
        d.addCallbacks(connected, failed)

    def authorize(self, peer_id: bytes) -> defer.Deferred:
        """Accept an inbound link only from a peer a tracker announced in this swarm."""
        if self.swarm is None or not self.swarm.running:
            return defer.succeed(f"not active ({self.state.value})")
        refusal = self.swarm.can_attach(peer_id)
        if refusal:
            return defer.succeed(refusal)
        if peer_id in self.known:
            return defer.succeed(None)
        trackers = [t for t in self.trackers if t.connected]
        if not trackers:
            return defer.succeed("no tracker vouches for this peer")
        lists = [t.request_peers(self.info_hash, 200) for t in trackers]

        def check(results):
            for ok, peers in results:
                if ok:
                    self.peers_found(peers)
            return None if peer_id in self.known else "peer not announced in this swarm"
        return defer.DeferredList(lists, consumeErrors=True).addCallback(check)

    # -- control --------------------------------------------------------------------------
    def stop(self, reason: str = "transfer stopped", announce: bool = True) -> None:
        if self._checking is not None:
            self._checking[0] = True
        if self._maintain_call is not None and self._maintain_call.active():
            self._maintain_call.cancel()
        self._maintain_call = None
        for d in list(self.dialing.values()):
            d.cancel()
        self.dialing.clear()
        if self.swarm is not None:
            self.swarm.stop(reason)
            self.swarm = None
            if announce:
                self.announce("stopped")
        if self.state in _RUNNING:
            self._move(State.STOPPED)

    def pause(self) -> None:
        self.stop("paused")
        self.paused = True
        if self.state is not State.PAUSED:
            self._move(State.PAUSED)
        self.host.resume.set_paused(self.info_hash, True)

    def resume(self) -> None:
        if not self.paused and self.state is not State.ERROR:
            return
        self.paused = False
        self.host.resume.set_paused(self.info_hash, False)
        self.start()

    # -- status ---------------------------------------------------------------------------
    def summary(self) -> dict:
        swarm = self.swarm
        size = self.metainfo.total_size
        done = size - self.bytes_left
        down = swarm.download.rate if swarm else 0.0
        state = self.state.value
        if self.state is State.DOWNLOADING and swarm is not None and not swarm.peers:
            state = "waiting for peers"
        if self.state is State.CHECKING:
            checked, total = self.check_progress
            done = int(size * checked / total) if total else 0
        eta = (self.bytes_left / down) if down > 1 and self.bytes_left else \
            (0.0 if not self.bytes_left else -1.0)
        return {
            "info_hash": self.info_hash.hex(),
            "name": self.metainfo.name,
            "role": self.role,
            "state": state,
            "path": self.path,
            "size": size,
            "done": done,
            "pieces": self.metainfo.piece_count,
            "pieces_done": len(self.have),
            "down_rate": down,
            "up_rate": swarm.upload.rate if swarm else 0.0,
            "downloaded": swarm.download.total if swarm else 0,
            "uploaded": swarm.upload.total if swarm else 0,
            "peers": len(swarm.peers) if swarm else 0,
            "known_peers": len(self.known),
            "eta": eta,
            "hash_failures": swarm.hash_failures if swarm else 0,
            "banned": len(swarm.banned) if swarm else 0,
            "error": self.error,
        }
