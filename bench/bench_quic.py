"""Throughput of peer links over QUIC (peerit.nat.quic): N MiB between two processes.

Each side is its own process with its own reactor and UDP socket on 127.0.0.1, driven by the
QUIC adapter exactly as the daemon drives it; the receiver arms acceptance for the sender's
address and pins its peer id, the sender pins the receiver's. Prints MB/s (median and range
of --runs), CPU seconds of each side, and with --profile the top cProfile entries of each side.
Also prints the in-memory figure: both endpoints in one process, datagrams handed over by
function call; each side's datagrams per syscall (GSO/GRO batching); and the connection's own
CPU cost per datagram through the bulk fast path and through aioquic's code alone.

    .venv/bin/python bench/bench_quic.py                      # 256 MiB, 3 runs, 1452-byte datagrams
    .venv/bin/python bench/bench_quic.py --size 64 --profile
    .venv/bin/python bench/bench_quic.py --datagram-size 1200 --cc cubic

Not a test: nothing here asserts a speed.
"""

import argparse
import cProfile
import hashlib
import io
import json
import pstats
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHUNK = 256 * 1024
BLOCK = hashlib.sha256(b"peer-it quic bench").digest() * (CHUNK // 32)  # 256 KiB pattern


def expected_digest(size: int) -> str:
    digest = hashlib.sha256()
    for _ in range(size // CHUNK):
        digest.update(BLOCK)
    digest.update(BLOCK[: size % CHUNK])
    return digest.hexdigest()


def settings_from(args):
    from peerit.nat.quic import QuicSettings
    return QuicSettings(max_datagram_size=args.datagram_size, congestion_control=args.cc,
                        receive_window=args.window * 1024 * 1024,
                        send_buffer_limit=args.send_buffer * 1024 * 1024,
                        handshake_timeout=10.0)


# -- the sending and receiving protocols ---------------------------------------------------

def make_protocols(size: int, on_done):
    from twisted.internet import protocol
    from zope.interface import implementer
    from twisted.internet.interfaces import IPushProducer

    @implementer(IPushProducer)
    class Sender(protocol.Protocol):
        def connectionMade(self):
            self.cpu_started = time.process_time()
            self.remaining = size
            self.paused = False
            self.transport.registerProducer(self, True)
            self.resumeProducing()

        def pauseProducing(self):
            self.paused = True

        def resumeProducing(self):
            self.paused = False
            while not self.paused and self.remaining > 0:
                n = min(CHUNK, self.remaining)
                self.remaining -= n
                self.transport.write(BLOCK if n == CHUNK else BLOCK[:n])
            if self.remaining == 0 and self.transport is not None:
                self.transport.unregisterProducer()
                self.transport.loseConnection()
                self.remaining = -1

        def stopProducing(self):
            self.remaining = -1

        def connectionLost(self, reason):
            on_done({"sent_reason": reason.getErrorMessage(),
                     "transfer_cpu": time.process_time() - self.cpu_started})

    class Receiver(protocol.Protocol):
        def connectionMade(self):
            self.started = time.perf_counter()
            self.cpu_started = time.process_time()
            self.received = 0
            self.digest = hashlib.sha256()

        def dataReceived(self, data):
            self.received += len(data)
            self.digest.update(data)

        def connectionLost(self, reason):
            elapsed = time.perf_counter() - self.started
            on_done({"received": self.received, "seconds": elapsed,
                     "transfer_cpu": time.process_time() - self.cpu_started,
                     "sha256": self.digest.hexdigest(), "reason": reason.getErrorMessage()})

    return Sender, Receiver


# -- child processes -------------------------------------------------------------------------

def child(args) -> None:
    from twisted.internet import reactor
    from peerit.identity import Identity
    from peerit.nat.quic import QuicEndpoint
    from peerit.nat.udp import DatagramKind, UdpMux

    me = Identity.load_or_create(args.identity)
    other = Identity.load_or_create(args.peer_identity)
    Sender, Receiver = make_protocols(args.size * 1024 * 1024, lambda result: finish(result))
    mux = UdpMux(reactor)
    endpoint = QuicEndpoint(me, mux.send, reactor, settings_from(args), send_many=mux.send_many)
    mux.set_handler(DatagramKind.QUIC, endpoint.datagram_received)
    port = reactor.listenUDP(args.port, mux, interface="127.0.0.1")
    endpoint.host = port.getHost()
    buffers = (port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
               port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
    profiler = cProfile.Profile() if args.profile else None
    outcome = {"buffers": buffers}
    peer = ("127.0.0.1", args.peer_port)

    def finish(result):
        outcome.update(result)
        if reactor.running:
            reactor.callLater(0.05, reactor.stop)

    def failed(failure):
        finish({"error": failure.getErrorMessage()})

    if args.role == "receive":
        endpoint.accept_from(peer, [other.peer_id], lambda pid: Receiver(),
                                   timeout=30).addErrback(failed)
        print("ready", flush=True)
    else:
        time.sleep(0.2)  # the receiver armed before the parent started us; be safe anyway
        endpoint.connect(peer, other.peer_id, lambda pid: Sender()).addErrback(failed)
    reactor.callLater(600, lambda: finish({"error": "timed out"}))
    if args.trace:
        from twisted.internet import task
        task.LoopingCall(trace_links, args.role, endpoint).start(args.trace, now=False)
    if profiler:
        profiler.enable()
    reactor.run()
    if profiler:
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.top)
        outcome["profile"] = text.getvalue()
    reader, writer = port.doRead, mux._writer
    outcome["io"] = (f"{writer.datagrams} sent in {writer.syscalls} syscalls, "
                     f"{reader.datagrams} read in {reader.syscalls}")
    port.stopListening()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    outcome["cpu"] = usage.ru_utime + usage.ru_stime
    outcome["send_failures"] = endpoint.send_failures
    print("RESULT " + json.dumps(outcome), flush=True)


def trace_links(role, endpoint) -> None:
    """Congestion and flow-control state of each link (reads aioquic internals: diagnostics)."""
    for link in list(endpoint._links.values()):
        conn, loss = link.conn, link.conn._loss
        print(f"[{role}] cwnd {loss.congestion_window} in flight {loss.bytes_in_flight} "
              f"srtt {loss._rtt_smoothed * 1000:.2f} ms held {link.held()} written "
              f"{link.written} credit left {conn._remote_max_data - conn._remote_max_data_used}",
              file=sys.stderr, flush=True)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(args, workdir: str) -> dict:
    receive_port, send_port = free_udp_port(), free_udp_port()
    common = [sys.executable, __file__, "--size", str(args.size), "--datagram-size",
              str(args.datagram_size), "--cc", args.cc, "--window", str(args.window),
              "--send-buffer", str(args.send_buffer), "--top", str(args.top)]
    if args.profile:
        common.append("--profile")
    if args.trace:
        common += ["--trace", str(args.trace)]
    receiver = subprocess.Popen(
        common + ["--role", "receive", "--port", str(receive_port), "--peer-port",
                  str(send_port), "--identity", f"{workdir}/r", "--peer-identity",
                  f"{workdir}/s"], stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout.readline().strip() == "ready"
        sender = subprocess.Popen(
            common + ["--role", "send", "--port", str(send_port), "--peer-port",
                      str(receive_port), "--identity", f"{workdir}/s", "--peer-identity",
                      f"{workdir}/r"], stdout=subprocess.PIPE, text=True)
        try:
            sent_out, _ = sender.communicate(timeout=900)
        finally:
            if sender.poll() is None:
                sender.kill()
        received_out, _ = receiver.communicate(timeout=60)
    finally:
        if receiver.poll() is None:
            receiver.kill()

    def result(text):
        lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
        return json.loads(lines[-1][7:]) if lines else {"error": text[-2000:]}
    return {"sender": result(sent_out), "receiver": result(received_out)}


def in_memory(args) -> float:
    """Both endpoints in one process and one reactor; datagrams passed by function call."""
    from twisted.internet import reactor
    from peerit.identity import Identity
    from peerit.nat.quic import QuicEndpoint

    size = args.size * 1024 * 1024
    a_id, b_id = Identity.generate(), Identity.generate()
    a_addr, b_addr = ("10.0.0.1", 1), ("10.0.0.2", 2)
    settings = settings_from(args)
    endpoints = {}
    a = endpoints[a_addr] = QuicEndpoint(
        a_id, lambda data, dst: endpoints[dst].datagram_received(data, a_addr), reactor,
        settings)
    b = endpoints[b_addr] = QuicEndpoint(
        b_id, lambda data, dst: endpoints[dst].datagram_received(data, b_addr), reactor,
        settings)
    outcome = {}

    def done(result):
        outcome.update(result)
        if "received" in outcome and reactor.running:
            reactor.stop()

    Sender, Receiver = make_protocols(size, done)
    b.accept_from(a_addr, [a_id.peer_id], lambda pid: Receiver())
    a.connect(b_addr, b_id.peer_id, lambda pid: Sender())
    reactor.callLater(600, reactor.stop)
    reactor.run()
    if outcome.get("sha256") != expected_digest(size):
        raise SystemExit(f"in-memory transfer corrupt or incomplete: {outcome}")
    return size / outcome["seconds"] / 1e6


def raw_aioquic(args, fast_path: bool = True) -> tuple[float, float]:
    """The QUIC connection alone, no reactor, no sockets, congestion control and pacing out of
    the way: CPU microseconds per datagram to build+encrypt and to decrypt+parse a stream's
    packets, through peerit's bulk fast path or (``fast_path=False``) aioquic's own code.
    The ceiling any driver can reach on this CPU (reads aioquic internals)."""
    from aioquic.buffer import Buffer
    from aioquic.quic.packet import pull_quic_header
    from peerit.identity import Identity
    from peerit.nat.quic import QuicEndpoint
    from peerit.nat.quic_connection import PinnedQuicConnection

    a_id, b_id = Identity.generate(), Identity.generate()
    settings = settings_from(args)
    a = QuicEndpoint(a_id, None, None, settings)
    b = QuicEndpoint(b_id, None, None, settings)
    window = 1 << 30
    client = PinnedQuicConnection(configuration=a._configuration(True),
                                  allowed_peer_ids={b_id.peer_id}, receive_window=window)
    client.connect(("b", 1), 0.0)
    flight = client.datagrams_to_send(0.0)
    header = pull_quic_header(Buffer(data=flight[0][0]), host_cid_length=8)
    server = PinnedQuicConnection(configuration=b._configuration(False),
                                  allowed_peer_ids={a_id.peer_id}, receive_window=window,
                                  original_destination_connection_id=header.destination_cid)
    client.fast_path = server.fast_path = fast_path
    now = 0.0
    for _ in range(20):
        for data, _ in flight:
            server.receive_datagram(data, ("a", 1), now)
        for data, _ in server.datagrams_to_send(now):
            client.receive_datagram(data, ("b", 1), now)
        flight = client.datagrams_to_send(now)
        now += 0.001
    client._loss._cc.congestion_window = 1 << 40
    client._loss._pacer.packet_time = None
    payload = BLOCK * (32 * 1024 * 1024 // CHUNK)
    client.send_stream_data(2, payload)
    packets = []
    started = time.process_time()
    while batch := client.datagrams_to_send(now):
        packets.extend(data for data, _ in batch)
    send_us = (time.process_time() - started) / len(packets) * 1e6
    started = time.process_time()
    for data in packets:
        server.receive_datagram(data, ("a", 1), now)
    receive_us = (time.process_time() - started) / len(packets) * 1e6
    return send_us, receive_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="MiB to transfer")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--datagram-size", type=int, default=1452,
                        help="max UDP payload (1452: a 1500-MTU path, IPv6-safe)")
    parser.add_argument("--cc", default="reno", choices=["reno", "cubic"])
    parser.add_argument("--window", type=int, default=8, help="receive window, MiB")
    parser.add_argument("--send-buffer", type=int, default=4, help="send buffer cap, MiB")
    parser.add_argument("--profile", action="store_true", help="cProfile each side")
    parser.add_argument("--top", type=int, default=25, help="profile lines per side")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--trace", type=float, default=0,
                        help="print each side's congestion state every TRACE seconds")
    parser.add_argument("--role", choices=["send", "receive"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--peer-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--identity", help=argparse.SUPPRESS)
    parser.add_argument("--peer-identity", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        child(args)
        return

    size = args.size * 1024 * 1024
    digest = expected_digest(size)
    print(f"QUIC over UDP on 127.0.0.1, two processes: {args.size} MiB, datagrams "
          f"{args.datagram_size} B, {args.cc}, window {args.window} MiB, send buffer "
          f"{args.send_buffer} MiB")
    rates, ceilings = [], []
    with tempfile.TemporaryDirectory() as workdir:
        for run in range(args.runs):
            outcome = one_run(args, workdir)
            sender, receiver = outcome["sender"], outcome["receiver"]
            if receiver.get("sha256") != digest or "error" in receiver or "error" in sender:
                print(f"run {run + 1}: FAILED sender={ {k: v for k, v in sender.items() if k != 'profile'} } "
                      f"receiver={ {k: v for k, v in receiver.items() if k != 'profile'} }")
                continue
            rate = size / receiver["seconds"] / 1e6
            rates.append(rate)
            # What each side could do with a core to itself: other work on the machine
            # shows in wall time, hardly in CPU time.
            ceiling = size / max(sender["transfer_cpu"], receiver["transfer_cpu"]) / 1e6
            ceilings.append(ceiling)
            print(f"run {run + 1}: {rate:7.1f} MB/s  ({receiver['seconds']:.2f} s; transfer "
                  f"CPU s: sender {sender['transfer_cpu']:.2f}, receiver "
                  f"{receiver['transfer_cpu']:.2f} -> CPU-bound ceiling {ceiling:.1f} MB/s; "
                  f"socket buffers {receiver['buffers']}; send failures "
                  f"{sender['send_failures']}/{receiver['send_failures']})")
            print(f"       sender: {sender.get('io')}; receiver: {receiver.get('io')}")
            if args.profile:
                for side in ("sender", "receiver"):
                    print(f"--- profile of the {side} (run {run + 1}) ---")
                    print(outcome[side].get("profile", "(none)"))
    if rates:
        print(f"two processes: median {statistics.median(rates):.1f} MB/s, range "
              f"{min(rates):.1f}-{max(rates):.1f} over {len(rates)} runs; CPU-bound ceiling "
              f"median {statistics.median(ceilings):.1f} MB/s")
    if not args.skip_memory:
        print(f"in memory, one process: {in_memory(args):.1f} MB/s")
        for fast_path, label in ((True, "fast path"), (False, "aioquic alone")):
            send_us, receive_us = raw_aioquic(args, fast_path)
            print(f"{label}: {send_us:.1f} us to send, {receive_us:.1f} us to receive a "
                  f"{args.datagram_size}-byte datagram -> at most "
                  f"{args.datagram_size / max(send_us, receive_us):.1f} MB/s per core")


if __name__ == "__main__":
    main()
