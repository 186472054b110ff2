"""``twistd peerit-tracker`` options and the service they make (no sockets)."""

import os
import resource
import shutil
import tempfile

from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.application.service import IService, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from peerit.errors import UsageError
from peerit.identity import Identity
from peerit.tracker import tap
from peerit.tracker.mailbox import MailboxService
from peerit.endpoints import tcp_description
from peerit.tracker.service import (
    ENDPOINT_FILE, TrackerService, advertised_host, raise_open_files_limit)
from peerit.tracker.session import Limits, Tracker
from peerit.tracker.store import MemorySwarmStore
from peerit.wire import tracker as wire


class ListenDescriptionTests(SynchronousTestCase):
    def test_tcp_is_kept_and_ssl_becomes_tcp_under_our_tls(self):
        self.assertEqual(tcp_description("tcp:0:interface=127.0.0.1"),
                         "tcp:0:interface=127.0.0.1")
        self.assertEqual(tcp_description("ssl:59000:privateKey=k.pem:certKey=c.pem:"
                                         "interface=\\:\\:1"),
                         "tcp:59000:interface=\\:\\:1")

    def test_other_endpoint_types_are_refused(self):
        for bad in ("unix:/tmp/x", "udp:59000", "tcp", ""):
            with self.assertRaises(UsageError):
                tcp_description(bad)

    def test_local_clients_are_pointed_at_loopback_when_bound_to_all(self):
        self.assertEqual(advertised_host("0.0.0.0"), "127.0.0.1")
        self.assertEqual(advertised_host("::"), "127.0.0.1")
        self.assertEqual(advertised_host("192.0.2.5"), "192.0.2.5")


class OpenFilesLimitTests(SynchronousTestCase):
    """The soft RLIMIT_NOFILE is raised towards what the session cap needs, never past the
    hard limit and never lowered."""

    def limit(self, soft, hard, needed):
        calls = []
        result = raise_open_files_limit(
            needed, getrlimit=lambda _: (soft, hard),
            setrlimit=lambda _, limits: calls.append(limits))
        return result, calls

    def test_raised_to_what_is_needed(self):
        self.assertEqual(self.limit(1024, 65536, 20720), ((20720, 65536), [(20720, 65536)]))

    def test_at_most_the_hard_limit(self):
        self.assertEqual(self.limit(1024, 4096, 20720), ((4096, 4096), [(4096, 4096)]))

    def test_an_unlimited_hard_limit_gives_what_is_needed(self):
        infinity = resource.RLIM_INFINITY
        self.assertEqual(self.limit(1024, infinity, 30000),
                         ((30000, infinity), [(30000, infinity)]))

    def test_a_higher_or_unlimited_soft_limit_is_left_alone(self):
        self.assertEqual(self.limit(50000, 65536, 20720), ((50000, 65536), []))
        infinity = resource.RLIM_INFINITY
        self.assertEqual(self.limit(infinity, infinity, 20720), ((infinity, infinity), []))


class OpenFilesCheckTests(SynchronousTestCase):
    """The service asks for sessions + other connections + spare, and says so when the
    process may not open that many files."""

    def service(self, limits):
        asked = []

        def rlimit(needed):
            asked.append(needed)
            return limits
        tracker = Tracker(MemoryReactorClock(), MemorySwarmStore(), Limits(max_sessions=1000))
        service = TrackerService(MemoryReactorClock(), tracker, Identity.generate(),
                                 "tcp:0:interface=127.0.0.1", self.mktemp(),
                                 other_connections=656, rlimit=rlimit)
        with capturedLogs() as events:
            service.privilegedStartService()
        service.port.stopListening()
        return asked, [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]

    def test_enough_files_is_quiet(self):
        self.assertEqual(self.service((1720, 4096)), ([1000 + 656 + 64], []))

    def test_too_few_files_is_one_warning_with_the_sessions_possible(self):
        asked, [warning] = self.service((1024, 1024))
        self.assertEqual(asked, [1720])
        self.assertIn("only 1024 open files allowed (hard limit 1024): about 304 sessions "
                      "at once, not --max-sessions 1000", warning)


class OptionsTests(SynchronousTestCase):
    def test_defaults_are_the_limits_defaults(self):
        options = tap.Options()
        options.parseOptions(["--data-dir", "unused"])
        self.assertEqual(options["listen"], "tcp:59000")
        self.assertEqual(options.limits, Limits())

    def test_limits_come_from_options(self):
        options = tap.Options()
        options.parseOptions(["--data-dir", "d", "--idle-timeout", "3", "--max-swarms", "7",
                              "--max-sessions-per-address", "9", "--request-rate", "2.5"])
        self.assertEqual((options.limits.idle_timeout, options.limits.max_swarms_per_session,
                          options.limits.max_sessions_per_address,
                          options.limits.request_rate), (3.0, 7, 9, 2.5))

    def test_bad_values_are_usage_errors(self):
        for argv in (["--idle-timeout", "0"], ["--max-peers", "500"], ["--listen", "udp:1"],
                     ["--max-swarms", "-1"], ["--max-frame-size", "10"]):
            with self.assertRaises(usage.UsageError, msg=argv):
                tap.Options().parseOptions(["--data-dir", "d", *argv])


class MakeServiceTests(SynchronousTestCase):
    def test_service_listens_with_tls_and_writes_the_endpoint_once_running(self):
        data_dir = tempfile.mkdtemp(prefix="peerit-tap-test-")
        self.addCleanup(shutil.rmtree, data_dir, True)
        options = tap.Options()
        options.parseOptions(["--data-dir", data_dir, "--listen", "tcp:0:interface=127.0.0.1",
                              "--stun", "none", "--relay", "none"])
        reactor = MemoryReactorClock()
        top = tap.makeService(options, reactor=reactor)
        self.assertIsInstance(top, MultiService)
        top.privilegedStartService()
        top.startService()
        [(port, factory, _, interface)] = reactor.tcpServers
        self.assertEqual(interface, "127.0.0.1")
        self.assertIsInstance(factory, TLSMemoryBIOFactory)
        endpoint = os.path.join(data_dir, ENDPOINT_FILE)
        self.assertFalse(os.path.exists(endpoint), "not before the reactor runs")
        reactor.run()  # MemoryReactor: fires the startup triggers only
        with open(endpoint) as f:
            text = f.read().strip()
        identity = Identity.load_or_create(data_dir)
        self.assertTrue(text.endswith("#" + identity.fingerprint), text)
        IService(top).stopService()
        self.assertFalse(os.path.exists(endpoint))


class _FakeUDPPort:
    def __init__(self, port, interface):
        self.port, self.interface = port or 50000 + id(self) % 1000, interface
        self.stopped = False

    def getHost(self):
        from twisted.internet.address import IPv4Address
        return IPv4Address("UDP", self.interface or "0.0.0.0", self.port)

    def stopListening(self):
        self.stopped = True


class _ReactorWithUDP(MemoryReactorClock):
    def __init__(self):
        super().__init__()
        self.udp = []

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        bound = _FakeUDPPort(port, interface)
        self.udp.append((bound, protocol))
        return bound


class NatOptionsTests(SynchronousTestCase):
    def test_auto_means_standard_ports_on_the_listen_interface(self):
        self.assertEqual(tap.nat_endpoints("tcp:59000", "auto", "auto", "auto"),
                         ("udp:3478", 3479, "tcp:59001"))
        self.assertEqual(tap.nat_endpoints("tcp:59000:interface=\\:\\:1", "auto", "0", "auto"),
                         ("udp:3478:interface=\\:\\:1", 0, "tcp:59001:interface=\\:\\:1"))

    def test_auto_means_free_ports_when_the_tracker_listens_on_a_free_port(self):
        self.assertEqual(tap.nat_endpoints("tcp:0:interface=127.0.0.1", "auto", "auto", "auto"),
                         ("udp:0:interface=127.0.0.1", None, "tcp:0:interface=127.0.0.1"))

    def test_explicit_endpoints_and_none(self):
        self.assertEqual(tap.nat_endpoints("tcp:59000", "udp:4000", "auto", "tcp:6000"),
                         ("udp:4000", 4001, "tcp:6000"))
        self.assertEqual(tap.nat_endpoints("tcp:59000", "none", "auto", "none"),
                         (None, None, None))
        with self.assertRaises(UsageError):
            tap.nat_endpoints("tcp:59000", "udp:4000", "4000", "none")
        with self.assertRaises(UsageError):
            tap.nat_endpoints("tcp:59000", "tcp:4000", "auto", "none")

    def test_relay_host_is_given_or_the_relays_concrete_interface(self):
        """--relay-host wins; else the --relay interface when it is an address; else none
        (a wildcard interface, or no relay at all)."""
        self.assertEqual(tap.relay_host("192.0.2.5", "tcp:59001"), "192.0.2.5")
        self.assertEqual(tap.relay_host("2001:DB8::5", "tcp:59001"), "2001:db8::5")
        self.assertEqual(tap.relay_host(None, "tcp:0:interface=127.0.0.2"), "127.0.0.2")
        self.assertEqual(tap.relay_host(None, "tcp:59001:interface=\\:\\:1"), "::1")
        self.assertEqual(tap.relay_host(None, "tcp:59001:interface=0.0.0.0"), "")
        self.assertEqual(tap.relay_host(None, "tcp:59001"), "")
        self.assertEqual(tap.relay_host("192.0.2.5", None), "")
        for bad in ("relay.example.org", "0.0.0.0", "::", "224.0.0.1", "192.0.2"):
            with self.assertRaises(UsageError, msg=bad):
                tap.relay_host(bad, "tcp:59001")

    def test_relay_host_option_is_checked_and_kept(self):
        options = tap.Options()
        options.parseOptions(["--data-dir", "d", "--relay-host", "198.51.100.7"])
        self.assertEqual(options.relay_host, "198.51.100.7")
        with self.assertRaises(usage.UsageError) as caught:
            tap.Options().parseOptions(["--data-dir", "d", "--relay-host", "relay.example"])
        self.assertIn("--relay-host", str(caught.exception))

    def test_relay_rates_take_units(self):
        self.assertEqual([tap.parse_rate(t) for t in ("10M", "512k", "8Mi", "1e6", "100")],
                         [10e6, 512e3, 8 * 2**20, 1e6, 100.0])
        for bad in ("0", "-5M", "10X", "fast"):
            with self.assertRaises(ValueError, msg=bad):
                tap.parse_rate(bad)

    def test_relay_options_make_the_relay_limits(self):
        options = tap.Options()
        options.parseOptions(["--data-dir", "d", "--relay-rate", "2M", "--relay-sessions", "9",
                              "--relay-idle-timeout", "30", "--nat-attempts", "3"])
        self.assertEqual((options.relay_limits.rate, options.relay_limits.max_sessions,
                          options.relay_limits.idle_timeout, options.nat_limits.max_attempts),
                         (2e6, 9, 30.0, 3))
        with self.assertRaises(usage.UsageError):
            tap.Options().parseOptions(["--data-dir", "d", "--relay-rate", "0"])

    def test_the_service_binds_stun_and_relay_and_tells_sessions_where(self):
        data_dir = tempfile.mkdtemp(prefix="peerit-tap-test-")
        self.addCleanup(shutil.rmtree, data_dir, True)
        options = tap.Options()
        options.parseOptions(["--data-dir", data_dir, "--listen", "tcp:59000",
                              "--stun", "udp:3478:interface=127.0.0.1", "--stun-alt-port",
                              "3499", "--relay", "tcp:59001"])
        reactor = _ReactorWithUDP()
        top = tap.makeService(options, reactor=reactor)
        top.privilegedStartService()
        top.startService()
        self.assertEqual([(p.port, p.interface) for p, _ in reactor.udp],
                         [(3478, "127.0.0.1"), (3499, "127.0.0.1")])
        self.assertEqual(sorted(port for port, *_ in reactor.tcpServers), [59000, 59001])
        [relay_factory] = [f for port, f, *_ in reactor.tcpServers if port == 59001]
        self.assertEqual(type(relay_factory).__name__, "RelayFactory")
        nat = top.getServiceNamed("peerit-tracker-nat")
        self.assertEqual(nat.tracker.stun_info, wire.StunInfo(3478, 3499, 59001))
        IService(top).stopService()
        self.assertTrue(all(p.stopped for p, _ in reactor.udp))

    def test_with_everything_off_sessions_are_told_so(self):
        data_dir = tempfile.mkdtemp(prefix="peerit-tap-test-")
        self.addCleanup(shutil.rmtree, data_dir, True)
        options = tap.Options()
        options.parseOptions(["--data-dir", data_dir, "--stun", "none", "--relay", "none"])
        reactor = _ReactorWithUDP()
        top = tap.makeService(options, reactor=reactor)
        top.privilegedStartService()
        top.startService()
        self.assertEqual(reactor.udp, [])
        nat = top.getServiceNamed("peerit-tracker-nat")
        self.assertEqual(nat.tracker.stun_info, wire.StunInfo(0, 0, 0))
        IService(top).stopService()


class MailboxOptionsTests(SynchronousTestCase):
    def test_off_unless_asked(self):
        options = tap.Options()
        options.parseOptions(["--data-dir", "d"])
        self.assertIsNone(options.mailbox_endpoint)

    def test_auto_is_port_59002_on_the_listen_interface_or_free_with_tcp_0(self):
        self.assertEqual(tap.mailbox_endpoint("tcp:59000", "auto"), "tcp:59002")
        self.assertEqual(tap.mailbox_endpoint("tcp:59000:interface=10.0.0.1", "auto"),
                         "tcp:59002:interface=10.0.0.1")
        self.assertEqual(tap.mailbox_endpoint("tcp:0:interface=127.0.0.1", "auto"),
                         "tcp:0:interface=127.0.0.1")
        self.assertEqual(tap.mailbox_endpoint("tcp:59000", "tcp:7000"), "tcp:7000")

    def test_a_bad_endpoint_is_a_usage_error(self):
        with self.assertRaises(usage.UsageError):
            tap.Options().parseOptions(["--data-dir", "d", "--mailbox", "udp:5"])

    def test_the_mailbox_listens_and_writes_its_url_before_the_tracker_is_ready(self):
        data_dir = tempfile.mkdtemp(prefix="peerit-tap-test-")
        self.addCleanup(shutil.rmtree, data_dir, True)
        options = tap.Options()
        options.parseOptions(["--data-dir", data_dir, "--listen", "tcp:0:interface=127.0.0.1",
                              "--stun", "none", "--relay", "none", "--mailbox", "auto"])
        reactor = MemoryReactorClock()
        top = tap.makeService(options, reactor=reactor)
        top.privilegedStartService()
        top.startService()
        # The tracker's TLS port and the mailbox's web site; mailbox.url is there before
        # the tracker's readiness file (written once the reactor runs).
        self.assertEqual(sorted(isinstance(f, TLSMemoryBIOFactory)
                                for _, f, _, _ in reactor.tcpServers), [False, True])
        self.assertFalse(os.path.exists(os.path.join(data_dir, ENDPOINT_FILE)))
        with open(os.path.join(data_dir, "mailbox.url")) as f:
            self.assertRegex(f.read().strip(), r"^ws://127\.0\.0\.1:\d+/v1$")
        IService(top).stopService()
        self.assertFalse(os.path.exists(os.path.join(data_dir, "mailbox.url")))

    def test_the_mailbox_commits_without_waiting_for_the_disk(self):
        """Each relayed message is a commit: a write-ahead log synced at checkpoints only,
        not a rollback journal flushed twice per message."""
        data_dir = tempfile.mkdtemp(prefix="peerit-tap-test-")
        self.addCleanup(shutil.rmtree, data_dir, True)
        mailbox = MailboxService(MemoryReactorClock(), "tcp:0:interface=127.0.0.1", data_dir)
        db = mailbox.db
        self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()["journal_mode"], "wal")
        self.assertEqual(db.execute("PRAGMA synchronous").fetchone()["synchronous"], 1)
