"""Suite 4, fuzzing: every parser fed generated and mutated inputs; then the same over the
network to a running tracker, STUN service and daemon.

In process, each parser gets ``N`` inputs (3,000 in the short form, 100,000 in the long
one) from ``fuzzing.Mutator`` (valid seeds, havoc mutations, random bytes) plus a
hypothesis-generated share (arbitrary bytes and structure-aware messages). Only the
project's own ``MalformedMessage`` family may come out; anything else is a crash. The
allocation of each call is traced (``tracemalloc``) and must stay within a small multiple of
the input's size. Over the network the inputs go to a real tracker (after Hello), a real
daemon (at the handshake and, announced through the tracker, after it), the tracker's STUN
port and the daemon's control socket (AMP); each must keep serving legitimate clients.
"""

import io
import os
import random
import socket
import time
import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols import amp
from twisted.python.failure import Failure

from fuzzing import SEEDS, Mutator
from reliability_kit import MiB, pick, random_file, share

from peerit.addresses import TrackerAddress
from peerit.control import commands
from peerit.errors import MalformedMessage
from peerit.identity import Identity
from peerit.metainfo import Metainfo
from peerit.nat.stun import StunResponder
from peerit.testing.badpeers import BlockingTlsClient, announce_blocking, read_frame
from peerit.wire import framing, peer, probe, stun, tracker

N = pick(3000, 100_000)
# Allocation allowed per call beyond the input itself: parsers may copy the input a few
# times and build objects for it, never allocate from a length field they have not checked.
ALLOCATION_SLACK = 256 * 1024
ALLOCATION_FACTOR = 16


def _metainfo(data):
    Metainfo.from_bytes(data)


def _tracker(data):
    tracker.parse(data)
    framing.FrameDecoder(tracker.MAX_DAEMON_FRAME_SIZE).feed(data)


def _peer(data):
    peer.parse(data)
    framing.FrameDecoder(peer.MAX_FRAME_SIZE).feed(data)


_responder = StunResponder(Clock())
_amplification = {"replies": 0, "larger_than_request": 0, "max_ratio": 0.0, "sources": 0}


def _stun(data):
    try:
        stun.parse(data)
    finally:
        # A different source each time, so the responder's per-source limits do not hide
        # what it would answer.
        _amplification["sources"] += 1
        n = _amplification["sources"]
        reply = _responder.respond(data, (f"198.18.{n >> 8 & 255}.{n & 255}", 40000))
        if reply is not None:
            _amplification["replies"] += 1
            ratio = len(reply.datagram) / max(1, len(data))
            _amplification["max_ratio"] = max(_amplification["max_ratio"], ratio)
            if len(reply.datagram) > len(data):
                _amplification["larger_than_request"] += 1


def _probe(data):
    parsed = probe.parse(data)
    assert not probe.verify(parsed, b"the real nonce")


TARGETS = {"metainfo": _metainfo, "tracker": _tracker, "peer": _peer, "stun": _stun,
           "probe": _probe}


def fuzz(name: str, inputs) -> dict:
    target = TARGETS[name]
    counts = {"inputs": 0, "accepted": 0, "refused": 0, "crashes": 0}
    crashes = []
    worst = 0
    for data in SEEDS[name]() + [b"", b"\x00" * 64]:  # first calls compile and cache
        try:
            target(data)
        except Exception:
            pass
    tracemalloc.start()
    try:
        for index, data in enumerate(inputs):
            counts["inputs"] += 1
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            try:
                target(data)
                counts["accepted"] += 1
            except MalformedMessage:
                counts["refused"] += 1
            except Exception as e:  # anything else escaping a parser is a crash
                counts["crashes"] += 1
                if len(crashes) < 5:
                    crashes.append((index, data[:80], repr(e)[:200]))
            peak = tracemalloc.get_traced_memory()[1] - base
            worst = max(worst, peak - len(data))
            assert peak <= ALLOCATION_SLACK + ALLOCATION_FACTOR * len(data), \
                (name, index, peak, len(data), data[:80])
    finally:
        tracemalloc.stop()
    counts["max_extra_allocation_kib"] = round(worst / 1024, 1)
    counts["first_crashes"] = crashes
    return counts


def _mutated(name: str, n: int, seed: int):
    mutator = Mutator(SEEDS[name](), seed)
    return (next(mutator) for _ in range(n))


def test_every_parser_raises_only_its_own_errors_on_mutated_input(figures):
    started = time.monotonic()
    results = {}
    for offset, name in enumerate(TARGETS):
        results[name] = fuzz(name, _mutated(name, N, 1000 + offset))
    crashed = {n: r["first_crashes"] for n, r in results.items() if r["crashes"]}
    assert not crashed, crashed
    figures.update({
        "inputs_per_parser": N,
        "parsers": {n: {k: v for k, v in r.items() if k != "first_crashes"}
                    for n, r in results.items()},
        "crashes": 0, "stun_replies_larger_than_request": _amplification["larger_than_request"],
        "stun_max_reply_to_request_ratio": round(_amplification["max_ratio"], 2),
        "seconds": round(time.monotonic() - started, 1),
    })
    assert _amplification["larger_than_request"] == 0, _amplification


@settings(max_examples=pick(150, 5000), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(sorted(TARGETS)), data=st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_malformed_message(name, data):
    """Hypothesis-generated byte strings, shrunk to a minimal example on failure."""
    try:
        TARGETS[name](data)
    except MalformedMessage:
        pass


@settings(max_examples=pick(150, 5000), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(st.data())
def test_structured_messages_with_hostile_field_values(data):
    """Structure-aware: valid opcodes and framing with field values drawn from the edges
    (huge counts and lengths, empty and oversized strings, out-of-range enums)."""
    name = data.draw(st.sampled_from(["tracker", "peer"]))
    seeds = SEEDS[name]()
    seed = data.draw(st.sampled_from(seeds))
    head = seed[:1]
    body = data.draw(st.one_of(
        st.binary(max_size=512),
        st.builds(lambda n, rest: n.to_bytes(4, "big") + rest,
                  st.sampled_from([0, 1, 255, 256, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF]),
                  st.binary(max_size=64)),
        st.builds(lambda n, rest: n.to_bytes(2, "big") + rest,
                  st.sampled_from([0, 1, 200, 201, 0xFFFF]), st.binary(max_size=64)),
    ))
    try:
        TARGETS[name](head + body)
    except MalformedMessage:
        pass


# -- AMP arguments -----------------------------------------------------------------------------

HOSTILE_VALUES = [b"", b"0", b"-1", b"99999999999999999999999999", b"nan", b"inf", b"True",
                  b"\xff\xfe\x00", b"../../../../etc/passwd", b"/dev/zero", b"/proc/self/mem",
                  b"a" * 4000, "ünï".encode(), b"deadbeef", b"\x00" * 64, b"1e308", b"-0"]


def amp_boxes(rng: random.Random, n: int):
    """Boxes for every control command with hostile argument values (and some mutated)."""
    names = [c for c in vars(commands).values()
             if isinstance(c, type) and issubclass(c, amp.Command) and c is not commands.Command]
    seeds = []
    for command in names:
        box = amp.AmpBox(_command=command.commandName, _ask=b"1")
        for arg, _ in command.arguments:
            box[arg] = rng.choice(HOSTILE_VALUES)
        seeds.append(box.serialize())
    mutator = Mutator(seeds, rng.randrange(1 << 30))
    for i in range(n):
        if i % 2:
            yield next(mutator)
        else:
            command = rng.choice(names)
            box = amp.AmpBox(_command=command.commandName, _ask=b"%d" % i)
            for arg, _ in command.arguments:
                if rng.random() < 0.9:
                    box[arg] = rng.choice(HOSTILE_VALUES)
            yield box.serialize()


def test_control_commands_with_hostile_arguments_answer_with_clear_errors(tmp_path, figures):
    """A real (unstarted) Daemon behind the real AMP responders: every hostile box gets a
    success or one of the contract's error codes, never UNHANDLED (an exception the daemon
    did not expect)."""
    from peerit.daemon.control import control_factory
    from peerit.daemon.service import Daemon
    daemon = Daemon(Clock(), str(tmp_path / "d"), f"unix:{tmp_path}/c.sock")
    daemon.node.peer_id = b"\x01" * 32
    daemon.peers.listen_port = 1
    factory = control_factory(daemon.operations)
    known = set(commands.ERRORS.values())
    counts = {"boxes": 0, "answers": 0, "errors": {}, "unhandled": 0, "dropped": 0}
    unhandled = []
    for data in amp_boxes(random.Random(5), pick(2000, 100_000)):
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        counts["boxes"] += 1
        try:
            protocol.dataReceived(data)
        except Exception:
            # Not AMP at all (an empty or keyless box, a bad length): the reactor would log
            # it and drop the connection; the daemon is unaffected.
            counts["dropped"] += 1
        out = transport.value()
        for box in amp.parse(io.BytesIO(out)) if out else ():
            counts["answers"] += 1
            code = box.get(b"_error_code")
            if code is not None:
                counts["errors"][code.decode()] = counts["errors"].get(code.decode(), 0) + 1
                description = box.get(b"_error_description", b"")
                if code == b"UNHANDLED" and description.startswith(b"Unhandled Command"):
                    continue  # a command name that does not exist: AMP's own clear answer
                if code not in known:
                    counts["unhandled"] += 1
                    if len(unhandled) < 5:
                        unhandled.append((data[:120], box.get(b"_error_description")))
        protocol.connectionLost(Failure(ConnectionDone()))
    assert counts["unhandled"] == 0, unhandled
    figures.update(counts)


# -- over the network --------------------------------------------------------------------------

def _send_quietly(sock, data: bytes) -> bool:
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False


def _framed(rng: random.Random, data: bytes) -> bytes:
    """Most inputs framed correctly, some raw (broken framing is an input too)."""
    return framing.frame(data) if rng.random() < 0.85 else data


def test_running_tracker_stun_and_daemon_keep_serving_under_fuzzed_traffic(
        swarm, tmp_path, figures):
    n_tracker = pick(300, 10_000)
    n_daemon = pick(300, 10_000)
    n_after_handshake = pick(20, 300)
    n_udp = pick(3000, 100_000)
    rng = random.Random(7)
    src = random_file(tmp_path / "src" / "fz.bin", 2 * MiB, seed=41)
    swarm.start_daemon("seed")
    s = share(swarm, "seed", src)
    info_hash = bytes.fromhex(s["info_hash"])
    address = TrackerAddress.parse(swarm.tracker_endpoint)
    client = BlockingTlsClient(Identity.generate(), str(tmp_path / "fz"))
    sent = {"tracker": 0, "daemon_handshake": 0, "daemon_attached": 0, "udp": 0}

    tracker_inputs = Mutator(SEEDS["tracker"](), 71)
    sock = None
    for _ in range(n_tracker):
        if sock is None:
            sock = client.connect(address.host, address.port)
            sock.sendall(framing.frame(tracker.build(tracker.Hello(tcp_port=1))))
        if not _send_quietly(sock, _framed(rng, next(tracker_inputs))):
            sock.close()
            sock = None
            continue
        sent["tracker"] += 1
        if rng.random() < 0.1:
            sock.close()
            sock = None
    if sock is not None:
        sock.close()

    port = _daemon_port(swarm, "seed")
    peer_inputs = Mutator(SEEDS["peer"](), 72)
    for _ in range(n_daemon):
        try:
            with client.connect("127.0.0.1", port) as conn:
                _send_quietly(conn, _framed(rng, next(peer_inputs)))
                sent["daemon_handshake"] += 1
        except (OSError, ValueError):
            continue
    for i in range(n_after_handshake):
        # A fresh identity each time: the daemon bans a peer that breaks the protocol.
        attacker = BlockingTlsClient(Identity.generate(), str(tmp_path / f"fa{i % 3}"))
        session = announce_blocking(attacker, address, info_hash, tcp_port=1)
        try:
            with attacker.connect("127.0.0.1", port) as conn:
                conn.sendall(framing.frame(peer.build(peer.Handshake(
                    peer.PROTOCOL_VERSION, info_hash, attacker.identity.peer_id))))
                read_frame(conn, peer.MAX_FRAME_SIZE, timeout=5)  # its handshake
                for _ in range(rng.randrange(1, 30)):
                    if not _send_quietly(conn, _framed(rng, next(peer_inputs))):
                        break
                    sent["daemon_attached"] += 1
        except (OSError, ValueError):
            pass
        finally:
            session.close()

    stun_port = _stun_port(swarm)
    daemon_udp = _daemon_udp_port(swarm, "seed")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inputs = Mutator(SEEDS["stun"]() + SEEDS["probe"](), 73, max_size=1400)
    for target, key in ((stun_port, "udp"), (daemon_udp, "daemon_udp")):
        if not target:
            continue
        sent[key] = 0
        for i in range(n_udp):
            udp.sendto(next(inputs), ("127.0.0.1", target))
            sent[key] += 1
            if i % 200 == 0:
                time.sleep(0.01)  # stay under the socket buffer: we test parsing, not loss
    udp.close()

    # Everybody still serves: the tracker lists the seeder, the STUN port answers a real
    # Binding request, and a new daemon downloads the share byte for byte.
    assert swarm.tracker_process.alive() and swarm.daemons["seed"].process.alive()
    if stun_port:
        assert _stun_answers(stun_port)
    swarm.start_daemon("dl")
    swarm.ctl("dl", "download", s["metainfo"], "--to", str(tmp_path / "out"), "--detach")
    swarm.wait_complete("dl", s["info_hash"], timeout=120)
    assert (tmp_path / "out" / "fz.bin").read_bytes() == src.read_bytes()
    for log in (swarm.tracker_process.log(), swarm.daemons["seed"].process.log()):
        assert "Unhandled Error" not in log and "Traceback" not in log, log[-3000:]
    figures.update({"sent": sent, "stun_port_tested": bool(stun_port),
                    "daemon_udp_tested": bool(daemon_udp),
                    "tracker_alive": True, "daemon_alive": True, "crashes": 0})


def _daemon_port(swarm, name: str) -> int:
    log = swarm.daemons[name].process.log()
    marker = "listening for peers on port "
    return int(log[log.index(marker) + len(marker):].split()[0].rstrip(","))


def _daemon_udp_port(swarm, name: str) -> int | None:
    """The daemon's UDP socket (STUN client, punching, QUIC), or None if it has none."""
    log = swarm.daemons[name].process.log()
    marker = "UDP socket for STUN, punching and QUIC on port "
    if marker not in log:
        return None
    return int(log[log.index(marker) + len(marker):].split()[0].rstrip(","))


def _relay_port(swarm) -> int | None:
    log = swarm.tracker_process.log()
    marker = "peer-it relay listening on tcp "
    if marker not in log:
        return None
    return int(log[log.index(marker) + len(marker):].split()[0].rsplit(":", 1)[1])


def _stun_port(swarm) -> int | None:
    """The tracker's STUN port, from its log (None when this tracker has no STUN service)."""
    log = swarm.tracker_process.log()
    marker = "STUN listening on udp "
    if marker not in log:
        return None
    return int(log[log.index(marker) + len(marker):].split()[0].rsplit(":", 1)[1])


def _stun_answers(port: int) -> bool:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(1.0)
    try:
        # Padded as our client pads (the tracker never answers with more than it got).
        request = stun.build(stun.StunMessage(stun.BINDING_REQUEST, os.urandom(12),
                                              (stun.padding(64),)))
        for _ in range(5):
            udp.sendto(request, ("127.0.0.1", port))
            try:
                reply, _ = udp.recvfrom(2048)
                return stun.parse(reply).type == stun.BINDING_SUCCESS
            except socket.timeout:
                continue
        return False
    finally:
        udp.close()
