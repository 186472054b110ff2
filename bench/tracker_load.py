"""Load on a real ``twistd peerit-tracker``: many TLS sessions, announces, peer lists.

Starts a tracker pinned to one CPU (``taskset``) on 127.0.0.1 with a temporary data dir, and
drives it from this process pinned to the other. The generator is one thread on an epoll
loop over plain non-blocking sockets with TLS on memory BIOs (stdlib ``ssl``): a batch is
one ``SSL_write`` and one ``send``, a read one ``recv`` and an ``SSL_read`` per record, so
it stays below the tracker's CPU per request and (its ``lag`` shows) keeps to its schedule
up to the tracker's saturation. Loopback only, bounded in sessions, steps and time.

1. ``--sessions`` TLS sessions (client certificate each), Hello, Welcome; then each announces
   into ``--swarms-per-session`` swarms drawn from a pool of ``--pool`` info-hashes (10% of
   entries as seeders), in waves of 100 sessions. Tracker RSS is read before the sessions,
   after them, and after the announces: bytes per entry = growth from the announces /
   entries.
2. Steady load, open loop: for each offered rate in ``--rates`` (requests/s), for
   ``--seconds``, random sessions send a batch of an Announce (event update) and a
   PeerListRequest (``--max-peers``) for one of their swarms, paced every millisecond.
   Latency is from writing a batch to the poll that returned its PeerList. Each step also
   prints how late the generator's sends were against the schedule (``lag``: if it grows,
   the generator, not the tracker, is the limit), the tracker's CPU share, and its CPU time
   per request (CPU seconds over the step and its drain / requests answered): the figure to
   compare between runs on a machine shared with other work, where req/s and p99 are noisy.
3. ``--runs`` rounds of all the rates, interleaved (a noisy moment hits one step of each
   round, not one rate), then a summary per rate (median and range) beside the issue's
   targets, and the machine it ran on.

Sessions come from 64 loopback source addresses (127.0.1.x), as daemons come from many
hosts: the tracker bounds handshakes in progress per source address.

``--modes`` runs the same load against several deployments one after the other and prints
them side by side: ``memory`` (one process, the in-memory table: the default), ``redis`` (one
process, the table in a redis-server started for the run on loopback, no persistence) and
``redis-2`` (two worker processes on one port, ``--workers 2``, sharing that Redis). Then the
tracker's CPU is the sum over its workers, Redis's CPU is measured per step too, RSS per
entry is per tracker process (each holds the whole table as its view), and Redis's bytes per
entry come from ``INFO memory`` growth over the announces, without the change stream (a
bounded log, trimmed to its maximum length) and with it. With one tracker process it is
pinned to one CPU and the generator to the other (Redis unpinned); with two, nothing is
pinned: two workers, Redis and the generator share the two CPUs.

``--metrics`` runs the tracker with ``--metrics tcp:0`` and scrapes it every second from
another process during the whole run (with two workers, the first
worker's endpoint the log names) (``bench/bench_metrics.py`` runs both side by side).

``--logic-only`` measures the session logic alone in this process (``Tracker`` +
``MemorySwarmStore``, the same batches, no TLS, no sockets): the floor under a real run.

    .venv/bin/python bench/tracker_load.py [--sessions 2000] [--swarms-per-session 50]
        [--pool 10000] [--rates 10000,20000,30000,40000,50000] [--seconds 10] [--runs 3]
        [--max-peers 50] [--modes memory,redis,redis-2] [--json FILE] [--metrics]
    .venv/bin/python bench/tracker_load.py --logic-only
"""

import argparse
import collections
import concurrent.futures
import json
import os
import random
import select
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "references"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import package_versions, proc_cpu_times  # noqa: E402
from peerit.addresses import TrackerAddress  # noqa: E402
from peerit.identity import Identity  # noqa: E402
from peerit.testing.metrics import Scraper, metrics_url  # noqa: E402
from peerit.testing.processes import environment  # noqa: E402
from peerit.testing.redis import RedisServer  # noqa: E402
from peerit.wire import tracker as wire  # noqa: E402
from peerit.wire.framing import FrameDecoder, frame  # noqa: E402

MAX_SESSIONS = 5000
MAX_SECONDS_PER_STEP = 60
MAX_RATES = 8
MAX_RUNS = 5
SOURCE_ADDRESSES = 64
CONNECT_THREADS = 32        # handshakes in flight while the sessions open
CONNECT_TIMEOUT = 30.0      # per session: TCP, TLS, Hello -> Welcome
SYNC_TIMEOUT = 120.0        # a wave of announces answered (a Ping after them)
DRAIN_TIMEOUT = 10.0        # after a step, for the answers still on their way
TICK = 0.001                # pacing: sends are due every millisecond
WAVE = 100                  # sessions announcing at once
# Targets of the issue (docs/tracker.md), printed beside the results.
TARGET_RATE = 20_000
TARGET_P99_MS = 50.0
TARGET_BYTES_PER_ENTRY = 1024
TARGET_REDIS_BYTES_PER_ENTRY = 200
TARGET_REDIS_RATIO = 0.5        # (b) one process on Redis against (a) in memory
TARGET_WORKERS_RATIO = 1.3      # (c) two processes on Redis against (b)
MODES = {"memory": (None, 1), "redis": ("redis", 1), "redis-2": ("redis", 2)}

PEER_LIST = wire.messages.opcode_of(wire.PeerList)
PEER_JOINED = wire.messages.opcode_of(wire.PeerJoined)
PONG = wire.messages.opcode_of(wire.Pong)
ERROR = wire.messages.opcode_of(wire.Error)
WELCOME = wire.messages.opcode_of(wire.Welcome)
PING_FRAME = frame(wire.build(wire.Ping(1)))
READ_SIZE = 16 * 1024  # one TLS record's plaintext at most per SSL_read anyway


def cpu_of(pids: list[int]) -> tuple[float, float]:
    """(user, kernel) CPU seconds summed over processes."""
    times = [proc_cpu_times(pid) for pid in pids]
    return sum(t[0] for t in times), sum(t[1] for t in times)


def redis_memory(redis: RedisServer) -> tuple[int, int]:
    """(used_memory, the change stream's share of it) in bytes."""
    info = redis.command("INFO", "memory").decode()
    used = int(next(line.split(":")[1] for line in info.splitlines()
                    if line.startswith("used_memory:")))
    stream = redis.command("MEMORY", "USAGE", b"peerit:ev", "SAMPLES", "0") or 0
    return used, stream


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def machine() -> str:
    """What the figures were measured on: they move with the CPU more than with anything."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first CPU's
    except OSError:
        pass
    # A VM's model name can be as bare as "AMD EPYC": family and model tell generations apart.
    model = (f"{fields.get('model name', 'unknown CPU')} (family {fields.get('cpu family', '?')}"
             f" model {fields.get('model', '?')})")
    versions = package_versions(("twisted", "pyOpenSSL", "cryptography"))
    try:
        from cryptography.hazmat.backends.openssl import backend
        versions.append(f"tracker's TLS {backend.openssl_version_text()}")
    except ImportError:
        pass
    versions.append(f"generator's TLS {ssl.OPENSSL_VERSION}")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} CPUs; {', '.join(versions)}; load average {load}"


def percentile(sorted_values: list, fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


class LoadSession:
    """One load session: its socket and TLS object, its frame decoder, and when each
    unanswered batch was written (the tracker answers one session's requests in order).

    TLS runs on memory BIOs (``SSLObject``) over a plain non-blocking socket: one ``recv``
    per readable event and one ``send`` per batch. A non-blocking ``SSLSocket`` reads a
    record's header and body with separate system calls and ends every read with a failing
    ``recv`` and an exception (measured at 20,000 req/s: 30 against 25-28 us of generator
    CPU per request; the asyncio generator this replaced paced in 5 ms bursts)."""

    __slots__ = ("sock", "fd", "tls", "incoming", "outgoing", "decoder", "outstanding",
                 "pongs", "lost", "unsent")

    def __init__(self, sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO, decoder: FrameDecoder):
        self.sock = sock
        self.fd = sock.fileno()
        self.tls = tls
        self.incoming = incoming
        self.outgoing = outgoing
        self.decoder = decoder
        self.outstanding = collections.deque()
        self.pongs = 0
        self.lost = False
        self.unsent = b""  # records the kernel did not take yet


def open_session(n: int, ctx: ssl.SSLContext, address: TrackerAddress) -> LoadSession:
    """Connect, handshake, Hello -> Welcome, all blocking (bounded); then non-blocking."""
    source = f"127.0.1.{1 + n % SOURCE_ADDRESSES}"
    sock = socket.create_connection((address.host, address.port), timeout=CONNECT_TIMEOUT,
                                    source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="tracker")
    deadline = time.monotonic() + CONNECT_TIMEOUT

    def receive():
        if time.monotonic() > deadline:
            raise TimeoutError(f"session {n}: no Welcome within {CONNECT_TIMEOUT:.0f}s")
        data = sock.recv(READ_SIZE)
        if not data:
            raise ConnectionError(f"session {n}: the tracker closed the connection")
        incoming.write(data)

    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            receive()
    tls.write(frame(wire.build(wire.Hello(7000, 0, ("127.0.0.1",)))))
    sock.sendall(outgoing.read())
    decoder = FrameDecoder(wire.MAX_TRACKER_FRAME_SIZE)
    while True:
        try:
            bodies = decoder.feed(tls.read(READ_SIZE))
        except ssl.SSLWantReadError:
            receive()
            continue
        for body in bodies:
            if body[0] == ERROR:
                raise ConnectionError(f"session {n}: tracker refused: {wire.parse(body)}")
        if any(body[0] == WELCOME for body in bodies):
            break  # frames after it (StunInfo) are not needed
    sock.setblocking(False)
    return LoadSession(sock, tls, incoming, outgoing, decoder)


class LoadGenerator:
    """The sessions on one epoll loop: writes now, reads when the poll says so."""

    def __init__(self, address: TrackerAddress):
        self.address = address
        self.epoll = select.epoll()
        self.by_fd: dict[int, LoadSession] = {}
        self.latencies: list[float] = []
        self.errors = 0
        self.last_error = None
        self.lost = 0
        self.pushes = 0
        self._buffer = bytearray(256 * 1024)
        self._view = memoryview(self._buffer)

    def connect_all(self, contexts: list[ssl.SSLContext]) -> list[LoadSession]:
        """Open every session (blocking handshakes on a few threads), then hand their
        sockets to the epoll loop."""
        with concurrent.futures.ThreadPoolExecutor(CONNECT_THREADS) as pool:
            sessions = list(pool.map(open_session, range(len(contexts)), contexts,
                                     [self.address] * len(contexts)))
        for session in sessions:
            self.by_fd[session.fd] = session
            self.epoll.register(session.fd, select.EPOLLIN)
        return sessions

    def close_all(self) -> None:
        for session in self.by_fd.values():
            session.sock.close()
        self.by_fd.clear()
        self.epoll.close()

    # -- writes ------------------------------------------------------------------------------

    def send(self, session: LoadSession, data: bytes) -> None:
        session.tls.write(data)  # a memory BIO takes everything
        records = session.outgoing.read()
        if session.unsent:
            session.unsent += records  # after what is waiting, in order
            return
        try:
            sent = session.sock.send(records)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._lose(session)
            return
        if sent < len(records):
            session.unsent = records[sent:]
            self.epoll.modify(session.fd, select.EPOLLIN | select.EPOLLOUT)

    def _flush(self, session: LoadSession) -> None:
        try:
            sent = session.sock.send(session.unsent)
        except BlockingIOError:
            return
        except OSError:
            self._lose(session)
            return
        session.unsent = session.unsent[sent:]
        if not session.unsent:
            self.epoll.modify(session.fd, select.EPOLLIN)

    # -- reads -------------------------------------------------------------------------------

    def pump(self, timeout: float) -> None:
        """One poll (at most ``timeout`` seconds) and everything it found ready."""
        events = self.epoll.poll(timeout)
        if not events:
            return
        now = time.perf_counter()
        by_fd = self.by_fd
        latencies = self.latencies
        buffer, view = self._buffer, self._view
        for fd, mask in events:
            session = by_fd.get(fd)
            if session is None:
                continue
            if mask & select.EPOLLOUT and session.unsent:
                self._flush(session)
                if session.lost:
                    continue
            try:
                size = session.sock.recv_into(buffer)
            except BlockingIOError:
                continue
            except OSError:
                size = 0
            if not size:
                self._lose(session)
                continue
            incoming = session.incoming
            incoming.write(view[:size])
            read = session.tls.read
            feed = session.decoder.feed
            # Records until the BIO is empty; a partial record left in it ends the loop
            # with SSLWantReadError (no exception on the usual, empty end).
            while incoming.pending:
                try:
                    data = read(READ_SIZE)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLError:
                    self._lose(session)
                    break
                for body in feed(data):
                    opcode = body[0]
                    if opcode == PEER_LIST:
                        latencies.append(now - session.outstanding.popleft())
                    elif opcode == PEER_JOINED:
                        self.pushes += 1
                    elif opcode == PONG:
                        session.pongs += 1
                    elif opcode == ERROR:
                        self.errors += 1
                        self.last_error = wire.parse(body)

    def _lose(self, session: LoadSession) -> None:
        if session.lost:
            return
        session.lost = True
        self.lost += 1
        self.by_fd.pop(session.fd, None)
        try:
            self.epoll.unregister(session.fd)
        except (OSError, ValueError):
            pass
        session.sock.close()

    def sync(self, sessions: list[LoadSession]) -> None:
        """Every session has had everything it sent processed (a Ping answers after it)."""
        wanted = [(s, s.pongs + 1) for s in sessions if not s.lost]
        for session, _ in wanted:
            self.send(session, PING_FRAME)
        deadline = time.monotonic() + SYNC_TIMEOUT
        while any(s.pongs < n and not s.lost for s, n in wanted):
            if time.monotonic() > deadline:
                raise TimeoutError(f"sessions not answered within {SYNC_TIMEOUT:.0f}s")
            self.pump(0.05)

    # -- steady load -------------------------------------------------------------------------

    def step(self, sessions, batches, rate: int, seconds: float, rng: random.Random,
             tracker_pids: list[int], redis_pid: int | None = None) -> dict:
        """Offer ``rate`` requests/s (2 per batch) for ``seconds``; measure what completes."""
        self.latencies = []
        errors_before, lost_before = self.errors, self.lost
        batch_rate = rate / 2
        lags = []
        user_start, system_start = cpu_of(tracker_pids)
        redis_start = sum(proc_cpu_times(redis_pid)) if redis_pid else 0.0
        own_start = os.times()
        n = len(sessions)
        randrange, choice, send = rng.randrange, rng.choice, self.send
        start = time.perf_counter()
        end = start + seconds
        sent = 0
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            due = int((now - start) * batch_rate) - sent
            if due > 0:
                # How late the oldest of these is against the schedule.
                lags.append(now - start - (sent + 1) / batch_rate)
                for _ in range(due):
                    i = randrange(n)
                    session = sessions[i]
                    if not session.lost:
                        session.outstanding.append(now)
                        send(session, choice(batches[i]))
                sent += due
            self.pump(TICK)
        sending_time = time.perf_counter() - start
        completed_in_window = len(self.latencies)
        # Let the backlog drain (bounded) so latencies of the tail are counted too.
        deadline = time.perf_counter() + DRAIN_TIMEOUT
        while (any(s.outstanding for s in sessions if not s.lost)
               and time.perf_counter() < deadline):
            self.pump(0.01)
        wall = time.perf_counter() - start
        user_end, system_end = cpu_of(tracker_pids)
        redis_cpu = (sum(proc_cpu_times(redis_pid)) - redis_start) if redis_pid else 0.0
        tracker_cpu = user_end + system_end - user_start - system_start
        own_end = os.times()
        own_cpu = own_end.user + own_end.system - own_start.user - own_start.system
        latencies = sorted(self.latencies)
        lags.sort()
        return {
            "offered": rate, "achieved": 2 * completed_in_window / sending_time,
            "p50_ms": percentile(latencies, 0.50) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000,
            "max_ms": (latencies[-1] if latencies else float("nan")) * 1000,
            "lag_p99_ms": percentile(lags, 0.99) * 1000,
            "tracker_cpu": tracker_cpu / wall,
            # Every request answered in the step, the drain included, over the same window
            # as the CPU time: the figure that does not depend on what else the machine runs.
            "us_per_request": tracker_cpu / max(2 * len(latencies), 1) * 1e6,
            "kernel_share": (system_end - system_start) / max(tracker_cpu, 1e-9),
            "generator_cpu": own_cpu / wall,
            "redis_cpu": redis_cpu / wall,
            "generator_us_per_request": own_cpu / max(2 * len(latencies), 1) * 1e6,
            "generator_kernel_share": (own_end.system - own_start.system) / max(own_cpu, 1e-9),
            "errors": self.errors - errors_before,
            "lost": self.lost - lost_before,
            "unanswered": sum(len(s.outstanding) for s in sessions if not s.lost),
        }


def print_step(r: dict, run: int) -> None:
    print(f"run {run} offered {r['offered']:>6,} req/s: achieved {r['achieved']:>7,.0f}, "
          f"p50 {r['p50_ms']:5.1f} ms, p99 {r['p99_ms']:6.1f} ms, max {r['max_ms']:6.1f} ms; "
          f"tracker {r['tracker_cpu'] * 100:3.0f}% of its core, {r['us_per_request']:.1f} us "
          f"per request ({r['kernel_share'] * 100:.0f}% kernel); generator "
          f"{r['generator_cpu'] * 100:3.0f}% ({r['generator_us_per_request']:.1f} us, "
          f"{r['generator_kernel_share'] * 100:.0f}% kernel), "
          f"lag p99 {r['lag_p99_ms']:.1f} ms; "
          + (f"redis {r['redis_cpu'] * 100:.0f}%; " if r.get("redis_cpu") else "") +
          f"errors {r['errors']}, lost {r['lost']}, "
          f"unanswered {r['unanswered']}", flush=True)


def client_contexts(directory: Path, count: int) -> list[ssl.SSLContext]:
    contexts = []
    for n in range(count):
        identity = Identity.generate(f"load{n}")
        cert, key = directory / f"{n}.crt", directory / f"{n}.key"
        cert.write_bytes(identity.certificate_pem())
        key.write_bytes(identity.key_pem())
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the load generator does not check the tracker key
        ctx.load_cert_chain(str(cert), str(key))
        contexts.append(ctx)
    return contexts


def run(args, tracker_pids: list[int], address: TrackerAddress,
        redis: RedisServer | None = None) -> dict:
    """The load against one deployment. ``tracker_pids``: its processes (the workers);
    RSS figures are per process."""
    redis_pid = redis.process.pid if redis is not None else None

    def rss():
        return sum(rss_bytes(pid) for pid in tracker_pids) / len(tracker_pids)

    rng = random.Random(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="peerit-load-") as tmp:
        contexts = client_contexts(Path(tmp), args.sessions)  # keys loaded: files can go
    print(f"generated {args.sessions} client identities in {time.perf_counter() - t0:.1f}s",
          flush=True)
    generator = LoadGenerator(address)
    rss_idle = rss()
    t0 = time.perf_counter()
    sessions = generator.connect_all(contexts)
    print(f"{len(sessions)} TLS sessions up in {time.perf_counter() - t0:.1f}s", flush=True)
    time.sleep(1)
    rss_sessions = rss()
    redis_before = redis_memory(redis) if redis is not None else None

    pool = [os.urandom(32) for _ in range(args.pool)]
    swarms_of = []
    announce_cpu = sum(cpu_of(tracker_pids))
    announce_redis_cpu = sum(proc_cpu_times(redis_pid)) if redis_pid else 0.0
    t0 = time.perf_counter()
    # In waves: all 2000 at once would measure the transient buffers of half a million
    # PeerJoined pushes (held by the allocator afterwards), not the table.
    for wave in range(0, len(sessions), WAVE):
        for session in sessions[wave:wave + WAVE]:
            swarms = rng.sample(pool, args.swarms_per_session)
            swarms_of.append(swarms)
            generator.send(session, b"".join(
                frame(wire.build(wire.Announce(h, "started",
                                               0 if rng.random() < 0.1 else 1000)))
                for h in swarms))
        generator.sync(sessions[wave:wave + WAVE])
    entries = args.sessions * args.swarms_per_session
    took = time.perf_counter() - t0
    print(f"{entries} announces (started) in {took:.1f}s: {entries / took:,.0f}/s "
          f"({generator.pushes:,} PeerJoined pushes)", flush=True)
    time.sleep(1)
    redis_figures = {}
    if redis is not None:
        # Written behind the answers: wait (bounded) until Redis holds every entry.
        deadline = time.monotonic() + 60
        while sum(redis.command("HLEN", b"peerit:s:" + h) for h in pool[:50]) < sum(
                1 for swarms in swarms_of for h in swarms if h in set(pool[:50])):
            if time.monotonic() > deadline:
                raise TimeoutError("Redis does not hold every entry 60 s after the announces")
            time.sleep(0.1)
        used, stream = redis_memory(redis)
        redis_figures["us_per_announce"] = (
            sum(proc_cpu_times(redis_pid)) - announce_redis_cpu) / entries * 1e6
        redis_figures = {
            **redis_figures,
            "bytes_per_entry": (used - stream - redis_before[0] + redis_before[1]) / entries,
            "bytes_per_entry_with_stream": (used - redis_before[0]) / entries,
            "sample_swarm_key": redis.command("MEMORY", "USAGE", b"peerit:s:" + pool[0]),
            "used_memory": used, "stream": stream}
        print(f"Redis: {redis_figures['bytes_per_entry']:.0f} bytes per entry "
              f"({redis_figures['bytes_per_entry_with_stream']:.0f} with the change stream, "
              f"{stream / 2**20:.1f} MiB), used_memory {used / 2**20:.1f} MiB", flush=True)
    # Started announces, their PeerJoined pushes, and (with Redis) their writes and the
    # other process's reading of them: CPU per announce of the tracker processes together.
    tracker_us_per_announce = (sum(cpu_of(tracker_pids)) - announce_cpu) / entries * 1e6
    print(f"CPU per started announce: tracker {tracker_us_per_announce:.1f} us"
          + (f", Redis {redis_figures['us_per_announce']:.1f} us" if redis_figures else ""),
          flush=True)
    rss_entries = rss()
    per_entry = (rss_entries - rss_sessions) / entries
    per_session = (rss_sessions - rss_idle) / len(sessions)
    print(f"tracker RSS: {rss_idle / 2**20:.1f} MiB idle, {rss_sessions / 2**20:.1f} MiB with "
          f"{len(sessions)} sessions ({per_session / 1024:.1f} KiB each), "
          f"{rss_entries / 2**20:.1f} MiB with {entries} entries -> {per_entry:.0f} bytes "
          f"per entry", flush=True)

    batches = [[frame(wire.build(wire.Announce(h, "update", 500)))
                + frame(wire.build(wire.PeerListRequest(h, args.max_peers)))
                for h in rng.sample(swarms, min(8, len(swarms)))]
               for swarms in swarms_of]
    steps = []
    for round_number in range(1, args.runs + 1):
        for rate in args.rates:
            result = generator.step(sessions, batches, rate, args.seconds, rng, tracker_pids,
                                    redis_pid)
            result["run"] = round_number
            print_step(result, round_number)
            if generator.last_error is not None and result["errors"]:
                print(f"  last error: {generator.last_error}", flush=True)
            steps.append(result)
            time.sleep(1)
    generator.close_all()
    return {"rss": {"idle": rss_idle, "sessions": rss_sessions, "entries": rss_entries,
                    "bytes_per_entry": per_entry, "bytes_per_session": per_session},
            "announces_per_second": entries / took, "redis": redis_figures,
            "tracker_us_per_announce": tracker_us_per_announce,
            "processes": len(tracker_pids), "steps": steps}


def summary(result: dict, rates: list[int]) -> dict:
    """Per offered rate over the runs: medians and ranges; the best rate that kept the
    target latency; the figures beside the issue's targets."""
    rows = []
    for rate in rates:
        steps = [s for s in result["steps"] if s["offered"] == rate]
        p99s = sorted(s["p99_ms"] for s in steps)
        rows.append({
            "offered": rate, "runs": len(steps),
            "achieved": statistics.median(s["achieved"] for s in steps),
            "p99_ms": statistics.median(p99s), "p99_min_ms": p99s[0], "p99_max_ms": p99s[-1],
            "p50_ms": statistics.median(s["p50_ms"] for s in steps),
            "tracker_cpu": statistics.median(s["tracker_cpu"] for s in steps),
            "us_per_request": statistics.median(s["us_per_request"] for s in steps),
            "generator_cpu": statistics.median(s["generator_cpu"] for s in steps),
            "redis_cpu": statistics.median(s.get("redis_cpu", 0.0) for s in steps),
            "lag_p99_ms": max(s["lag_p99_ms"] for s in steps),
            "clean": all(s["errors"] == 0 and s["lost"] == 0 and s["unanswered"] == 0
                         for s in steps)})
    kept = [r for r in rows if r["p99_ms"] < TARGET_P99_MS and r["clean"]
            and r["achieved"] >= 0.95 * r["offered"]]
    return {"rows": rows, "sustained": max(kept, key=lambda r: r["achieved"], default=None),
            "peak": max(result["steps"], key=lambda s: s["achieved"])}


def print_summary(result: dict, verdict: dict) -> None:
    print()
    print("per offered rate, over the runs (median, p99 range):")
    for r in verdict["rows"]:
        print(f"  {r['offered']:>6,} req/s: achieved {r['achieved']:>7,.0f}, p50 "
              f"{r['p50_ms']:5.1f} ms, p99 {r['p99_ms']:6.1f} ms ({r['p99_min_ms']:.1f}-"
              f"{r['p99_max_ms']:.1f}), tracker {r['tracker_cpu'] * 100:3.0f}% "
              f"({r['us_per_request']:.1f} us/request), generator "
              f"{r['generator_cpu'] * 100:3.0f}%, lag p99 <= {r['lag_p99_ms']:.1f} ms"
              f"{'' if r['clean'] else ', ERRORS OR LOSSES'}")
    print()
    sustained = verdict["sustained"]
    peak = verdict["peak"]
    at_target = next((r for r in verdict["rows"] if r["offered"] == TARGET_RATE), None)
    per_entry = result["rss"]["bytes_per_entry"]
    lines = [
        ("", "measured", "target"),
        ("requests/s with p99 < 50 ms, one core",
         f"{sustained['achieved']:,.0f} (offered {sustained['offered']:,})"
         if sustained else "none", f">= {TARGET_RATE:,}"),
        (f"p99 at {TARGET_RATE:,} req/s",
         f"{at_target['p99_ms']:.1f} ms ({at_target['p99_min_ms']:.1f}-"
         f"{at_target['p99_max_ms']:.1f})" if at_target else "not offered",
         f"< {TARGET_P99_MS:.0f} ms"),
        ("most requests/s answered in a step",
         f"{peak['achieved']:,.0f} (offered {peak['offered']:,}, tracker at "
         f"{peak['tracker_cpu'] * 100:.0f}%, p99 {peak['p99_ms']:.0f} ms)", ""),
        ("tracker RSS per swarm entry", f"{per_entry:.0f} B", f"<= {TARGET_BYTES_PER_ENTRY} B"),
    ]
    width = max(len(a) for a, _, _ in lines)
    for a, b, c in lines:
        print(f"{a:<{width}}  {b:<56} {c}")


def cpus() -> tuple[int, int] | None:
    """Two CPUs for the tracker and the generator, or None (then nothing is pinned)."""
    available = sorted(os.sched_getaffinity(0))
    return (available[0], available[1]) if len(available) >= 2 else None


class _NullLink:
    """A session's connection in --logic-only: what the session writes is counted, dropped."""

    def __init__(self):
        self.written = 0

    def write(self, data):
        self.written += len(data)

    def close(self):
        pass

    def abort(self):
        pass


def logic_only(args):
    """The session logic alone, in this process: ``Tracker`` + ``MemorySwarmStore`` fed the
    same request batches as the load, no TLS, no sockets. CPU per request here is the floor
    that the TLS and I/O costs of a real run add to."""
    from twisted.internet.task import Clock
    from peerit.tracker.session import Limits, Tracker
    from peerit.tracker.store import MemorySwarmStore

    rng = random.Random(1)
    clock = Clock()
    limits = Limits(max_sessions=args.sessions, max_sessions_per_address=args.sessions,
                    request_rate=1000, request_burst=1000,
                    max_swarms_per_session=args.swarms_per_session)
    tracker = Tracker(clock, MemorySwarmStore(random.Random(2)), limits, random.Random(3))
    sessions = []
    for n in range(args.sessions):
        session = tracker.open_session(_NullLink(), "127.0.1.1", 10000 + n)
        session.handshake_completed(os.urandom(32))
        session.data_received(frame(wire.build(wire.Hello(7000, 0, ("127.0.0.1",)))))
        sessions.append(session)
    pool = [os.urandom(32) for _ in range(args.pool)]
    swarms_of = []
    for session in sessions:
        swarms = rng.sample(pool, args.swarms_per_session)
        swarms_of.append(swarms)
        session.data_received(b"".join(
            frame(wire.build(wire.Announce(h, "started", 0 if rng.random() < 0.1 else 1000)))
            for h in swarms))
    batches = [[frame(wire.build(wire.Announce(h, "update", 500)))
                + frame(wire.build(wire.PeerListRequest(h, args.max_peers)))
                for h in rng.sample(swarms, min(8, len(swarms)))]
               for swarms in swarms_of]
    # Passes over fresh random batches; the best pass is the figure least disturbed by
    # whatever else the machine runs (the median is printed too).
    passes, per_pass = 5, 40_000
    figures = []
    for _ in range(passes):
        order = [(sessions[i], rng.choice(batches[i]))
                 for i in (rng.randrange(len(sessions)) for _ in range(per_pass))]
        handled = tracker.requests_handled
        cpu = time.process_time()
        for session, batch in order:
            # Time moves on without running timers: Clock.advance sorts its 2000 session
            # timers on every call, which would dwarf what is measured.
            clock.rightNow += 0.0001
            session.data_received(batch)
        cpu = time.process_time() - cpu
        requests = tracker.requests_handled - handled
        assert requests == 2 * per_pass, "every request handled"
        figures.append(cpu / requests * 1e6)
    figures.sort()
    print(f"session logic alone: {figures[0]:.1f} us/request (best of {passes} passes of "
          f"{2 * per_pass} requests; median {figures[passes // 2]:.1f}) "
          f"({args.sessions} sessions x {args.swarms_per_session} swarms of {args.pool})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--swarms-per-session", type=int, default=50)
    parser.add_argument("--pool", type=int, default=10000)
    parser.add_argument("--rates", default="10000,20000,30000,40000,50000",
                        help="offered requests/s, comma-separated (at most 8)")
    parser.add_argument("--seconds", type=float, default=10, help="per step (at most 60)")
    parser.add_argument("--runs", type=int, default=3,
                        help="rounds over all the rates (at most 5)")
    parser.add_argument("--max-peers", type=int, default=50)
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    parser.add_argument("--logic-only", action="store_true",
                        help="measure the session logic in this process (no TLS, no tracker "
                             "process): CPU per request")
    parser.add_argument("--modes", default="memory",
                        help="deployments to load one after the other, comma-separated: "
                             "memory, redis, redis-2 (two workers on one Redis)")
    parser.add_argument("--metrics", action="store_true",
                        help="run the tracker with --metrics and scrape it every second "
                             "(from another process) during the whole run")
    parser.add_argument("--tracker-profile", metavar="PATH",
                        help="run the tracker under cProfile and save its stats to PATH")
    args = parser.parse_args()
    try:
        args.rates = [int(r) for r in args.rates.split(",")]
    except ValueError:
        parser.error(f"--rates must be integers separated by commas, not {args.rates!r}")
    if not 0 < args.sessions <= MAX_SESSIONS:
        parser.error(f"--sessions must be 1..{MAX_SESSIONS}")
    if not 0 < args.seconds <= MAX_SECONDS_PER_STEP:
        parser.error(f"--seconds must be above 0 and at most {MAX_SECONDS_PER_STEP}")
    if not 0 < len(args.rates) <= MAX_RATES or min(args.rates) <= 0:
        parser.error(f"--rates: 1 to {MAX_RATES} positive rates")
    args.modes = args.modes.split(",")
    if not args.modes or any(m not in MODES for m in args.modes):
        parser.error(f"--modes: a comma-separated choice of {', '.join(MODES)}")
    if not 0 < args.runs <= MAX_RUNS:
        parser.error(f"--runs must be 1..{MAX_RUNS}")
    if not 0 < args.swarms_per_session <= min(args.pool, 256):
        parser.error("--swarms-per-session must be 1..256 and at most --pool")
    if args.logic_only:
        logic_only(args)
        return

    started_on = machine()
    print(f"machine: {started_on}", flush=True)
    everything = os.sched_getaffinity(0)
    results = {}
    for mode in args.modes:
        os.sched_setaffinity(0, everything)
        if len(args.modes) > 1:
            print(f"\n=== {mode} ===", flush=True)
        results[mode] = run_mode(args, mode)
    if len(args.modes) > 1:
        print_side_by_side(results, args.modes)
    print(f"machine at the end: load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": started_on, "arguments": vars(args),
             **(results[args.modes[0]] if len(args.modes) == 1 else {"modes": results})},
            indent=1))


def end_workers(pids: list[int], data_dir: str, timeout: float = 10.0) -> None:
    """A worker ends by itself once its parent is gone (the parent stops it, or its parent
    watch notices a SIGKILLed parent); wait for that, bounded, then SIGKILL what is left.
    Each PID is checked to still be this run's worker (its command line names this run's
    data directory, and it is not a zombie) before it is signalled."""
    def ours(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, IndexError):
            return False
        return state != "Z" and data_dir.encode() in cmdline

    for grace in (timeout, 2.0):
        deadline = time.monotonic() + grace
        while (pids := [pid for pid in pids if ours(pid)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not pids or grace != timeout:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run_mode(args, mode: str) -> dict:
    """Start the deployment of ``mode`` (its Redis too), run the load, stop everything."""
    store, workers = MODES[mode]
    data_dir = tempfile.mkdtemp(prefix="peerit-load-tracker-")
    log_path = Path(data_dir) / "tracker.log"
    redis = RedisServer(Path(data_dir) / "redis").start() if store == "redis" else None
    pinned = cpus() if workers == 1 else None
    tracker_cmd = [
        *(["taskset", "-c", str(pinned[0])] if pinned else []),
        sys.executable, "-c",
        "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
        "--logfile", str(log_path),
        *(["--profiler=cprofile", "--savestats", f"--profile={args.tracker_profile}"]
          if args.tracker_profile else []),
        "peerit-tracker",
        "--listen", "tcp:0:interface=127.0.0.1", "--data-dir", data_dir,
        "--max-sessions-per-address", str(args.sessions // SOURCE_ADDRESSES + 10),
        "--max-sessions", str(args.sessions + 10),
        "--request-rate", "1000", "--request-burst", "1000",
        "--max-swarms", str(max(args.swarms_per_session, 1)),
        *(["--store", redis.url] if redis is not None else []),
        *(["--workers", str(workers), "--stun", "udp:0:interface=127.0.0.1",
           "--relay", "tcp:0:interface=127.0.0.1"] if workers > 1 else []),
        *(["--metrics", "tcp:0"] if args.metrics else [])]
    tracker = subprocess.Popen(tracker_cmd, env=environment(), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    finished = False
    scraper = None
    pids: list[int] = []
    try:
        endpoint = Path(data_dir) / "tracker.endpoint"
        deadline = time.monotonic() + 30
        while not endpoint.exists():
            if tracker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"tracker did not start; see {log_path}")
            time.sleep(0.05)
        if args.metrics:
            url = metrics_url(log_path.read_text())
            scraper = Scraper([url], interval=1.0)
            print(f"scraping {url} every second", flush=True)
        address = TrackerAddress.parse(endpoint.read_text())
        assert address.host.startswith("127."), "loopback only"
        pids = [tracker.pid] if workers == 1 else [
            int((Path(data_dir) / f"worker-{i}.ready").read_text().split()[0])
            for i in range(workers)]
        if pinned:
            os.sched_setaffinity(0, {pinned[1]})
            print(f"tracker pid {tracker.pid} on CPU {pinned[0]} at {address.host}:"
                  f"{address.port}; load generator on CPU {pinned[1]}"
                  + ("; redis unpinned" if redis else ""), flush=True)
        else:
            print(f"tracker pids {pids} at {address.host}:{address.port}; nothing pinned"
                  + (" (one CPU: tracker and generator share it, figures are not comparable)"
                     if workers == 1 else ""), flush=True)
        result = run(args, pids, address, redis)
        if scraper is not None:
            scrapes, failures = scraper.stop()
            scraper = None
            print(f"metrics: {scrapes} scrapes, {failures} failed", flush=True)
            result["scrapes"] = {"done": scrapes, "failed": failures}
        verdict = summary(result, args.rates)
        print_summary(result, verdict)
        finished = True
        return {**result, "summary": verdict}
    finally:
        if scraper is not None:
            scraper.stop()
        if tracker.poll() is None:
            os.kill(tracker.pid, signal.SIGTERM)
            try:
                tracker.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(tracker.pid, signal.SIGKILL)
                tracker.wait()
        if workers > 1:
            end_workers(pids, data_dir)
        if redis is not None:
            redis.stop()
        if finished:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            print(f"tracker log kept in {log_path}", file=sys.stderr)


def print_side_by_side(results: dict, modes: list[str]) -> None:
    """The deployments beside each other, with the issue's ratios."""
    print()
    print("side by side (median over the runs; CPU in % of one core, tracker summed over "
          "its processes):")
    rates = [r["offered"] for r in results[modes[0]]["summary"]["rows"]]
    print(f"  {'':<9} {'sustained':>10} {'announces/s':>12} {'RSS/entry':>10} "
          f"{'Redis B/entry':>14}  " + "  ".join(f"{rate:>6,}: p99 ms, tracker/redis/gen %"
                                                for rate in rates))
    for mode in modes:
        result = results[mode]
        sustained = result["summary"]["sustained"]
        cells = [f"{r['p99_ms']:7.1f}, {r['tracker_cpu'] * 100:3.0f}/"
                 f"{r['redis_cpu'] * 100:3.0f}/{r['generator_cpu'] * 100:3.0f}"
                 f"{'' if r['clean'] else ' ERR'}" for r in result["summary"]["rows"]]
        redis_bytes = result["redis"].get("bytes_per_entry")
        print(f"  {mode:<9} {sustained['achieved'] if sustained else 0:>10,.0f} "
              f"{result['announces_per_second']:>12,.0f} "
              f"{result['rss']['bytes_per_entry']:>9.0f}B "
              f"{f'{redis_bytes:.0f}B' if redis_bytes is not None else '-':>14}  "
              + "  ".join(f"{c:>30}" for c in cells))

    def sustained(mode):
        found = results.get(mode, {}).get("summary", {}).get("sustained")
        return found["achieved"] if found else 0.0
    for a, b, target in (("redis", "memory", TARGET_REDIS_RATIO),
                         ("redis-2", "redis", TARGET_WORKERS_RATIO)):
        if a in results and b in results:
            ratio = f"{sustained(a) / sustained(b):.2f}" if sustained(b) else "n/a"
            print(f"  {a} / {b}, requests/s with p99 < {TARGET_P99_MS:.0f} ms: {ratio} "
                  f"(target >= {target})")
    for mode in modes:
        redis_bytes = results[mode]["redis"].get("bytes_per_entry")
        if redis_bytes is not None:
            print(f"  Redis bytes per entry ({mode}): {redis_bytes:.0f} "
                  f"(target <= {TARGET_REDIS_BYTES_PER_ENTRY})")

if __name__ == "__main__":
    main()
