"""Two tracker processes over one shared swarm table (a fake of the Redis store, no sockets):
peer lists and PeerJoined pushes across processes, and punch/relay coordination between
sessions on different processes with lost, repeated and late signals."""

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from peerit.testing.sharedstore import SharedTable
from peerit.tracker.nat import NatCoordinator, NatLimits
from peerit.tracker.redis_store import new_owner, one_relay_host
from peerit.tracker.relay import RelayBroker
from peerit.tracker.session import ACTIVE, Limits, Tracker
from peerit.tracker.signals import Delivery
from peerit.wire import tracker as wire

from test_tracker_punch import PUNCH_OP, RELAY_OP, CountingBytes
from test_tracker_session import SWARM, Peer


class TwoProcesses(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.table = SharedTable()
        self.random = CountingBytes()
        self.trackers, self.nats, self.brokers = [], [], []
        for index, relay_port in enumerate((59001, 59002)):
            store = self.table.store(f"host0/worker{index}-0{index}".encode(),
                                     random.Random(index))
            tracker = Tracker(self.clock, store, Limits(), random.Random(index))
            store.on_new_entry = tracker.peer_joined
            tracker.stun_info = wire.StunInfo(3478, 3479, relay_port)
            broker = RelayBroker(self.clock, random_bytes=self.random)
            delivery = Delivery(self.clock, store, random_bytes=self.random)
            self.nats.append(NatCoordinator(tracker, broker, NatLimits(), self.random,
                                            remote=delivery))
            self.trackers.append(tracker)
            self.brokers.append(broker)
        # a on process 0, b on process 1, both in SWARM
        self.a = Peer(self.trackers[0], 1, host="198.51.100.1",
                      hello=wire.Hello(6881, 40001, ("192.168.1.5",)))
        self.b = Peer(self.trackers[1], 2, host="203.0.113.2",
                      hello=wire.Hello(6881, 40002, ("10.0.0.7",)))
        self.b.announce(left=0)
        self.a.announce()
        self.a.link.take()
        self.b.link.take()

    def refusal(self, peer, code, opcode=PUNCH_OP):
        [error] = peer.link.take(wire.Error)
        self.assertEqual((error.code, error.refused_opcode, error.info_hash),
                         (code, opcode, SWARM))
        self.assertEqual(peer.session.state, ACTIVE)

    def test_a_peer_on_another_process_is_in_peer_lists(self):
        [listed] = self.a.peers()
        self.assertEqual((listed.peer_id, listed.seeder, listed.public_address),
                         (self.b.peer_id, True, "203.0.113.2"))

    def test_a_newcomer_on_another_process_is_pushed_to_members_here(self):
        c = Peer(self.trackers[0], 3, host="192.0.2.3")
        c.announce()
        [joined] = self.b.link.take(wire.PeerJoined)
        self.assertEqual(joined.peer.peer_id, c.peer_id)

    def test_punch_between_processes_reaches_both_with_each_others_candidates(self):
        self.a.send(wire.PunchRequest(SWARM, self.b.peer_id))
        self.assertEqual(self.a.link.take(), [], "the answer waits for the target's process")
        self.assertEqual(self.table.deliver(), 1)
        [to_b] = self.b.link.take()
        attempt_id, nonce = self.random.made[:2]
        self.assertEqual(to_b, wire.Punch(
            attempt_id, nonce, SWARM, self.a.peer_id, False,
            (wire.PunchCandidate("192.168.1.5", 40001, "lan"),
             wire.PunchCandidate("198.51.100.1", 40001, "public")), "unknown"))
        self.assertEqual(self.table.deliver(), 1)
        [to_a] = self.a.link.take()
        self.assertEqual(to_a, wire.Punch(
            attempt_id, nonce, SWARM, self.b.peer_id, True,
            (wire.PunchCandidate("10.0.0.7", 40002, "lan"),
             wire.PunchCandidate("203.0.113.2", 40002, "public")), "unknown"))
        self.assertEqual(self.nats[0].punches, 1)
        self.assertEqual(self.trackers[1].session_of(self.b.peer_id).nat_attempts, [0.0])

    def test_a_lost_delivery_is_resent_and_a_repeat_is_not_pushed_twice(self):
        self.a.send(wire.PunchRequest(SWARM, self.b.peer_id))
        self.table.deliver(drop=1)               # the request is lost
        self.assertEqual(self.b.link.take(), [])
        self.clock.advance(0.3)                  # resent
        self.table.deliver()
        self.assertEqual(len(self.b.link.take(wire.Punch)), 1)
        self.table.deliver(drop=1)               # the answer is lost
        self.clock.advance(0.3)                  # the request again
        self.table.deliver()
        self.assertEqual(self.b.link.take(), [], "a repeated delivery is answered, not pushed")
        self.table.deliver()
        self.assertEqual(len(self.a.link.take(wire.Punch)), 1)
        self.clock.advance(5)
        self.table.deliver()
        self.assertEqual(self.a.link.take(), [], "no retry after the answer")

    def test_no_answer_in_time_is_a_retryable_refusal(self):
        self.a.send(wire.PunchRequest(SWARM, self.b.peer_id))
        for _ in range(10):
            self.clock.advance(0.3)
        self.refusal(self.a, "peer_unavailable")
        self.table.deliver()
        self.table.deliver()
        self.assertEqual(self.a.link.take(), [], "a late answer is ignored")

    def test_the_targets_process_applies_its_limits(self):
        target = self.trackers[1].session_of(self.b.peer_id)
        target.nat_attempts = [self.clock.seconds()] * NatLimits().max_attempts
        self.a.send(wire.PunchRequest(SWARM, self.b.peer_id))
        self.table.deliver()
        self.table.deliver()
        self.refusal(self.a, "too_many_attempts")
        self.assertEqual(self.b.link.take(), [])

    def test_relay_token_names_the_requesters_process_relay(self):
        self.a.send(wire.RelayRequest(SWARM, self.b.peer_id))
        self.table.deliver()
        [to_b] = self.b.link.take()
        self.table.deliver()
        [to_a] = self.a.link.take()
        self.assertEqual((to_a.token, to_a.port, to_a.initiator), (to_b.token, 59001, True))
        self.assertEqual((to_b.port, to_b.initiator, to_b.peer_id),
                         (59001, False, self.a.peer_id))
        self.assertEqual((self.brokers[0].pending, self.brokers[1].pending), (1, 0))

    def test_relay_refused_by_the_targets_process_withdraws_the_token(self):
        self.trackers[1].session_of(self.b.peer_id).producer_paused()   # its reader stalls
        self.a.send(wire.RelayRequest(SWARM, self.b.peer_id))
        self.table.deliver()
        self.table.deliver()
        self.refusal(self.a, "peer_unavailable", RELAY_OP)
        self.assertEqual(self.brokers[0].pending, 0)

    def test_table_unreachable_refuses_at_once_so_the_daemon_retries(self):
        self.table.up = False
        self.a.send(wire.PunchRequest(SWARM, self.b.peer_id))
        self.refusal(self.a, "peer_unavailable")
        self.assertEqual(self.table.sent, 0)

    def on_another_host(self, owner: bytes) -> None:
        self.table.owners[self.b.peer_id] = owner
        self.table.stores[1].owner = owner

    def test_no_relay_between_hosts_from_a_process_that_advertises_no_relay_address(self):
        """Without a relay address (--relay-host) the issuing process cannot tell the target,
        whose daemon would dial its own tracker's host, where to meet: refused (punches
        still cross hosts)."""
        self.on_another_host(b"host1/worker0-99")
        self.a.send(wire.RelayRequest(SWARM, self.b.peer_id))
        self.refusal(self.a, "relay_unavailable", RELAY_OP)
        self.assertEqual((self.table.sent, self.brokers[0].pending), (0, 0))
        self.a.send(wire.PunchRequest(SWARM, self.b.peer_id))
        self.table.deliver()
        self.table.deliver()
        self.assertEqual(len(self.a.link.take(wire.Punch)), 1)

    def test_relay_between_hosts_names_the_issuing_process_host_to_both(self):
        """The token is redeemed only where it was issued: both offers name the issuing
        process's relay address and port."""
        self.nats[0].relay_host = "192.0.2.10"
        self.on_another_host(b"host1@192.0.2.20/worker0-99")
        self.a.send(wire.RelayRequest(SWARM, self.b.peer_id))
        self.table.deliver()
        [to_b] = self.b.link.take()
        self.table.deliver()
        [to_a] = self.a.link.take()
        self.assertEqual((to_a.host, to_a.port, to_a.initiator, to_a.peer_id),
                         ("192.0.2.10", 59001, True, self.b.peer_id))
        self.assertEqual((to_b.host, to_b.port, to_b.initiator, to_b.peer_id, to_b.token),
                         ("192.0.2.10", 59001, False, self.a.peer_id, to_a.token))
        self.assertEqual((self.brokers[0].pending, self.nats[0].relays), (1, 1))

    def test_processes_of_one_machine_on_two_relay_addresses_are_two_hosts(self):
        """Two processes of one machine advertising different relay addresses (one per
        interface): the offer names the issuer's, since the target's daemon reaches its own
        tracker at the other address."""
        self.nats[0].relay_host = "127.0.0.1"
        self.table.stores[0].owner = b"host0@127.0.0.1/worker0-00"
        self.table.owners[self.a.peer_id] = b"host0@127.0.0.1/worker0-00"
        self.on_another_host(b"host0@127.0.0.2/worker1-01")
        self.a.send(wire.RelayRequest(SWARM, self.b.peer_id))
        self.table.deliver()
        [to_b] = self.b.link.take()
        self.assertEqual((to_b.host, to_b.port), ("127.0.0.1", 59001))

    def test_relay_on_one_host_names_no_host_as_before(self):
        """Sessions on processes of one host (the default owners here), even when the issuer
        knows its relay address: the offers are the bytes they always were."""
        self.nats[0].relay_host = "192.0.2.10"
        self.a.send(wire.RelayRequest(SWARM, self.b.peer_id))
        self.table.deliver()
        [to_b] = self.b.link.take()
        self.table.deliver()
        [to_a] = self.a.link.take()
        self.assertEqual((to_a.host, to_b.host), ("", ""))
        self.assertEqual(wire.build(to_b), wire.build(wire.RelayOffer(
            to_b.token, SWARM, self.a.peer_id, False, 59001)))

    def test_a_garbled_request_between_processes_is_refused_not_pushed(self):
        serve = self.nats[1].serve_remote
        self.assertEqual(serve(b"punch", SWARM, self.a.peer_id, self.b.peer_id, b"\xff\x00")[:2],
                         (False, "peer_unavailable"))
        relay_offer = wire.build(wire.RelayOffer(b"t" * 32, SWARM, self.a.peer_id, False, 1))
        self.assertFalse(serve(b"punch", SWARM, self.a.peer_id, self.b.peer_id,
                               relay_offer)[0], "a Punch request must carry a Punch")
        self.assertEqual(self.b.link.take(), [])


class OwnerHostTests(SynchronousTestCase):
    def test_a_process_names_its_relay_address_after_its_machine(self):
        self.assertTrue(new_owner("worker0", "m1", "192.0.2.1")
                        .startswith(b"m1@192.0.2.1/worker0-"))
        self.assertTrue(new_owner("worker0", "m1").startswith(b"m1/worker0-"))

    def test_one_relay_host_needs_one_machine_and_no_two_relay_addresses(self):
        cases = [
            (b"m1/w0-1", b"m1/w1-2", True),
            (b"m1@10.0.0.1/w0-1", b"m1@10.0.0.1/w1-2", True),
            (b"m1@10.0.0.1/w0-1", b"m1/w1-2", True),        # as before --relay-host
            (b"m1@127.0.0.1/w0-1", b"m1@127.0.0.2/w1-2", False),
            (b"m1@10.0.0.1/w0-1", b"m2@10.0.0.1/w1-2", False),
            (b"m1/w0-1", b"m2/w1-2", False),
            (b"m1@2001:db8::1/w0-1", b"m1@2001:db8::1/w1-2", True),
        ]
        for owner, other, expected in cases:
            with self.subTest(owner=owner, other=other):
                self.assertEqual(one_relay_host(owner, other), expected)
                self.assertEqual(one_relay_host(other, owner), expected)
