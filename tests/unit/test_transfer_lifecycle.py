"""A transfer's lifecycle: an enum changed only by the transfer, along its transition table,
with the daemon reduced to the narrow ``TransferHost`` it is given."""

import os
import random
import tempfile
from dataclasses import replace

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from peerit.daemon.state import StateDB, SwarmRecord
from peerit.daemon.transfer import TRANSITIONS, State, Transfer, TransferHost
from peerit.errors import PeeritError
from peerit.testing.swarms import make_metainfo

PIECE = 1 << 15


class Tracker:
    connected = False

    def __init__(self):
        self.announced = []
        self.peer_requests = 0

    def announce(self, info_hash, event, left):
        self.announced.append(event)

    def request_peers(self, info_hash, count):
        self.peer_requests += 1
        return Deferred()  # the answer does not matter here


class TransferTestCase(SynchronousTestCase):
    """One transfer's daemon side reduced to a TransferHost, a fake tracker and a Clock."""

    def setUp(self):
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        self.root = directory.name
        self.data = os.urandom(3 * PIECE + 100)
        self.metainfo = make_metainfo(self.data, PIECE)
        self.tracker = Tracker()
        self.resume = StateDB(os.path.join(self.root, "state.sqlite3"))
        self.addCleanup(self.resume.close)
        self.clock = Clock()
        self.host = TransferHost(
            clock=self.clock, rng=random.Random(1), peer_id=b"\x01" * 32,
            resume=self.resume, in_thread=maybeDeferred,  # the disk pool, synchronously
            hasher=None, writer=None, call_from_thread=lambda f, *a: f(*a),
            trackers_for=lambda metainfo: [self.tracker],
            connect_peer=lambda info_hash, info: None)

    def seed(self, data: bytes, trusted: bool = False) -> Transfer:
        with open(os.path.join(self.root, self.metainfo.name), "wb") as f:
            f.write(data)
        transfer = Transfer(self.host, self.metainfo, self.root, "seed")
        transfer.open(create=False)
        self.addCleanup(transfer.store.close)
        if trusted:  # as a share added without --check
            for piece in range(self.metainfo.piece_count):
                transfer.have.add(piece)
        return transfer


class TransferLifecycleTests(TransferTestCase):
    def test_a_checked_share_goes_stopped_checking_seeding(self):
        transfer = self.seed(self.data)
        self.assertIs(transfer.state, State.STOPPED)
        moves = []
        original = transfer._move
        transfer._move = lambda to: (moves.append(to), original(to))
        transfer.start(list(range(self.metainfo.piece_count)))
        self.assertEqual(moves, [State.CHECKING, State.SEEDING])
        self.assertEqual(transfer.summary()["state"], "seeding")
        self.assertEqual(self.tracker.announced, ["started"])

    def test_data_that_no_longer_matches_ends_in_error_and_resume_checks_again(self):
        transfer = self.seed(b"y" * len(self.data))
        transfer.start(list(range(self.metainfo.piece_count)))
        self.assertIs(transfer.state, State.ERROR)
        self.assertIn("no longer matches", transfer.summary()["error"])
        transfer.resume()  # an error is resumable: the swarm starts again
        self.assertIs(transfer.state, State.DOWNLOADING)  # without the pieces that failed
        self.assertIsNotNone(transfer.swarm)
        transfer.stop()

    def test_pause_and_resume_persist_and_move_paused_then_back(self):
        transfer = self.seed(self.data, trusted=True)
        self.resume.add(SwarmRecord(self.metainfo.info_hash, self.metainfo.to_bytes(),
                                    self.root, "seed", False, None, None, None, 0.0, None))
        transfer.start()
        self.assertIs(transfer.state, State.SEEDING)
        transfer.pause()
        self.assertIs(transfer.state, State.PAUSED)
        self.assertIsNone(transfer.swarm)
        self.assertEqual(self.tracker.announced, ["started", "stopped"])
        transfer.pause()  # twice is once
        self.assertIs(transfer.state, State.PAUSED)
        (record,) = self.resume.records()
        self.assertTrue(record.paused)  # a restart keeps it paused
        transfer.resume()
        self.assertIs(transfer.state, State.SEEDING)
        self.assertEqual(self.tracker.announced, ["started", "stopped", "started"])

    def test_stopping_a_running_transfer_leaves_it_stopped(self):
        transfer = self.seed(self.data, trusted=True)
        transfer.start()
        transfer.stop("removed")
        self.assertIs(transfer.state, State.STOPPED)
        self.assertEqual(transfer.summary()["state"], "stopped")

    def test_a_restored_transfer_whose_files_cannot_open_is_listed_in_error(self):
        transfer = Transfer(self.host, self.metainfo, self.root, "seed")
        transfer.cannot_open(PeeritError("no such file"))
        self.assertEqual((transfer.summary()["state"], transfer.summary()["error"]),
                         ("error", "no such file"))

    def test_download_without_peers_shows_waiting_for_peers(self):
        transfer = Transfer(self.host, self.metainfo, self.root, "download")
        transfer.open(create=True)
        self.addCleanup(transfer.store.close)
        transfer.start()
        self.assertIs(transfer.state, State.DOWNLOADING)
        self.assertEqual(transfer.summary()["state"], "waiting for peers")
        transfer.stop()

    def test_moves_the_table_does_not_list_are_refused(self):
        transfer = Transfer(self.host, self.metainfo, self.root, "seed")
        with self.assertRaises(AssertionError):
            transfer._move(State.STOPPED)  # stopped -> stopped is no move
        transfer._move(State.SEEDING)
        with self.assertRaises(AssertionError):
            transfer._move(State.DOWNLOADING)  # a seed never downloads again
        self.assertEqual(set(TRANSITIONS), set(State))


class TransferEventTests(TransferTestCase):
    """Every move is published to the host's event hub; errors at the next reactor turn."""

    def setUp(self):
        super().setUp()
        from dataclasses import replace

        from peerit.daemon.events import EventHub
        self.snapshots = {}
        self.hub = EventHub(self.clock, lambda key: self.snapshots.get(key))
        self.host = replace(self.host, events=self.hub)
        self.published = []
        self.hub.subscribe(self.published.extend)

    def test_moves_are_published_once_per_tick_and_errors_at_once(self):
        transfer = self.seed(self.data)
        key = transfer.event_key
        self.snapshots[key] = {"state": "checking"}
        transfer.start(list(range(self.metainfo.piece_count)))  # checking, then seeding
        self.snapshots[key] = {"state": "seeding"}
        self.assertEqual(self.published, [])
        self.clock.advance(1)
        self.assertEqual([e["data"] for e in self.published], [{"state": "seeding"}])
        transfer.pause()
        self.snapshots[key] = {"state": "error"}
        transfer._fail("disk gone")
        self.clock.advance(0)  # not a whole tick: an error is said at once
        self.assertEqual(self.published[-1]["data"], {"state": "error"})


class Stage:
    """A BlockWriter run by hand: submitted and called work waits in order until ``run``."""

    def __init__(self):
        self.queue = []

    def submit(self, size, function, *args):
        self.queue.append((function, args, None))

    def call(self, function, *args):
        d = Deferred()
        self.queue.append((function, args, d))
        return d

    def run(self):
        while self.queue:
            function, args, d = self.queue.pop(0)
            result = function(*args)
            if d is not None:
                d.callback(result)


class FileCreationOrderTests(TransferTestCase):
    """A new download's files are made on the writer thread while it announces; no block
    of it is written before they exist."""

    def setUp(self):
        super().setUp()
        self.hasher, self.writer = Stage(), Stage()
        self.host = replace(self.host, hasher=self.hasher, writer=self.writer)

    def test_the_swarm_starts_before_the_files_exist_and_blocks_queue_behind_them(self):
        transfer = Transfer(self.host, self.metainfo, self.root, "download")
        self.addCleanup(transfer.store.close)
        made = []
        transfer.create_files().addCallback(made.append)
        transfer.start()
        self.addCleanup(transfer.stop)
        # Announced and downloading while the files are still only queued.
        self.assertEqual(self.tracker.announced, ["started"])
        self.assertIs(transfer.state, State.DOWNLOADING)
        self.assertFalse(os.path.exists(transfer.path))
        transfer._write_block(0, 0, self.data[:PIECE])
        self.hasher.run()
        self.assertEqual([f.__name__ for f, _, _ in self.writer.queue],
                         ["open_files", "_write_in_writer"])
        self.writer.run()
        self.assertEqual(made, [None])
        self.assertEqual(transfer._write_failures, set())
        with open(transfer.path, "rb") as f:
            self.assertEqual(f.read(PIECE), self.data[:PIECE])
        self.assertEqual(os.path.getsize(transfer.path), len(self.data))  # preallocated

    def test_a_target_that_cannot_be_made_is_refused_at_once(self):
        blocker = os.path.join(self.root, "file")
        with open(blocker, "wb"):
            pass
        transfer = Transfer(self.host, self.metainfo, os.path.join(blocker, "sub"),
                            "download")
        with self.assertRaises(PeeritError):
            transfer.create_files()
        self.assertEqual(self.writer.queue, [])


class PeerListTimingTests(TransferTestCase):
    """When a download asks its trackers for peers (no fixed wait once a session is up)."""

    def download(self) -> Transfer:
        transfer = Transfer(self.host, self.metainfo, self.root, "download")
        transfer.open(create=True)
        self.addCleanup(transfer.store.close)
        transfer.start([])
        self.addCleanup(transfer.stop)
        return transfer

    def test_a_download_asks_a_tracker_the_moment_its_session_comes_up(self):
        transfer = self.download()
        self.clock.advance(2.5)  # a maintenance round while the session is still connecting
        self.assertEqual(self.tracker.peer_requests, 0)
        self.tracker.connected = True
        transfer.tracker_up(self.tracker)
        self.assertEqual(self.tracker.peer_requests, 1)

    def test_a_round_with_no_session_up_does_not_delay_the_next_request(self):
        transfer = self.download()
        self.clock.advance(2.5)  # nothing connected: nothing asked, nothing stamped
        self.tracker.connected = True
        self.clock.advance(2.0)  # the next round asks, without waiting a whole refresh
        self.assertEqual(self.tracker.peer_requests, 1)
        self.assertIs(transfer.state, State.DOWNLOADING)

    def test_a_seed_does_not_ask_for_peers_when_a_session_comes_up(self):
        transfer = self.seed(self.data, trusted=True)
        transfer.start(list(range(self.metainfo.piece_count)))
        self.tracker.connected = True
        transfer.tracker_up(self.tracker)
        self.assertEqual(self.tracker.peer_requests, 0)
