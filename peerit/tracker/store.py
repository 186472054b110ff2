"""The swarm table: which peers are in which swarm, and how to reach them.

:class:`ISwarmStore` is the seam between the session logic and where the table lives;
:class:`MemorySwarmStore` keeps it in this process. A store shared by several trackers (Redis)
(``peerit.tracker.redis_store``) keeps one of these as its local view; the interface is
synchronous because the tracker's hot path (one announce or one peer list per frame) cannot
afford a Deferred per call.

Memory per entry matters (a tracker holds hundreds of thousands): a peer's contact details are
stored once, with its encoded :class:`~peerit.wire.tracker.PeerInfo` bytes cached, and a
swarm holds only peer ids in two indexed sets (seeders, leechers) so a random sample costs
O(sample), not O(swarm).
"""

import random
from dataclasses import dataclass

from zope.interface import Interface, implementer

from peerit.wire.tracker import PeerInfo, encode_peer_info


@dataclass(frozen=True)
class Contact:
    """How to reach a peer, from its Hello and from where its session comes from."""
    peer_id: bytes
    tcp_port: int
    udp_port: int
    public_address: str
    lan_addresses: tuple[str, ...] = ()

    def peer_info(self, seeder: bool) -> PeerInfo:
        return PeerInfo(self.peer_id, seeder, self.tcp_port, self.udp_port,
                        self.public_address, self.lan_addresses)


class ISwarmStore(Interface):
    """The tracker's swarm table. ``now`` values come from the tracker's injected clock."""

    def put_contact(contact: Contact, now: float) -> None:
        """Record (or replace) how to reach ``contact.peer_id``; the peer is seen ``now``."""

    def touch(peer_id: bytes, now: float) -> None:
        """The peer said something: its entries are fresh as of ``now``."""

    def announce(info_hash: bytes, peer_id: bytes, seeder: bool, now: float) -> bool:
        """Add or update the peer's entry in a swarm; True when the entry is new.

        The peer's contact must have been put first.
        """

    def remove(info_hash: bytes, peer_id: bytes) -> bool:
        """Drop one entry; True if it existed."""

    def remove_peer(peer_id: bytes) -> list[bytes]:
        """Drop the peer's contact and every entry; the info-hashes it was in."""

    def swarm_count(peer_id: bytes) -> int:
        """How many swarms the peer is in."""

    def role(info_hash: bytes, peer_id: bytes) -> bool | None:
        """True if the peer seeds the swarm, False if it leeches, None if it is not in it."""

    def sample(info_hash: bytes, count: int, asker: bytes, prefer_seeders: bool) -> list[bytes]:
        """Up to ``count`` encoded PeerInfo of a random sample of the swarm, never ``asker``.

        ``prefer_seeders`` fills the sample with seeders first (what a leecher wants);
        otherwise leechers come first (a seeder has nothing to get from other seeders).
        """

    def members(info_hash: bytes, count: int, exclude: bytes) -> list[bytes]:
        """Up to ``count`` random peer ids of the swarm other than ``exclude`` (for pushes)."""

    def peer_info(info_hash: bytes, peer_id: bytes) -> PeerInfo | None:
        """The peer as a swarm member (its seeder flag in that swarm), if it is one."""

    def encoded_peer_info(info_hash: bytes, peer_id: bytes) -> bytes | None:
        """Same as :meth:`peer_info`, already encoded for the wire."""

    def expire(cutoff: float) -> list[bytes]:
        """Remove every peer last seen before ``cutoff``; their peer ids."""

    def stats() -> dict:
        """Counts for logs and benchmarks: peers, swarms, entries."""


class _IndexedSet:
    """Peer ids with O(1) add/remove and O(k) random sampling (a list plus positions), each
    with its encoded PeerInfo in a parallel list.

    Why the encoded bytes live here and not only on the peer: a peer list of a small swarm is
    then a copy of one list, where looking each member up in the peer table (its record, its
    swarms, its encodings) was the largest single cost of a peer list (cache misses over
    thousands of peers). The bytes objects are the peer's own (``_Peer.encoded``), so this
    costs one pointer per entry.
    """

    __slots__ = ("items", "values", "positions")

    def __init__(self):
        self.items: list[bytes] = []
        self.values: list[bytes] = []
        self.positions: dict[bytes, int] = {}

    def __len__(self):
        return len(self.items)

    def __contains__(self, item):
        return item in self.positions

    def add(self, item: bytes, value: bytes) -> bool:
        if item in self.positions:
            return False
        self.positions[item] = len(self.items)
        self.items.append(item)
        self.values.append(value)
        return True

    def replace(self, item: bytes, value: bytes) -> None:
        self.values[self.positions[item]] = value

    def discard(self, item: bytes) -> bool:
        position = self.positions.pop(item, None)
        if position is None:
            return False
        last = self.items.pop()
        last_value = self.values.pop()
        if position < len(self.items):
            self.items[position] = last
            self.values[position] = last_value
            self.positions[last] = position
        return True

    def _pick(self, source: list, count: int, exclude: bytes, rng: random.Random) -> list:
        """Up to ``count`` of ``source`` (``items`` or ``values``) at random positions, never
        the one of ``exclude``."""
        n = len(source)
        if count <= 0 or not n:
            return []
        skip = self.positions.get(exclude)
        if n - (skip is not None) <= count:
            # Everyone fits: the sample is the whole set (in no promised order); skipping the
            # shuffle matters because most swarms are smaller than a peer list.
            if skip is None:
                return source[:]
            return source[:skip] + source[skip + 1:]
        if skip is None:
            return rng.sample(source, count)
        # One spare draw in case the excluded one is among those picked.
        return [source[i] for i in rng.sample(range(n), count + 1) if i != skip][:count]

    def sample(self, count: int, exclude: bytes, rng: random.Random) -> list[bytes]:
        """Random peer ids."""
        return self._pick(self.items, count, exclude, rng)

    def sample_values(self, count: int, exclude: bytes, rng: random.Random) -> list[bytes]:
        """The encoded PeerInfo of random members."""
        return self._pick(self.values, count, exclude, rng)


class _Swarm:
    __slots__ = ("seeders", "leechers")

    def __init__(self):
        self.seeders = _IndexedSet()
        self.leechers = _IndexedSet()

    def __len__(self):
        return len(self.seeders) + len(self.leechers)


class _Peer:
    __slots__ = ("contact", "last_seen", "swarms", "encoded")

    def __init__(self, contact: Contact, now: float):
        self.contact = contact
        self.last_seen = now
        self.swarms: dict[bytes, bool] = {}  # info-hash -> seeder
        # Encoded once per (peer, seeder flag): peer lists are concatenations of these.
        self.encoded = (encode_peer_info(contact.peer_info(False)),
                        encode_peer_info(contact.peer_info(True)))


@implementer(ISwarmStore)
class MemorySwarmStore:
    """The swarm table in this process's memory."""

    def __init__(self, rng: random.Random | None = None):
        self._rng = rng or random.Random()
        self._peers: dict[bytes, _Peer] = {}
        self._swarms: dict[bytes, _Swarm] = {}
        self._entries = 0

    def put_contact(self, contact: Contact, now: float) -> None:
        peer = self._peers.get(contact.peer_id)
        if peer is None:
            self._peers[contact.peer_id] = _Peer(contact, now)
            return
        fresh = _Peer(contact, now)
        fresh.swarms = peer.swarms
        self._peers[contact.peer_id] = fresh
        if fresh.encoded != peer.encoded:
            for info_hash, seeder in fresh.swarms.items():
                swarm = self._swarms[info_hash]
                (swarm.seeders if seeder else swarm.leechers).replace(
                    contact.peer_id, fresh.encoded[seeder])

    def touch(self, peer_id: bytes, now: float) -> None:
        peer = self._peers.get(peer_id)
        if peer is not None:
            peer.last_seen = now

    def announce(self, info_hash: bytes, peer_id: bytes, seeder: bool, now: float) -> bool:
        peer = self._peers[peer_id]
        peer.last_seen = now
        swarm = self._swarms.get(info_hash)
        if swarm is None:
            swarm = self._swarms[info_hash] = _Swarm()
        seeder = bool(seeder)
        was = peer.swarms.get(info_hash)
        if was is seeder:
            return False
        if was is not None:
            (swarm.seeders if was else swarm.leechers).discard(peer_id)
        else:
            self._entries += 1
        (swarm.seeders if seeder else swarm.leechers).add(peer_id, peer.encoded[seeder])
        peer.swarms[info_hash] = seeder
        return was is None

    def remove(self, info_hash: bytes, peer_id: bytes) -> bool:
        peer = self._peers.get(peer_id)
        if peer is None or info_hash not in peer.swarms:
            return False
        self._drop_entry(info_hash, peer_id, peer.swarms.pop(info_hash))
        return True

    def _drop_entry(self, info_hash: bytes, peer_id: bytes, seeder: bool) -> None:
        swarm = self._swarms[info_hash]
        (swarm.seeders if seeder else swarm.leechers).discard(peer_id)
        self._entries -= 1
        if not swarm:
            del self._swarms[info_hash]

    def remove_peer(self, peer_id: bytes) -> list[bytes]:
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            return []
        for info_hash, seeder in peer.swarms.items():
            self._drop_entry(info_hash, peer_id, seeder)
        return list(peer.swarms)

    def swarm_count(self, peer_id: bytes) -> int:
        peer = self._peers.get(peer_id)
        return len(peer.swarms) if peer is not None else 0

    def role(self, info_hash: bytes, peer_id: bytes) -> bool | None:
        peer = self._peers.get(peer_id)
        return peer.swarms.get(info_hash) if peer is not None else None

    def sample(self, info_hash: bytes, count: int, asker: bytes,
               prefer_seeders: bool) -> list[bytes]:
        swarm = self._swarms.get(info_hash)
        if swarm is None or count <= 0:
            return []
        first, second = ((swarm.seeders, swarm.leechers) if prefer_seeders
                         else (swarm.leechers, swarm.seeders))
        picked = first.sample_values(count, asker, self._rng)
        if len(picked) < count:
            picked += second.sample_values(count - len(picked), asker, self._rng)
        return picked

    def members(self, info_hash: bytes, count: int, exclude: bytes) -> list[bytes]:
        swarm = self._swarms.get(info_hash)
        if swarm is None:
            return []
        picked = swarm.seeders.sample(count, exclude, self._rng)
        picked += swarm.leechers.sample(count, exclude, self._rng)
        if len(picked) > count:
            picked = self._rng.sample(picked, count)
        return picked

    def peer_info(self, info_hash: bytes, peer_id: bytes) -> PeerInfo | None:
        peer = self._peers.get(peer_id)
        if peer is None or info_hash not in peer.swarms:
            return None
        return peer.contact.peer_info(peer.swarms[info_hash])

    def encoded_peer_info(self, info_hash: bytes, peer_id: bytes) -> bytes | None:
        peer = self._peers.get(peer_id)
        if peer is None or info_hash not in peer.swarms:
            return None
        return peer.encoded[peer.swarms[info_hash]]

    def contact(self, peer_id: bytes) -> Contact | None:
        peer = self._peers.get(peer_id)
        return peer.contact if peer is not None else None

    def swarms_of(self, peer_id: bytes) -> dict[bytes, bool]:
        """The swarms the peer is in, each with its seeder flag (a copy)."""
        peer = self._peers.get(peer_id)
        return dict(peer.swarms) if peer is not None else {}

    def last_seen(self, peer_id: bytes) -> float | None:
        peer = self._peers.get(peer_id)
        return peer.last_seen if peer is not None else None

    def expire(self, cutoff: float) -> list[bytes]:
        stale = [peer_id for peer_id, peer in self._peers.items() if peer.last_seen < cutoff]
        for peer_id in stale:
            self.remove_peer(peer_id)
        return stale

    def stats(self) -> dict:
        return {"peers": len(self._peers), "swarms": len(self._swarms),
                "entries": self._entries}
