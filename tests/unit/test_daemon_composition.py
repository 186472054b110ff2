"""The daemon as a MultiService of child services: their order, and how they start and
stop (each after the one before has finished)."""

import os
import tempfile

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from peerit.daemon import tap
from peerit.daemon.service import Daemon, OrderedMultiService
from peerit.errors import PeeritError, UnknownSwarm, UsageError


class Child(service.Service):
    def __init__(self, name, log, start=None, stop=None):
        self.name = name
        self.log = log
        self.start = start
        self.stop = stop

    def startService(self):
        super().startService()
        self.log.append(("start", self.name))
        return self.start

    def stopService(self):
        super().stopService()
        self.log.append(("stop", self.name))
        return self.stop


class OrderedMultiServiceTests(SynchronousTestCase):
    def test_each_child_starts_once_the_one_before_finished_starting(self):
        log, listening = [], Deferred()
        parent = OrderedMultiService(MemoryReactorClock())
        Child("a", log, start=listening).setServiceParent(parent)
        Child("b", log).setServiceParent(parent)
        parent.startService()
        self.assertEqual(log, [("start", "a")])
        listening.callback(None)
        self.assertEqual(log, [("start", "a"), ("start", "b")])

    def test_children_stop_in_reverse_each_once_the_one_after_has_stopped(self):
        log, syncing = [], Deferred()
        parent = OrderedMultiService(MemoryReactorClock())
        Child("a", log).setServiceParent(parent)
        Child("b", log, stop=syncing).setServiceParent(parent)
        parent.startService()
        done = parent.stopService()
        self.assertEqual(log[2:], [("stop", "b")])
        self.assertNoResult(done)
        syncing.callback(None)
        self.assertEqual(log[2:], [("stop", "b"), ("stop", "a")])
        self.successResultOf(done)

    def test_a_child_that_cannot_start_stops_the_program_with_a_failure_status(self):
        reactor = MemoryReactorClock()
        log = []
        parent = OrderedMultiService(reactor)

        class Refusing(Child):
            def startService(self):
                super().startService()
                raise PeeritError("cannot listen on /x: address in use")
        Refusing("a", log).setServiceParent(parent)
        Child("b", log).setServiceParent(parent)
        parent.startService()
        self.assertEqual(log, [("start", "a")])  # the rest never starts
        reactor.advance(0)
        self.assertTrue(reactor.hasStopped)
        (after,) = reactor.triggers["after"]["shutdown"]
        self.assertEqual((after[0].__name__, after[1]), ("_exit", (1,)))  # exit status 1
        self.flushLoggedErrors()


class DaemonCompositionTests(SynchronousTestCase):
    def mktemp(self) -> str:
        """A data folder that does not exist yet (nothing here starts the daemon)."""
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        return os.path.join(directory.name, "daemon")

    def daemon(self, *extra) -> Daemon:
        options = tap.Options()
        options.parseOptions(["--data-dir", self.mktemp(), *extra])
        return tap.makeService(options, reactor=MemoryReactorClock())

    def test_children_in_the_order_they_depend_on_each_other(self):
        daemon = self.daemon()
        self.assertEqual([child.name for child in daemon],
                         ["node", "peers", "udp", "trackers", "transfers", "control"])
        self.assertIs(daemon.control.operations, daemon.operations)
        self.assertIs(daemon.peers.router, daemon.transfers)

    def test_without_udp_there_is_no_udp_child_and_netcheck_says_why(self):
        daemon = Daemon(MemoryReactorClock(), self.mktemp(), "unix:/nonexistent/c.sock",
                        udp=None)
        self.assertNotIn("udp", [child.name for child in daemon])
        failure = self.failureResultOf(daemon.operations.netcheck(), PeeritError)
        self.assertIn("no UDP socket", failure.getErrorMessage())

    def test_operations_raise_the_error_classes_every_front_maps(self):
        """What the AMP responders (and any other front) get from the one implementation."""
        ops = Daemon(MemoryReactorClock(), self.mktemp(), "unix:/nonexistent/c.sock",
                     udp=None).operations
        self.assertRaises(UnknownSwarm, ops.status, "ff")
        self.assertRaises(UsageError, ops.pause, "not hex")
        self.assertRaises(UsageError, ops.list, 0, 0)
        self.assertRaises(UsageError, ops.download, "/tmp/x\x00.p2p", "")
        self.assertEqual(ops.list(0, 10), {"transfers": [], "total": 0})
