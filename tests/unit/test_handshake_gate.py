"""The bound on TLS handshakes in progress: oldest dropped, finished ones no longer count."""

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from peerit.identity import Identity
from peerit.tls import HandshakeGate, server_factory


class Transport(StringTransport):
    def __init__(self, host):
        from twisted.internet.address import IPv4Address
        super().__init__(peerAddress=IPv4Address("TCP", host, 1234))
        self.aborted = False

    def abortConnection(self):
        self.aborted = True


class GateTests(SynchronousTestCase):
    def setUp(self):
        self.gate = HandshakeGate(total=4, per_source=2)
        self.factory = server_factory(Identity.generate(), Factory.forProtocol(Protocol),
                                      gate=self.gate)

    def connect(self, host):
        protocol = self.factory.buildProtocol(None)
        transport = Transport(host)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_per_source_cap_drops_that_sources_oldest(self):
        first = self.connect("10.0.0.1")
        self.connect("10.0.0.1")
        self.connect("10.0.0.2")
        self.connect("10.0.0.1")
        self.assertTrue(first[1].aborted)
        self.assertEqual(self.gate.pending, 3)

    def test_total_cap_drops_the_oldest_anywhere(self):
        connections = [self.connect(f"10.0.0.{i}") for i in range(5)]
        self.assertEqual([t.aborted for _, t in connections],
                         [True, False, False, False, False])
        self.assertEqual(self.gate.pending, 4)
        self.assertEqual(self.gate.evicted, 1)

    def test_closed_connections_free_their_slot(self):
        protocol, transport = self.connect("10.0.0.9")
        from twisted.python.failure import Failure
        from twisted.internet.error import ConnectionDone
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.gate.pending, 0)
