"""The daemon's TrackerClient against the real tracker logic, in memory (iosim, real TLS)."""

import random

from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from peerit.addresses import TrackerAddress
from peerit.errors import PeeritError, TimedOut
from peerit.identity import Identity
from peerit.daemon.tracker_client import TrackerClient, TrackerRefused, TrackerUnavailable
from peerit.tracker.protocol import tls_factory
from peerit.tracker.session import Limits, Tracker
from peerit.tracker.store import MemorySwarmStore
from peerit.wire import tracker as wire

TRACKER_ID = Identity.generate("tracker")
IDENTITIES = [Identity.generate(f"daemon{n}") for n in range(3)]
SWARM = b"S" * 32


@implementer(IStreamClientEndpoint)
class InMemoryEndpoint:
    """Connects each attempt to the tracker through an iosim pump (or refuses it)."""

    def __init__(self, harness, source_host):
        self.harness = harness
        self.source_host = source_host
        self.refusing = False
        self.attempts = 0
        self.pumps = []

    def connect(self, factory):
        self.attempts += 1
        if self.refusing:
            return fail(ConnectionRefusedError())
        port = 40000 + self.attempts
        client = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 59000))
        server = self.harness.server_factory.buildProtocol(None)
        pump = connect(
            server, FakeTransport(server, True, IPv4Address("TCP", "192.0.2.1", 59000),
                                  IPv4Address("TCP", self.source_host, port)),
            client, FakeTransport(client, False, IPv4Address("TCP", self.source_host, port),
                                  IPv4Address("TCP", "192.0.2.1", 59000)),
            greet=False, clock=self.harness.clock)
        self.pumps.append(pump)
        return succeed(client)


class Daemon:
    """One TrackerClient with what its daemon would give it."""

    def __init__(self, harness, n, pin=None, shares=(), **kwargs):
        self.pushed = []
        self.shares = dict(shares)
        self.endpoint = InMemoryEndpoint(harness, f"198.51.100.{n + 1}")
        self.identity = IDENTITIES[n]
        address = TrackerAddress("192.0.2.1", 59000, pin or TRACKER_ID.peer_id)
        self.client = TrackerClient(
            harness.clock, self.identity, address,
            hello=lambda: wire.Hello(7000 + n, 7100 + n, (f"10.0.0.{n + 1}",)),
            announces=lambda: [wire.Announce(h, "started", left)
                               for h, left in self.shares.items()],
            on_push=self.pushed.append, endpoint=self.endpoint,
            retry_policy=lambda attempt: 1.0, **kwargs)
        harness.daemons.append(self)


class ClientTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.tracker = Tracker(self.clock, MemorySwarmStore(random.Random(2)),
                               Limits(idle_timeout=30), random.Random(2))
        self.server_factory = tls_factory(TRACKER_ID, self.tracker)
        self.daemons = []

    def tearDown(self):
        for daemon in self.daemons:
            if daemon.client.running:
                daemon.client.stopService()
        self.flush()

    def flush(self):
        """Move bytes on every connection until none moves (one may wake another)."""
        for _ in range(100):
            moved = [pump.flush() for daemon in self.daemons for pump in daemon.endpoint.pumps]
            if not any(moved):
                return
        self.fail("connections never went quiet")

    def run_for(self, seconds, step=1.0):
        for _ in range(int(seconds / step)):
            self.clock.advance(step)
            self.flush()

    def start(self, n, **kwargs):
        daemon = Daemon(self, n, **kwargs)
        daemon.client.startService()
        self.flush()
        return daemon

    def answer(self, d):
        self.flush()
        return self.result_of(d)

    def result_of(self, d):
        results = []
        d.addBoth(results.append)
        self.assertEqual(len(results), 1, "deferred has not fired")
        return results[0]


class ConnectTests(ClientTestCase):
    def test_connects_says_hello_and_replays_its_announces(self):
        d = self.start(0, shares={SWARM: 0})
        self.assertTrue(d.client.connected)
        self.assertIs(self.result_of(d.client.when_connected()), d.client)
        self.assertEqual(d.client.public_address, wire.Endpoint("198.51.100.1", 40001))
        self.assertEqual(d.client.peer_id, d.identity.peer_id)
        other = self.start(1)
        [peer] = self.answer(other.client.request_peers(SWARM, 10))
        self.assertEqual(peer, wire.PeerInfo(d.identity.peer_id, True, 7000, 7100,
                                             "198.51.100.1", ("10.0.0.1",)))

    def test_announce_is_sent_at_once_when_connected_and_refused_otherwise(self):
        d = self.start(0)
        watcher = self.start(1)
        self.assertTrue(d.client.announce(SWARM, "started", 5))
        self.flush()
        self.assertEqual(len(self.answer(watcher.client.request_peers(SWARM))), 1)
        self.assertTrue(d.client.announce(SWARM, "stopped", 5))
        self.flush()
        self.assertEqual(self.answer(watcher.client.request_peers(SWARM)), [])
        d.client.stopService()
        self.flush()
        self.assertFalse(d.client.announce(SWARM, "started", 5))

    def test_a_wrong_pin_never_gets_a_session(self):
        d = self.start(0, pin=IDENTITIES[2].peer_id)
        self.assertFalse(d.client.connected)
        waiting = d.client.when_connected(timeout=5)
        self.run_for(5)
        self.result_of(waiting).trap(TimedOut)
        self.assertEqual(self.tracker.connected_peers(), [])
        self.assertGreater(d.endpoint.attempts, 1, "it keeps retrying with backoff")

    def test_a_tracker_address_without_fingerprint_is_refused(self):
        with self.assertRaises(PeeritError):
            TrackerClient(self.clock, IDENTITIES[0], TrackerAddress("192.0.2.1", 59000),
                          hello=lambda: wire.Hello(1), announces=list, on_push=print)


class RequestTests(ClientTestCase):
    def test_ping_measures_the_round_trip_on_the_clock(self):
        d = self.start(0)
        rtt = d.client.ping()
        self.clock.advance(0.25)
        self.flush()
        self.assertEqual(self.result_of(rtt), 0.25)

    def test_a_request_waits_for_a_session_within_its_timeout(self):
        d = Daemon(self, 0, request_timeout=4)
        d.endpoint.refusing = True
        d.client.startService()
        answer = d.client.request_peers(SWARM)
        self.run_for(4)
        self.result_of(answer).trap(TimedOut)

    def test_a_request_made_before_connecting_is_answered_once_connected(self):
        d = Daemon(self, 0, request_timeout=10)
        d.endpoint.refusing = True
        d.client.startService()
        answer = d.client.request_peers(SWARM)
        d.endpoint.refusing = False
        self.run_for(3)
        self.assertEqual(self.result_of(answer), [])

    def test_a_refused_request_fails_with_the_trackers_error(self):
        self.tracker.limits = Limits(idle_timeout=30, request_burst=1, request_rate=0.01)
        d = self.start(0)
        first = d.client.request_peers(SWARM)
        second = d.client.request_peers(SWARM)
        self.flush()
        self.assertEqual(self.result_of(first), [])
        failure = self.result_of(second)
        failure.trap(TrackerRefused)
        self.assertEqual(failure.value.error.code, "rate_limited")
        self.assertTrue(d.client.connected)

    def test_pending_requests_fail_when_the_session_drops(self):
        d = self.start(0)
        answer = d.client.request_peers(SWARM)
        d.endpoint.pumps[-1].clientIO.abortConnection()
        self.flush()
        self.result_of(answer).trap(TrackerUnavailable)

    def test_pushes_reach_the_push_handler(self):
        a = self.start(0, shares={SWARM: 10})
        b = self.start(1)
        b.client.announce(SWARM, "started", 10)
        self.flush()
        [joined] = a.pushed
        self.assertEqual((joined.info_hash, joined.peer.peer_id),
                         (SWARM, b.identity.peer_id))


class LivenessTests(ClientTestCase):
    def test_keepalives_hold_a_quiet_session_for_good(self):
        d = self.start(0, shares={SWARM: 1})
        session = self.tracker.session_of(d.identity.peer_id)
        self.run_for(300)
        self.assertIs(self.tracker.session_of(d.identity.peer_id), session)
        self.assertEqual(d.endpoint.attempts, 1)

    def test_a_dropped_session_is_reopened_and_announces_replayed(self):
        d = self.start(0, shares={SWARM: 1})
        watcher = self.start(1)
        self.tracker.session_of(d.identity.peer_id).fail("internal", "test drop")
        self.flush()
        self.assertFalse(d.client.connected)
        self.assertEqual(self.answer(watcher.client.request_peers(SWARM)), [])
        self.run_for(2)
        self.assertTrue(d.client.connected)
        self.assertEqual(d.endpoint.attempts, 2)
        [peer] = self.answer(watcher.client.request_peers(SWARM))
        self.assertEqual(peer.peer_id, d.identity.peer_id)

    def test_a_tracker_gone_silent_is_left_and_reconnected(self):
        d = self.start(0)
        pump = d.endpoint.pumps[-1]
        pump.serverIO.bufferReceived = lambda data: None   # the tracker hears nothing more
        pump.serverIO.write = lambda data: None            # and says nothing more
        self.run_for(29)
        self.assertEqual(d.endpoint.attempts, 1)
        self.run_for(3)
        self.assertGreaterEqual(d.endpoint.attempts, 2)
        self.assertTrue(d.client.connected)
