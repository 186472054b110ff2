"""The daemon's NAT side (peerit.daemon.nat) on simulated NATs: STUN and NatReport, punched
QUIC links, the relay fallback, both-symmetric, cancellation and cleanup, netcheck's answer.

Everything real but the network: the manager's muxes, STUN client, punch attempts, QUIC
endpoints and relay client run over ``peerit.testing.fake_internet`` and an in-memory relay, on a
``task.Clock``, with a tracker stand-in that follows docs/nat-protocol.md.
"""

import random
from types import SimpleNamespace

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from peerit.daemon.connector import NoPath, Race
from peerit.identity import Identity
from peerit.daemon.nat import path_dialer, public_address, socket_pool, tracker_push
from peerit.daemon.nat.manager import NatManager, parse_paths
from peerit.daemon.nat.path_dialer import QUIC_START, RELAY_START
from peerit.daemon.nat.public_address import STUN_INFO_WAIT, wire_filtering, wire_mapping
from peerit.nat import punch
from peerit.nat.quic import QuicSettings
from peerit.errors import UsageError
from peerit.testing.fake_internet import (
    FakeNetwork, FakeRelay, FakeStunServer, FakeTracker, FakeUdpReactor, ProbeLink)
from peerit.wire import tracker as tracker_wire

TRACKER_IP = "192.0.2.7"
INFO_HASH = bytes(range(32))
IDENTITIES = {"a": Identity.generate("a"), "b": Identity.generate("b")}
PUBLIC = {"a": "203.0.113.1", "b": "198.51.100.2"}
LAN = {"a": "192.168.1.10", "b": "192.168.2.10"}


class World:
    """Two peers behind NATs of the given types, the tracker (STUN, coordination, relay)."""

    def __init__(self, a_type: str, b_type: str, seed: int = 1, loss: float = 0.0,
                 a_paths=("quic", "relay"), b_paths=("quic", "relay"), start=True,
                 relay_host: str = ""):
        self.clock = task.Clock()
        self.rng = random.Random(seed)
        self.network = FakeNetwork(self.clock, self.rng, loss=loss)
        self.stun = FakeStunServer(self.network, TRACKER_IP)
        self.tracker = FakeTracker(self.clock, TRACKER_IP, self.rng)
        # A relay on another host than the tracker's answers only where the offers say.
        self.tracker.relay_host = relay_host
        self.relay = FakeRelay(self.clock, relay_host or TRACKER_IP, self.tracker.relay_port)
        self.a = self._peer("a", a_type, a_paths, seed)
        self.b = self._peer("b", b_type, b_paths, seed + 1000)
        if start:
            for peer in (self.a, self.b):
                peer.manager.start()
                peer.client.udp_port = peer.manager.udp_port

    def _peer(self, name, nat_type, paths, seed):
        nat = None if nat_type == "open" else self.network.add_nat_of_type(PUBLIC[name],
                                                                          nat_type)
        host = self.network.add_host(PUBLIC[name] if nat is None else LAN[name], nat)
        identity = IDENTITIES[name]
        client = self.tracker.connect(identity.peer_id, PUBLIC[name],
                                      lan=(LAN[name],) if nat is not None else ())
        udp = FakeUdpReactor(host)
        inbound = []

        def inbound_link(path):
            link = ProbeLink(path, greeting=f"hello from {name}".encode())
            inbound.append(link)
            return link
        manager = NatManager(
            self.clock, identity, trackers=lambda: [client],
            swarm_trackers=lambda info_hash: [client], inbound_link=inbound_link,
            udp="udp:40000", rng=random.Random(seed), paths=paths,
            listen_udp=udp.listenUDP, connect_tcp=self.relay.connect_tcp,
            local_hosts=lambda: [host.ip],
            quic_settings=QuicSettings(max_datagram_size=1200, handshake_timeout=5.0))
        client.push = manager.handle_push
        return SimpleNamespace(name=name, nat=nat, host=host, identity=identity,
                               client=client, udp=udp, manager=manager, inbound=inbound)

    def run(self, seconds: float, stop=None) -> bool:
        return self.network.run(seconds, stop=stop)

    def settle(self) -> None:
        """Let both first measurements finish, the full netcheck too (and their NatReports
        reach the tracker); returns how many UDP ports each side has opened so far."""
        self.run(STUN_INFO_WAIT + 15, stop=lambda: all(
            p.manager.report is not None and p.manager.public._checking is None
            for p in (self.a, self.b)))
        self.a.ports_before = len(self.a.udp.ports)
        self.b.ports_before = len(self.b.udp.ports)

    def dial(self, frm, to):
        """``frm`` races its NAT candidates towards ``to``; returns (race, result list)."""
        info = SimpleNamespace(peer_id=to.identity.peer_id)

        def make_link(path, on_ready, on_failed):
            return ProbeLink(path, on_ready, on_failed, expected_peer_id=to.identity.peer_id,
                             greeting=f"hello from {frm.name}".encode())
        race = Race(self.clock, frm.manager.candidates(INFO_HASH, info, make_link))
        results = []
        d = race.run()
        d.addBoth(results.append)
        return race, d, results


class NatManagerTestCase(SynchronousTestCase):
    def setUp(self):
        self.wire = tracker_wire

    def connect(self, a_type, b_type, **options):
        world = World(a_type, b_type, **options)
        world.settle()
        start = world.clock.seconds()
        race, d, results = world.dial(world.a, world.b)
        world.run(30, stop=lambda: bool(results) and (
            not isinstance(results[0], ProbeLink) or world.b.inbound and
            world.b.inbound[-1].received))
        self.assertEqual(len(results), 1, "the race did not finish")
        return world, results[0], start


class StunAndReportTests(NatManagerTestCase):
    def test_nat_report_after_first_netcheck(self):
        """After start the manager measures its NAT against the tracker's two STUN ports and
        tells the tracker its public address and behaviours."""
        world = World("port-restricted", "symmetric")
        world.settle()
        report_a = world.a.client.nat_report
        self.assertIsNotNone(report_a)
        self.assertEqual(report_a.public.host, PUBLIC["a"])
        self.assertEqual(report_a.public.port, 40000)  # masquerade keeps the port when free
        self.assertEqual(report_a.mapping, "independent")
        self.assertEqual(report_a.filtering, "address-and-port")
        report_b = world.b.client.nat_report
        self.assertEqual(report_b.public.host, PUBLIC["b"])
        self.assertEqual(report_b.mapping, "dependent")
        self.assertEqual(world.b.manager.mapping, punch.DEPENDENT)

    def test_no_report_before_stun_answered(self):
        """Nothing is reported before a STUN answer: the first check waits for StunInfo."""
        world = World("port-restricted", "port-restricted")
        world.run(STUN_INFO_WAIT / 2)
        self.assertIsNone(world.a.client.nat_report)
        self.assertEqual([m for m in world.a.client.sent], [])

    def test_stun_info_starts_the_check_at_once_with_its_ports(self):
        """A StunInfo from the tracker gives the STUN ports; the first check starts then."""
        world = World("full-cone", "full-cone")
        moved = FakeStunServer.__new__(FakeStunServer)
        # A second responder pair on other ports of the tracker's host.
        moved.responder = world.stun.responder
        moved.main = world.stun.host.open_socket(5000, receiver=moved._received)
        moved.alternate = world.stun.host.open_socket(5001, receiver=moved._received)
        world.stun.main.close()
        world.stun.alternate.close()
        world.a.client.deliver(self.wire.StunInfo(stun_port=5000, stun_alt_port=5001,
                                                  relay_port=59001))
        world.run(1.0, stop=lambda: world.a.manager.report is not None)
        self.assertLess(world.clock.seconds(), STUN_INFO_WAIT)
        self.assertEqual(world.a.manager.report.mapping, "endpoint-independent")
        self.assertEqual(world.a.client.nat_report.public.host, PUBLIC["a"])

    def test_keepalive_reports_a_changed_public_address(self):
        """The 25 s keep-alive notices that the NAT moved our mapping and reports it."""
        world = World("port-restricted", "port-restricted")
        world.settle()
        nat = world.a.nat
        for mapping in list(nat._by_port.values()):  # the router forgot us (reboot)
            del nat._by_port[mapping.port]
            del nat._by_key[mapping.key]
        nat._map(("192.168.1.99", 40000), ("192.0.2.99", 1))  # someone else has its port
        world.run(30, stop=lambda: world.a.client.nat_report.public.port != 40000)
        self.assertNotEqual(world.a.client.nat_report.public.port, 40000)
        self.assertEqual(world.a.manager.report.public_port,
                         world.a.client.nat_report.public.port)

    def test_netcheck_answer(self):
        """netcheck() answers the report's fields, the tracker round trip and a text."""
        world = World("symmetric", "port-restricted")
        world.settle()
        answers = []
        world.a.manager.netcheck().addBoth(answers.append)
        world.run(15, stop=lambda: bool(answers))
        answer = answers[0]
        self.assertIsInstance(answer, dict)
        self.assertTrue(answer["udp_works"])
        self.assertEqual(answer["mapping"], "address-and-port-dependent")
        self.assertEqual(answer["filtering"], "address-and-port-dependent")
        self.assertEqual(answer["nat_type"], "symmetric")
        self.assertEqual(answer["tracker_rtt"], 0.042)
        self.assertEqual(answer["udp_port"], 40000)
        self.assertEqual(answer["public_address"].split(":")[0], PUBLIC["a"])
        self.assertIn("Mapping: address-and-port-dependent mapping", answer["text"])
        self.assertIn("Tracker round trip: 42 ms", answer["text"])

    def test_netcheck_measures_on_a_fresh_socket(self):
        """The main socket has flows to both STUN ports after the first check, which a
        port-restricted NAT would let answers through; netcheck still reads its filtering
        right because it measures from a new socket, closed afterwards."""
        world = World("port-restricted", "port-restricted")
        world.settle()
        answers = []
        world.a.manager.netcheck().addBoth(answers.append)
        world.run(15, stop=lambda: bool(answers))
        self.assertEqual(answers[0]["filtering"], "address-and-port-dependent")
        self.assertEqual(answers[0]["mapping"], "endpoint-independent")
        self.assertEqual(answers[0]["public_address"], f"{PUBLIC['a']}:40000")
        self.assertEqual(len(world.a.udp.ports), world.a.ports_before + 1)
        self.assertEqual(world.a.udp.open_ports, [world.a.udp.ports[0]])

    def test_wire_names(self):
        self.assertEqual(wire_mapping("endpoint-independent"), "independent")
        self.assertEqual(wire_mapping("address-dependent"), "dependent")
        self.assertEqual(wire_mapping("unknown"), "unknown")
        self.assertEqual(wire_filtering("address-dependent"), "address")
        self.assertEqual(wire_filtering("endpoint-independent-or-address-dependent"),
                         "unknown")

    def test_paths_option_takes_known_paths_only(self):
        self.assertEqual(parse_paths("quic,relay"), {"quic", "relay"})
        self.assertRaises(UsageError, parse_paths, "quic,carrier-pigeon")


class PunchedQuicTests(NatManagerTestCase):
    def test_port_restricted_pair_connects_over_punched_quic(self):
        """Punch request -> Punch to both -> attempt -> QUIC client on the path -> ready link;
        the other side accepts on the punched path and its link carries data both ways."""
        world, link, start = self.connect("port-restricted", "port-restricted")
        self.assertIsInstance(link, ProbeLink)
        self.assertEqual(link.path, "quic")
        self.assertEqual(link.peer_id, world.b.identity.peer_id)
        self.assertGreaterEqual(link.connect_seconds, QUIC_START)
        self.assertLess(link.connect_seconds, 1.0)
        accepted = world.b.inbound[-1]
        self.assertEqual(accepted.path, "quic")
        self.assertEqual(accepted.peer_id, world.a.identity.peer_id)
        self.assertEqual(accepted.received, b"hello from a")
        world.run(1, stop=lambda: link.received)
        self.assertEqual(link.received, b"hello from b")
        requests = [type(m).__name__ for m in world.tracker.requests]
        self.assertEqual(requests, ["PunchRequest"])  # no relay asked for

    def test_one_symmetric_side_connects_by_birthday_and_closes_extra_sockets(self):
        """Symmetric against port-restricted: the hard side's extra sockets find the path;
        all but the winner close at once, the winner once its QUIC link is gone."""
        world, link, start = self.connect("symmetric", "port-restricted", seed=3)
        self.assertIsInstance(link, ProbeLink, getattr(link, "value", link))
        self.assertEqual(link.path, "quic")
        opened = len(world.a.udp.ports) - world.a.ports_before
        self.assertGreater(opened, 10)
        self.assertEqual(len(world.a.udp.open_ports), 2)  # main + the winner
        link.transport.abortConnection()
        world.run(socket_pool.SWEEP_INTERVAL * 3)
        self.assertEqual(world.a.udp.open_ports, [world.a.udp.ports[0]])
        self.assertEqual(world.a.manager.sockets.extra, set())

    def test_dial_right_after_start_waits_for_the_quick_mapping_check(self):
        """A dial at once after start (the tracker's StunInfo just arrived): the quick check
        (two Bindings) tells our symmetric mapping within a few round trips, before the
        punch plan is made, so the birthday technique is used and QUIC wins; the full
        netcheck (seconds, for the filtering) is not waited for."""
        world = World("symmetric", "port-restricted", seed=3)
        for peer in (world.a, world.b):
            peer.client.deliver(self.wire.StunInfo(3478, 3479, 59001))
        race, d, results = world.dial(world.a, world.b)
        world.run(30, stop=lambda: bool(results))
        link = results[0]
        self.assertIsInstance(link, ProbeLink, getattr(link, "value", link))
        self.assertEqual(link.path, "quic")
        world.run(10, stop=lambda: world.a.manager.public._checking is None)
        reports = [m for m in world.a.client.sent if type(m).__name__ == "NatReport"]
        self.assertEqual(reports[0].mapping, "dependent")
        self.assertEqual(reports[0].filtering, "unknown")
        self.assertEqual(reports[-1].filtering, "address-and-port")
        first_request = next(i for i, m in enumerate(world.a.client.sent)
                             if type(m).__name__ == "PunchRequest")
        self.assertLess(world.a.client.sent.index(reports[0]), first_request)

    def test_punch_failure_falls_back_to_relay(self):
        """The other side never punches (it takes no QUIC): our punch fails at its deadline
        and the relay carries the link instead."""
        world, link, start = self.connect("port-restricted", "port-restricted",
                                          b_paths=("relay",))
        self.assertIsInstance(link, ProbeLink, getattr(link, "value", link))
        self.assertEqual(link.path, "relay")
        self.assertEqual(link.peer_id, world.b.identity.peer_id)
        self.assertGreaterEqual(link.connect_seconds, RELAY_START)
        accepted = world.b.inbound[-1]
        self.assertEqual(accepted.path, "relay")
        self.assertEqual(accepted.peer_id, world.a.identity.peer_id)
        self.assertEqual(accepted.received, b"hello from a")
        self.assertEqual(world.relay.spliced, 1)
        self.assertEqual(len(world.a.manager.coordinator), 0)

    def test_both_symmetric_go_to_the_relay_at_once(self):
        """Both symmetric: the punch fails at once, so the relay starts right away (well
        before RELAY_START) and no birthday socket is opened."""
        world, link, start = self.connect("symmetric", "symmetric")
        self.assertIsInstance(link, ProbeLink, getattr(link, "value", link))
        self.assertEqual(link.path, "relay")
        self.assertLess(link.connect_seconds, RELAY_START)
        self.assertEqual(len(world.a.udp.ports), world.a.ports_before)
        self.assertEqual(len(world.b.udp.ports), world.b.ports_before)
        requests = [type(m).__name__ for m in world.tracker.requests]
        self.assertEqual(requests, ["PunchRequest", "RelayRequest"])

    def test_relay_named_by_the_offer_on_another_host_carries_the_link(self):
        """An offer naming a host (the relay's tracker process is on another host than
        ours): both sides dial that host, not their tracker's, and meet there; the peers'
        TLS still proves each other's id."""
        world, link, start = self.connect("symmetric", "symmetric",
                                          relay_host="192.0.2.77")
        self.assertIsInstance(link, ProbeLink, getattr(link, "value", link))
        self.assertEqual(link.path, "relay")
        self.assertEqual(link.peer_id, world.b.identity.peer_id)
        self.assertEqual(world.b.inbound[-1].peer_id, world.a.identity.peer_id)
        self.assertEqual(world.relay.spliced, 1)
        self.assertEqual({c.transport.peer_address.host for c in world.relay.connections},
                         {"192.0.2.77"})

    def test_tracker_refusal_fails_the_candidates(self):
        """The tracker refuses both requests (peer not in the swarm): the race fails soon
        with the tracker's reasons instead of waiting."""
        world = World("port-restricted", "port-restricted")
        world.settle()
        world.tracker.refuse = {"PunchRequest", "RelayRequest"}
        race, d, results = world.dial(world.a, world.b)
        world.run(10, stop=lambda: bool(results))
        self.assertEqual(len(results), 1)
        self.assertTrue(results[0].check(NoPath))
        self.assertIn("tracker refused the punch", results[0].getErrorMessage())
        self.assertIn("tracker refused the relay", results[0].getErrorMessage())
        self.assertLess(world.clock.seconds() - race.started_at, RELAY_START)

    def test_cancel_on_race_loss_cleans_up(self):
        """Cancelling the dial mid-punch (another path won) cancels the attempt, closes its
        birthday sockets, forgets the request and leaves no timer of ours running."""
        world = World("symmetric", "port-restricted", seed=5)
        world.settle()
        race, d, results = world.dial(world.a, world.b)
        world.run(QUIC_START + 0.3)
        attempts = list(world.a.manager.coordinator._attempts.values())
        self.assertEqual(len(attempts), 1)
        self.assertGreater(len(world.a.udp.open_ports), 1)  # birthday sockets open
        d.cancel()
        self.assertEqual(attempts[0].state, punch.State.CANCELLED)
        self.assertEqual(world.a.udp.open_ports, [world.a.udp.ports[0]])
        self.assertEqual(world.a.manager.dialer._punch_waits, {})
        self.assertEqual(world.a.manager.dialer._relay_waits, {})
        world.run(10)
        self.assertEqual([type(m).__name__ for m in world.tracker.requests], ["PunchRequest"])
        self.assertEqual(world.relay.connections, [])

    def test_stop_closes_everything(self):
        """stop() cancels attempts and closes the main and every extra socket."""
        world = World("symmetric", "port-restricted", seed=6)
        world.settle()
        world.dial(world.a, world.b)
        world.run(QUIC_START + 0.3)
        world.a.manager.stop()
        self.assertEqual(world.a.udp.open_ports, [])
        self.assertEqual(len(world.a.manager.coordinator), 0)
        self.assertFalse(world.a.manager.handle_push(self.wire.StunInfo(1, 2, 3)))
        self.assertEqual(world.a.manager.candidates(INFO_HASH, SimpleNamespace(
            peer_id=world.b.identity.peer_id), None), [])

    def test_lossy_path_still_connects(self):
        """5% loss on the internet: the punch and the QUIC handshake get through."""
        world, link, start = self.connect("port-restricted", "full-cone", loss=0.05, seed=9)
        self.assertIsInstance(link, ProbeLink, getattr(link, "value", link))
        self.assertEqual(link.path, "quic")

    def test_unrelated_pushes_are_not_taken(self):
        world = World("full-cone", "full-cone")
        self.assertFalse(world.a.manager.handle_push(object()))
        error = self.wire.Error("rate_limited", "slow down", 4, INFO_HASH)
        self.assertFalse(world.a.manager.handle_push(error))


class DialTimingTests(SynchronousTestCase):
    """The path dialer's start times come from its one table."""

    def test_the_relay_waits_for_the_table_time_or_a_running_birthday_punch(self):
        dial = path_dialer.Dial(INFO_HASH, b"p" * 32, started_at=100.0)
        self.assertEqual(dial.relay_start_at(), 100.0 + path_dialer.DIAL_TIMING["relay"])
        dial.birthday_deadline = 110.0
        self.assertEqual(dial.relay_start_at(), 110.0)
        dial.birthday_deadline = 101.0  # a deadline before the table time changes nothing
        self.assertEqual(dial.relay_start_at(), 100.0 + path_dialer.DIAL_TIMING["relay"])

    def test_punched_quic_starts_after_direct_tcp_and_before_the_relay(self):
        self.assertEqual((QUIC_START, RELAY_START),
                         (path_dialer.DIAL_TIMING["quic"], path_dialer.DIAL_TIMING["relay"]))
        self.assertLess(0.25, QUIC_START)
        self.assertLess(QUIC_START, RELAY_START)
