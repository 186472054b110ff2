"""A download known only by its ``peerit:`` link, until its metadata is fetched and verified.

It finds peers and dials them exactly as a transfer does (it is one, without files, in state
FETCHING): its links attach to a ``MetadataSwarm`` instead of a swarm of pieces. Once the
info section's hash matches the link, ``on_metadata(phase, info_bytes)`` (the registry,
``Transfers.metadata_fetched``) replaces it by an ordinary download of that metadata, which
is saved: a restart never fetches it again.
"""

import collections

from twisted.internet import defer
from twisted.logger import Logger

from peerit.daemon.metadata_fetch import MetadataFetch, MetadataSwarm
from peerit.daemon.transfer import RATE_HISTORY, State, Transfer, TransferHost
from peerit.links import Link

log = Logger()


class _NoFiles:
    """Nothing is on disk before the metadata is known."""

    def close(self) -> None:
        pass

    def delete_files(self) -> None:
        pass


class MetadataPhase(Transfer):
    def __init__(self, host: TransferHost, link: Link, root: str, on_metadata):
        # Not Transfer.__init__: there is no metainfo, piece set or file store yet.
        self.host = host
        self.clock = host.clock
        self.on_metadata = on_metadata
        self.link = link
        self.info_hash = link.info_hash
        self.event_key = ("transfer", self.info_hash.hex())  # the download's key after it
        self.root = root
        self.role = "download"
        self.store = _NoFiles()
        self.state = State.STOPPED
        self.error = ""
        self.paused = False
        self.swarm: MetadataSwarm | None = None
        self.known: dict[bytes, object] = {}
        self.dialing: dict[bytes, defer.Deferred] = {}
        self.backoff: dict[bytes, tuple[float, float]] = {}
        self.last_peer_request = -1e9
        self.completed_at = None
        self._checking = None
        self._maintain_call = None
        self.rate_history = collections.deque(maxlen=RATE_HISTORY)
        self.metainfo = None  # what this phase is for

    @property
    def data_swarm(self):
        return None  # the metadata swarm moves no pieces: no rates, no per-peer counters

    @property
    def name(self) -> str:
        return self.link.display_name or self.info_hash.hex()[:16]

    @property
    def path(self) -> str:
        return self.root  # where it will go; the name inside is known with the metadata

    @property
    def trackers(self):
        return self.host.trackers_for(self.link)  # a link names its trackers as a .p2p does

    @property
    def bytes_left(self) -> int:
        return self.link.size or 1  # a leecher as far as trackers can tell

    def start(self, check=None) -> defer.Deferred:
        if self.paused:
            if self.state is not State.PAUSED:
                self._move(State.PAUSED)
            return defer.succeed(None)
        fetch = MetadataFetch(self.info_hash, self.clock, self._fetched,
                              lambda key, reason: self.swarm.banned_by_fetch(key, reason))
        self.swarm = MetadataSwarm(fetch, self.host.peer_id)
        self._move(State.FETCHING)
        self.error = ""
        self.announce("started")
        self._maintain_call = self.clock.callLater(0, self._maintain)
        return defer.succeed(None)

    def _maintain(self) -> None:
        # A fetch that got stuck (only oversized or lying peers left) shows in summary()
        # alone: offer it to the event hub every round, which publishes only what differs.
        self._changed()
        super()._maintain()

    def _fetched(self, info_bytes: bytes) -> None:
        log.info("transfer {t}: metadata fetched and verified ({n} bytes)", t=self.short,
                 n=len(info_bytes))
        # Out of the fetch's call stack: the registry ends this phase and moves its links.
        self.clock.callLater(0, self.on_metadata, self, info_bytes)

    def sync(self) -> defer.Deferred:
        return defer.succeed(None)

    def summary(self) -> dict:
        swarm = self.swarm
        fetch = swarm.fetch if swarm is not None else None
        state = self.state.value
        stuck = fetch.stuck() if fetch is not None else None
        if self.state is State.FETCHING and stuck is not None:
            state = f"metadata {stuck}"  # peerit-ctl's exit code 13 or 14
        elif self.state is State.FETCHING and swarm is not None and not swarm.peers:
            state = "fetching metadata, waiting for peers"
        return {
            "info_hash": self.info_hash.hex(),
            "name": self.name,
            "role": self.role,
            "state": state,
            "path": self.path,
            "size": self.link.size or 0,
            "done": 0,
            "pieces": 0,
            "pieces_done": 0,
            "down_rate": 0.0,
            "up_rate": 0.0,
            "downloaded": 0,
            "uploaded": 0,
            "peers": len(swarm.peers) if swarm else 0,
            "known_peers": len(self.known),
            "eta": -1.0,
            "hash_failures": 0,
            "banned": len(fetch.banned) if fetch else 0,
            "error": self.error or (fetch.problem if fetch else ""),
        }
