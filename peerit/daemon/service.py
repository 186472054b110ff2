"""The daemon: a ``MultiService`` of child services, each with one job.

``Daemon`` is what ``twistd peerit-daemon`` runs. Its children, in the order they start:

- ``node`` (:class:`~peerit.daemon.node.Node`): data folder, identity, resume state;
- ``peers`` (:class:`~peerit.daemon.peers.PeerLinks`): the TLS listener, the dialing race;
- ``udp`` (:class:`~peerit.daemon.udp_paths.UdpPaths`): STUN, punching, QUIC, relay
  (absent without a UDP socket);
- ``trackers`` (:class:`~peerit.daemon.trackers.TrackerSessions`): one session per tracker;
- ``transfers`` (:class:`~peerit.daemon.transfers.Transfers`): the shares and downloads;
- faces added by :meth:`Daemon.add_face` (the web page), given ``operations`` and
  ``events``;
- ``control`` (:class:`~peerit.daemon.control.ControlSocket`): the AMP socket, calling
  ``operations`` (:class:`~peerit.daemon.operations.DaemonOperations`), which sends and
  receives by short code through ``codes`` (:class:`~peerit.daemon.codes.CodeTransfers`).

``events`` (:class:`~peerit.daemon.events.EventHub`) is the one stream of changes: transfers
publish to it; the web page and ``peerit-ctl download`` (through the control socket) follow it.

Each child gets only the others it uses, at construction; where two use each other (links
ask the registry for swarms, transfers ask for links) one gets a callable. Another front
(a web UI, a metrics endpoint) is one more child given ``operations`` or the parts it reads.
"""

import os
import random

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from peerit.addresses import TrackerAddress
from peerit.daemon.code_exchange import DEFAULT_CODE_LIFETIME, RECEIVE_WAIT
from peerit.daemon.codes import CodeTransfers
from peerit.daemon.control import ControlSocket
from peerit.daemon.events import EventHub
from peerit.daemon.node import Node
from peerit.daemon.operations import DaemonOperations
from peerit.control.paths import control_path_of
from peerit.daemon.peers import PeerLinks
from peerit.daemon.stats import DaemonStats
from peerit.daemon.trackers import TrackerSessions, make_tracker_client
from peerit.daemon.transfers import Transfers
from peerit.daemon.udp_paths import UdpPaths
from peerit.errors import PeeritError
from peerit.logs import LogsToApplication

log = Logger()


class OrderedMultiService(service.MultiService):
    """Starts its children one after the other, each once the one before has finished
    starting (listening on a port may wait), and stops them in the reverse order, each
    once the one after it has stopped (transfers sync their files before the resume state
    closes). A child that cannot start stops the program with a non-zero exit."""

    def __init__(self, reactor):
        super().__init__()
        self.reactor = reactor

    def startService(self):
        service.Service.startService(self)
        d = defer.ensureDeferred(self._start_children())
        d.addErrback(self._start_failed)
        return d

    async def _start_children(self):
        for child in list(self):
            await defer.maybeDeferred(child.startService)
        self.started()

    def started(self) -> None:
        """Every child is up."""

    def _start_failed(self, failure):
        if failure.check(PeeritError, OSError, CannotListenError):
            # Expected trouble (a port or socket in use, permissions): one line, no trace.
            log.error("peer-it daemon cannot start: {error}", error=failure.getErrorMessage())
        else:
            log.failure("peer-it daemon failed to start", failure)
        # Exit non-zero so a supervisor (systemd Restart=on-failure) sees the failure.
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self.reactor.callLater(0, self.reactor.stop)

    def stopService(self):
        service.Service.stopService(self)
        return defer.ensureDeferred(self._stop_children())

    async def _stop_children(self):
        for child in reversed(list(self)):
            if child.running:
                try:
                    await defer.maybeDeferred(child.stopService)
                except Exception:
                    log.failure("stopping {name} failed", name=child.name)


class Daemon(LogsToApplication, OrderedMultiService):
    """The daemon's children, composed on ``reactor`` (injectable: a ``Clock`` in tests);
    ``log_observer``, when given, becomes the twistd application's (``--log-format``)."""

    def __init__(self, reactor, data_dir: str, control: str, listen: str = "tcp:0",
                 trackers: list[TrackerAddress] = (), advertise: list[str] = (),
                 rng=None, tracker_client_factory=None, max_upload_rate: float = 0,
                 udp: str | None = "udp:0", stun_server=None,
                 paths=("tcp", "quic", "relay"), quic_datagram_size: int = 1200,
                 log_observer=None, mailbox: str | None = None,
                 code_lifetime: float = DEFAULT_CODE_LIFETIME, code_wait: float = RECEIVE_WAIT):
        super().__init__(reactor)
        self.log_observer = log_observer
        # Piece order and probe ports need spread, not secrecy: a fast seeded PRNG (the
        # system one cost a getrandom syscall per pick, visible in the profile).
        rng = rng or random.Random(os.urandom(16))
        # What the daemon did, counted by the children and read by the metrics child.
        self.stats = DaemonStats()
        self.node = Node(data_dir, advertise)
        self.events = EventHub(reactor, self._event_snapshot, self._event_moving)
        self.transfers = Transfers(
            reactor, self.node, rng, max_upload_rate=max_upload_rate, events=self.events,
            stats=self.stats,
            trackers_for=lambda metainfo: self.trackers.trackers_for(metainfo),
            connect_peer=lambda info_hash, info: self.peers.connect_peer(info_hash, info))
        self.peers = PeerLinks(reactor, self.node, self.transfers, listen, paths,
                               udp_paths=lambda: self.udp, stats=self.stats)
        self.udp = None  # None: no UDP socket, so no STUN, punching, QUIC or relay
        if udp:
            self.udp = UdpPaths(
                reactor, self.node, udp=udp, stun_server=stun_server, paths=paths,
                quic_datagram_size=quic_datagram_size, rng=rng,
                trackers=lambda: list(self.trackers.clients.values()),
                swarm_trackers=self._swarm_trackers, inbound_link=self.peers.inbound_link,
                stats=self.stats)
        self.trackers = TrackerSessions(
            reactor, self.node, self.transfers, trackers=trackers, udp=self.udp, rng=rng,
            listen_port=lambda: self.peers.listen_port,
            client_factory=tracker_client_factory or make_tracker_client)
        self.codes = CodeTransfers(reactor, self.node, self.transfers, mailbox,
                                   code_lifetime=code_lifetime, code_wait=code_wait)
        self.operations = DaemonOperations(self.node, self.transfers, self.peers,
                                           self.trackers, self.udp, self.events,
                                           self.codes)
        self.control = ControlSocket(reactor, control_path_of(control), self.operations)
        # The UDP side before the trackers: their Hello carries the UDP port. The transfers
        # after the trackers: a restored transfer announces at once.
        for child in (self.node, self.peers, self.udp, self.trackers, self.transfers,
                      self.control):
            if child is not None:
                child.setServiceParent(self)

    def add_face(self, face: service.Service) -> None:
        """One more front (the web page): a child that starts before the control socket,
        whose appearance tells scripts the daemon is ready."""
        self.control.disownServiceParent()
        face.setServiceParent(self)
        self.control.setServiceParent(self)

    def _event_snapshot(self, key) -> dict | None:
        kind, ident = key
        if kind == "daemon":
            return self.operations.info() if self.node.peer_id is not None else None
        transfer = self.transfers.get(bytes.fromhex(ident))
        return transfer.summary() if transfer is not None else None

    def _event_moving(self) -> list:
        """The keys to publish every tick if they changed: the totals, moving transfers."""
        return [("daemon", ""), *self.transfers.moving()]

    def _swarm_trackers(self, info_hash: bytes) -> list:
        transfer = self.transfers.get(info_hash)
        return transfer.trackers if transfer is not None else []

    def started(self) -> None:
        log.info("peer-it daemon {peer} listening for peers on port {port}, control at "
                 "{control}", peer=self.node.identity.fingerprint[:16],
                 port=self.peers.listen_port, control=self.control.path)
