"""The tracker's NAT traversal logic: NAT reports, punch coordination, relay offers.

Sessions are driven as in test_tracker_session.py (fake links, ``task.Clock``); attempt ids,
nonces and tokens come from an injected counter so each test knows the exact bytes.
"""

import itertools
import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from peerit.tracker.nat import NatCoordinator, NatLimits
from peerit.tracker.relay import RelayBroker, RelayLimits
from peerit.tracker.session import ACTIVE, Limits, Tracker
from peerit.tracker.store import MemorySwarmStore
from peerit.wire import tracker as wire

from test_tracker_session import SWARM, OTHER_SWARM, Peer, peer_id

PUNCH_OP = wire.messages.opcode_of(wire.PunchRequest)
RELAY_OP = wire.messages.opcode_of(wire.RelayRequest)


class CountingBytes:
    """``random_bytes`` for tests: 0x01 0x01 ..., then 0x02 0x02 ..., and so on."""

    def __init__(self):
        self.counter = itertools.count(1)
        self.made = []

    def __call__(self, n):
        data = bytes([next(self.counter) % 256]) * n
        self.made.append(data)
        return data


class NatTestCase(SynchronousTestCase):
    def make(self, relay=True, nat_limits=NatLimits(), relay_limits=RelayLimits(), **limits):
        self.clock = Clock()
        self.tracker = Tracker(self.clock, MemorySwarmStore(random.Random(3)), Limits(**limits),
                               random.Random(3))
        self.tracker.stun_info = wire.StunInfo(3478, 3479, 59001 if relay else 0)
        self.random = CountingBytes()
        self.broker = RelayBroker(self.clock, relay_limits, self.random) if relay else None
        self.nat = NatCoordinator(self.tracker, self.broker, nat_limits, self.random)
        self.peers = []

    def peer(self, number, host, lan=("192.168.1.5",), udp_port=40000, swarms=(SWARM,)):
        p = Peer(self.tracker, number, host=host, port=50000 + number,
                 hello=wire.Hello(6881, udp_port, lan))
        for info_hash in swarms:
            p.announce(info_hash)
        self.peers.append(p)
        for each in self.peers:   # PeerJoined pushes and greetings are not what we test
            each.link.take()
        return p

    def refusal(self, p, code, opcode=PUNCH_OP, info_hash=SWARM, inbox=None):
        inbox = p.link.take() if inbox is None else inbox
        [error] = [m for m in inbox if type(m) is wire.Error]
        self.assertEqual((error.code, error.refused_opcode, error.info_hash),
                         (code, opcode, info_hash))
        self.assertEqual(p.session.state, ACTIVE, "a refusal keeps the session")
        return error


class StunInfoTests(NatTestCase):
    def test_welcome_is_followed_by_the_stun_and_relay_ports(self):
        self.make()
        a = Peer(self.tracker, 1)
        self.assertEqual([type(m) for m in a.link.inbox], [wire.Welcome, wire.StunInfo])
        self.assertEqual(a.link.take(wire.StunInfo), [wire.StunInfo(3478, 3479, 59001)])

    def test_a_tracker_without_nat_ports_sends_only_welcome(self):
        tracker = Tracker(Clock(), MemorySwarmStore())
        a = Peer(tracker, 1)
        self.assertEqual([type(m) for m in a.link.take()], [wire.Welcome])

    def test_daemons_may_not_send_tracker_only_nat_messages(self):
        self.make()
        a = self.peer(1, "198.51.100.1")
        a.send(wire.StunInfo(1, 2, 3))
        self.assertEqual(a.error().code, "protocol_violation")
        self.assertTrue(a.link.closed)


class PunchTests(NatTestCase):
    def setUp(self):
        self.make()
        self.a = self.peer(1, "198.51.100.1", lan=("192.168.1.5",), udp_port=40001)
        self.b = self.peer(2, "203.0.113.2", lan=("10.0.0.7", "fd00::7"), udp_port=40002)

    def test_both_sides_get_the_same_attempt_with_each_others_candidates(self):
        a, b = self.a, self.b
        a.send(wire.NatReport(wire.Endpoint("198.51.100.1", 61001), "independent",
                              "address-and-port"))
        b.send(wire.NatReport(wire.Endpoint("203.0.113.2", 62002), "dependent",
                              "address-and-port"))
        a.send(wire.PunchRequest(SWARM, b.peer_id))
        [to_a] = a.link.take()
        [to_b] = b.link.take()
        attempt_id, nonce = self.random.made
        self.assertEqual((len(attempt_id), len(nonce)), (16, 32))
        self.assertEqual(to_a, wire.Punch(
            attempt_id, nonce, SWARM, b.peer_id, True,
            (wire.PunchCandidate("10.0.0.7", 40002, "lan"),
             wire.PunchCandidate("fd00::7", 40002, "lan"),
             wire.PunchCandidate("203.0.113.2", 62002, "public")), "dependent"))
        self.assertEqual(to_b, wire.Punch(
            attempt_id, nonce, SWARM, a.peer_id, False,
            (wire.PunchCandidate("192.168.1.5", 40001, "lan"),
             wire.PunchCandidate("198.51.100.1", 61001, "public")), "independent"))
        self.assertEqual(self.nat.punches, 1)

    def test_without_a_report_the_public_candidate_is_the_session_address_and_udp_port(self):
        self.a.send(wire.PunchRequest(SWARM, self.b.peer_id))
        [punch] = self.a.link.take()
        self.assertEqual(punch.candidates[-1],
                         wire.PunchCandidate("203.0.113.2", 40002, "public"))
        self.assertEqual(punch.mapping, "unknown")

    def test_each_attempt_has_fresh_secrets(self):
        self.a.send(wire.PunchRequest(SWARM, self.b.peer_id))
        self.b.send(wire.PunchRequest(SWARM, self.a.peer_id))
        [first] = self.a.link.take(wire.Punch)[:1]
        [second] = self.b.link.take(wire.Punch)[1:]
        self.assertTrue(second.controlling)
        self.assertNotEqual(first.attempt_id, second.attempt_id)
        self.assertNotEqual(first.nonce, second.nonce)

    def test_a_report_of_another_address_is_not_handed_out(self):
        """A peer cannot make others probe a third party: the public candidate stays the
        address its session comes from (the mapping it reported still counts)."""
        self.b.send(wire.NatReport(wire.Endpoint("192.0.2.99", 9), "independent", "unknown"))
        self.a.send(wire.PunchRequest(SWARM, self.b.peer_id))
        [punch] = self.a.link.take()
        hosts = [c.host for c in punch.candidates]
        self.assertNotIn("192.0.2.99", hosts)
        self.assertEqual(punch.candidates[-1],
                         wire.PunchCandidate("203.0.113.2", 40002, "public"))
        self.assertEqual(punch.mapping, "independent")

    def test_an_unusable_report_is_forgotten(self):
        self.b.send(wire.NatReport(wire.Endpoint("203.0.113.2", 62002), "dependent"))
        self.b.send(wire.NatReport(wire.Endpoint("0.0.0.0", 62002), "dependent"))
        self.assertIsNone(self.b.session.nat_report)

    def test_a_peer_seen_at_its_lan_address_is_listed_once(self):
        c = self.peer(3, "10.1.1.1", lan=("10.1.1.1",), udp_port=5000)
        self.a.send(wire.PunchRequest(SWARM, c.peer_id))
        [punch] = self.a.link.take()
        self.assertEqual(punch.candidates, (wire.PunchCandidate("10.1.1.1", 5000, "lan"),))

    def test_a_target_that_is_not_connected_is_refused(self):
        self.a.send(wire.PunchRequest(SWARM, peer_id(9)))
        self.refusal(self.a, "peer_unavailable")
        self.b.session.connection_lost()
        self.a.send(wire.PunchRequest(SWARM, self.b.peer_id))
        self.refusal(self.a, "peer_unavailable")

    def test_either_side_outside_the_swarm_is_refused(self):
        c = self.peer(3, "203.0.113.3", swarms=(OTHER_SWARM,))
        self.a.send(wire.PunchRequest(SWARM, c.peer_id))
        self.refusal(self.a, "peer_unavailable")
        c.send(wire.PunchRequest(SWARM, self.a.peer_id))
        self.refusal(c, "peer_unavailable")
        self.a.send(wire.PunchRequest(OTHER_SWARM, c.peer_id))
        self.refusal(self.a, "peer_unavailable", info_hash=OTHER_SWARM)
        self.assertEqual(c.link.take(wire.Punch), [])

    def test_punching_yourself_is_refused(self):
        self.a.send(wire.PunchRequest(SWARM, self.a.peer_id))
        self.refusal(self.a, "peer_unavailable")

    def test_a_target_without_udp_is_refused(self):
        c = self.peer(3, "203.0.113.3", udp_port=0)
        self.a.send(wire.PunchRequest(SWARM, c.peer_id))
        self.refusal(self.a, "peer_unavailable")
        self.assertEqual(c.link.take(), [])

    def test_a_target_whose_reader_stalls_is_refused_and_gets_nothing(self):
        self.b.session.producer_paused()
        self.a.send(wire.PunchRequest(SWARM, self.b.peer_id))
        self.refusal(self.a, "peer_unavailable")
        self.assertEqual(self.b.link.take(), [])

    def test_attempts_per_peer_are_capped_within_the_window(self):
        self.make(nat_limits=NatLimits(max_attempts=3, attempt_window=10.0))
        a = self.peer(1, "198.51.100.1")
        targets = [self.peer(n, f"203.0.113.{n}") for n in range(2, 6)]
        for target in targets[:3]:
            a.send(wire.PunchRequest(SWARM, target.peer_id))
        self.assertEqual(len(a.link.take(wire.Punch)), 3)
        a.send(wire.PunchRequest(SWARM, targets[3].peer_id))
        self.refusal(a, "too_many_attempts")
        self.assertEqual(targets[3].link.take(), [])
        self.clock.advance(10.1)
        a.send(wire.PunchRequest(SWARM, targets[3].peer_id))
        self.assertEqual(len(a.link.take(wire.Punch)), 1)

    def test_a_target_cannot_be_flooded_by_many_requesters(self):
        self.make(nat_limits=NatLimits(max_attempts=2))
        target = self.peer(1, "198.51.100.1")
        requesters = [self.peer(n, f"203.0.113.{n}") for n in range(2, 5)]
        for r in requesters[:2]:
            r.send(wire.PunchRequest(SWARM, target.peer_id))
            self.assertEqual(len(r.link.take(wire.Punch)), 1)
        requesters[2].send(wire.PunchRequest(SWARM, target.peer_id))
        self.refusal(requesters[2], "too_many_attempts")
        self.assertEqual(len(target.link.take(wire.Punch)), 2)

    def test_punch_requests_count_against_the_request_rate(self):
        self.make(request_burst=3, request_rate=1.0)
        a = self.peer(1, "198.51.100.1")   # Hello is free; the announce took a token
        b = self.peer(2, "203.0.113.2")
        a.send(wire.PunchRequest(SWARM, b.peer_id), wire.PunchRequest(SWARM, b.peer_id),
               wire.PunchRequest(SWARM, b.peer_id))
        inbox = a.link.take()
        self.assertEqual([type(m) for m in inbox], [wire.Punch, wire.Punch, wire.Error])
        self.refusal(a, "rate_limited", inbox=inbox)


class RelayOfferTests(NatTestCase):
    def setUp(self):
        self.make()
        self.a = self.peer(1, "198.51.100.1")
        self.b = self.peer(2, "203.0.113.2")

    def test_both_sides_get_the_same_one_time_token_and_the_relay_port(self):
        self.a.send(wire.RelayRequest(SWARM, self.b.peer_id))
        [token] = self.random.made
        self.assertEqual(self.a.link.take(),
                         [wire.RelayOffer(token, SWARM, self.b.peer_id, True, 59001)])
        self.assertEqual(self.b.link.take(),
                         [wire.RelayOffer(token, SWARM, self.a.peer_id, False, 59001)])
        self.assertEqual(self.broker.pending, 1)

    def test_a_tracker_without_relay_refuses(self):
        self.make(relay=False)
        a, b = self.peer(1, "198.51.100.1"), self.peer(2, "203.0.113.2")
        a.send(wire.RelayRequest(SWARM, b.peer_id))
        self.refusal(a, "relay_unavailable", RELAY_OP)
        self.assertEqual(b.link.take(), [])

    def test_relay_requests_are_validated_like_punches(self):
        self.a.send(wire.RelayRequest(SWARM, peer_id(9)))
        self.refusal(self.a, "peer_unavailable", RELAY_OP)
        self.a.send(wire.RelayRequest(OTHER_SWARM, self.b.peer_id))
        self.refusal(self.a, "peer_unavailable", RELAY_OP, OTHER_SWARM)
        self.assertEqual(self.broker.pending, 0)

    def test_a_full_relay_refuses_and_frees_slots_as_tokens_expire(self):
        self.make(relay_limits=RelayLimits(max_sessions=2))
        a = self.peer(1, "198.51.100.1")
        others = [self.peer(n, f"203.0.113.{n}") for n in range(2, 5)]
        for other in others[:2]:
            a.send(wire.RelayRequest(SWARM, other.peer_id))
        a.send(wire.RelayRequest(SWARM, others[2].peer_id))
        inbox = a.link.take()
        self.assertEqual([type(m) for m in inbox], [wire.RelayOffer, wire.RelayOffer, wire.Error])
        self.refusal(a, "relay_unavailable", RELAY_OP, inbox=inbox)
        self.clock.advance(RelayLimits().token_lifetime)
        self.assertEqual(self.broker.pending, 0)
        a.send(wire.RelayRequest(SWARM, others[2].peer_id))
        self.assertEqual(len(a.link.take(wire.RelayOffer)), 1)

    def test_relays_per_peer_are_capped(self):
        self.make(relay_limits=RelayLimits(per_peer=1))
        a, b, c = (self.peer(n, f"203.0.113.{n}") for n in (1, 2, 3))
        a.send(wire.RelayRequest(SWARM, b.peer_id))
        c.send(wire.RelayRequest(SWARM, b.peer_id))
        self.refusal(c, "too_many_attempts", RELAY_OP)

    def test_an_offer_the_target_cannot_get_is_withdrawn(self):
        self.b.session.producer_paused()
        self.a.send(wire.RelayRequest(SWARM, self.b.peer_id))
        self.refusal(self.a, "peer_unavailable", RELAY_OP)
        self.assertEqual(self.broker.pending, 0)
