"""The in-memory swarm table: entries, roles, samples and expiry."""

import random

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from peerit.tracker.store import Contact, ISwarmStore, MemorySwarmStore
from peerit.wire import tracker as wire

A, B = b"A" * 32, b"B" * 32


def contact(n: int) -> Contact:
    return Contact(bytes([n]) * 32, 6000 + n, 0, f"10.0.0.{n}")


class MemorySwarmStoreTests(SynchronousTestCase):
    def setUp(self):
        self.store = MemorySwarmStore(random.Random(3))

    def test_provides_the_interface(self):
        self.assertTrue(verifyObject(ISwarmStore, self.store))

    def test_announce_reports_new_entries_and_tracks_roles(self):
        c = contact(1)
        self.store.put_contact(c, 0)
        self.assertTrue(self.store.announce(A, c.peer_id, False, 0))
        self.assertFalse(self.store.announce(A, c.peer_id, False, 1))
        self.assertFalse(self.store.announce(A, c.peer_id, True, 2), "role change is no join")
        self.assertIs(self.store.role(A, c.peer_id), True)
        self.assertIsNone(self.store.role(B, c.peer_id))
        self.assertEqual(self.store.stats(), {"peers": 1, "swarms": 1, "entries": 1})

    def test_sample_returns_encoded_peer_infos_with_the_swarm_role(self):
        for n in (1, 2):
            self.store.put_contact(contact(n), 0)
        self.store.announce(A, contact(1).peer_id, True, 0)
        self.store.announce(B, contact(1).peer_id, False, 0)
        [encoded] = self.store.sample(A, 10, contact(2).peer_id, True)
        [listed] = wire.parse(wire.peer_list_body(A, [encoded])).peers
        self.assertEqual(listed, contact(1).peer_info(True))
        [encoded] = self.store.sample(B, 10, contact(2).peer_id, True)
        self.assertFalse(wire.parse(wire.peer_list_body(B, [encoded])).peers[0].seeder)

    def test_remove_peer_drops_every_entry_and_empty_swarms(self):
        c = contact(1)
        self.store.put_contact(c, 0)
        self.store.announce(A, c.peer_id, False, 0)
        self.store.announce(B, c.peer_id, True, 0)
        self.assertEqual(sorted(self.store.remove_peer(c.peer_id)), [A, B])
        self.assertEqual(self.store.stats(), {"peers": 0, "swarms": 0, "entries": 0})
        self.assertEqual(self.store.remove_peer(c.peer_id), [])

    def test_a_new_contact_keeps_the_peers_entries(self):
        self.store.put_contact(contact(1), 0)
        self.store.announce(A, contact(1).peer_id, False, 0)
        moved = Contact(contact(1).peer_id, 7000, 0, "10.9.9.9")
        self.store.put_contact(moved, 5)
        self.assertEqual(self.store.peer_info(A, moved.peer_id), moved.peer_info(False))

    def test_peer_lists_carry_a_new_contact_in_every_swarm_and_role(self):
        """Peer lists copy cached encodings: a replaced contact must replace them all."""
        for n in (1, 2):
            self.store.put_contact(contact(n), 0)
        self.store.announce(A, contact(1).peer_id, False, 0)
        self.store.announce(B, contact(1).peer_id, True, 0)
        moved = Contact(contact(1).peer_id, 7000, 4000, "10.9.9.9", ("192.168.1.5",))
        self.store.put_contact(moved, 5)
        for swarm, seeder in ((A, False), (B, True)):
            [encoded] = self.store.sample(swarm, 10, contact(2).peer_id, True)
            [listed] = wire.parse(wire.peer_list_body(swarm, [encoded])).peers
            self.assertEqual(listed, moved.peer_info(seeder))

    def test_expire_removes_only_peers_not_seen_since_the_cutoff(self):
        for n in (1, 2):
            self.store.put_contact(contact(n), 0)
            self.store.announce(A, contact(n).peer_id, False, 0)
        self.store.touch(contact(2).peer_id, 50)
        self.assertEqual(self.store.expire(10), [contact(1).peer_id])
        self.assertEqual(self.store.stats()["entries"], 1)

    @given(st.lists(st.tuples(st.integers(1, 30), st.booleans(), st.booleans()), max_size=80),
           st.integers(1, 40))
    def test_samples_match_the_model_after_any_history(self, history, count):
        """After adds, role changes and removals, samples are distinct members, never the
        asker, seeders first, and as many as asked when the swarm has them."""
        store = MemorySwarmStore(random.Random(1))
        model = {}
        for n, seeder, remove in history:
            c = contact(n)
            store.put_contact(c, 0) if store.role(A, c.peer_id) is None else None
            if remove:
                store.remove(A, c.peer_id)
                model.pop(c.peer_id, None)
            else:
                store.announce(A, c.peer_id, seeder, 0)
                model[c.peer_id] = seeder
        asker = contact(1).peer_id
        picked = [wire.parse(wire.peer_list_body(A, [e])).peers[0]
                  for e in store.sample(A, count, asker, True)]
        ids = [p.peer_id for p in picked]
        self.assertEqual(len(ids), len(set(ids)))
        self.assertNotIn(asker, ids)
        others = {k: v for k, v in model.items() if k != asker}
        self.assertEqual(len(ids), min(count, len(others)))
        for p in picked:
            self.assertEqual(others[p.peer_id], p.seeder)
        seeders = sum(others.values())
        self.assertEqual(sum(p.seeder for p in picked), min(seeders, len(ids)))
        self.assertEqual(store.stats()["entries"], len(model))
