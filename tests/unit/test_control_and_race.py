"""AMP control responders over an in-memory connection, and the connection race."""

from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from peerit.client import Client
from peerit.daemon.connector import Candidate, NoPath, Race
from peerit.daemon.control import ControlFactory
from peerit.daemon.operations import DaemonOperations
from peerit.daemon.transfers import Transfers
from peerit.errors import UnknownSwarm, UsageError


class FakeTransfer:
    def __init__(self, info_hash: bytes, name: str):
        self.info_hash = info_hash
        self.name = name
        self.paused = False
        self.swarm = None

        class M:
            pass
        self.metainfo = M()
        self.metainfo.name = name

    def summary(self):
        return {"info_hash": self.info_hash.hex(), "name": self.name, "role": "download",
                "state": "paused" if self.paused else "downloading", "path": "/x",
                "size": 10, "done": 5, "pieces": 2, "pieces_done": 1, "down_rate": 1.0,
                "up_rate": 0.0, "downloaded": 5, "uploaded": 0, "peers": 0,
                "known_peers": 0, "eta": -1.0, "hash_failures": 0, "banned": 0, "error": ""}

    def pause(self):
        self.paused = True


class FakeTransfers:
    """Just what the operations use of the registry; its real resolution rule (find) is
    reused."""

    def __init__(self):
        self.transfers = {bytes.fromhex("ab" * 32): FakeTransfer(bytes.fromhex("ab" * 32), "x"),
                          bytes.fromhex("ac" * 32): FakeTransfer(bytes.fromhex("ac" * 32), "y")}

    def all(self):
        return list(self.transfers.values())

    find = Transfers.find


class ControlTests(SynchronousTestCase):
    def connect(self):
        factory = ControlFactory(DaemonOperations(None, FakeTransfers(), None, None))
        client_proto, server_proto, pump = iosim.connectedServerAndClient(
            lambda: factory.buildProtocol(None), lambda: amp.AMP())
        return Client(client_proto, "memory", Clock()), pump, factory

    def result(self, coroutine, pump):
        d = ensureDeferred(coroutine)
        pump.flush()
        return self.successResultOf(d)

    def failure(self, coroutine, pump):
        d = ensureDeferred(coroutine)
        pump.flush()
        return self.failureResultOf(d)

    def test_status_by_unique_prefix(self):
        client, pump, _ = self.connect()
        status = self.result(client.status("ab"), pump)
        self.assertEqual(status.name, "x")

    def test_ambiguous_prefix_is_a_usage_error_with_its_message(self):
        client, pump, _ = self.connect()
        f = self.failure(client.status("a"), pump)
        f.trap(UsageError)
        self.assertIn("matches 2 transfers", f.getErrorMessage())

    def test_unknown_id_arrives_as_unknown_swarm(self):
        """The daemon's error class reaches the client intact (so the CLI's exit code)."""
        client, pump, _ = self.connect()
        f = self.failure(client.pause("ff"), pump)
        f.trap(UnknownSwarm)

    def test_pause_and_list(self):
        client, pump, _ = self.connect()
        self.result(client.pause("ac"), pump)
        listed = self.result(client.list(), pump)
        self.assertEqual([t.state for t in listed], ["downloading", "paused"])


class RaceTests(SynchronousTestCase):
    class Link:
        def __init__(self, name):
            self.name = name
            self.closed = None

        def close(self, reason):
            self.closed = reason

    def test_candidates_start_staggered_and_first_ready_wins_others_cancelled(self):
        clock = Clock()
        started, pending = [], {}

        def candidate(name):
            def start():
                started.append((name, clock.seconds()))
                d = Deferred(lambda _: pending.setdefault(name + "-cancelled", True))
                pending[name] = d
                return d
            return Candidate(name, start)
        race = Race(clock, [candidate("lan"), candidate("public"), candidate("relay")],
                    stagger=0.25)
        result = race.run()
        clock.advance(0.25)
        self.assertEqual([s[0] for s in started], ["lan", "public"])
        winner = self.Link("public")
        pending["public"].callback(winner)
        self.assertIs(self.successResultOf(result), winner)
        self.assertTrue(pending.get("lan-cancelled"))
        clock.advance(1)
        self.assertEqual(len(started), 2)  # relay never started
        self.assertAlmostEqual(winner.connect_seconds, 0.25)

    def test_failure_starts_the_next_at_once_and_all_failing_is_no_path(self):
        clock = Clock()
        race = Race(clock, [Candidate("a", lambda: fail(NoPath("refused"))),
                            Candidate("b", lambda: fail(NoPath("unreachable")))])
        f = self.failureResultOf(race.run())
        f.trap(NoPath)
        self.assertIn("a: refused", f.getErrorMessage())
        self.assertIn("b: unreachable", f.getErrorMessage())

    def test_deadline_gives_up(self):
        clock = Clock()
        race = Race(clock, [Candidate("slow", lambda: Deferred())], deadline=5)
        d = race.run()
        clock.advance(5)
        self.failureResultOf(d).trap(NoPath)

    def test_a_late_winner_after_the_race_is_closed(self):
        clock = Clock()
        pending = []
        race = Race(clock, [Candidate("a", lambda: pending.append(Deferred()) or pending[-1]),
                            Candidate("b", lambda: pending.append(Deferred()) or pending[-1])],
                    stagger=0.1)
        result = race.run()
        clock.advance(0.1)
        first = self.Link("b")
        pending[1].callback(first)
        self.successResultOf(result)
        self.assertTrue(pending[0].called)  # cancelled
