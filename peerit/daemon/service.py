"""The daemon service: identity, resume state, listeners, tracker sessions and transfers.

``Daemon`` is what ``twistd peerit-daemon`` runs. It owns the shared pieces (the identity whose
hash is our peer id, the SQLite state, a small thread pool for hashing and fsync, the TLS peer
listener, the AMP control socket, one tracker session per tracker) and routes between them and
the transfers: inbound links to their swarm, tracker pushes to their transfer, control
commands to the right transfer.
"""

import os
import random
import socket
import time

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from peerit import __version__, links
from peerit.addresses import TrackerAddress, format_host_port
from peerit.daemon.code_exchange import DEFAULT_CODE_LIFETIME, RECEIVE_WAIT, CodeExchange
from peerit.daemon.connector import Candidate, Race, link_attempt
from peerit.daemon.metadata_phase import MetadataPhase
from peerit.daemon.peerlink import PeerLink
from peerit.daemon.state import StateDB, SwarmRecord
from peerit.daemon.transfer import Transfer, file_stamps
from peerit.daemon.writer import BlockWriter
from peerit.errors import PeeritError, UnknownSwarm, UsageError
from peerit.identity import Identity
from peerit.metainfo import Metainfo
from peerit import tls
from peerit.wire import peer as wire
from peerit.wire import tracker as tracker_wire

log = Logger()

SYNC_INTERVAL = 5.0
ANNOUNCE_RETRY = 10.0  # seconds (plus jitter) before re-announcing after a load refusal
ANNOUNCE_OPCODE = tracker_wire.messages.opcode_of(tracker_wire.Announce)


def default_data_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".local", "share", "peerit")


def default_control_path(data_dir: str | None = None) -> str:
    """Where the control socket lives unless told otherwise (peerit-ctl uses the same rule)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and data_dir in (None, default_data_dir()):
        return os.path.join(runtime, "peerit", "control.sock")
    return os.path.join(data_dir or default_data_dir(), "control.sock")


def control_path_of(spec: str) -> str:
    """The socket path in ``unix:PATH`` (or a bare path)."""
    if spec.startswith("unix:"):
        spec = spec[len("unix:"):]
        if spec.startswith("address="):
            spec = spec[len("address="):]
        spec = spec.split(":", 1)[0]
    if not spec:
        raise UsageError("empty control socket path")
    return os.path.abspath(os.path.expanduser(spec))


class Daemon(service.MultiService):
    def __init__(self, reactor, data_dir: str, control: str, listen: str = "tcp:0",
                 trackers: list[TrackerAddress] = (), advertise: list[str] = (),
                 rng=None, tracker_client_factory=None, max_upload_rate: float = 0,
                 udp: str | None = "udp:0", stun_server=None,
                 paths=("tcp", "quic", "relay"), quic_datagram_size: int = 1200,
                 mailbox: str | None = None, code_lifetime: float = DEFAULT_CODE_LIFETIME,
                 code_wait: float = RECEIVE_WAIT):
        super().__init__()
        self.reactor = reactor
        self.clock = reactor
        self.data_dir = os.path.abspath(os.path.expanduser(data_dir))
        self.control_path = control_path_of(control)
        self.listen_spec = listen
        self.tracker_addresses = list(trackers)
        self.advertise = list(advertise)
        self.udp_spec = udp  # None: no UDP socket, so no STUN, punching, QUIC or relay
        self.stun_server = stun_server
        self.paths = frozenset(paths)
        self.quic_datagram_size = quic_datagram_size
        self.nat = None
        # Piece order and probe ports need spread, not secrecy: a fast seeded PRNG (the
        # system one cost a getrandom syscall per pick, visible in the profile).
        self.rng = rng or random.Random(os.urandom(16))
        self._tracker_client_factory = tracker_client_factory
        self.upload_limiter = None
        if max_upload_rate:
            from peerit.daemon.ratelimit import TokenBucket
            self.upload_limiter = TokenBucket(reactor, max_upload_rate)
        self.transfers: dict[bytes, Transfer] = {}
        self.mailbox_url = mailbox  # the rendezvous for short codes (send/receive)
        self.code_lifetime = code_lifetime
        self.code_wait = code_wait
        self._exchange = None
        # Private sends and receives: info-hash -> the one peer admitted (b"": nobody yet).
        self.pinned: dict[bytes, bytes] = {}
        self.sends: dict[bytes, dict] = {}  # info-hash -> where a send stands
        self.trackers = {}  # TrackerAddress -> tracker client
        self.identity = None
        self.peer_id = None
        self.state = None
        self.listen_port = 0
        self._pool = None
        self.hasher = None  # BlockWriter threads: received blocks hashed, then written
        self.writer = None
        self._ports = []
        self._sync_call = None

    # -- lifecycle ------------------------------------------------------------------------
    def startService(self):
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        self.identity = Identity.load_or_create(self.data_dir)
        self.peer_id = self.identity.peer_id
        self.state = StateDB(os.path.join(self.data_dir, "state.sqlite3"))
        self.pinned = self.state.pinned()
        self._pool = ThreadPool(1, 2, name="peerit-disk")
        self._pool.start()
        # Received blocks: hashed on one thread, written on another (Transfer._write_block).
        self.hasher = BlockWriter(self.reactor, name="peerit-hasher")
        self.writer = BlockWriter(self.reactor)
        self.hasher.start()
        self.writer.start()
        super().startService()
        d = defer.ensureDeferred(self._start())
        d.addErrback(self._start_failed)
        return d

    def _start_failed(self, failure):
        if failure.check(PeeritError, OSError, CannotListenError):
            # Expected trouble (a port or socket in use, permissions): one line, no trace.
            log.error("peer-it daemon cannot start: {error}", error=failure.getErrorMessage())
        else:
            log.failure("peer-it daemon failed to start", failure)
        # Exit non-zero so a supervisor (systemd Restart=on-failure) sees the failure.
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self.reactor.callLater(0, self.reactor.stop)

    async def _start(self):
        factory = Factory()
        factory.buildProtocol = lambda addr: PeerLink(self, self.clock, self.peer_id)
        endpoint = endpoints.serverFromString(self.reactor, self._tcp_spec(self.listen_spec))
        port = await endpoint.listen(tls.server_factory(self.identity, factory))
        self._ports.append(port)
        self.listen_port = port.getHost().port
        if self.udp_spec:
            self._start_nat()  # before the trackers: their Hello carries the UDP port
        for address in self.tracker_addresses:
            self._tracker(address)
        self._restore()
        await self._listen_control()
        self._sync_call = self.clock.callLater(SYNC_INTERVAL, self._sync)
        log.info("peer-it daemon {peer} listening for peers on port {port}, control at "
                 "{control}", peer=self.identity.fingerprint[:16], port=self.listen_port,
                 control=self.control_path)

    def _start_nat(self):
        from peerit.nat.manager import NatManager
        from peerit.nat.quic import QuicSettings
        self.nat = NatManager(
            self.reactor, self.identity,
            trackers=lambda: list(self.trackers.values()),
            swarm_trackers=lambda info_hash: (
                self.transfers[info_hash].trackers if info_hash in self.transfers else []),
            inbound_link=lambda path: PeerLink(self, self.clock, self.peer_id, path=path),
            udp=self.udp_spec, stun_server=self.stun_server,
            local_hosts=lambda: self.advertise or local_addresses(),
            quic_settings=QuicSettings(max_datagram_size=self.quic_datagram_size),
            paths=self.paths, rng=self.rng)
        self.nat.start()

    def netcheck(self) -> defer.Deferred:
        """``peerit-ctl netcheck``: the NAT as STUN sees it (a dict, see NatManager)."""
        if self.nat is None:
            return defer.fail(PeeritError(
                "this daemon has no UDP socket to check (start it with --udp)"))
        return self.nat.netcheck()

    @staticmethod
    def _tcp_spec(spec: str) -> str:
        return "tcp:" + spec[len("ssl:"):] if spec.startswith("ssl:") else spec

    async def _listen_control(self):
        from peerit.daemon.control import control_factory
        directory = os.path.dirname(self.control_path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # Permissions come from the directory (Twisted's advice): only we may enter it.
        os.chmod(directory, 0o700)
        endpoint = endpoints.UNIXServerEndpoint(self.reactor, self.control_path, mode=0o600,
                                                wantPID=True)
        try:
            port = await endpoint.listen(control_factory(self))
        except CannotListenError as e:
            if "lock" in str(e):
                raise PeeritError(f"another peer-it daemon already uses the control socket "
                                  f"{self.control_path} (give this one its own --control)") \
                    from None
            raise PeeritError(f"cannot listen on {self.control_path}: {e.socketError}") \
                from None
        self._ports.append(port)

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
        if self.nat is not None:
            self.nat.stop()
        for port in self._ports:
            await port.stopListening()

    def stopService(self):
        d = defer.ensureDeferred(self._stop())

        def finish(result):
            for stage in (self.hasher, self.writer):  # this order: the hasher feeds the writer
                if stage is not None:
                    stage.stop()  # queued blocks written before the files close
            for transfer in self.transfers.values():
                transfer.store.close()
            if self.state is not None:
                self.state.close()
            if self._pool is not None:
                self._pool.stop()
            return super(Daemon, self).stopService()
        d.addBoth(finish)
        return d

    def in_thread(self, function, *args) -> defer.Deferred:
        return deferToThreadPool(self.reactor, self._pool, function, *args)

    def _sync(self):
        for transfer in list(self.transfers.values()):
            transfer.sync().addErrback(
                lambda f: log.failure("sync failed", f))
        self._sync_call = self.clock.callLater(SYNC_INTERVAL, self._sync)

    # -- trackers -------------------------------------------------------------------------
    def _tracker(self, address: TrackerAddress):
        client = self.trackers.get(address)
        if client is None:
            factory = self._tracker_client_factory
            if factory is None:
                from peerit.daemon.trackers import make_tracker_client as factory
            client = factory(self, address)
            self.trackers[address] = client
            client.setServiceParent(self)
        return client

    def trackers_for(self, metainfo) -> list:
        addresses = list(self.tracker_addresses)
        for address in metainfo.trackers:
            if address.fingerprint and address not in addresses:
                addresses.append(address)
        return [self._tracker(a) for a in addresses]

    def hello_fields(self) -> dict:
        return {"tcp_port": self.listen_port,
                "udp_port": self.nat.udp_port if self.nat is not None else 0,
                "addresses": tuple(self.advertise or local_addresses())}

    def announcements(self, address: TrackerAddress) -> list[tuple[bytes, str, int]]:
        """What a (re)connected tracker session must hear: every active transfer."""
        out = []
        for transfer in self.transfers.values():
            if transfer.swarm is not None and transfer.swarm.running and any(
                    c is self.trackers.get(address) for c in transfer.trackers):
                out.append((transfer.info_hash, "started", transfer.bytes_left))
        return out

    def _reannounce(self, info_hash: bytes) -> None:
        transfer = self.transfers.get(info_hash)
        if transfer is not None and transfer.swarm is not None and transfer.swarm.running:
            transfer.announce("started")

    def tracker_push(self, message, tracker=None) -> None:
        if self.nat is not None and self.nat.handle_push(message, tracker):
            return
        info_hash = getattr(message, "info_hash", None)
        peer = getattr(message, "peer", None)
        transfer = self.transfers.get(info_hash)
        if (isinstance(message, tracker_wire.Error) and transfer is not None
                and message.refused_opcode == ANNOUNCE_OPCODE
                and message.code in ("rate_limited", "too_many_swarms")):
            # Refused for load, not for cause: say it again later (the session stays up).
            log.info("tracker refused announcing {t} ({code}); retrying in {s:.0f}s",
                     t=transfer.short, code=message.code, s=ANNOUNCE_RETRY)
            self.clock.callLater(ANNOUNCE_RETRY + self.rng.random() * ANNOUNCE_RETRY,
                                 self._reannounce, info_hash)
            return
        if transfer is not None and peer is not None:
            transfer.peers_found([peer])

    # -- peers ----------------------------------------------------------------------------
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

    def connect_peer(self, info_hash: bytes, info) -> defer.Deferred:
        """Race the peer's paths: direct TCP (LAN first, then public), then punched QUIC
        and the relay (their start times are the NAT manager's; docs/nat-protocol.md)."""
        seen, candidates = set(), []
        tcp = [(h, "lan") for h in info.lan_addresses] + [(info.public_address, "public")]
        for host, kind in tcp if "tcp" in self.paths else []:
            if not host or (host, info.tcp_port) in seen or not info.tcp_port:
                continue
            seen.add((host, info.tcp_port))
            candidates.append(Candidate(
                f"tcp {format_host_port(host, info.tcp_port)} ({kind})",
                lambda host=host: self._tcp_attempt(info_hash, info.peer_id, host,
                                                    info.tcp_port)))
        if self.nat is not None:
            def make_link(path, on_ready, on_failed):
                return PeerLink(self, self.clock, self.peer_id, info_hash=info_hash,
                                expected_peer_id=info.peer_id, path=path, on_ready=on_ready,
                                on_failed=on_failed)
            candidates += self.nat.candidates(info_hash, info, make_link)
        return Race(self.clock, candidates).run()

    def _tcp_attempt(self, info_hash: bytes, peer_id: bytes, host: str, port: int):
        endpoint = tls.TLSClientEndpoint(
            tls.PinnedClientTLS(self.identity, peer_id),
            endpoints.HostnameEndpoint(self.reactor, host, port, timeout=10))

        def make_link(on_ready, on_failed):
            return PeerLink(self, self.clock, self.peer_id, info_hash=info_hash,
                            expected_peer_id=peer_id, path="tcp", on_ready=on_ready,
                            on_failed=on_failed)
        return link_attempt(endpoint.connect, make_link)

    # -- transfers ------------------------------------------------------------------------
    def _restore(self) -> None:
        clean = self.state.clean_shutdown
        def piece_count(metainfo_bytes):
            try:
                return Metainfo.from_bytes(metainfo_bytes).piece_count
            except PeeritError:
                return None
        for record in self.state.records(piece_count):
            try:
                metainfo = Metainfo.from_bytes(record.metainfo)
            except PeeritError as e:
                log.error("dropping unreadable saved transfer: {e}", e=str(e))
                self.state.remove(record.info_hash)
                continue
            transfer = Transfer(self, metainfo, record.root, record.role, record)
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
                transfer.state, transfer.error = "error", str(e)
                continue
            transfer.start(check)
        for info_hash, text, root in self.state.links():
            if info_hash in self.transfers:  # its metadata was saved: nothing to fetch
                self.state.remove_link(info_hash)
                continue
            try:
                link = links.parse(text)
            except PeeritError as e:
                log.error("dropping unreadable saved link: {e}", e=str(e))
                self.state.remove_link(info_hash)
                continue
            phase = MetadataPhase(self, link, root)
            self.transfers[info_hash] = phase
            phase.start()
        if self.transfers:
            log.info("restored {n} transfers", n=len(self.transfers))

    def find(self, ident: str) -> Transfer:
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
        transfer = Transfer(self, metainfo, root, "seed")
        transfer.open(create=False)
        if not check:
            for piece in range(metainfo.piece_count):
                transfer.have.add(piece)
                transfer.synced.add(piece)
        self.state.add(SwarmRecord(
            metainfo.info_hash, metainfo.to_bytes(), root, "seed", False,
            transfer.have.to_bytes(), transfer.synced.to_bytes(),
            file_stamps(transfer.store), time.time(), None))
        self.transfers[metainfo.info_hash] = transfer
        transfer.start(list(range(metainfo.piece_count)) if check else None)
        return transfer

    def _root(self, target_dir: str) -> str:
        return os.path.abspath(os.path.expanduser(target_dir)) if target_dir else \
            os.path.join(self.data_dir, "downloads")

    def _existing(self, info_hash: bytes, root: str):
        existing = self.transfers.get(info_hash)
        if existing is not None and existing.root != root:
            raise UsageError(f"{info_hash.hex()[:16]} is already "
                             f"{'shared' if existing.role == 'seed' else 'downloading'}"
                             f" at {existing.path}")
        return existing

    def add_download(self, metainfo_path: str, target_dir: str) -> Transfer:
        metainfo = Metainfo.read(metainfo_path)
        root = self._root(target_dir)
        existing = self._existing(metainfo.info_hash, root)
        if existing is not None:
            return existing
        if not self.trackers_for(metainfo):
            raise UsageError("no tracker to find peers: the .p2p lists none with a "
                             "fingerprint and the daemon has no --tracker")
        transfer, present = self._open_download(metainfo, root)
        self.state.add(SwarmRecord(
            metainfo.info_hash, metainfo.to_bytes(), root, "download", False,
            None, None, None, time.time(), None))
        self.transfers[metainfo.info_hash] = transfer
        # Data already at the target (an earlier download, a copy) counts once checked.
        transfer.start(list(range(metainfo.piece_count)) if present else None)
        return transfer

    def _open_download(self, metainfo, root: str) -> tuple[Transfer, bool]:
        transfer = Transfer(self, metainfo, root, "download")
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

    # -- links and codes (docs/links.md) --------------------------------------------------
    def add_link(self, link, target_dir: str, pin: bytes | None = None,
                 start: bool = True) -> Transfer:
        """Download what a link names: its metadata from the swarm first. ``pin``: the one
        peer to take it from (a code exchange's sender), ``start=False``: not yet (until
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
            self._pin(link.info_hash, pin)
        self.state.add_link(link.info_hash, str(link), root, time.time())
        phase = MetadataPhase(self, link, root)
        self.transfers[link.info_hash] = phase
        if start:
            phase.start()
        return phase

    def metadata_fetched(self, phase: MetadataPhase, info_bytes: bytes) -> None:
        """The link's info section arrived and matched: from now on an ordinary download,
        saved with its metadata (a restart does not fetch it again)."""
        if self.transfers.get(phase.info_hash) is not phase:
            return  # removed meanwhile
        banned = set(phase.swarm.fetch.banned) if phase.swarm is not None else set()
        moving = phase.swarm.hand_over() if phase.swarm is not None else []
        phase.stop("metadata fetched", announce=False)
        try:
            metainfo = Metainfo.from_info(info_bytes, phase.link.trackers)
            transfer, present = self._open_download(metainfo, phase.root)
        except PeeritError as e:
            phase.state, phase.error = "error", str(e)
            log.error("transfer {t}: cannot start after its metadata: {e}", t=phase.short,
                      e=str(e))
            for peer in moving:
                peer.link.close("metadata unusable")
            return
        self.state.metadata_fetched(SwarmRecord(
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
    def _move_links(transfer, moving) -> None:
        """The metadata phase's links join the swarm of the data as they are (closing them
        and dialing again raced with the peer's view of the old link, and cost seconds);
        what each peer said about its pieces meanwhile is replayed."""
        swarm = transfer.swarm
        for peer in moving:
            link = peer.link
            if swarm is None or not swarm.running:
                link.close("metadata fetched")  # checking existing data first: dial later
                continue
            link.attach()
            if link.state is None:
                continue
            if peer.bitfield is not None:
                swarm.handle(link.state, wire.Bitfield(peer.bitfield))
            for piece in sorted(peer.haves):
                if swarm.peers.get(link.peer_id) is not link.state:
                    break  # banned for a piece out of range
                swarm.handle(link.state, wire.Have(piece))

    def link_of(self, transfer) -> links.Link:
        if isinstance(transfer, MetadataPhase):
            return transfer.link
        # Our own peer id as the seeder hint when we hold everything.
        hint = self.peer_id if transfer.have.complete else None
        return links.from_metainfo(transfer.metainfo, hint, self.tracker_addresses)

    def export_metainfo(self, transfer, path: str, overwrite: bool) -> str:
        if isinstance(transfer, MetadataPhase):
            raise UsageError(f"{transfer.short}: its metadata is not fetched yet")
        path = os.path.abspath(os.path.expanduser(path))
        transfer.metainfo.write(path, overwrite=overwrite)
        return path

    def _pin(self, info_hash: bytes, peer_id: bytes | None) -> None:
        if peer_id is None:
            self.pinned.pop(info_hash, None)
        else:
            self.pinned[info_hash] = peer_id
        self.state.set_pinned(info_hash, peer_id)

    def _code_exchange(self) -> CodeExchange:
        if not self.mailbox_url:
            raise UsageError("no rendezvous for codes: start the daemon with --mailbox "
                             "ws://HOST:PORT/v1 (or a --tracker whose operator runs one)")
        if self._exchange is None:
            self._exchange = CodeExchange(self.reactor, self.mailbox_url,
                                          code_lifetime=self.code_lifetime,
                                          receive_wait=self.code_wait)
        return self._exchange

    async def send(self, data_path: str, metainfo_path: str) -> dict:
        """Share privately and get a code for it: only the peer who uses the code may then
        connect for this share (until it is removed)."""
        exchange = self._code_exchange()
        metainfo = Metainfo.read(metainfo_path)
        info_hash = metainfo.info_hash
        if info_hash in self.transfers and self.pinned.get(info_hash) is None:
            raise UsageError(f"{info_hash.hex()[:16]} is already shared publicly; remove it "
                             f"first to send it privately")
        if self.sends.get(info_hash, {}).get("state") == "waiting for the receiver":
            raise UsageError(f"{info_hash.hex()[:16]} already has a code waiting")
        self._pin(info_hash, b"")  # before the share starts: nobody gets in meanwhile
        try:
            transfer = self.add_seed(data_path, metainfo_path, check=False)
            link = self.link_of(transfer)
            code, receiver = await exchange.offer(
                link, self.peer_id, lambda peer: self._receiver_known(info_hash, peer))
        except BaseException:
            self._end_send(info_hash)
            raise
        self.sends[info_hash] = {"code": code, "state": "waiting for the receiver",
                                 "receiver": "", "error": "", "error_code": 0,
                                 "delivered": False}
        receiver.addErrback(lambda failure: self._send_failed(info_hash, failure))
        return {"code": code, "info_hash": info_hash.hex(), "name": metainfo.name,
                "link": str(link)}

    def _receiver_known(self, info_hash: bytes, peer_id: bytes) -> None:
        send = self.sends.get(info_hash)
        if send is None or info_hash not in self.transfers:
            raise PeeritError("this send was removed meanwhile")
        self._pin(info_hash, peer_id)
        send.update(state="sending", receiver=peer_id.hex())
        log.info("send {t}: admitting receiver {peer} only", t=info_hash.hex()[:12],
                 peer=peer_id.hex()[:12])

    def _send_failed(self, info_hash: bytes, failure) -> None:
        send = self.sends.get(info_hash)
        error = failure.value
        if send is not None:
            send.update(state="failed", error=failure.getErrorMessage(),
                        error_code=getattr(error, "exit_code", 1))
        log.info("send {t}: {error}", t=info_hash.hex()[:12], error=failure.getErrorMessage())
        self._end_send(info_hash)

    def _end_send(self, info_hash: bytes) -> None:
        """A send nobody will receive: stop sharing (the files stay) and forget the pin."""
        transfer = self.transfers.get(info_hash)
        if transfer is not None:
            self.remove(transfer, delete_data=False)
        self._pin(info_hash, None)

    def peer_complete(self, info_hash: bytes, peer_id: bytes) -> None:
        send = self.sends.get(info_hash)
        if send is not None and send["receiver"] == peer_id.hex():
            send.update(state="delivered", delivered=True)

    def send_status(self, info_hash_hex: str) -> dict:
        """Where a send stands (also once it failed and its share was removed)."""
        try:
            info_hash = bytes.fromhex(info_hash_hex)
        except ValueError:
            info_hash = b""
        send = self.sends.get(info_hash)
        if send is None:
            raise UnknownSwarm(f"no send of {info_hash_hex[:16]!r} in this daemon")
        transfer = self.transfers.get(info_hash)
        summary = transfer.summary() if transfer is not None else \
            {"size": 0, "uploaded": 0, "peers": 0}
        return {**send, "info_hash": info_hash.hex(), "size": summary["size"],
                "uploaded": summary["uploaded"], "peers": summary["peers"]}

    async def receive(self, code: str, target_dir: str) -> Transfer:
        """Take the share a code names; data comes only from the sender the code pinned."""
        exchange = self._code_exchange()
        _, transfer = await exchange.accept(
            code, self.peer_id,
            lambda link: self.add_link(link, target_dir, pin=link.peer_id, start=False))
        if isinstance(transfer, MetadataPhase) and transfer.state == "stopped":
            transfer.start()
        return transfer

    def remove(self, transfer: Transfer, delete_data: bool) -> None:
        transfer.stop("removed")
        self.transfers.pop(transfer.info_hash, None)
        self.state.remove(transfer.info_hash)
        self.state.remove_link(transfer.info_hash)
        if transfer.info_hash in self.pinned:
            self._pin(transfer.info_hash, None)
        if delete_data:
            transfer.store.delete_files()
        else:
            transfer.store.close()


def local_addresses() -> list[str]:
    """This host's non-loopback IPv4 addresses, for peers on the same LAN."""
    import fcntl
    import struct
    addresses = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(sock.fileno(), 0x8915,  # SIOCGIFADDR
                                     struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            address = socket.inet_ntoa(packed[20:24])
            if not address.startswith("127."):
                addresses.append(address)
    finally:
        sock.close()
    return addresses[:8]
