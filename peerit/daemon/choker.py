"""Upload slots: who we send data to (tit-for-tat with an optimistic slot; no I/O).

Every round, the interested peers that gave us the most (while we download) or took the most
(while we seed, so fast downloaders finish and start seeding themselves) get the regular slots;
one more rotates every few rounds among the rest so newcomers get a first chance. Nobody can
hog the uploader: a peer keeps its slot only by ranking in the top ``slots``. A seeder, which
has nothing to trade for, may have more regular slots (``seed_slots``).
"""

from dataclasses import dataclass

DEFAULT_SLOTS = 4
OPTIMISTIC_EVERY = 3  # rounds


@dataclass
class PeerView:
    key: object
    interested: bool
    download_rate: float  # bytes/s we received from it recently
    upload_rate: float  # bytes/s we sent to it recently


class Choker:
    def __init__(self, rng, slots: int = DEFAULT_SLOTS, seed_slots: int | None = None):
        self.rng = rng
        self.slots = slots
        self.seed_slots = slots if seed_slots is None else seed_slots  # while seeding
        self.optimistic = None
        self._round = 0

    def rechoke(self, peers: list[PeerView], seeding: bool) -> set:
        """The keys of the peers to unchoke this round."""
        interested = [p for p in peers if p.interested]
        rate = (lambda p: p.upload_rate) if seeding else (lambda p: p.download_rate)
        # Shuffle first so equal rates (e.g. all zero at start) do not always favour the same.
        self.rng.shuffle(interested)
        interested.sort(key=rate, reverse=True)
        slots = self.seed_slots if seeding else self.slots
        regular = {p.key for p in interested[:slots]}
        rest = [p.key for p in interested[slots:]]
        if self._round % OPTIMISTIC_EVERY == 0 or self.optimistic not in rest:
            self.optimistic = self.rng.choice(rest) if rest else None
        self._round += 1
        return regular | ({self.optimistic} if self.optimistic is not None else set())
