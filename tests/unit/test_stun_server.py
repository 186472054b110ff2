"""The tracker's STUN service glue: option parsing, two ports sharing one responder."""

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from peerit.errors import UsageError
from peerit.tracker.stun_server import stun_protocols, stun_services
from peerit.wire import stun

CLIENT = ("198.18.0.11", 40000)


class FakeDatagramTransport:
    def __init__(self, port):
        self.port = port
        self.written = []

    def write(self, data, addr):
        self.written.append((data, addr))

    def getHost(self):
        from twisted.internet.address import IPv4Address
        return IPv4Address("UDP", "198.18.0.1", self.port)


def request(*attributes):
    # Padded as our client pads: the responder never answers with more than it got.
    return stun.build(stun.StunMessage(stun.BINDING_REQUEST, b"r" * 12,
                                       attributes + (stun.padding(64),)))


class StunServicesTests(SynchronousTestCase):
    def test_services_for_both_ports(self):
        services = stun_services("udp:3478:interface=127.0.0.1", 3479, clock=task.Clock())
        self.assertEqual([s.args[0] for s in services], [3478, 3479])
        self.assertEqual([s.kwargs["interface"] for s in services], ["127.0.0.1"] * 2)
        self.assertEqual(len(stun_services("udp:3478", 0, clock=task.Clock())), 1)
        with self.assertRaises(UsageError):
            stun_services("udp:3478", 3478, clock=task.Clock())


class ProtocolTests(SynchronousTestCase):
    def setUp(self):
        self.primary, self.alternate = stun_protocols(task.Clock(), with_alternate=True)
        self.primary.makeConnection(FakeDatagramTransport(3478))
        self.alternate.makeConnection(FakeDatagramTransport(3479))

    def test_answer_goes_back_from_the_port_asked(self):
        self.primary.datagramReceived(request(), CLIENT)
        [(data, addr)] = self.primary.transport.written
        self.assertEqual(addr, CLIENT)
        self.assertEqual(stun.mapped_address(stun.parse(data)), CLIENT)
        self.assertEqual(self.alternate.transport.written, [])

    def test_change_port_answer_leaves_from_the_other_port(self):
        self.primary.datagramReceived(request(stun.change_request(change_port=True)), CLIENT)
        self.assertEqual(self.primary.transport.written, [])
        [(data, addr)] = self.alternate.transport.written
        self.assertEqual((stun.parse(data).type, addr), (stun.BINDING_SUCCESS, CLIENT))

    def test_garbage_gets_no_answer(self):
        self.primary.datagramReceived(b"\x00\x01\x00\x00garbage-garbage-xx", CLIENT)
        self.primary.datagramReceived(b"", CLIENT)
        self.assertEqual(self.primary.transport.written, [])

    def test_both_ports_share_one_rate_limit(self):
        for _ in range(15):
            self.primary.datagramReceived(request(), CLIENT)
            self.alternate.datagramReceived(request(), CLIENT)
        answered = len(self.primary.transport.written) + len(self.alternate.transport.written)
        self.assertEqual(answered, 20)
