"""Metrics: the plain counters, the families built at scrape time, the collectors of both
programs over real logic objects, and the HTTP endpoint's loopback rule. No sockets."""

import json
import random
import re
from pathlib import Path
from types import SimpleNamespace

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from peerit.daemon.metrics import DaemonCollector
from peerit.daemon.stats import DaemonStats, candidate_path, traffic_path
from peerit.daemon.transfer import State
from peerit.endpoints import listen_parts, metrics_description
from peerit.errors import UsageError
from peerit.metrics.counts import Histogram, LabelledCounter
from peerit.metrics.endpoint import (
    MetricsPage, MetricsSite, client_allowed, is_loopback_interface, parse_networks)
from peerit.metrics.exposition import counter, registry_with
from peerit.nat.stun import StunResponder
from peerit.testing.metrics import total
from peerit.tracker.metrics import TrackerCollector
from peerit.tracker.nat import NatCoordinator
from peerit.tracker.relay import RelayBroker
from peerit.tracker.session import Limits, Tracker
from peerit.tracker.store import MemorySwarmStore
from peerit.wire import stun
from peerit.wire import tracker as wire

from test_tracker_session import SWARM, Peer


class Families:
    """A collector yielding fixed families."""

    def __init__(self, *families):
        self.families = families

    def collect(self):
        return iter(self.families)


def samples_of(collector) -> dict:
    text = generate_latest(registry_with(collector)).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


class CountsTests(SynchronousTestCase):
    def test_histogram_buckets_include_their_upper_bound(self):
        histogram = Histogram((0.1, 1.0))
        for value in (0.05, 0.1, 0.5, 1.0, 7.0):
            histogram.observe(value)
        self.assertEqual(histogram.cumulative(), [("0.1", 2), ("1.0", 4), ("+Inf", 5)])
        self.assertEqual(histogram.count, 5)
        self.assertAlmostEqual(histogram.sum, 8.65)

    def test_labelled_counter(self):
        counts = LabelledCounter("kind", "result")
        counts.inc("announce", "ok")
        counts.inc("announce", "ok", amount=2)
        counts.inc("ping", "refused")
        self.assertEqual((counts.get("announce", "ok"), counts.total()), (3, 4))


class EndpointTests(SynchronousTestCase):
    def test_endpoint_defaults_to_loopback(self):
        self.assertEqual(metrics_description("tcp:9464"), "tcp:9464:interface=127.0.0.1")
        self.assertEqual(metrics_description("tcp:port=0:interface=\\:\\:1"),
                         "tcp:0:interface=\\:\\:1")
        self.assertEqual(listen_parts("tcp:0:interface=\\:\\:1"), (0, "::1"))
        self.assertTrue(is_loopback_interface("::1"))
        self.assertFalse(is_loopback_interface("0.0.0.0"))
        for bad in ("udp:9464", "tcp:", "tcp:99999", "tcp:9464:backlog=5", "9464"):
            with self.assertRaises(UsageError):
                metrics_description(bad)
        with self.assertRaises(UsageError):
            parse_networks(["10.0.0.0/33"])

    def test_only_loopback_or_allowed_networks_are_served(self):
        allowed = parse_networks(["10.1.2.0/24"])
        for host in ("127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", "10.1.2.7"):
            self.assertTrue(client_allowed(host, allowed), host)
        for host in ("10.1.3.7", "192.0.2.1", "2001:db8::1", "", "not-an-address"):
            self.assertFalse(client_allowed(host, allowed), host)
        self.assertFalse(client_allowed("10.1.2.7"))

    def test_site_refuses_non_loopback_connections(self):
        """buildProtocol returning None makes Twisted close the accepted connection."""
        site = MetricsSite(registry_with(Families()))
        self.assertIsNone(site.buildProtocol(IPv4Address("TCP", "192.0.2.1", 5000)))
        self.assertIsNone(site.buildProtocol(IPv6Address("TCP", "2001:db8::1", 5000)))
        self.assertEqual(site.refused, 2)
        self.assertIsNotNone(site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000)))
        allowing = MetricsSite(site.resource.children[b"metrics"].registry,
                               parse_networks(["192.0.2.0/24"]))
        self.assertIsNotNone(allowing.buildProtocol(IPv4Address("TCP", "192.0.2.1", 5000)))

    def test_page_is_the_text_exposition_format(self):
        counts = LabelledCounter("kind")
        counts.inc("x")
        page = MetricsPage(registry_with(Families(counter("peerit_test_total", "Test.",
                                                          counts))))
        request = DummyRequest([b""])
        body = page.render_GET(request)
        self.assertTrue(request.responseHeaders.getRawHeaders(b"content-type")[0]
                        .startswith(b"text/plain"))
        self.assertIn(b'peerit_test_total{kind="x"} 1.0', body)


class TrackerCollectorTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.tracker = Tracker(self.clock, MemorySwarmStore(random.Random(1)),
                               Limits(request_burst=2, request_rate=1), random.Random(1))
        self.broker = RelayBroker(self.clock)
        self.nat = NatCoordinator(self.tracker, self.broker)
        self.responder = StunResponder(self.clock)
        self.collector = TrackerCollector(self.tracker, self.nat, self.broker,
                                          stun=lambda: self.responder)

    def test_sessions_swarms_requests_and_refusals(self):
        a, b = Peer(self.tracker, 1), Peer(self.tracker, 2)
        a.announce(left=0)
        b.announce(left=5)
        b.announce(info_hash=b"T" * 32)
        b.announce(info_hash=b"U" * 32)  # rate limited: a burst of 2 requests
        Peer(self.tracker, 3, greet=False)
        samples = samples_of(self.collector)
        self.assertEqual(total(samples, "peerit_tracker_sessions", state="active"), 2)
        self.assertEqual(total(samples, "peerit_tracker_sessions", state="opening"), 1)
        self.assertEqual(total(samples, "peerit_tracker_swarms"), 2)
        self.assertEqual(total(samples, "peerit_tracker_swarm_members", role="seeder"), 1)
        self.assertEqual(total(samples, "peerit_tracker_swarm_members", role="leecher"), 2)
        self.assertEqual(total(samples, "peerit_tracker_swarm_size_bucket", le="1"), 1)
        self.assertEqual(total(samples, "peerit_tracker_swarm_size_bucket", le="2"), 2)
        self.assertEqual(total(samples, "peerit_tracker_requests_total", kind="announce",
                               result="ok"), 3)
        self.assertEqual(total(samples, "peerit_tracker_requests_total", kind="announce",
                               result="rate_limited"), 1)
        self.assertEqual(total(samples, "peerit_tracker_refusals_total",
                               reason="rate_limited"), 1)
        self.assertEqual(total(samples, "peerit_tracker_request_duration_seconds_count",
                               kind="announce"), 3)
        self.assertEqual(total(samples, "peerit_tracker_sessions_opened_total"), 3)

    def test_refused_request_and_closed_session(self):
        a = Peer(self.tracker, 1)
        a.send(wire.PunchRequest(SWARM, b"\x09" * 32))  # not in that swarm: refused
        a.session.data_received(b"\x00\x00\x00\x01\xff")  # an unknown opcode ends it
        samples = samples_of(self.collector)
        self.assertEqual(total(samples, "peerit_tracker_requests_total",
                               kind="punch_request", result="refused"), 1)
        self.assertEqual(total(samples, "peerit_tracker_refusals_total",
                               reason="peer_unavailable"), 1)
        self.assertEqual(total(samples, "peerit_tracker_refusals_total",
                               reason="unknown_message"), 1)
        self.assertEqual(total(samples, "peerit_tracker_sessions_closed_total",
                               reason="unknown_message"), 1)

    def test_stun_figures_come_from_the_responder(self):
        bare = stun.build(stun.StunMessage(stun.BINDING_REQUEST, b"t" * 12), fingerprint=False)
        for _ in range(25):
            self.responder.respond(bare, ("192.0.2.1", 1))
        self.responder.respond(b"junk", ("192.0.2.1", 1))
        samples = samples_of(self.collector)
        self.assertEqual(total(samples, "peerit_tracker_stun_requests_total",
                               result="success"), 20)
        self.assertEqual(total(samples, "peerit_tracker_stun_requests_total",
                               result="rate_limited"), 5)
        self.assertEqual(total(samples, "peerit_tracker_stun_requests_total",
                               result="ignored"), 1)
        self.assertEqual(total(samples, "peerit_tracker_stun_received_bytes_total"), 504)
        self.assertEqual(total(samples, "peerit_tracker_stun_sent_bytes_total"), 20 * 32)

    def test_no_label_names_a_swarm_or_a_peer(self):
        a = Peer(self.tracker, 1)
        a.announce()
        for (_, labels) in samples_of(self.collector):
            self.assertFalse({name for name, _ in labels} - {"state", "role", "le", "kind",
                                                             "result", "reason", "nat_pair"})


class FakeLink:
    def __init__(self, path, remote):
        self.path, self.remote = path, remote


def fake_peer(path, remote, down, up):
    return SimpleNamespace(link=FakeLink(path, remote), download=SimpleNamespace(total=down),
                           upload=SimpleNamespace(total=up))


class DaemonCollectorTests(SynchronousTestCase):
    def test_paths(self):
        self.assertEqual(traffic_path(FakeLink("tcp", "192.168.1.9:4000")), "lan")
        self.assertEqual(traffic_path(FakeLink("tcp", "[::1]:4000")), "lan")
        self.assertEqual(traffic_path(FakeLink("tcp", "198.18.0.5:4000")), "tcp")
        self.assertEqual(traffic_path(FakeLink("quic", "10.0.0.1:9")), "quic")
        self.assertEqual(traffic_path(FakeLink("relay", "")), "relay")
        self.assertEqual(candidate_path("tcp 10.0.0.2:4000 (lan)"), "lan")
        self.assertEqual(candidate_path("tcp 198.18.0.2:4000 (public)"), "tcp")
        self.assertEqual(candidate_path("quic (punched)"), "quic")
        self.assertEqual(candidate_path("relay"), "relay")

    def test_bytes_and_peers_by_path_live_and_retired(self):
        """Counters keep what detached peers moved; gauges count only live peers."""
        stats = DaemonStats()
        stats.retire(FakeLink("relay", ""), 1000, 10)
        stats.pieces_verified = 7
        stats.punches.inc("independent-dependent", "success")
        swarm = SimpleNamespace(peers={1: fake_peer("tcp", "10.0.0.2:1", 500, 50),
                                       2: fake_peer("quic", "198.18.0.9:1", 300, 0)})
        transfers = SimpleNamespace(
            all=lambda: [SimpleNamespace(state=State.DOWNLOADING, data_swarm=swarm),
                         SimpleNamespace(state=State.PAUSED, data_swarm=None)],
            host=SimpleNamespace(writer=SimpleNamespace(queued_bytes=4096, waits=3),
                                 hasher=SimpleNamespace(queued_bytes=0, waits=0)))
        trackers = SimpleNamespace(clients={1: SimpleNamespace(connected=True),
                                            2: SimpleNamespace(connected=False)})
        samples = samples_of(DaemonCollector(stats, transfers, trackers))
        self.assertEqual(total(samples, "peerit_daemon_received_bytes_total"), 1800)
        self.assertEqual(total(samples, "peerit_daemon_received_bytes_total", path="relay"),
                         1000)
        self.assertEqual(total(samples, "peerit_daemon_sent_bytes_total", path="lan"), 50)
        self.assertEqual(total(samples, "peerit_daemon_peers"), 2)
        self.assertEqual(total(samples, "peerit_daemon_peers", path="relay"), 0)
        self.assertEqual(total(samples, "peerit_daemon_pieces_verified_total"), 7)
        self.assertEqual(total(samples, "peerit_daemon_punches_total",
                               nat_pair="independent-dependent", outcome="success"), 1)
        self.assertEqual(total(samples, "peerit_daemon_tracker_sessions", state="up"), 1)
        self.assertEqual(total(samples, "peerit_daemon_write_queue_bytes"), 4096)
        self.assertEqual(total(samples, "peerit_daemon_transfers", state="downloading"), 1)
        self.assertEqual(total(samples, "peerit_daemon_transfers", state="paused"), 1)
        self.assertEqual(total(samples, "peerit_daemon_queue_full_waits_total", queue="write"),
                         3)


class DocumentationTests(SynchronousTestCase):
    def test_every_exported_metric_is_documented(self):
        """docs/observability.md lists each family both collectors export."""
        docs = Path(__file__).resolve().parents[2] / "docs"
        text = (docs / "observability.md").read_text()
        tracker = Tracker(Clock(), MemorySwarmStore())
        families = list(TrackerCollector(tracker, NatCoordinator(tracker, RelayBroker(Clock())),
                                         RelayBroker(Clock()),
                                         stun=lambda: StunResponder(Clock())).collect())
        families += list(DaemonCollector(
            DaemonStats(), SimpleNamespace(all=lambda: [], host=None),
            SimpleNamespace(clients={})).collect())
        names = {f.name + ("_total" if f.type == "counter" else "") for f in families}
        self.assertGreater(len(names), 30)
        for name in sorted(names):
            self.assertIn(f"`{name}`", text, name)
        # The dashboard queries only what is exported.
        dashboard = json.loads((docs / "grafana-peerit.json").read_text())
        queried = {re.sub(r"_(bucket|count|sum)$", "", name)
                   for panel in dashboard["panels"] for target in panel.get("targets", ())
                   for name in re.findall(r"peerit_[a-z_]+", target["expr"])}
        self.assertGreater(len(queried), 20)
        self.assertEqual(queried - names, set())


class DaemonOptionTests(SynchronousTestCase):
    def daemon(self, *extra):
        import tempfile
        from twisted.internet.testing import MemoryReactorClock
        from peerit.daemon import tap
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        options = tap.Options()
        options.parseOptions(["--data-dir", directory.name + "/d", *extra])
        return tap.makeService(options, reactor=MemoryReactorClock())

    def test_metrics_is_one_more_child_on_loopback(self):
        daemon = self.daemon("--metrics", "tcp:0")
        # A face: before the control socket, whose appearance tells scripts "ready".
        self.assertEqual([child.name for child in daemon][-2:], ["peerit-metrics", "control"])
        self.assertEqual(daemon.getServiceNamed("peerit-metrics").description,
                         "tcp:0:interface=127.0.0.1")
        self.assertNotIn("peerit-metrics", [child.name for child in self.daemon()])

    def test_metrics_on_another_interface_is_refused(self):
        from twisted.python.usage import UsageError as OptionsError
        for spec in ("tcp:9465:interface=0.0.0.0", "tcp:9465:interface=192.0.2.1", "udp:1"):
            with self.assertRaises(OptionsError):
                self.daemon("--metrics", spec)
