"""The UDP multiplexer's batched reads and writes (GRO/GSO where Linux has them) on a real
loopback socket, without a reactor: the test calls the reader itself."""

import pytest
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from peerit.nat.udp import DatagramKind, UdpMux
from tests.unit.test_udp_mux import PROBE, STUN_REQUEST

pytestmark = pytest.mark.integration


class SocketPort:
    """The bits of a Twisted udp.Port the mux's reader and writer use, on a real loopback
    socket (no reactor: the test calls doRead itself)."""

    maxPacketSize = 8192

    def __init__(self):
        import socket
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.setblocking(False)

    def doRead(self):
        raise AssertionError("the mux should have installed its own reader")


class BatchedSocketTests(SynchronousTestCase):
    """startProtocol puts GRO reads and GSO writes on the mux's socket: QUIC datagrams go
    straight to the QUIC handler, the rest through the classification as before."""

    def setUp(self):
        import socket
        self.clock = task.Clock()
        self.mux = UdpMux(self.clock)
        self.port = SocketPort()
        self.addCleanup(self.port.socket.close)
        self.mux.makeConnection(self.port)
        self.addCleanup(self.mux.doStop)
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind(("127.0.0.1", 0))
        self.peer.settimeout(2.0)
        self.addCleanup(self.peer.close)
        self.got = {kind: [] for kind in DatagramKind}
        for kind in DatagramKind:
            self.mux.set_handler(kind, lambda d, a, kind=kind: self.got[kind].append(d))

    def test_reads_dispatch_each_kind_and_drop_garbage(self):
        address = self.port.socket.getsockname()
        quic = [bytes([0x41]) + bytes([n]) * 1200 for n in range(20)]
        for datagram in [STUN_REQUEST, *quic, PROBE, b"\x00garbage"]:
            self.peer.sendto(datagram, address)
        self.port.doRead()
        self.assertEqual(self.got[DatagramKind.QUIC], quic)  # in order, cut back apart
        self.assertEqual(self.got[DatagramKind.STUN], [STUN_REQUEST])
        self.assertEqual(self.got[DatagramKind.PROBE], [PROBE])
        self.assertEqual(self.mux.received[DatagramKind.QUIC], 20)
        self.assertEqual(self.mux.dropped, 1)

    def test_a_quic_handler_with_a_batch_counterpart_gets_whole_reads(self):
        """A handler whose object has ``datagrams_received`` (a QuicEndpoint) gets a read's
        QUIC datagrams in one call, in order, and they are counted."""
        class Endpoint:
            def __init__(self):
                self.single, self.batches = [], []

            def datagram_received(self, data, addr):
                self.single.append(data)

            def datagrams_received(self, datagrams, addr):
                self.batches.append(list(datagrams))
        endpoint = Endpoint()
        self.mux.set_handler(DatagramKind.QUIC, endpoint.datagram_received)
        quic = [bytes([0x41]) + bytes([n]) * 1200 for n in range(20)]
        for datagram in quic:
            self.peer.sendto(datagram, self.port.socket.getsockname())
        self.port.doRead()
        self.assertEqual([d for batch in endpoint.batches for d in batch] + endpoint.single,
                         quic)
        self.assertEqual(self.mux.received[DatagramKind.QUIC], 20)
        if self.mux.transport.doRead.coalescing and len(endpoint.batches) > 0:
            self.assertGreater(max(len(batch) for batch in endpoint.batches), 1)

    def test_send_many_delivers_a_burst_in_order(self):
        burst = [bytes([0x41]) + bytes([n]) * 1000 for n in range(10)] + [b"\x41short"]
        self.assertEqual(self.mux.send_many(burst, self.peer.getsockname()), 0)
        received = [self.peer.recv(4096) for _ in burst]
        self.assertEqual(received, burst)
