"""The hole-punch state machine, on the in-memory NAT network (peerit.testing.fake_internet) and
against a scripted peer: no sockets, simulated time only."""

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from peerit.nat import punch
from peerit.nat.punch import Candidate, PunchAttempt, PunchCoordinator, State
from peerit.testing.fake_internet import (
    NAT_TYPES, OPEN, STUN_SERVER, FakeNetwork, SimulatedPeer, punch_between)
from peerit.wire import probe

ATTEMPT = bytes(range(16))
NONCE = b"N" * 32
A_ID, B_ID = b"\x0a" * 32, b"\x0b" * 32
CONES = ("full-cone", "restricted-cone", "port-restricted")
ONE_WAY = 0.0005 + 0.010 + 0.010 + 0.0005  # LAN, uplink, uplink, LAN (fake_internet defaults)


class RecordingSocket:
    """An ISocketHandle that keeps what is sent through it, parsed."""

    def __init__(self, name="main"):
        self.name = name
        self.sent = []
        self.closed = False

    def send(self, data, addr):
        assert not self.closed, "send on a closed socket"
        self.sent.append((probe.parse(data), addr))

    def close(self):
        self.closed = True

    def __repr__(self):
        return f"<RecordingSocket {self.name}>"


PUBLIC = ("198.51.100.2", 5000)
LAN = ("192.168.7.2", 6000)


class ScriptedPeerTests(SynchronousTestCase):
    """One attempt against a peer played by the test: exact control over what arrives when."""

    def make(self, role, candidates=((*PUBLIC, "public"), (*LAN, "lan")), **options):
        self.clock = Clock()
        self.socket = RecordingSocket()
        self.successes, self.failures = [], []
        self.attempt = PunchAttempt(
            self.clock, random.Random(7), attempt_id=ATTEMPT, nonce=NONCE, my_peer_id=A_ID,
            their_peer_id=B_ID, role=role, their_candidates=list(candidates),
            my_mapping="independent", their_mapping="independent", main_socket=self.socket,
            on_success=self.successes.append, on_failure=self.failures.append, **options)
        self.attempt.start()
        return self.attempt

    def sent(self, kind, addr=None):
        return [p for p, to in self.socket.sent if p.kind == kind and addr in (None, to)]

    def deliver(self, kind, transaction, addr, nonce=NONCE, sender=B_ID, socket=None):
        self.attempt.datagram_received(
            socket or self.socket, probe.encode(kind, ATTEMPT, sender, transaction, nonce),
            addr)

    def answer_ping_to(self, addr):
        self.deliver("pong", self.sent("ping", addr)[-1].transaction, addr)

    def test_pings_every_candidate_at_once_then_every_interval(self):
        self.make("controlling")
        self.assertEqual({to for _, to in self.socket.sent}, {PUBLIC, LAN})
        self.clock.advance(punch.DEFAULT_INTERVAL)
        self.assertEqual(len(self.sent("ping", PUBLIC)), 2)
        self.assertEqual(len(self.sent("ping", LAN)), 2)

    def test_lan_preferred_when_both_confirm_at_once(self):
        """Public pong first, LAN pong at the same instant: the LAN pair is nominated."""
        self.make("controlling")
        self.answer_ping_to(PUBLIC)
        self.assertIs(self.attempt.state, State.CHOOSING)
        self.assertEqual(self.sent("nominate"), [])
        self.answer_ping_to(LAN)
        self.assertIs(self.attempt.state, State.NOMINATING)
        self.assertEqual(len(self.sent("nominate", LAN)), 1)
        self.assertEqual(self.sent("nominate", PUBLIC), [])

    def test_public_nominated_when_lan_stays_silent_through_the_grace(self):
        self.make("controlling")
        self.answer_ping_to(PUBLIC)
        self.clock.advance(punch.LAN_GRACE)
        self.assertEqual(len(self.sent("nominate", PUBLIC)), 1)

    def test_lan_confirmation_nominates_at_once(self):
        self.make("controlling")
        self.answer_ping_to(LAN)
        self.assertEqual(len(self.sent("nominate", LAN)), 1)

    def test_controlling_succeeds_once_on_the_ack_of_its_nomination(self):
        self.make("controlling")
        self.answer_ping_to(LAN)
        nomination = self.sent("nominate", LAN)[0].transaction
        self.deliver("nominate_ack", b"x" * 12, LAN)  # wrong transaction
        self.deliver("nominate_ack", nomination, PUBLIC)  # wrong address
        self.assertEqual(self.successes, [])
        self.assertEqual(self.attempt.stats.unmatched, 2)
        self.deliver("nominate_ack", nomination, LAN)
        self.deliver("nominate_ack", nomination, LAN)
        self.assertEqual(len(self.successes), 1)
        path = self.successes[0]
        self.assertEqual((path.local_socket, path.remote_addr, path.kind),
                         (self.socket, LAN, "lan"))
        self.assertIs(self.attempt.state, State.CLOSED)

    def test_nomination_repeats_every_interval_until_acknowledged(self):
        self.make("controlling")
        self.answer_ping_to(LAN)
        self.clock.pump([punch.DEFAULT_INTERVAL] * 3)
        repeats = self.sent("nominate", LAN)
        self.assertEqual(len(repeats), 4)
        self.assertEqual({p.transaction for p in repeats}, {repeats[0].transaction})
        self.deliver("nominate_ack", repeats[0].transaction, LAN)
        count = len(self.socket.sent)
        self.clock.advance(10)
        self.assertEqual(len(self.socket.sent), count)

    def test_controlled_accepts_a_nomination_once_and_acks_every_repeat(self):
        self.make("controlled")
        self.answer_ping_to(PUBLIC)
        self.deliver("nominate", b"n" * 12, PUBLIC)
        self.deliver("nominate", b"n" * 12, PUBLIC)  # our first ack was lost
        self.assertEqual(len(self.successes), 1)
        self.assertEqual(self.successes[0].remote_addr, PUBLIC)
        self.assertEqual(len(self.sent("nominate_ack", PUBLIC)), 2)
        self.assertIs(self.attempt.state, State.SUCCEEDED)
        self.clock.advance(punch.LINGER)
        self.assertIs(self.attempt.state, State.CLOSED)
        self.deliver("nominate", b"n" * 12, PUBLIC)
        self.assertEqual(len(self.sent("nominate_ack")), 2)

    def test_controlled_waits_for_its_own_confirmation_before_accepting(self):
        """A nomination alone proves nothing (it could be replayed from elsewhere): the
        controlled side checks the pair itself, then accepts and acks."""
        self.make("controlled")
        self.deliver("nominate", b"n" * 12, PUBLIC)
        self.assertEqual(self.successes, [])
        self.assertEqual(self.sent("nominate_ack"), [])
        self.answer_ping_to(PUBLIC)
        self.assertEqual(len(self.successes), 1)
        self.assertEqual(self.sent("nominate_ack", PUBLIC)[0].transaction, b"n" * 12)

    def test_ping_from_unknown_address_is_answered_and_checked_back(self):
        """A valid ping from a new address is the peer's NAT mapping: pong it and ping it."""
        self.make("controlled")
        mapped = ("198.51.100.2", 61000)
        self.deliver("ping", b"p" * 12, mapped)
        self.assertEqual([p.transaction for p in self.sent("pong", mapped)], [b"p" * 12])
        self.assertEqual(len(self.sent("ping", mapped)), 1)
        self.assertEqual(self.attempt.stats.learned, 1)
        self.answer_ping_to(mapped)
        self.deliver("nominate", b"n" * 12, mapped)
        self.assertEqual(self.successes[0].kind, "reflexive")

    def test_learned_addresses_are_capped(self):
        self.make("controlled")
        for port in range(punch.MAX_LEARNED + 10):
            self.deliver("ping", b"p" * 12, ("198.51.100.9", 2000 + port))
        self.assertEqual(self.attempt.stats.learned, punch.MAX_LEARNED)
        self.assertEqual(self.attempt.stats.learned_refused, 10)

    def test_wrong_nonce_wrong_peer_wrong_attempt_are_ignored_and_counted(self):
        self.make("controlled")
        before = len(self.socket.sent)
        self.deliver("ping", b"p" * 12, PUBLIC, nonce=b"M" * 32)
        self.deliver("ping", b"p" * 12, PUBLIC, sender=b"\x0c" * 32)
        self.attempt.datagram_received(
            self.socket, probe.encode("ping", b"\x01" * 16, B_ID, b"p" * 12, NONCE), PUBLIC)
        self.attempt.datagram_received(self.socket, b"\xa5PIT garbage", PUBLIC)
        self.assertEqual(len(self.socket.sent), before)
        stats = self.attempt.stats
        self.assertEqual((stats.bad_mac, stats.foreign, stats.malformed), (1, 2, 1))

    def test_own_probes_reflected_back_are_ignored(self):
        self.make("controlled")
        ping = self.sent("ping", PUBLIC)[0]
        self.attempt.datagram_received(self.socket, probe.build(ping), PUBLIC)
        self.assertEqual(self.sent("pong"), [])
        self.assertEqual(self.attempt.stats.foreign, 1)

    def test_pong_must_come_back_on_the_pair_the_ping_used(self):
        self.make("controlling")
        transaction = self.sent("ping", PUBLIC)[0].transaction
        self.deliver("pong", transaction, ("198.51.100.2", 5001))
        self.deliver("pong", transaction, PUBLIC, socket=RecordingSocket("other"))
        self.assertIs(self.attempt.state, State.PROBING)
        self.assertEqual(self.attempt.stats.unmatched, 2)

    def test_deadline_fails_once_and_stops_sending(self):
        self.make("controlling", deadline=2.0)
        self.clock.advance(1.99)
        self.assertEqual(self.failures, [])
        self.clock.advance(0.01)
        self.assertEqual(self.failures, ["no direct path within 2s"])
        count = len(self.socket.sent)
        self.clock.advance(10)
        self.assertEqual(len(self.socket.sent), count)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_stops_timers_and_sends_nothing_more(self):
        self.make("controlling")
        self.answer_ping_to(PUBLIC)  # in CHOOSING, with a grace timer running
        self.attempt.cancel()
        count = len(self.socket.sent)
        self.clock.advance(10)
        self.deliver("ping", b"p" * 12, PUBLIC)
        self.assertEqual(len(self.socket.sent), count)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual((self.successes, self.failures), ([], []))
        self.assertIs(self.attempt.state, State.CANCELLED)

    def test_cancel_from_the_success_callback_is_safe(self):
        self.make("controlled")
        self.successes = []
        self.attempt._on_success = lambda path: (self.successes.append(path),
                                                 self.attempt.cancel())
        self.answer_ping_to(PUBLIC)
        self.deliver("nominate", b"n" * 12, PUBLIC)
        self.assertEqual(len(self.successes), 1)
        self.assertIs(self.attempt.state, State.CLOSED)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_probe_rate_is_capped(self):
        """However many candidates, the attempt never sends faster than its cap allows."""
        many = [("198.51.100.2", 3000 + i, "public") for i in range(200)]
        self.make("controlling", candidates=many, max_probes_per_second=100)
        self.clock.pump([0.05] * 40)  # 2 seconds
        self.assertLessEqual(len(self.socket.sent), punch.PROBE_BURST + 100 * 2 + 1)
        self.assertGreater(self.attempt.stats.rate_limited, 0)

    def test_arguments_are_checked(self):
        clock, sock = Clock(), RecordingSocket()
        base = dict(attempt_id=ATTEMPT, nonce=NONCE, my_peer_id=A_ID, their_peer_id=B_ID,
                    role="controlling", their_candidates=[], main_socket=sock,
                    on_success=print, on_failure=print)
        for bad in ({"nonce": b"short"}, {"attempt_id": b"x"}, {"role": "boss"},
                    {"their_peer_id": A_ID}, {"my_mapping": "cone"}):
            self.assertRaises(ValueError, PunchAttempt, clock, random.Random(), **{
                **base, **bad})
        self.assertRaises(ValueError, Candidate, "10.0.0.1", 1, "relay")

    def test_roles_and_plans(self):
        self.assertEqual(punch.role_for(A_ID, B_ID), "controlling")
        self.assertEqual(punch.role_for(B_ID, A_ID), "controlled")
        self.assertEqual(punch.plan_for("dependent", "dependent"), "relay")
        self.assertEqual(punch.plan_for("dependent", "unknown"), "hard")
        self.assertEqual(punch.plan_for("independent", "dependent"), "easy")
        self.assertEqual(punch.plan_for("unknown", "unknown"), "direct")
        # netcheck's RFC 4787 names are understood too.
        self.assertEqual(punch.plan_for("address-and-port-dependent", "endpoint-independent"),
                         "hard")
        self.assertEqual(punch.plan_for("endpoint-independent", "address-dependent"), "easy")
        self.assertEqual(punch.mapping_behaviour(None), "unknown")


class CoordinatorTests(SynchronousTestCase):
    def make_attempt(self, clock, attempt_id=ATTEMPT, failures=None):
        return PunchAttempt(
            clock, random.Random(1), attempt_id=attempt_id, nonce=NONCE, my_peer_id=A_ID,
            their_peer_id=B_ID, role="controlled", their_candidates=[(*PUBLIC, "public")],
            main_socket=RecordingSocket(), on_success=print,
            on_failure=(failures.append if failures is not None else print))

    def test_routes_by_attempt_id_and_drops_unknown_ids_and_non_probes(self):
        clock = Clock()
        coordinator = PunchCoordinator()
        attempt = self.make_attempt(clock)
        coordinator.start(attempt)
        sock = attempt._main
        coordinator.datagram_received(
            sock, probe.encode("ping", ATTEMPT, B_ID, b"p" * 12, NONCE), PUBLIC)
        coordinator.datagram_received(
            sock, probe.encode("ping", b"\x09" * 16, B_ID, b"p" * 12, NONCE), PUBLIC)
        coordinator.datagram_received(sock, b"\x00\x01 not a probe", PUBLIC)
        self.assertEqual(attempt.stats.pongs_sent, 1)
        self.assertEqual((coordinator.unknown_attempt, coordinator.malformed), (1, 1))

    def test_finished_attempts_are_forgotten(self):
        clock, failures = Clock(), []
        coordinator = PunchCoordinator()
        coordinator.start(self.make_attempt(clock, failures=failures))
        self.assertEqual(len(coordinator), 1)
        clock.advance(punch.DIRECT_DEADLINE)
        self.assertEqual(len(failures), 1)
        self.assertEqual(len(coordinator), 0)
        self.assertIsNone(coordinator.get(ATTEMPT))

    def test_duplicate_ids_and_too_many_attempts_are_refused(self):
        clock = Clock()
        coordinator = PunchCoordinator(max_attempts=2)
        coordinator.start(self.make_attempt(clock))
        self.assertRaises(ValueError, coordinator.start, self.make_attempt(clock))
        coordinator.start(self.make_attempt(clock, b"\x02" * 16))
        self.assertRaises(punch.TooManyAttempts, coordinator.start,
                          self.make_attempt(clock, b"\x03" * 16))
        coordinator.cancel_all()
        self.assertEqual(len(coordinator), 0)
        self.assertEqual(clock.getDelayedCalls(), [])


class FakeNatTests(SynchronousTestCase):
    """The simulated NATs are strict where real ones are, or the punch tests prove little."""

    def setUp(self):
        self.clock = Clock()
        self.network = FakeNetwork(self.clock, random.Random(3))

    def behind(self, nat_type, public_ip, **options):
        nat = self.network.add_nat_of_type(public_ip, nat_type, **options)
        host = self.network.add_host("192.168.1.10", nat)
        return nat, host.open_socket(40000)

    def test_one_sided_punch_fails_through_port_restricted_nat(self):
        nat_a, a = self.behind("port-restricted", "203.0.113.1")
        nat_b, b = self.behind("port-restricted", "198.51.100.2")
        a_public, b_public = (self.network.binding_request(s) for s in (a, b))
        for _ in range(5):
            a.send(b"hello", b_public)
            self.network.run(0.05)
        self.assertEqual(len(b.inbox), 0)
        self.assertEqual(nat_b.dropped_filtered, 5)
        b.send(b"hi", a_public)  # now B's NAT expects A, and A's NAT expects B
        self.network.run(0.05)
        a.send(b"hello", b_public)
        self.network.run(0.05)
        self.assertEqual([d for d, _ in b.inbox], [b"hello"])
        self.assertEqual([d for d, _ in a.inbox], [b"hi"])

    def test_unsolicited_inbound_leaves_no_state(self):
        nat_b, b = self.behind("port-restricted", "198.51.100.2")
        outsider = self.network.add_host("192.0.2.9").open_socket(5000)
        outsider.send(b"x", ("198.51.100.2", 40000))
        self.network.run(0.1)
        self.assertEqual((nat_b.dropped_unsolicited, nat_b.mapping_count), (1, 0))
        self.assertEqual(self.network.binding_request(b), ("198.51.100.2", 40000))

    def test_symmetric_nat_maps_each_destination_to_a_new_port(self):
        nat, sock = self.behind("symmetric", "198.51.100.2")
        stun_port = self.network.binding_request(sock)[1]
        sock.send(b"x", ("203.0.113.1", 40000))
        sock.send(b"x", ("203.0.113.1", 40001))
        self.network.run(0.01)
        ports = {stun_port, nat.external_port(sock.address, ("203.0.113.1", 40000)),
                 nat.external_port(sock.address, ("203.0.113.1", 40001))}
        self.assertEqual(len(ports), 3)

    def test_cone_nat_keeps_one_port_for_every_destination(self):
        nat, sock = self.behind("port-restricted", "198.51.100.2")
        sock.send(b"x", ("203.0.113.1", 40000))
        self.network.run(0.01)
        self.assertEqual(nat.external_port(sock.address, ("203.0.113.1", 40000)), 40000)
        self.assertEqual(self.network.binding_request(sock), ("198.51.100.2", 40000))

    def test_filtering_behaviours(self):
        """Full cone lets anyone in; restricted cone any port of a contacted address;
        port-restricted only the exact address and port contacted."""
        received = {}
        for nat_type, public_ip in (("full-cone", "198.51.100.1"),
                                    ("restricted-cone", "198.51.100.2"),
                                    ("port-restricted", "198.51.100.3")):
            nat, sock = self.behind(nat_type, public_ip)
            sock.send(b"out", ("192.0.2.50", 1000))
            received[nat_type] = sock
        server = self.network.add_host("192.0.2.50")
        same_port, other_port = server.open_socket(1000), server.open_socket(2000)
        stranger = self.network.add_host("192.0.2.51").open_socket(1000)
        self.network.run(0.1)
        for i, public_ip in enumerate(("198.51.100.1", "198.51.100.2", "198.51.100.3")):
            for sender in (same_port, other_port, stranger):
                sender.send(bytes([i]), (public_ip, 40000))
        self.network.run(0.1)
        self.assertEqual(len(received["full-cone"].inbox), 3)
        self.assertEqual(len(received["restricted-cone"].inbox), 2)
        self.assertEqual(len(received["port-restricted"].inbox), 1)

    def test_no_hairpinning_unless_enabled(self):
        nat = self.network.add_nat_of_type("203.0.113.1", "port-restricted")
        a = self.network.add_host("192.168.1.10", nat).open_socket(40000)
        b = self.network.add_host("192.168.1.11", nat).open_socket(40001)
        b_public = self.network.binding_request(b)
        b.send(b"x", self.network.binding_request(a))
        a.send(b"hello", b_public)
        self.network.run(0.1)
        self.assertEqual(len(b.inbox), 0)
        self.assertEqual(nat.dropped_hairpin, 2)

    def test_loss_and_determinism(self):
        def run(seed):
            network = FakeNetwork(Clock(), random.Random(seed), loss=0.5)
            a = network.add_host("192.0.2.11").open_socket(1)
            b = network.add_host("192.0.2.12").open_socket(1)
            for i in range(200):
                a.send(bytes([i % 256]), ("192.0.2.12", 1))
            network.run(1)
            return [d for d, _ in b.inbox]
        self.assertEqual(run(5), run(5))
        self.assertTrue(60 < len(run(5)) < 140)
        self.assertNotEqual(run(5), run(6))

    def test_stun_server_address_is_reserved(self):
        self.assertRaises(ValueError, self.network.add_host, STUN_SERVER[0])


def assert_connected(test, outcome):
    """Exactly one success and no failure per side, each path aimed at the other side's
    address: its LAN address for a LAN path, else its NAT's public address."""
    a, b = outcome.a, outcome.b
    test.assertEqual(len(a.successes), 1, a.failures)
    test.assertEqual(len(b.successes), 1, b.failures)
    test.assertEqual((a.failures, b.failures), ([], []))
    for mine, theirs in ((a, b), (b, a)):
        path = mine.successes[0][1]
        if path.kind == "lan" or theirs.nat is None:
            test.assertEqual(path.remote_addr[0], theirs.host.ip)
        else:
            test.assertEqual(path.remote_addr[0], theirs.nat.public_ip)
        test.assertIn(path.local_socket, mine.host.sockets.values())
    return a.successes[0][1], b.successes[0][1]


class PunchSimulationTests(SynchronousTestCase):
    """Two peers through simulated NATs, everything from candidates to the agreed path."""

    def test_cone_to_cone_connects_in_every_filtering_combination(self):
        """Both sides' first pings cross: the pair confirms one round trip after the start,
        before the second ping round, and both sides have a path within ~2.5 round trips."""
        for i, a_type in enumerate(CONES):
            for b_type in CONES[i:]:
                outcome = punch_between(a_type, b_type, seed=1)
                a_path, b_path = assert_connected(self, outcome)
                self.assertEqual((a_path.kind, b_path.kind), ("public", "public"))
                self.assertAlmostEqual(a_path.rtt, 2 * ONE_WAY, places=6)
                self.assertLess(2 * ONE_WAY, punch.DEFAULT_INTERVAL)
                self.assertLessEqual(
                    outcome.time, 3 * 2 * ONE_WAY + punch.LAN_GRACE,
                    (a_type, b_type))

    def test_each_side_sends_to_the_other_sides_mapping(self):
        outcome = punch_between("port-restricted", "restricted-cone", seed=2)
        a_path, b_path = assert_connected(self, outcome)
        self.assertEqual(a_path.remote_addr,
                         outcome.network.binding_request(outcome.b.socket))
        self.assertEqual(b_path.remote_addr,
                         outcome.network.binding_request(outcome.a.socket))

    def test_a_ping_landing_on_a_stranger_with_the_peers_private_address_is_ignored(self):
        """Both peers are 192.168.1.10:40000 in their own homes: A's ping to B's LAN
        candidate reaches A itself; it is not taken for B."""
        outcome = punch_between("port-restricted", "port-restricted", seed=1)
        a_path, _ = assert_connected(self, outcome)
        self.assertGreater(outcome.a.attempt.stats.foreign, 0)
        self.assertEqual(a_path.kind, "public")

    def test_open_host_and_symmetric_nat_connect_without_random_probing(self):
        for a_type in (OPEN, "full-cone", "restricted-cone"):
            outcome = punch_between(a_type, "symmetric", seed=4)
            assert_connected(self, outcome)
            self.assertLess(outcome.time, 0.5, a_type)

    def test_birthday_technique_connects_one_symmetric_side_within_5s(self):
        """Hard side behind symmetric NAT, easy side behind port-restricted: over 10 seeds
        for each role assignment, at least 9 connect within 5 simulated seconds."""
        for a_controls in (True, False):
            times = []
            for seed in range(10):
                outcome = punch_between("symmetric", "port-restricted", seed=seed,
                                        a_controls=a_controls)
                if outcome.connected:
                    a_path, b_path = assert_connected(self, outcome)
                    self.assertEqual((a_path.kind, b_path.kind), ("birthday", "birthday"))
                times.append(outcome.time)
            within = [t for t in times if t is not None and t <= 5.0]
            self.assertGreaterEqual(len(within), 9, f"a_controls={a_controls}: {times}")

    def test_birthday_hard_side_keeps_only_the_winning_socket(self):
        outcome = punch_between("symmetric", "port-restricted", seed=0)
        a_path, _ = assert_connected(self, outcome)
        a = outcome.a
        self.assertEqual(a.attempt.stats.sockets_opened, punch.BIRTHDAY_SOCKETS)
        self.assertEqual(set(a.host.sockets.values()), {a.socket, a_path.local_socket})
        self.assertEqual(a.attempt.extra_sockets, ())

    def test_birthday_hard_side_closes_every_extra_socket_on_failure(self):
        outcome = punch_between("symmetric", "port-restricted", seed=0, b_starts=False)
        self.assertEqual(outcome.a.failures[0][1], "no direct path within 6s")
        self.assertEqual(list(outcome.a.host.sockets.values()), [outcome.a.socket])

    def test_without_the_birthday_technique_symmetric_to_port_restricted_fails(self):
        """The same pair with the NAT behaviour unknown (plain simultaneous pings) never
        connects: what the birthday technique is for."""
        unknown = {"my_mapping": "unknown", "their_mapping": "unknown"}
        for seed in range(3):
            outcome = punch_between("symmetric", "port-restricted", seed=seed,
                                    a_options=unknown, b_options=unknown)
            self.assertFalse(outcome.connected)
            self.assertEqual(outcome.a.failures[0][1], "no direct path within 3s")

    def test_both_symmetric_fail_at_once_without_sending(self):
        outcome = punch_between("symmetric", "symmetric", seed=1)
        self.assertEqual(outcome.a.failures, [(0.0, "both sides symmetric: relay")])
        self.assertEqual(len(outcome.b.failures), 1)
        self.assertEqual((outcome.a.host.sent, outcome.b.host.sent), (0, 0))
        self.assertEqual(outcome.a.host.sockets, {40000: outcome.a.socket})

    def test_connects_despite_20_percent_loss(self):
        for seed in range(10):
            outcome = punch_between("port-restricted", "port-restricted", seed=seed,
                                    loss=0.2)
            assert_connected(self, outcome)
        self.assertGreater(outcome.network.lost, 0)

    def test_late_peer_two_seconds_later_still_connects_before_the_deadline(self):
        for late in ("a", "b"):
            outcome = punch_between("port-restricted", "port-restricted", seed=1,
                                    b_delay=2.0, a_controls=(late == "b"))
            assert_connected(self, outcome)
            self.assertLess(outcome.time, punch.DIRECT_DEADLINE)
            self.assertLess(outcome.time - 2.0, 0.2)
            # Before B started, A's pings died at B's NAT without a trace.
            self.assertGreater(outcome.b.nat.dropped_filtered
                               + outcome.b.nat.dropped_unsolicited, 0)

    def test_deadline_failure_when_the_other_side_never_answers(self):
        outcome = punch_between("port-restricted", "port-restricted", seed=1, b_starts=False)
        a = outcome.a
        self.assertEqual(a.failures, [(punch.DIRECT_DEADLINE, "no direct path within 3s")])
        self.assertEqual(a.successes, [])
        sent = a.host.sent
        outcome.network.run(10)
        self.assertEqual(a.host.sent, sent)

    def test_cancel_stops_all_sends_and_closes_extra_sockets(self):
        for a_type, b_type in (("symmetric", "port-restricted"),
                               ("port-restricted", "symmetric")):
            outcome = punch_between(a_type, b_type, seed=0, b_starts=False, duration=0.1)
            a = outcome.a
            self.assertIs(a.attempt.state, State.PROBING)
            a.attempt.cancel()
            sent = a.host.sent
            outcome.network.run(10)
            self.assertEqual(a.host.sent, sent)
            self.assertEqual((a.successes, a.failures), ([], []))
            self.assertEqual(list(a.host.sockets.values()), [a.socket])
            self.assertEqual(len(a.coordinator), 0)

    def test_success_fires_exactly_once_on_both_sides_under_heavy_loss(self):
        """With 40% loss, nominations and acks get lost and repeated; still one success per
        side, and both sides agree on the path whenever the controlling side succeeds."""
        repeated = 0
        for seed in range(15):
            outcome = punch_between("port-restricted", "restricted-cone", seed=seed,
                                    loss=0.4)
            outcome.network.run(punch.LINGER + 1)
            a, b = outcome.a, outcome.b
            self.assertLessEqual(len(a.successes) + len(a.failures), 1)
            self.assertLessEqual(len(b.successes) + len(b.failures), 1)
            if a.successes:
                self.assertEqual(len(b.successes), 1)
                self.assertEqual(a.successes[0][1].remote_addr,
                                 outcome.network.binding_request(b.socket))
            repeated += a.attempt.stats.nominations_sent > 1
            self.assertEqual(outcome.network.clock.getDelayedCalls(), [])
        self.assertGreater(repeated, 0)

    def test_lan_path_chosen_for_peers_behind_one_nat(self):
        """Behind one NAT with hairpinning, both the LAN and the public pairs work; LAN wins."""
        clock = Clock()
        network = FakeNetwork(clock, random.Random(1))
        nat = network.add_nat_of_type("203.0.113.1", "port-restricted", hairpin=True)
        a = SimulatedPeer(network, A_ID, "port-restricted", "", lan_ip="192.168.1.10",
                          nat=nat)
        b = SimulatedPeer(network, B_ID, "port-restricted", "", lan_ip="192.168.1.11",
                          port=40001, nat=nat)
        a.punch(b, ATTEMPT, NONCE, "controlling", random.Random(2))
        b.punch(a, ATTEMPT, NONCE, "controlled", random.Random(3))
        network.run(5, stop=lambda: a.done and b.done)
        self.assertEqual(a.successes[0][1].remote_addr, ("192.168.1.11", 40001))
        self.assertEqual(b.successes[0][1].remote_addr, ("192.168.1.10", 40000))
        self.assertEqual(a.successes[0][1].kind, "lan")


class ThirdPartyTests(SynchronousTestCase):
    """Mallory, on the public internet, knows the attempt id and both peer ids (they travel
    in the clear as part of every probe) but not the nonce."""

    def setUp(self):
        self.clock = Clock()
        self.network = FakeNetwork(self.clock, random.Random(9))
        # Full cone so that Mallory's datagrams do reach A: the worst case for A.
        self.a = SimulatedPeer(self.network, A_ID, "full-cone", "203.0.113.1")
        self.b = SimulatedPeer(self.network, B_ID, "port-restricted", "198.51.100.2")
        self.mallory = self.network.add_host("192.0.2.66").open_socket(6666)
        self.a_public = self.network.binding_request(self.a.socket)

    def mallory_sends(self, kind, transaction, nonce):
        self.mallory.send(probe.encode(kind, ATTEMPT, B_ID, transaction, nonce),
                          self.a_public)

    def test_probes_with_a_wrong_nonce_are_ignored_silently(self):
        self.a.punch(self.b, ATTEMPT, NONCE, "controlled", random.Random(1))
        for kind in probe.KINDS:
            self.mallory_sends(kind, b"t" * 12, b"M" * 32)
        self.network.run(10, stop=lambda: self.a.done)
        self.assertEqual(self.a.attempt.stats.bad_mac, 4)
        self.assertEqual(len(self.mallory.inbox), 0)
        self.assertEqual(self.a.attempt.stats.learned, 0)
        self.assertEqual(self.a.successes, [])

    def test_replayed_valid_probes_cannot_make_a_path_to_mallory(self):
        """Even valid probes replayed from Mallory's address (say, captured earlier) only
        earn a ping back, which Mallory cannot answer without the nonce."""
        for role in ("controlled", "controlling"):
            self.setUp()
            self.a.punch(self.b, ATTEMPT, NONCE, role, random.Random(1))
            for kind in probe.KINDS:
                self.mallory_sends(kind, b"t" * 12, NONCE)
            self.network.run(0.1)
            challenges = [probe.parse(d) for d, _ in self.mallory.inbox]
            self.assertIn("ping", [p.kind for p in challenges])
            # Mallory echoes every challenge as best it can: without the nonce.
            self.mallory.receiver = lambda sock, data, addr: (
                probe.parse(data).kind == "ping"
                and self.mallory_sends("pong", probe.parse(data).transaction, b"M" * 32))
            self.network.run(10, stop=lambda: self.a.done)
            self.assertGreater(self.a.attempt.stats.bad_mac, 0)
            self.assertEqual(self.a.successes, [], role)
            self.assertEqual(self.a.failures[0][1], "no direct path within 3s")

    def test_the_real_peer_wins_while_mallory_injects(self):
        self.a.punch(self.b, ATTEMPT, NONCE, "controlled", random.Random(1))
        self.b.punch(self.a, ATTEMPT, NONCE, "controlling", random.Random(2))
        for i in range(20):
            self.clock.callLater(i * 0.01, self.mallory_sends, "nominate", b"u" * 12, NONCE)
            self.clock.callLater(i * 0.01, self.mallory_sends, "pong", b"v" * 12, NONCE)
        self.network.run(5, stop=lambda: self.a.done and self.b.done)
        self.assertEqual(self.a.successes[0][1].remote_addr,
                         self.network.binding_request(self.b.socket))
        self.assertEqual(len(self.b.successes), 1)


class NatTypesTests(SynchronousTestCase):
    def test_named_nat_types_cover_the_rfc_4787_combinations_used_in_homes(self):
        self.assertEqual(NAT_TYPES["symmetric"], ("dependent", "address-and-port"))
        self.assertEqual(NAT_TYPES["port-restricted"], ("independent", "address-and-port"))
