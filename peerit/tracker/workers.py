"""Several tracker processes on one address: ``--workers N``.

Each worker opens its own listening TCP socket and STUN UDP sockets on the same ports with
``SO_REUSEPORT`` and hands them to Twisted (``adoptStreamPort`` / ``adoptDatagramPort``:
Twisted has no such option); the kernel spreads new connections and datagrams over the
workers by a hash of the source. A worker that dies leaves the group, so the daemons it
served reconnect to the same address and land on the others. Each worker runs its own relay
on its own port: a relay token is redeemed where it was issued, and the offer names that
port (and the host's ``--relay-host``, which every worker inherits, for a peer on another
host). All workers load the one key in the data directory, so the fingerprint is the same.

:class:`WorkerPool` is the parent: it picks the ports (binding once, so ``tcp:0`` works),
starts the workers as ``twistd peerit-tracker ... --worker I``, restarts one that exits
(after a delay that grows while it keeps failing), writes ``tracker.endpoint`` once all are
listening, and stops them with SIGTERM.
"""

import os
import signal
import socket
import sys

from twisted.application import service
from twisted.internet import task
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from peerit.addresses import TrackerAddress
from peerit.identity import Identity
from peerit.tracker.service import ENDPOINT_FILE, advertised_host, write_atomic

log = Logger(namespace="peerit.tracker.workers")

READY_TIMEOUT = 60.0
STOP_GRACE = 10.0
STEADY = 60.0       # a worker up this long before it ended starts the restart delay afresh


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def reuseport_socket(kind: int, host: str, port: int) -> socket.socket:
    """A bound (not yet listening) non-blocking socket that shares its port."""
    sock = socket.socket(_family(host), kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host or "0.0.0.0", port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def listen_tcp_shared(reactor, host: str, port: int, factory, backlog: int = 1024):
    """A listening TCP port shared with the other workers, adopted into Twisted."""
    sock = reuseport_socket(socket.SOCK_STREAM, host, port)
    try:
        sock.listen(backlog)
        return reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
    finally:
        sock.close()    # Twisted holds its own duplicate


def listen_udp_shared(reactor, port: int, protocol, interface: str = ""):
    """A UDP port shared with the other workers, adopted into Twisted."""
    sock = reuseport_socket(socket.SOCK_DGRAM, interface, port)
    try:
        return reactor.adoptDatagramPort(sock.fileno(), sock.family, protocol)
    finally:
        sock.close()


def ready_path(data_dir: str, index: int) -> str:
    return os.path.join(data_dir, f"worker-{index}.ready")


class _Worker(ProcessProtocol):
    """One worker. Its log (stdout) and anything on its stderr come back through the
    parent's log, line by line, so there is one log wherever the parent's goes."""

    MAX_LINE = 64 * 1024

    def __init__(self, pool: "WorkerPool", index: int):
        self.pool = pool
        self.index = index
        self.pid = None
        self.started_at = pool.reactor.seconds()
        self._partial = {1: b"", 2: b""}

    def connectionMade(self):
        self.pid = self.transport.pid

    def childDataReceived(self, fd, data):
        lines = (self._partial.get(fd, b"") + data).split(b"\n")
        self._partial[fd] = lines.pop()[-self.MAX_LINE:]
        for line in lines:
            text = line.decode("utf8", "replace")
            stamp, _, rest = text.partition(" ")
            if stamp[:4].isdigit() and rest:
                text = rest     # the parent's line has the time already
            log.info("worker {index}: {line}", index=self.index, line=text)

    def processEnded(self, reason):
        self.pool._ended(self, reason.value.exitCode, reason.value.signal)


class WorkerPool(service.Service):
    """Runs ``count`` workers; ``argv(index, ports)`` is the command of worker ``index``."""

    name = "peerit-tracker-workers"

    def __init__(self, reactor, count: int, host: str, port: int, stun: tuple | None,
                 argv, data_dir: str, identity: Identity):
        self.reactor = reactor
        self.count = count
        self.host = host
        self.port = port
        self.stun = stun                # (interface, port, alt port) or None
        self.argv = argv
        self.data_dir = data_dir
        self.identity = identity
        self.workers: dict[int, _Worker] = {}
        self.failures: dict[int, int] = {}
        self._reserved = []
        self._waiter = None
        self._stopping = False
        self.address: TrackerAddress | None = None

    def privilegedStartService(self):
        super().privilegedStartService()
        # The TCP reservation is bound, never listening: it holds the port (and turns tcp:0
        # into a number) without taking connections from the workers.
        tcp = reuseport_socket(socket.SOCK_STREAM, self.host, self.port)
        self._reserved.append(tcp)
        self.port = tcp.getsockname()[1]
        if self.stun is not None:
            # (interface, port, alt port): 0 for the alt port is "none", None "a free one".
            interface, stun_port, alt_port = self.stun
            primary = self._reserve_udp(interface, stun_port)
            if alt_port != 0:
                alt_port = self._reserve_udp(interface, alt_port or 0)
            self.stun = (interface, primary, alt_port)

    def _reserve_udp(self, interface: str, port: int) -> int:
        udp = reuseport_socket(socket.SOCK_DGRAM, interface, port)
        self._reserved.append(udp)
        return udp.getsockname()[1]

    def startService(self):
        super().startService()
        for index in range(self.count):
            try:
                os.unlink(ready_path(self.data_dir, index))
            except FileNotFoundError:
                pass
            self._spawn(index)
        self._waiter = task.LoopingCall(self._check_ready)
        self._waiter.clock = self.reactor
        self._started_at = self.reactor.seconds()
        self._waiter.start(0.1)

    def _spawn(self, index: int) -> None:
        worker = _Worker(self, index)
        argv = self.argv(index, self.port, self.stun)
        self.reactor.spawnProcess(worker, argv[0], argv, env=os.environ.copy(),
                                  childFDs={0: "w", 1: "r", 2: "r"})
        self.workers[index] = worker
        log.info("tracker worker {index} started (pid {pid})", index=index, pid=worker.pid)

    def _ready_pids(self) -> dict[int, int]:
        ready = {}
        for index, worker in self.workers.items():
            try:
                with open(ready_path(self.data_dir, index)) as f:
                    pid = int(f.read().split()[0])
            except (FileNotFoundError, ValueError, IndexError):
                continue
            if pid == worker.pid:
                ready[index] = pid
        return ready

    def _check_ready(self):
        if len(self._ready_pids()) == self.count:
            self._waiter.stop()
            # The workers are in the port groups now; a UDP reservation would otherwise take
            # its share of the STUN requests and never answer them.
            for sock in self._reserved[1:]:
                sock.close()
            del self._reserved[1:]
            self.address = TrackerAddress(advertised_host(self.host), self.port,
                                          self.identity.peer_id)
            write_atomic(os.path.join(self.data_dir, ENDPOINT_FILE), f"{self.address}\n")
            log.info("peer-it tracker: {count} workers listening on {host}:{port} (TLS), "
                     "fingerprint {fingerprint}; daemons use --tracker {tracker}",
                     count=self.count, host=self.host or "0.0.0.0", port=self.port,
                     fingerprint=self.identity.fingerprint, tracker=str(self.address))
        elif self.reactor.seconds() - self._started_at > READY_TIMEOUT:
            self._waiter.stop()
            log.error("tracker workers not ready within {s:.0f}s; stopping", s=READY_TIMEOUT)
            # A start that failed exits non-zero (systemd's Restart=on-failure retries), once
            # the workers have been stopped.
            self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
            self.reactor.stop()

    def _ended(self, worker: _Worker, code, signal_number) -> None:
        if self.workers.get(worker.index) is not worker:
            return
        del self.workers[worker.index]
        if self._stopping:
            return
        steady = self.reactor.seconds() - worker.started_at >= STEADY
        failures = (0 if steady else self.failures.get(worker.index, 0)) + 1
        self.failures[worker.index] = failures
        delay = min(30.0, 0.5 * 2 ** (failures - 1))
        log.warn("tracker worker {index} (pid {pid}) ended (exit {code}, signal {signal}); "
                 "restarting in {delay:.1f}s", index=worker.index, pid=worker.pid, code=code,
                 signal=signal_number, delay=delay)
        self.reactor.callLater(delay, self._restart, worker.index)

    def _restart(self, index: int) -> None:
        if not self._stopping and index not in self.workers:
            self._spawn(index)

    def stopService(self):
        super().stopService()
        self._stopping = True
        if self._waiter is not None and self._waiter.running:
            self._waiter.stop()
        try:
            os.unlink(os.path.join(self.data_dir, ENDPOINT_FILE))
        except FileNotFoundError:
            pass
        for sock in self._reserved:
            sock.close()
        self._reserved = []
        for worker in self.workers.values():
            try:
                os.kill(worker.pid, signal.SIGTERM)
            except (ProcessLookupError, TypeError):
                pass
        return self._wait_stopped(self.reactor.seconds() + STOP_GRACE)

    def _wait_stopped(self, deadline):
        if not self.workers:
            return None
        if self.reactor.seconds() >= deadline:
            for worker in self.workers.values():
                try:
                    os.kill(worker.pid, signal.SIGKILL)
                except (ProcessLookupError, TypeError):
                    pass
            return None
        return task.deferLater(self.reactor, 0.1, self._wait_stopped, deadline)


class ParentWatch(service.Service):
    """A worker ends when its parent is gone (SIGKILLed: it cannot stop its workers), so a
    restarted tracker does not find the old workers still holding its ports."""

    name = "peerit-tracker-parent-watch"

    def __init__(self, reactor, interval: float = 1.0, getppid=os.getppid):
        self.reactor = reactor
        self.interval = interval
        self.getppid = getppid
        self.parent_pid = getppid()
        self._loop = None

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self._check)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)

    def _check(self):
        if self.getppid() != self.parent_pid:
            log.warn("the tracker's parent process is gone; this worker stops")
            self._loop.stop()
            self.reactor.stop()

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()


def worker_argv(options, index: int, port: int, stun, relay: str | None,
                metrics: str | None = None) -> list[str]:
    """``twistd peerit-tracker`` with the parent's options, as worker ``index``."""
    overridden = {"listen", "stun", "stun-alt-port", "relay", "workers", "worker", "metrics"}
    args = []
    for name, *_ in options.optParameters:
        value = options[name]
        if name in overridden or value is None:
            continue
        args.append(f"--{name}={value}")
    host = options.listen_host
    escaped = host.replace(":", "\\:")
    args.append(f"--listen=tcp:{port}" + (f":interface={escaped}" if host else ""))
    if stun is None:
        args.append("--stun=none")
    else:
        interface, stun_port, alt_port = stun
        suffix = f":interface={interface.replace(':', chr(92) + ':')}" if interface else ""
        args += [f"--stun=udp:{stun_port}{suffix}", f"--stun-alt-port={alt_port}"]
    args.append(f"--relay={relay or 'none'}")
    if metrics is not None:
        args.append(f"--metrics={metrics}")
        args += [f"--metrics-allow={network}" for network in options["metrics-allow"]]
    args.append(f"--worker={index}")
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "--nodaemon", "--pidfile=", "--logfile=-", "peerit-tracker", *args]
