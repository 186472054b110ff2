"""The daemon's transfers: the registry of shares and downloads, and what runs them.

A child service of the daemon. It owns the transfers, the disk threads they use (a small
pool for checking and fsync; the hasher and writer stages received blocks pass through), the
periodic sync of the resume state, and the restore at start. It is also the ``router`` peer
links ask: which swarm an info-hash names, and whether a peer may join it (for a private send
or receive, only the one pinned peer may).

A download known only by its ``peerit:`` link starts as a :class:`MetadataPhase`; once its
metadata is verified it becomes an ordinary download here (``metadata_fetched``), keeping its
links.
"""

import os
import time
from typing import Callable

from twisted.application import service
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from peerit import links
from peerit.daemon.metadata_phase import MetadataPhase
from peerit.daemon.node import Node
from peerit.daemon.peer_session import IPeerRouter
from peerit.daemon.recent_blocks import RecentBlocks
from peerit.daemon.state import SwarmRecord
from peerit.daemon.stats import DaemonStats
from peerit.daemon.swarm import SwarmConfig
from peerit.daemon.transfer import State, Transfer, TransferHost, file_stamps
from peerit.daemon.writer import BlockWriter
from peerit.errors import PeeritError, UnknownSwarm, UsageError
from peerit.metainfo import Metainfo
from peerit.ratelimit import TokenBucket
from peerit.wire import peer as wire

log = Logger()

SYNC_INTERVAL = 5.0


@implementer(IPeerRouter)
class Transfers(service.Service):
    """``trackers_for(metainfo)`` gives a transfer its tracker sessions;
    ``connect_peer(info_hash, peer_info)`` races a peer's paths to a ready link."""

    name = "transfers"

    def __init__(self, reactor, node: Node, rng, trackers_for: Callable,
                 connect_peer: Callable, max_upload_rate: float = 0, events=None,
                 stats: DaemonStats | None = None):
        self.reactor = reactor
        self.events = events  # the EventHub transfers publish their changes to
        self.stats = stats or DaemonStats()
        self.node = node
        self.rng = rng
        self._trackers_for = trackers_for
        self._connect_peer = connect_peer
        self.upload_limiter = None
        if max_upload_rate:
            # Depth: a quarter second at the rate, at least 128 KiB (a few blocks).
            self.upload_limiter = TokenBucket(reactor, max_upload_rate,
                                              max(max_upload_rate / 4, 1 << 17))
        self.transfers: dict[bytes, Transfer] = {}
        # Private sends and receives: info-hash -> the one peer admitted (b"": nobody yet).
        self.pinned: dict[bytes, bytes] = {}
        self.on_peer_complete = None  # (info_hash, peer_id) -> None: sends follow it
        self.host: TransferHost | None = None
        self._pool = None
        self._hasher = None
        self._writer = None
        self._sync_call = None

    # -- lifecycle ------------------------------------------------------------------------
    def startService(self):
        super().startService()
        self._pool = ThreadPool(1, 2, name="peerit-disk")
        self._pool.start()
        # Received blocks: hashed on one thread, written on another (Transfer._write_block).
        self._hasher = BlockWriter(self.reactor, name="peerit-hasher")
        self._writer = BlockWriter(self.reactor)
        self._hasher.start()
        self._writer.start()
        self.host = TransferHost(
            clock=self.reactor, rng=self.rng, peer_id=self.node.peer_id,
            resume=self.node.state, in_thread=self._in_thread, hasher=self._hasher,
            writer=self._writer, call_from_thread=self.reactor.callFromThread,
            trackers_for=self._trackers_for, connect_peer=self._connect_peer,
            events=self.events, stats=self.stats,
            pinned=self.pinned.get, peer_complete=self._peer_complete,
            recent_blocks=RecentBlocks(SwarmConfig.recent_blocks_bytes))
        self.pinned.update(self.node.state.pinned())
        self._restore()
        self._sync_call = self.reactor.callLater(SYNC_INTERVAL, self._sync)

    def stopService(self):
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self):
        if self._sync_call is not None and self._sync_call.active():
            self._sync_call.cancel()
        for transfer in list(self.transfers.values()):
            transfer.stop("daemon shutting down")
        for transfer in self.transfers.values():
            try:
                await transfer.sync()
            except Exception:
                log.failure("final sync failed")
        for stage in (self._hasher, self._writer):  # this order: the hasher feeds the writer
            if stage is not None:
                stage.stop()  # queued blocks written before the files close
        for transfer in self.transfers.values():
            transfer.store.close()
        if self._pool is not None:
            self._pool.stop()

    def _in_thread(self, function, *args) -> defer.Deferred:
        return deferToThreadPool(self.reactor, self._pool, function, *args)

    def _sync(self):
        for transfer in list(self.transfers.values()):
            transfer.sync().addErrback(
                lambda f: log.failure("sync failed", f))
        self._sync_call = self.reactor.callLater(SYNC_INTERVAL, self._sync)

    def _restore(self) -> None:
        state = self.node.state
        clean = state.clean_shutdown

        def piece_count(metainfo_bytes):
            try:
                return Metainfo.from_bytes(metainfo_bytes).piece_count
            except PeeritError:
                return None
        for record in state.records(piece_count):
            try:
                metainfo = Metainfo.from_bytes(record.metainfo)
            except PeeritError as e:
                log.error("dropping unreadable saved transfer: {e}", e=str(e))
                state.remove(record.info_hash)
                continue
            transfer = Transfer(self.host, metainfo, record.root, record.role, record)
            self.transfers[metainfo.info_hash] = transfer
            check = None
            try:
                transfer.open(create=record.role == "download")
                if record.role == "seed":
                    if record.file_stamps != file_stamps(transfer.store):
                        check = list(range(metainfo.piece_count))  # edited since shared
                elif not clean:
                    # After a crash, pieces verified but not known to be on disk are
                    # checked again rather than trusted (a power loss may have lost them).
                    check = [i for i in transfer.have if i not in transfer.synced]
            except PeeritError as e:
                transfer.cannot_open(e)
                continue
            transfer.start(check)
        for info_hash, text, root in state.links():
            if info_hash in self.transfers:  # its metadata was saved: nothing to fetch
                state.remove_link(info_hash)
                continue
            try:
                link = links.parse(text)
            except PeeritError as e:
                log.error("dropping unreadable saved link: {e}", e=str(e))
                state.remove_link(info_hash)
                continue
            phase = MetadataPhase(self.host, link, root, self.metadata_fetched)
            self.transfers[info_hash] = phase
            phase.start()
        if self.transfers:
            log.info("restored {n} transfers", n=len(self.transfers))

    # -- the registry ---------------------------------------------------------------------
    def get(self, info_hash: bytes) -> Transfer | None:
        return self.transfers.get(info_hash)

    def all(self) -> list[Transfer]:
        return list(self.transfers.values())

    def find(self, ident: str) -> Transfer:
        """The one transfer whose info-hash starts with ``ident`` (hex)."""
        ident = ident.strip().lower()
        if not ident or any(c not in "0123456789abcdef" for c in ident):
            raise UsageError(f"bad id {ident!r}: expected an info-hash or a prefix of one")
        matches = [t for h, t in self.transfers.items() if h.hex().startswith(ident)]
        if not matches:
            raise UnknownSwarm(f"no share or download matches {ident}")
        if len(matches) > 1:
            raise UsageError(f"{ident} matches {len(matches)} transfers; give more digits")
        return matches[0]

    def add_seed(self, data_path: str, metainfo_path: str, check: bool) -> Transfer:
        metainfo = Metainfo.read(metainfo_path)
        data_path = os.path.abspath(data_path)
        if os.path.basename(data_path.rstrip("/")) != metainfo.name:
            raise UsageError(f"{data_path} is not named {metainfo.name!r} as the .p2p says")
        root = os.path.dirname(data_path.rstrip("/"))
        existing = self.transfers.get(metainfo.info_hash)
        if existing is not None:
            if existing.role == "seed" and existing.root == root:
                return existing
            raise UsageError(f"{metainfo.info_hash.hex()[:16]} is already "
                             f"{'shared' if existing.role == 'seed' else 'downloading'}"
                             f" from {existing.path}")
        transfer = Transfer(self.host, metainfo, root, "seed")
        transfer.open(create=False)
        if not check:
            for piece in range(metainfo.piece_count):
                transfer.have.add(piece)
                transfer.synced.add(piece)
        self.node.state.add(SwarmRecord(
            metainfo.info_hash, metainfo.to_bytes(), root, "seed", False,
            transfer.have.to_bytes(), transfer.synced.to_bytes(),
            file_stamps(transfer.store), time.time(), None))
        self.transfers[metainfo.info_hash] = transfer
        transfer.start(list(range(metainfo.piece_count)) if check else None)
        return transfer

    def _root(self, target_dir: str) -> str:
        return os.path.abspath(os.path.expanduser(target_dir)) if target_dir else \
            os.path.join(self.node.data_dir, "downloads")

    def _existing(self, info_hash: bytes, root: str) -> Transfer | None:
        existing = self.transfers.get(info_hash)
        if existing is not None and existing.root != root:
            raise UsageError(f"{info_hash.hex()[:16]} is already "
                             f"{'shared' if existing.role == 'seed' else 'downloading'}"
                             f" at {existing.path}")
        return existing

    def _open_download(self, metainfo, root: str) -> tuple[Transfer, bool]:
        """A download's files made (or found) at ``root``; whether they were there."""
        transfer = Transfer(self.host, metainfo, root, "download")
        present = os.path.exists(transfer.path)
        try:
            transfer.open(create=True)  # NoSpace / PermissionDenied / symlink refusals
        except PeeritError:
            if not present:
                transfer.store.delete_files()  # leave no half-made files behind
            else:
                transfer.store.close()
            raise
        return transfer, present

    def add_download(self, metainfo_path: str, target_dir: str) -> defer.Deferred:
        """Fires with the transfer once its files exist (or with the error that refused
        them)."""
        metainfo = Metainfo.read(metainfo_path)
        root = self._root(target_dir)
        existing = self._existing(metainfo.info_hash, root)
        if existing is not None:
            return defer.succeed(existing)
        if not self._trackers_for(metainfo):
            raise UsageError("no tracker to find peers: the .p2p lists none with a "
                             "fingerprint and the daemon has no --tracker")
        record = SwarmRecord(metainfo.info_hash, metainfo.to_bytes(), root, "download",
                             False, None, None, None, time.time(), None)
        if os.path.exists(os.path.join(root, metainfo.name)):
            transfer, present = self._open_download(metainfo, root)
            self.node.state.add(record)
            self.transfers[metainfo.info_hash] = transfer
            # Data already at the target (an earlier download, a copy) counts once checked.
            transfer.start(list(range(metainfo.piece_count)) if present else None)
            return defer.succeed(transfer)
        return self._add_new_download(metainfo, root, record)

    def _add_new_download(self, metainfo, root: str, record: SwarmRecord) -> defer.Deferred:
        """A download to a fresh target: it announces and connects while its files are made
        on the writer thread (``Transfer.create_files``). Answered once they exist; if they
        cannot be made (a full disk, a symlink), it is undone as if never added: nothing
        recorded, no files left, the error the answer."""
        transfer = Transfer(self.host, metainfo, root, "download")
        try:
            created = transfer.create_files()
        except PeeritError:
            transfer.store.delete_files()
            raise
        self.node.state.add(record)
        self.transfers[metainfo.info_hash] = transfer
        transfer.start()

        def failed(failure):
            failure.trap(PeeritError)
            if self.transfers.get(metainfo.info_hash) is transfer:
                transfer.stop("cannot make its files")
                del self.transfers[metainfo.info_hash]
                self.node.state.remove(metainfo.info_hash)
            transfer.store.delete_files()
            return failure
        return created.addCallbacks(lambda _: transfer, failed)

    # -- links (docs/links.md) --------------------------------------------------------------
    def add_link(self, link, target_dir: str, pin: bytes | None = None,
                 start: bool = True) -> Transfer:
        """Download what a link names: its metadata from the swarm first. ``pin``: the one
        peer to take it from (a code exchange's sender); ``start=False``: not yet (until
        that sender has pinned us)."""
        if isinstance(link, str):
            link = links.parse(link)
        root = self._root(target_dir)
        existing = self._existing(link.info_hash, root)
        if existing is not None:
            return existing
        if os.path.exists(root) and not os.path.isdir(root):
            raise UsageError(f"{root} is not a directory")
        if pin is not None:
            self.pin(link.info_hash, pin)
        self.node.state.add_link(link.info_hash, str(link), root, time.time())
        phase = MetadataPhase(self.host, link, root, self.metadata_fetched)
        self.transfers[link.info_hash] = phase
        if start:
            phase.start()
        return phase

    def metadata_fetched(self, phase: MetadataPhase, info_bytes: bytes) -> None:
        """The link's info section arrived and matched: from now on an ordinary download,
        saved with its metadata (a restart does not fetch it again), keeping the links."""
        if self.transfers.get(phase.info_hash) is not phase:
            return  # removed meanwhile
        banned = set(phase.swarm.fetch.banned) if phase.swarm is not None else set()
        moving = phase.swarm.hand_over() if phase.swarm is not None else []
        phase.stop("metadata fetched", announce=False)
        try:
            metainfo = Metainfo.from_info(info_bytes, phase.link.trackers)
            transfer, present = self._open_download(metainfo, phase.root)
        except PeeritError as e:
            phase.cannot_open(e)
            log.error("transfer {t}: cannot start after its metadata: {e}", t=phase.short,
                      e=str(e))
            for peer in moving:
                peer.link.close("metadata unusable")
            return
        self.node.state.metadata_fetched(SwarmRecord(
            metainfo.info_hash, metainfo.to_bytes(), phase.root, "download", False,
            None, None, None, time.time(), None))
        self.transfers[metainfo.info_hash] = transfer
        transfer.start(list(range(metainfo.piece_count)) if present else None)
        if transfer.swarm is not None:
            # A peer that served bad metadata stays banned in the swarm of the data.
            transfer.swarm.banned |= banned
        self._move_links(transfer, moving)
        transfer.peers_found(list(phase.known.values()))  # those not linked yet: dial

    @staticmethod
    def _move_links(transfer: Transfer, moving) -> None:
        """The metadata phase's links join the swarm of the data as they are (closing them
        and dialing again raced with the peer's view of the old link, and cost seconds);
        what each peer said about its pieces meanwhile is replayed."""
        swarm = transfer.swarm
        for peer in moving:
            session = peer.link
            if swarm is None or not swarm.running:
                session.close("metadata fetched")  # checking existing data first: dial later
                continue
            session.rejoin()
            state = session.peer
            if state is None:
                continue
            if peer.bitfield is not None:
                swarm.handle(state, wire.Bitfield(peer.bitfield))
            for piece in sorted(peer.haves):
                if swarm.peers.get(session.peer_id) is not state:
                    break  # banned for a piece out of range
                swarm.handle(state, wire.Have(piece))

    def link_of(self, transfer: Transfer) -> links.Link:
        if isinstance(transfer, MetadataPhase):
            return transfer.link
        # Our own peer id as the seeder hint when we hold everything.
        hint = self.node.peer_id if transfer.have.complete else None
        return links.from_metainfo(transfer.metainfo, hint,
                                   [t.tracker for t in transfer.trackers])

    def export_metainfo(self, transfer: Transfer, path: str, overwrite: bool) -> str:
        if isinstance(transfer, MetadataPhase):
            raise UsageError(f"{transfer.short}: its metadata is not fetched yet")
        path = os.path.abspath(os.path.expanduser(path))
        transfer.metainfo.write(path, overwrite=overwrite)
        return path

    def pin(self, info_hash: bytes, peer_id: bytes | None) -> None:
        """Admit only ``peer_id`` to this transfer (b"": nobody yet; None: anyone again)."""
        if peer_id is None:
            self.pinned.pop(info_hash, None)
        else:
            self.pinned[info_hash] = peer_id
        self.node.state.set_pinned(info_hash, peer_id)

    def _peer_complete(self, info_hash: bytes, peer_id: bytes) -> None:
        if self.on_peer_complete is not None:
            self.on_peer_complete(info_hash, peer_id)

    def remove(self, transfer: Transfer, delete_data: bool) -> None:
        transfer.stop("removed")
        self.transfers.pop(transfer.info_hash, None)
        self.node.state.remove(transfer.info_hash)
        self.node.state.remove_link(transfer.info_hash)
        if transfer.info_hash in self.pinned:
            self.pin(transfer.info_hash, None)
        if delete_data:
            transfer.store.delete_files()
        else:
            transfer.store.close()

    def moving(self) -> list:
        """Event keys of the transfers whose figures move with no event of their own
        (checking; rates while peers are connected or still decaying after the last one
        left). Called once per event tick, so it also samples those rates for the page's
        rate chart; an idle rate meter answers without arithmetic (a thousand idle shares
        cost little)."""
        now = self.reactor.seconds()
        keys = []
        for transfer in self.transfers.values():
            swarm = transfer.data_swarm
            if transfer.state is State.CHECKING:
                keys.append(transfer.event_key)
            elif swarm is not None and (swarm.peers or swarm.download.above(1)
                                        or swarm.upload.above(1)):
                transfer.rate_history.append((now, swarm.download.rate, swarm.upload.rate))
                keys.append(transfer.event_key)
        return keys

    # -- the router peer links ask (IPeerRouter) --------------------------------------------
    def swarm_for(self, info_hash: bytes):
        transfer = self.transfers.get(info_hash)
        return transfer.swarm if transfer is not None else None

    def authorize(self, info_hash: bytes, peer_id: bytes) -> defer.Deferred:
        transfer = self.transfers.get(info_hash)
        if transfer is None:
            return defer.succeed("unknown swarm")
        pinned = self.pinned.get(info_hash)
        if pinned is not None and peer_id != pinned:
            log.info("transfer {t}: refused {peer}: a private send admits one peer only",
                     t=transfer.short, peer=peer_id.hex()[:12])
            return defer.succeed("private send: not the admitted peer")
        return transfer.authorize(peer_id)
