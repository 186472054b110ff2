"""QUIC peer links over two real UDP sockets on 127.0.0.1 (one reactor): a few MiB intact
with both identities pinned, and a wrong pin refused, on the real clock and socket path; with
UDP segmentation offload (GSO/GRO, where the kernel has it) and without."""

import hashlib
import random

from twisted.internet import defer, error, reactor
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from peerit.errors import IdentityMismatch
from peerit.identity import Identity
from peerit.nat.quic import QuicEndpoint, QuicHandshakeFailed, QuicSettings
from peerit.nat.udp import DatagramKind, UdpMux

SETTINGS = QuicSettings(max_datagram_size=1452, handshake_timeout=5.0)


class QuicSocket:
    """A UDP socket carrying QUIC: the daemon's mux with a QUIC endpoint on it."""

    def __init__(self, identity, segmentation: bool):
        self.mux = UdpMux(reactor, segmentation=segmentation)
        self.endpoint = QuicEndpoint(identity, self.mux.send, reactor, SETTINGS,
                                     send_many=self.mux.send_many)
        self.mux.set_handler(DatagramKind.QUIC, self.endpoint.datagram_received)


class Sink(Protocol):
    def __init__(self):
        self.digest = hashlib.sha256()
        self.size = 0
        self.done = defer.Deferred()

    def dataReceived(self, data):
        self.digest.update(data)
        self.size += len(data)

    def connectionLost(self, reason):
        self.reason = reason
        self.done.callback(None)


class QuicLoopbackTests(TestCase):
    timeout = 60
    segmentation = True

    def setUp(self):
        self.ids = Identity.generate("a"), Identity.generate("b")
        self.sockets = [QuicSocket(identity, self.segmentation) for identity in self.ids]
        self.ports = [reactor.listenUDP(0, sock.mux, interface="127.0.0.1")
                      for sock in self.sockets]
        for sock, port in zip(self.sockets, self.ports):
            sock.endpoint.host = port.getHost()
        self.addrs = [("127.0.0.1", port.getHost().port) for port in self.ports]

    def tearDown(self):
        for proto in self.sockets:
            proto.endpoint.close()
        return defer.gatherResults([port.stopListening() for port in self.ports])

    @defer.inlineCallbacks
    def test_few_mib_transfer_intact_with_identities_pinned(self):
        a, b = self.sockets
        sink = Sink()
        accepted = b.endpoint.accept_from(self.addrs[0], [self.ids[0].peer_id], lambda pid: sink)
        sender = yield a.endpoint.connect(self.addrs[1], self.ids[1].peer_id,
                                          lambda pid: Protocol())
        receiver = yield accepted
        conn = a.endpoint._links[self.addrs[1]][0].conn
        self.assertIs(receiver, sink)
        self.assertEqual(sender.transport.peer_id, self.ids[1].peer_id)
        self.assertEqual(sink.transport.peer_id, self.ids[0].peer_id)
        payload = random.Random(5).randbytes(6 * 1024 * 1024)
        for offset in range(0, len(payload), 256 * 1024):
            sender.transport.write(payload[offset:offset + 256 * 1024])
        sender.transport.loseConnection()
        yield sink.done
        sink.reason.trap(error.ConnectionDone)
        self.assertEqual(sink.size, len(payload))
        self.assertEqual(sink.digest.hexdigest(), hashlib.sha256(payload).hexdigest())
        # the bulk fast path built most packets (6 MiB is ~4500 of them)
        self.assertGreater(conn.fast_sent, 2000)
        writer, reader = a.mux._writer, self.ports[1].doRead
        self.assertGreater(writer.datagrams, 4000)
        if self.segmentation and writer.segmentation:
            # bursts went out in far fewer syscalls than datagrams
            self.assertLess(writer.syscalls, writer.datagrams // 2)
        elif not self.segmentation:
            self.assertEqual(writer.syscalls, writer.datagrams)
            self.assertFalse(reader.coalescing)

    @defer.inlineCallbacks
    def test_wrong_pin_is_refused_on_real_sockets(self):
        a, b = self.sockets
        made = []
        accepted = b.endpoint.accept_from(self.addrs[0], [self.ids[0].peer_id],
                                          lambda pid: made.append(pid) or Protocol())
        stranger = Identity.generate("stranger").peer_id
        with self.assertRaises(IdentityMismatch):
            yield a.endpoint.connect(self.addrs[1], stranger, lambda pid: Protocol())
        with self.assertRaises(QuicHandshakeFailed):
            yield accepted
        self.assertEqual(made, [])


class QuicLoopbackWithoutSegmentationTests(QuicLoopbackTests):
    """The same over one datagram per syscall (hosts without UDP GSO/GRO)."""
    segmentation = False
