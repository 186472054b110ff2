"""A download known only by its link: a transfer in FETCHING on the same TransferHost, with
the same moves (pause, resume, stop), handing its verified metadata to the registry."""

import hashlib
import os
import random
import tempfile

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from peerit import links
from peerit.addresses import TrackerAddress
from peerit.daemon.metadata_fetch import metadata_answer
from peerit.daemon.metadata_phase import MetadataPhase
from peerit.daemon.state import StateDB
from peerit.daemon.transfer import State, TransferHost
from peerit.testing.swarms import make_metainfo
from peerit.wire.tracker import PeerInfo


class Tracker:
    connected = False

    def __init__(self):
        self.announced = []

    def announce(self, info_hash, event, left):
        self.announced.append((event, left))


class Link:
    """A peer link as a swarm sees it, answering metadata requests from ``info``."""

    def __init__(self, peer_id, info):
        self.peer_id, self.info = peer_id, info
        self.phase = None
        self.state = None
        self.closed = None
        self.answers = 0
        self.queue = []

    def send(self, message):
        self.queue += metadata_answer(self.info, message.piece, self.answers > 0)
        self.answers += 1

    def flush(self):
        while self.queue and self.closed is None:
            self.phase.swarm.handle(self.state, self.queue.pop(0))

    def close(self, reason):
        self.closed = reason


class MetadataPhaseTests(SynchronousTestCase):
    def setUp(self):
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        self.metainfo = make_metainfo(os.urandom(100_000), 1 << 14)
        self.tracker = Tracker()
        resume = StateDB(os.path.join(directory.name, "state.sqlite3"))
        self.addCleanup(resume.close)
        self.clock = Clock()
        self.trackers_asked = []
        self.host = TransferHost(
            clock=self.clock, rng=random.Random(1), peer_id=b"\x01" * 32, resume=resume,
            in_thread=maybeDeferred, hasher=None, writer=None,
            call_from_thread=lambda f, *a: f(*a),
            trackers_for=lambda named: self.trackers_asked.append(named) or [self.tracker],
            connect_peer=lambda info_hash, info: None)
        self.link = links.Link(self.metainfo.info_hash,
                               (TrackerAddress("127.0.0.1", 1, b"F" * 32),), "film", 12345)
        self.fetched = []
        self.phase = MetadataPhase(self.host, self.link, directory.name,
                                   lambda phase, info: self.fetched.append((phase, info)))

    def test_fetching_pausing_resuming_and_stopping_follow_the_transition_table(self):
        self.assertIs(self.phase.state, State.STOPPED)
        self.phase.start()
        self.assertIs(self.phase.state, State.FETCHING)
        self.assertEqual(self.trackers_asked, [self.link])  # the link names its trackers
        self.assertEqual(self.tracker.announced, [("started", 12345)])
        self.assertEqual(self.phase.summary()["state"],
                         "fetching metadata, waiting for peers")
        self.phase.pause()
        self.assertIs(self.phase.state, State.PAUSED)
        self.phase.resume()
        self.assertIs(self.phase.state, State.FETCHING)
        self.phase.stop("removed")
        self.assertIs(self.phase.state, State.STOPPED)

    def test_verified_metadata_goes_to_the_registry_out_of_the_fetchs_call_stack(self):
        self.phase.start()
        peer = Link(b"P" * 32, self.metainfo.info_bytes)
        peer.phase = self.phase
        peer.state = self.phase.swarm.attach(peer)
        peer.flush()
        self.assertEqual(self.fetched, [])  # not from inside the fetch
        self.clock.advance(0)
        [(phase, info)] = self.fetched
        self.assertIs(phase, self.phase)
        self.assertEqual(hashlib.sha256(info).digest(), self.metainfo.info_hash)
        summary = self.phase.summary()
        self.assertEqual((summary["name"], summary["size"], summary["pieces"]),
                         ("film", 12345, 0))

    def test_the_summary_says_when_only_liars_were_found(self):
        self.phase.start()
        liar = Link(b"L" * 32, b"\0" * len(self.metainfo.info_bytes))
        liar.phase = self.phase
        liar.state = self.phase.swarm.attach(liar)
        liar.flush()
        self.assertIn("banned", liar.closed)
        summary = self.phase.summary()
        self.assertEqual((summary["state"], summary["banned"]), ("metadata mismatch", 1))


class ConnectedTracker(Tracker):
    connected = True

    def __init__(self):
        super().__init__()
        self.asked = []

    def request_peers(self, info_hash, count):
        self.asked.append(Deferred())
        return self.asked[-1]


class EarlyLookupTests(SynchronousTestCase):
    """A code's receiver asks the tracker for its sender while the exchange ends, and dials
    the moment it starts."""

    def setUp(self):
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        metainfo = make_metainfo(os.urandom(100_000), 1 << 14)
        self.tracker = ConnectedTracker()
        resume = StateDB(os.path.join(directory.name, "state.sqlite3"))
        self.addCleanup(resume.close)
        self.clock = Clock()
        self.dialed = []
        self.sender = b"\x05" * 32
        self.host = TransferHost(
            clock=self.clock, rng=random.Random(1), peer_id=b"\x01" * 32, resume=resume,
            in_thread=maybeDeferred, hasher=None, writer=None,
            call_from_thread=lambda f, *a: f(*a),
            trackers_for=lambda named: [self.tracker],
            connect_peer=lambda info_hash, info: self.dialed.append(info.peer_id)
            or Deferred(),
            pinned=lambda info_hash: self.sender)
        link = links.Link(metainfo.info_hash, (TrackerAddress("127.0.0.1", 1, b"F" * 32),),
                          "film", 12345, self.sender)
        self.phase = MetadataPhase(self.host, link, directory.name, lambda *a: None)

    def peer(self, peer_id):
        return PeerInfo(peer_id, True, 7000, 0, "127.0.0.1")

    def test_peers_found_before_the_start_are_dialed_at_the_start_and_not_before(self):
        self.phase.look_up_peers()
        self.assertEqual(len(self.tracker.asked), 1)
        self.tracker.asked[0].callback([self.peer(b"\x09" * 32), self.peer(self.sender)])
        self.clock.advance(1)
        self.assertEqual(self.dialed, [])  # not before the sender confirmed
        self.phase.start()
        self.clock.advance(0)
        self.assertEqual(self.dialed, [self.sender])  # the pinned sender only, at once
        self.assertEqual(len(self.tracker.asked), 2)  # and the start asked again

