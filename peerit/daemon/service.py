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

from peerit import __version__
from peerit.addresses import TrackerAddress, format_host_port
from peerit.daemon.connector import Candidate, Race, link_attempt
from peerit.daemon.peerlink import PeerLink
from peerit.daemon.state import StateDB, SwarmRecord
from peerit.daemon.stats import DaemonStats, candidate_path, nat_pair, traffic_path
from peerit.daemon.transfer import Transfer, file_stamps
from peerit.daemon.writer import BlockWriter
from peerit.errors import PeeritError, UnknownSwarm, UsageError
from peerit.identity import Identity
from peerit.metainfo import Metainfo
from peerit import tls
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
                 paths=("tcp", "quic", "relay"), quic_datagram_size: int = 1200):
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
        self.stats = DaemonStats()
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
            paths=self.paths, rng=self.rng, on_punch_outcome=self._punch_outcome)
        self.nat.start()

    def _punch_outcome(self, mine: str, theirs: str, succeeded: bool) -> None:
        self.stats.punches.inc(nat_pair(mine, theirs), "success" if succeeded else "failure")

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
        return Race(self.clock, [self._counted(c) for c in candidates]).run().addCallback(
            self._connected)

    def _counted(self, candidate: Candidate) -> Candidate:
        path = candidate_path(candidate.label)

        def start():
            self.stats.connection_attempts.inc(path)
            return candidate.start()
        return Candidate(candidate.label, start)

    def _connected(self, link):
        path = traffic_path(link)
        self.stats.connections.inc(path)
        self.stats.connect_seconds.observe(path, value=link.connect_seconds)
        return link

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

    def add_download(self, metainfo_path: str, target_dir: str) -> Transfer:
        metainfo = Metainfo.read(metainfo_path)
        root = os.path.abspath(os.path.expanduser(target_dir)) if target_dir else \
            os.path.join(self.data_dir, "downloads")
        existing = self.transfers.get(metainfo.info_hash)
        if existing is not None:
            if existing.root == root:
                return existing
            raise UsageError(f"{metainfo.info_hash.hex()[:16]} is already "
                             f"{'shared' if existing.role == 'seed' else 'downloading'}"
                             f" at {existing.path}")
        if not self.trackers_for(metainfo):
            raise UsageError("no tracker to find peers: the .p2p lists none with a "
                             "fingerprint and the daemon has no --tracker")
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
        self.state.add(SwarmRecord(
            metainfo.info_hash, metainfo.to_bytes(), root, "download", False,
            None, None, None, time.time(), None))
        self.transfers[metainfo.info_hash] = transfer
        # Data already at the target (an earlier download, a copy) counts once checked.
        transfer.start(list(range(metainfo.piece_count)) if present else None)
        return transfer

    def remove(self, transfer: Transfer, delete_data: bool) -> None:
        transfer.stop("removed")
        self.transfers.pop(transfer.info_hash, None)
        self.state.remove(transfer.info_hash)
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
