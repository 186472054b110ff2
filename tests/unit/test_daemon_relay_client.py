"""The relay client (peerit.daemon.nat.relay_client) against an in-memory relay: the hello it sends,
TLS end to end inside the splice with the initiator pinning the other peer, refusals."""

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from peerit.daemon.connector import NoPath
from peerit.identity import Identity
from peerit.daemon.nat.relay_client import (
    RELAY_PREAMBLE, accept_through_relay, dial_through_relay, relay_address, relay_hello)
from peerit.testing.datagrams import run_until
from peerit.testing.fake_internet import FakeRelay, ProbeLink
from peerit.wire import tracker as wire

INITIATOR = Identity.generate("initiator")
ACCEPTOR = Identity.generate("acceptor")
STRANGER = Identity.generate("stranger")
RELAY = ("192.0.2.7", 59001)
TOKEN = bytes(range(32))


class RelayClientTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.relay = FakeRelay(self.clock, *RELAY)

    def accept(self, identity=ACCEPTOR, token=TOKEN):
        made = []

        def inbound():
            link = ProbeLink("relay", greeting=b"from acceptor")
            made.append(link)
            return link
        connected = []
        accept_through_relay(self.relay.connect_tcp, *RELAY, token, identity, inbound,
                             clock=self.clock).addBoth(connected.append)
        return made, connected

    def dial(self, pin=ACCEPTOR.peer_id, token=TOKEN, identity=INITIATOR):
        results = []

        def make_link(on_ready, on_failed):
            return ProbeLink("relay", on_ready, on_failed, greeting=b"from initiator")
        dial_through_relay(self.relay.connect_tcp, *RELAY, token, identity, pin, make_link,
                           clock=self.clock).addBoth(results.append)
        return results

    def test_hello_is_preamble_and_token(self):
        self.assertEqual(relay_hello(TOKEN), b"PEERIT-RELAY\x01" + TOKEN)
        self.assertRaises(ValueError, relay_hello, b"short")

    def test_tls_end_to_end_through_the_splice(self):
        """Both present the token, the relay splices them, and TLS inside proves both
        identities: the initiator's link is ready with the acceptor's id, the acceptor's
        link learns the initiator's id from its client certificate, and data flows."""
        made, connected = self.accept()
        results = self.dial()
        run_until(self.clock, lambda: results and made and made[0].received, 5)
        self.assertEqual(self.relay.spliced, 1)
        link = results[0]
        self.assertIsInstance(link, ProbeLink)
        self.assertEqual(link.peer_id, ACCEPTOR.peer_id)
        self.assertIs(connected[0], made[0])
        self.assertEqual(made[0].peer_id, INITIATOR.peer_id)
        self.assertEqual(made[0].received, b"from initiator")
        run_until(self.clock, lambda: link.received, 1)
        self.assertEqual(link.received, b"from acceptor")
        # What crossed the relay after the hellos was TLS: never the plaintext.
        for conn in self.relay.connections:
            self.assertTrue(conn.transport.written > len(RELAY_PREAMBLE) + 32)

    def test_initiator_refuses_another_key(self):
        """The other end of the splice proves a key other than the pinned one: no link."""
        made, _ = self.accept(identity=STRANGER)
        results = self.dial()
        run_until(self.clock, lambda: bool(results), 5)
        self.assertTrue(results[0].check(NoPath))
        self.assertIsNone(made[0].peer_id)
        self.assertEqual(made[0].received, b"")

    def test_relay_refusing_the_connection_fails_the_dial(self):
        self.relay.port = 1  # nothing listens where the offer says
        results = self.dial()
        run_until(self.clock, lambda: bool(results), 5)
        self.assertTrue(results[0].check(NoPath))

    def test_lone_peer_waits_and_is_bounded_by_cancel(self):
        """With nobody on the other side nothing is ready; cancelling the dial ends it."""
        results = []

        def make_link(on_ready, on_failed):
            return ProbeLink("relay", on_ready, on_failed)
        d = dial_through_relay(self.relay.connect_tcp, *RELAY, TOKEN, INITIATOR,
                               ACCEPTOR.peer_id, make_link, clock=self.clock)
        d.addBoth(results.append)
        self.clock.advance(1)
        self.assertEqual(results, [])
        d.cancel()
        self.clock.advance(1)
        self.assertEqual(len(results), 1)
        self.assertTrue(self.relay.connections[0].transport.closed)


class RelayAddressTests(SynchronousTestCase):
    def test_the_offers_host_else_the_trackers(self):
        """An offer naming a host (a relay on another tracker host) is dialed there; one
        naming none at its tracker's host, as single-host trackers always send."""
        named = wire.RelayOffer(bytes(32), bytes(32), bytes(32), True, 59002, "192.0.2.9")
        plain = wire.RelayOffer(bytes(32), bytes(32), bytes(32), False, 59001)
        self.assertEqual(relay_address(named, "127.0.0.1"), ("192.0.2.9", 59002))
        self.assertEqual(relay_address(plain, "127.0.0.1"), ("127.0.0.1", 59001))
