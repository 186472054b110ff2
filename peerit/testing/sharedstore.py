"""A fake of the Redis-backed swarm table for unit tests: several trackers in one test share
one table, each through its own store, with no Redis and no sockets.

Each :class:`FakeSharedStore` is a :class:`MemorySwarmStore` (its view) that, like
``RedisSwarmStore``, tells the others' views of every change (at once), records who owns
each peer, and queues signals between processes until :meth:`SharedTable.deliver` (so tests
control when, and whether, they arrive).
"""

from zope.interface import implementer

from peerit.tracker.store import Contact, ISwarmStore, MemorySwarmStore


class SharedTable:
    def __init__(self):
        self.stores: list["FakeSharedStore"] = []
        self.owners: dict[bytes, bytes] = {}
        self.queued: list[tuple[bytes, dict]] = []
        self.up = True            # False: Redis unreachable (signals refused)
        self.sent = 0

    def store(self, owner: bytes, rng=None) -> "FakeSharedStore":
        store = FakeSharedStore(self, owner, rng)
        self.stores.append(store)
        return store

    def deliver(self, drop: int = 0) -> int:
        """Hand queued signals to their processes (the first ``drop`` are lost, as pub/sub
        may lose them); returns how many arrived. Signals sent meanwhile wait for the next
        call."""
        queued, self.queued = self.queued, []
        by_owner = {s.owner: s for s in self.stores}
        for owner, fields in queued[drop:]:
            by_owner[owner].on_signal(fields)
        return max(0, len(queued) - drop)


@implementer(ISwarmStore)
class FakeSharedStore(MemorySwarmStore):
    def __init__(self, table: SharedTable, owner: bytes, rng=None):
        super().__init__(rng)
        self.table = table
        self.owner = owner
        self.on_new_entry = lambda info_hash, peer_id: None
        self.on_signal = lambda fields: None

    @property
    def ready(self) -> bool:
        return self.table.up

    def _others(self):
        return [s for s in self.table.stores if s is not self]

    def put_contact(self, contact: Contact, now: float) -> None:
        super().put_contact(contact, now)
        self.table.owners[contact.peer_id] = self.owner
        for other in self._others():
            MemorySwarmStore.put_contact(other, contact, now)

    def announce(self, info_hash: bytes, peer_id: bytes, seeder: bool, now: float) -> bool:
        new = super().announce(info_hash, peer_id, seeder, now)
        for other in self._others():
            if MemorySwarmStore.announce(other, info_hash, peer_id, seeder, now):
                other.on_new_entry(info_hash, peer_id)
        return new

    def remove(self, info_hash: bytes, peer_id: bytes) -> bool:
        for other in self._others():
            MemorySwarmStore.remove(other, info_hash, peer_id)
        return super().remove(info_hash, peer_id)

    def remove_peer(self, peer_id: bytes) -> list[bytes]:
        if self.table.owners.get(peer_id) == self.owner:
            del self.table.owners[peer_id]
            for other in self._others():
                MemorySwarmStore.remove_peer(other, peer_id)
        return super().remove_peer(peer_id)

    def owner_of(self, peer_id: bytes) -> bytes | None:
        return self.table.owners.get(peer_id)

    def send_signal(self, owner: bytes, fields: dict) -> bool:
        if not self.table.up:
            return False
        self.table.queued.append((owner, dict(fields)))
        self.table.sent += 1
        return True
