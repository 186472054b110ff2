"""Tracker session logic over the swarm table: announces, peer lists, pushes, expiry, limits.

Sessions are driven directly (a fake link records what the tracker writes) with ``task.Clock``;
the TLS adapter is tested in test_tracker_protocol.py.
"""

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from peerit.tracker.session import ACTIVE, CLOSED, Limits, SessionClosed, Tracker
from peerit.tracker.store import MemorySwarmStore
from peerit.wire import tracker as wire
from peerit.wire.framing import FrameDecoder, frame

SWARM = b"S" * 32
OTHER_SWARM = b"T" * 32


def peer_id(n: int) -> bytes:
    return bytes([n]) * 32


class FakeLink:
    """Records what the tracker writes and whether it closed the connection."""

    def __init__(self):
        self.decoder = FrameDecoder(wire.MAX_TRACKER_FRAME_SIZE)
        self.inbox = []
        self.closed = False
        self.aborted = False

    def write(self, data):
        self.inbox += [wire.parse(body) for body in self.decoder.feed(data)]

    def close(self):
        self.closed = True

    def abort(self):
        self.aborted = True

    def take(self, kind=None):
        messages, self.inbox = self.inbox, []
        return [m for m in messages if kind is None or type(m) is kind]


class Peer:
    """A daemon's view of its session, for tests."""

    def __init__(self, tracker, number, host="198.51.100.7", port=40000, hello=None,
                 greet=True):
        self.peer_id = peer_id(number)
        self.link = FakeLink()
        self.session = tracker.open_session(self.link, host, port)
        if self.session is None:
            return
        self.session.handshake_completed(self.peer_id)
        if greet:
            self.send(hello or wire.Hello(6881, 6882, ("192.168.1.5",)))

    def send(self, *messages):
        self.session.data_received(b"".join(frame(wire.build(m)) for m in messages))

    def announce(self, info_hash=SWARM, event="started", left=100):
        self.send(wire.Announce(info_hash, event, left))

    def peers(self, info_hash=SWARM, max_peers=50):
        self.link.take()
        self.send(wire.PeerListRequest(info_hash, max_peers))
        [answer] = self.link.take(wire.PeerList)
        return answer.peers

    def error(self):
        [error] = self.link.take(wire.Error)
        return error


class TrackerTestCase(SynchronousTestCase):
    def make_tracker(self, **limits):
        self.clock = Clock()
        self.store = MemorySwarmStore(random.Random(7))
        self.tracker = Tracker(self.clock, self.store, Limits(**limits), random.Random(7))
        return self.tracker


class GreetingTests(TrackerTestCase):
    def test_hello_is_answered_with_the_observed_address_and_proven_id(self):
        self.make_tracker(idle_timeout=60)
        a = Peer(self.tracker, 1, host="::ffff:203.0.113.4", port=51000)
        [welcome] = a.link.take()
        self.assertEqual(welcome, wire.Welcome(wire.Endpoint("203.0.113.4", 51000), 20000,
                                               a.peer_id))
        self.assertEqual(a.session.state, ACTIVE)
        self.assertIs(self.tracker.session_of(a.peer_id), a.session)

    def test_messages_before_hello_are_a_protocol_violation(self):
        self.make_tracker()
        a = Peer(self.tracker, 1, greet=False)
        a.announce()
        self.assertEqual(a.error().code, "protocol_violation")
        self.assertTrue(a.link.closed)
        self.assertEqual(self.store.stats()["entries"], 0)

    def test_a_second_hello_is_a_protocol_violation(self):
        self.make_tracker()
        a = Peer(self.tracker, 1)
        a.send(wire.Hello(1))
        self.assertEqual(a.error().code, "protocol_violation")
        self.assertEqual(a.session.state, CLOSED)

    def test_another_protocol_version_is_refused(self):
        self.make_tracker()
        a = Peer(self.tracker, 1, hello=wire.Hello(6881, version=2))
        self.assertEqual(a.error().code, "unsupported_version")
        self.assertTrue(a.link.closed)

    def test_nothing_is_accepted_before_tls_proves_a_peer_id(self):
        self.make_tracker()
        link = FakeLink()
        session = self.tracker.open_session(link, "198.51.100.7", 1)
        session.data_received(frame(wire.build(wire.Hello(1))))
        self.assertEqual(session.state, CLOSED)
        self.assertTrue(link.closed)
        self.assertEqual(link.inbox, [], "no plaintext error before TLS is up")

    def test_unusable_lan_addresses_are_not_handed_out(self):
        self.make_tracker()
        Peer(self.tracker, 1, hello=wire.Hello(1, 0, ("0.0.0.0", "224.0.0.1", "10.1.2.3")))
        self.assertEqual(self.store.stats()["peers"], 1)
        a = Peer(self.tracker, 2)
        self.tracker.session_of(peer_id(1))
        Peer(self.tracker, 1, hello=wire.Hello(1, 0, ("0.0.0.0", "10.1.2.3"))).announce()
        [peer] = a.peers()
        self.assertEqual(peer.lan_addresses, ("10.1.2.3",))


class AnnounceTests(TrackerTestCase):
    def setUp(self):
        self.make_tracker()

    def test_announced_peer_appears_in_others_peer_lists_with_its_addresses(self):
        a = Peer(self.tracker, 1, host="203.0.113.4", hello=wire.Hello(6881, 6882, ("10.0.0.4",)))
        b = Peer(self.tracker, 2)
        a.announce(left=500)
        self.assertEqual(b.peers(), (
            wire.PeerInfo(a.peer_id, False, 6881, 6882, "203.0.113.4", ("10.0.0.4",)),))

    def test_peer_list_never_contains_the_asker(self):
        a = Peer(self.tracker, 1)
        a.announce()
        self.assertEqual(a.peers(), ())
        b = Peer(self.tracker, 2)
        b.announce()
        self.assertEqual([p.peer_id for p in a.peers()], [b.peer_id])

    def test_unknown_swarm_gives_an_empty_list(self):
        a = Peer(self.tracker, 1)
        self.assertEqual(a.peers(OTHER_SWARM), ())

    def test_completed_marks_a_seeder_and_left_zero_starts_as_one(self):
        a, b, c = (Peer(self.tracker, n) for n in (1, 2, 3))
        a.announce(left=10)
        a.announce(event="completed", left=0)
        b.announce(left=0)
        self.assertEqual({p.peer_id: p.seeder for p in c.peers()},
                         {a.peer_id: True, b.peer_id: True})

    def test_stopped_removes_only_that_swarm_entry(self):
        a, b = Peer(self.tracker, 1), Peer(self.tracker, 2)
        a.announce(SWARM)
        a.announce(OTHER_SWARM)
        a.announce(SWARM, event="stopped")
        self.assertEqual(b.peers(SWARM), ())
        self.assertEqual(len(b.peers(OTHER_SWARM)), 1)

    def test_peer_list_is_capped_by_request_and_by_the_tracker(self):
        self.make_tracker(max_peers_per_list=5)
        asker = Peer(self.tracker, 0)
        for n in range(1, 21):
            Peer(self.tracker, n, host=f"198.51.100.{n}").announce()
        self.assertEqual(len(asker.peers(max_peers=3)), 3)
        self.assertEqual(len(asker.peers(max_peers=200)), 5)

    def test_peer_lists_are_random_samples(self):
        asker = Peer(self.tracker, 0)
        for n in range(1, 21):
            Peer(self.tracker, n, host=f"198.51.100.{n}").announce()
        seen = set()
        for _ in range(30):
            sample = [p.peer_id for p in asker.peers(max_peers=5)]
            self.assertEqual(len(set(sample)), 5)
            seen.update(sample)
        self.assertEqual(seen, {peer_id(n) for n in range(1, 21)})

    def test_leechers_get_seeders_first_and_seeders_get_leechers_first(self):
        for n in range(1, 4):
            Peer(self.tracker, n, host=f"198.51.100.{n}").announce(left=0)
        for n in range(4, 20):
            Peer(self.tracker, n, host=f"198.51.100.{n}").announce(left=7)
        leecher = self.tracker.session_of(peer_id(19))
        leecher_view = Peer.__new__(Peer)
        leecher_view.link, leecher_view.session = leecher.link, leecher
        self.assertEqual({p.peer_id for p in leecher_view.peers(max_peers=3)},
                         {peer_id(1), peer_id(2), peer_id(3)})
        seeder = self.tracker.session_of(peer_id(1))
        seeder_view = Peer.__new__(Peer)
        seeder_view.link, seeder_view.session = seeder.link, seeder
        self.assertFalse(any(p.seeder for p in seeder_view.peers(max_peers=10)))

    def test_members_are_told_when_a_peer_joins_but_not_on_updates(self):
        a, b, c = (Peer(self.tracker, n) for n in (1, 2, 3))
        a.announce()
        b.announce()
        for p in (a, b, c):
            p.link.take()
        c.announce(left=3)
        joined = a.link.take(wire.PeerJoined)
        self.assertEqual([(j.info_hash, j.peer.peer_id, j.peer.seeder) for j in joined],
                         [(SWARM, c.peer_id, False)])
        self.assertEqual(len(b.link.take(wire.PeerJoined)), 1)
        self.assertEqual(c.link.take(wire.PeerJoined), [], "the newcomer is not told of itself")
        c.announce(event="update", left=1)
        self.assertEqual(a.link.take(wire.PeerJoined), [])

    def test_push_fanout_is_capped(self):
        self.make_tracker(push_fanout=3)
        members = [Peer(self.tracker, n, host=f"198.51.100.{n}") for n in range(1, 11)]
        for m in members:
            m.announce()
        for m in members:
            m.link.take()
        Peer(self.tracker, 50).announce()
        told = sum(len(m.link.take(wire.PeerJoined)) for m in members)
        self.assertEqual(told, 3)


class ImpersonationTests(TrackerTestCase):
    def setUp(self):
        self.make_tracker()

    def test_a_session_cannot_remove_another_peers_entry(self):
        """Messages carry no peer id: a 'stopped' from B only ever means B."""
        a, b, c = (Peer(self.tracker, n) for n in (1, 2, 3))
        a.announce()
        b.announce(event="stopped")
        b.announce(event="completed", left=0)
        listed = {p.peer_id: p.seeder for p in c.peers()}
        self.assertEqual(listed, {a.peer_id: False, b.peer_id: True})

    def test_a_session_cannot_change_another_peers_contact(self):
        a = Peer(self.tracker, 1, host="203.0.113.1", hello=wire.Hello(1111))
        a.announce()
        Peer(self.tracker, 2, host="203.0.113.2", hello=wire.Hello(2222)).announce()
        c = Peer(self.tracker, 3)
        contact = {p.peer_id: (p.public_address, p.tcp_port) for p in c.peers()}
        self.assertEqual(contact[a.peer_id], ("203.0.113.1", 1111))

    def test_a_newer_session_of_the_same_peer_supersedes_the_old_one(self):
        old = Peer(self.tracker, 1, port=1)
        old.announce()
        new = Peer(self.tracker, 1, port=2)
        self.assertEqual(old.error().code, "superseded")
        self.assertEqual(old.session.state, CLOSED)
        new.announce()
        old.session.connection_lost()  # the old connection finally goes away
        watcher = Peer(self.tracker, 9)
        self.assertEqual([p.peer_id for p in watcher.peers()], [new.peer_id])
        self.assertIs(self.tracker.session_of(new.peer_id), new.session)

    def test_messages_only_the_tracker_sends_are_refused(self):
        a = Peer(self.tracker, 1)
        a.announce()
        a.send(wire.PeerJoined(SWARM, wire.PeerInfo(peer_id(5), True, 1, 1, "10.0.0.1")))
        self.assertEqual(a.error().code, "protocol_violation")
        self.assertEqual(self.store.stats()["entries"], 0, "its entries went with it")


class ExpiryTests(TrackerTestCase):
    def test_a_silent_session_is_dropped_with_its_entries_after_the_idle_timeout(self):
        self.make_tracker(idle_timeout=30)
        a = Peer(self.tracker, 1)
        a.announce()
        self.clock.advance(29)
        self.assertEqual(a.session.state, ACTIVE)
        self.clock.advance(1.5)
        self.assertEqual(a.session.state, CLOSED)
        self.assertEqual(a.error().code, "timed_out")
        self.assertTrue(a.link.closed)
        self.assertEqual(self.store.stats(), {"peers": 0, "swarms": 0, "entries": 0})

    def test_keepalives_keep_a_session_and_are_echoed(self):
        self.make_tracker(idle_timeout=30)
        a = Peer(self.tracker, 1)
        a.announce()
        for _ in range(10):
            self.clock.advance(10)
            a.link.take()
            a.send(wire.KeepAlive())
            self.assertEqual(a.link.take(), [wire.KeepAlive()])
        self.assertEqual(a.session.state, ACTIVE)
        self.assertEqual(self.store.stats()["entries"], 1)

    def test_closing_the_connection_removes_the_entries(self):
        self.make_tracker()
        a, b = Peer(self.tracker, 1), Peer(self.tracker, 2)
        a.announce()
        a.session.connection_lost()
        self.assertEqual(b.peers(), ())
        self.assertIsNone(self.tracker.session_of(a.peer_id))
        self.assertEqual(self.tracker.session_count, 1)

    def test_no_hello_within_the_handshake_timeout_closes(self):
        self.make_tracker(handshake_timeout=5)
        a = Peer(self.tracker, 1, greet=False)
        self.clock.advance(5)
        self.assertEqual(a.error().code, "timed_out")
        self.assertEqual(self.tracker.session_count, 0)

    def test_a_connection_that_never_finishes_tls_is_dropped(self):
        self.make_tracker(handshake_timeout=5)
        link = FakeLink()
        session = self.tracker.open_session(link, "198.51.100.7", 1)
        self.clock.advance(5)
        self.assertEqual(session.state, CLOSED)
        self.assertTrue(link.closed)
        self.assertEqual(self.tracker.session_count, 0)

    def test_sweep_removes_entries_not_refreshed_within_the_timeout(self):
        self.make_tracker(idle_timeout=30)
        self.store.put_contact(
            __import__("peerit.tracker.store", fromlist=["Contact"]).Contact(
                peer_id(7), 1, 0, "10.0.0.7"), self.clock.seconds())
        self.store.announce(SWARM, peer_id(7), False, self.clock.seconds())
        a = Peer(self.tracker, 1)
        a.announce()
        self.clock.advance(20)
        a.send(wire.KeepAlive())
        self.clock.advance(15)
        self.assertEqual(self.tracker.sweep(), [peer_id(7)])
        self.assertEqual([p.peer_id for p in Peer(self.tracker, 2).peers()], [a.peer_id])

    def test_a_reader_that_stalls_gets_no_pushes_and_is_dropped(self):
        self.make_tracker(idle_timeout=30)
        a, b = Peer(self.tracker, 1), Peer(self.tracker, 2)
        a.announce()
        a.session.producer_paused()
        self.assertFalse(self.tracker.send_to(a.peer_id, wire.Ping(1)))
        for _ in range(4):
            self.clock.advance(10)
            a.send(wire.KeepAlive())
            b.send(wire.KeepAlive())
        self.assertEqual(a.session.state, CLOSED)
        self.assertEqual(b.session.state, ACTIVE)
        self.assertEqual(b.peers(), ())


class LimitTests(TrackerTestCase):
    def test_swarm_cap_refuses_the_announce_but_keeps_the_session(self):
        self.make_tracker(max_swarms_per_session=2)
        a = Peer(self.tracker, 1)
        a.announce(b"1" * 32)
        a.announce(b"2" * 32)
        a.link.take()
        a.announce(b"3" * 32)
        error = a.error()
        self.assertEqual((error.code, error.refused_opcode, error.info_hash),
                         ("too_many_swarms", 3, b"3" * 32))
        a.announce(b"2" * 32, event="completed", left=0)  # updates are still fine
        self.assertEqual(a.session.state, ACTIVE)
        self.assertEqual(self.store.swarm_count(a.peer_id), 2)

    def test_requests_over_the_rate_are_refused_then_the_session_is_closed(self):
        self.make_tracker(request_rate=10, request_burst=5)
        a = Peer(self.tracker, 1)
        for _ in range(5):
            a.send(wire.Ping(1))
        self.assertEqual(len(a.link.take(wire.Pong)), 5)
        a.send(wire.PeerListRequest(SWARM, 10))
        error = a.error()
        self.assertEqual((error.code, error.refused_opcode, error.info_hash),
                         ("rate_limited", 4, SWARM))
        self.clock.advance(0.1)  # one token back
        a.send(wire.Ping(2))
        self.assertEqual(a.link.take(), [wire.Pong(2)])
        for _ in range(6):
            a.send(wire.Ping(3))
        self.assertEqual(a.session.state, CLOSED)

    def test_keepalives_are_not_rate_limited(self):
        self.make_tracker(request_rate=1, request_burst=1)
        a = Peer(self.tracker, 1)
        a.send(*[wire.KeepAlive()] * 20)
        self.assertEqual(a.session.state, ACTIVE)

    def test_sessions_per_source_address_are_capped(self):
        self.make_tracker(max_sessions_per_address=2)
        first = Peer(self.tracker, 1, host="192.0.2.1")
        Peer(self.tracker, 2, host="192.0.2.1")
        self.assertIsNone(Peer(self.tracker, 3, host="192.0.2.1").session)
        self.assertIsNotNone(Peer(self.tracker, 4, host="192.0.2.2").session)
        first.session.connection_lost()
        self.assertIsNotNone(Peer(self.tracker, 5, host="192.0.2.1").session)

    def test_total_sessions_are_capped(self):
        self.make_tracker(max_sessions=2)
        Peer(self.tracker, 1, host="192.0.2.1")
        Peer(self.tracker, 2, host="192.0.2.2")
        self.assertIsNone(Peer(self.tracker, 3, host="192.0.2.3").session)

    def test_an_oversized_frame_closes_the_session_before_it_is_buffered(self):
        self.make_tracker(max_frame_size=1024)
        a = Peer(self.tracker, 1)
        a.link.take()
        a.session.data_received((1025).to_bytes(4, "big") + b"x" * 10)
        self.assertEqual(a.error().code, "malformed", "refused on the length, not the body")
        self.assertTrue(a.link.closed)


class BadInputTests(TrackerTestCase):
    def setUp(self):
        self.make_tracker()

    def test_garbage_closes_only_that_session(self):
        a, b, c = (Peer(self.tracker, n) for n in (1, 2, 3))
        a.announce()
        b.announce()
        b.session.data_received(frame(b"\x03" + b"short"))
        self.assertEqual(b.error().code, "malformed")
        self.assertTrue(b.link.closed)
        self.assertEqual([p.peer_id for p in c.peers()], [a.peer_id])
        a.send(wire.Ping(5))
        self.assertEqual(a.link.take(wire.Pong), [wire.Pong(5)])

    def test_unknown_message_type_gets_its_own_error_code(self):
        a = Peer(self.tracker, 1)
        a.session.data_received(frame(b"\xee\x00"))
        self.assertEqual(a.error().code, "unknown_message")
        self.assertTrue(a.link.closed)

    def test_an_empty_frame_is_malformed(self):
        a = Peer(self.tracker, 1)
        a.session.data_received(frame(b""))
        self.assertEqual(a.error().code, "malformed")

    def test_frames_after_a_fatal_one_are_ignored(self):
        a = Peer(self.tracker, 1)
        a.link.take()
        a.session.data_received(frame(b"\xee") + frame(wire.build(wire.Announce(SWARM, "started",
                                                                                1))))
        self.assertEqual([type(m) for m in a.link.take()], [wire.Error])
        self.assertEqual(self.store.stats()["entries"], 0)

    def test_frames_split_across_reads_are_reassembled(self):
        a, b = Peer(self.tracker, 1), Peer(self.tracker, 2)
        data = frame(wire.build(wire.Announce(SWARM, "started", 1)))
        for i in range(len(data)):
            a.session.data_received(data[i:i + 1])
        self.assertEqual(len(b.peers()), 1)


class ExtensionTests(TrackerTestCase):
    def test_a_new_request_type_is_one_handler_and_can_push_to_another_peer(self):
        """As the NAT work will: a request from A makes the tracker push to B."""
        self.make_tracker()
        a, b = Peer(self.tracker, 1), Peer(self.tracker, 2)
        b.link.take()

        def relay_ping(session, ping):
            if not self.tracker.send_to(peer_id(2), wire.Ping(ping.nonce + 1)):
                raise SessionClosed("internal", "no such peer")
        self.tracker.register_handler(wire.Ping, relay_ping)
        a.send(wire.Ping(41))
        self.assertEqual(b.link.take(), [wire.Ping(42)])
        self.assertFalse(self.tracker.send_to(peer_id(99), wire.Ping(0)))

    def test_a_handler_can_end_the_session_with_an_error(self):
        self.make_tracker()
        a = Peer(self.tracker, 1)

        def refuse(session, ping):
            raise SessionClosed("internal", "not today")
        self.tracker.register_handler(wire.Ping, refuse)
        a.send(wire.Ping(1))
        error = a.error()
        self.assertEqual((error.code, error.reason), ("internal", "not today"))
        self.assertTrue(a.link.closed)

    def test_close_all_tells_every_session(self):
        self.make_tracker()
        peers = [Peer(self.tracker, n) for n in range(1, 4)]
        self.tracker.close_all()
        self.assertEqual([p.error().code for p in peers], ["shutting_down"] * 3)
        self.assertEqual(self.tracker.session_count, 0)
