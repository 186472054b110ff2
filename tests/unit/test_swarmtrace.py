"""The swarm's event trace (for bench/timeline.py): off by default, JSON lines when on."""

import json
import os
import random
import tempfile
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from peerit.bitfield import Bitfield
from peerit.daemon.swarm import Swarm, SwarmConfig
from peerit.daemon.swarmtrace import TRACE_VARIABLE, from_environment
from peerit.testing.swarms import MemoryNetwork, MemoryStore, make_metainfo, verifier

PIECE, BLOCK = 1 << 14, 1 << 12


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, event, **fields):
        self.events.append((event, fields))

    def flush(self):
        pass


def swarm(metainfo, data, n, clock, trace=None):
    store = MemoryStore(metainfo, data)
    have = Bitfield.full(metainfo.piece_count) if data else Bitfield(metainfo.piece_count)
    s = Swarm(metainfo, store, have, clock, random.Random(n), bytes([n]) * 32,
              verify=verifier(store), config=SwarmConfig(block_size=BLOCK), trace=trace)
    s.start()
    return s


class SwarmTraceTests(SynchronousTestCase):
    def test_events_of_a_download_in_order(self):
        """Attach, interest, requests, blocks, verified pieces and completion are traced on
        the downloader; the seeder traces its unchoke and every block it uploads."""
        data = os.urandom(3 * PIECE)
        metainfo, clock = make_metainfo(data, PIECE), Clock()
        seed_trace, dl_trace = Recorder(), Recorder()
        seeder = swarm(metainfo, data, 1, clock, seed_trace)
        leecher = swarm(metainfo, None, 2, clock, dl_trace)
        network = MemoryNetwork()
        network.connect(leecher, seeder)
        network.pump()
        self.assertTrue(leecher.complete)
        kinds = [e for e, _ in dl_trace.events]
        for earlier, later in [("attach", "interested"), ("interested", "peer_unchoke"),
                               ("peer_unchoke", "request"), ("request", "block"),
                               ("block", "verified"), ("verified", "complete")]:
            self.assertLess(kinds.index(earlier), kinds.index(later), kinds)
        self.assertEqual(kinds.count("verified"), 3)
        self.assertEqual(kinds.count("block"), 3 * PIECE // BLOCK)
        blocks = [f for e, f in dl_trace.events if e == "block"]
        self.assertEqual(sum(f["length"] for f in blocks), len(data))
        self.assertEqual({f["peer"] for f in blocks}, {seeder.my_peer_id.hex()[:12]})
        uploads = [f for e, f in seed_trace.events if e == "upload"]
        self.assertEqual(sum(f["length"] for f in uploads), len(data))
        self.assertIn(("unchoke", {"peer": leecher.my_peer_id.hex()[:12],
                                   "why": "interested"}), seed_trace.events)

    def test_off_without_the_variable(self):
        self.assertIsNone(from_environment(b"i" * 32, b"p" * 32, Clock(), environ={}))

    def test_on_writes_one_json_line_per_event(self):
        work = tempfile.TemporaryDirectory()
        self.addCleanup(work.cleanup)
        directory = Path(work.name) / "traces"
        clock = Clock()
        clock.advance(5)
        trace = from_environment(b"\x01" * 32, b"\x02" * 32, clock,
                                 environ={TRACE_VARIABLE: str(directory)})
        trace("have", peer="ab", piece=3)
        trace.close()
        trace("ignored after close")
        (path,) = directory.iterdir()
        self.assertEqual(path.name, f"{'02' * 6}-{'01' * 6}.jsonl")
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        self.assertEqual(lines, [
            {"t": 5.0, "e": "trace", "me": "02" * 6, "info_hash": "01" * 6},
            {"t": 5.0, "e": "have", "peer": "ab", "piece": 3}])
