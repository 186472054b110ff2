"""``twistd peerit-tracker`` options and the service they make (no sockets)."""

import os
import shutil
import tempfile

from twisted.application.service import IService, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from peerit.errors import UsageError
from peerit.identity import Identity
from peerit.tracker import tap
from peerit.tracker.service import ENDPOINT_FILE, advertised_host, tcp_description
from peerit.tracker.session import Limits


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
        self.assertEqual(type(factory).__name__, "TLSMemoryBIOFactory")
        endpoint = os.path.join(data_dir, ENDPOINT_FILE)
        self.assertFalse(os.path.exists(endpoint), "not before the reactor runs")
        reactor.run()  # MemoryReactor: fires the startup triggers only
        with open(endpoint) as f:
            text = f.read().strip()
        identity = Identity.load_or_create(data_dir)
        self.assertTrue(text.endswith("#" + identity.fingerprint), text)
        IService(top).stopService()
        self.assertFalse(os.path.exists(endpoint))
