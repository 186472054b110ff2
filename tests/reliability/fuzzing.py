"""Input generation for the fuzz suite: valid seeds per parser and a seeded mutator.

The mutator works like a small AFL havoc stage: bit flips, "interesting" byte and length
values, truncation, insertion, duplication, splicing two seeds, and a share of pure random
bytes. Everything is drawn from one ``random.Random(seed)``, so a failing input can be
regenerated from its index.
"""

import hashlib
import os
import random
import struct

from peerit.addresses import TrackerAddress
from peerit.metainfo import FileEntry, Metainfo
from peerit.wire import peer, probe, stun
from peerit.wire import tracker

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "unit", "golden")
INTERESTING_8 = (0, 1, 0x7F, 0x80, 0xFF)
INTERESTING_16 = (0, 1, 0x7FFF, 0x8000, 0xFFFF)
INTERESTING_32 = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 20, (1 << 20) + 65)


def _metainfo(name, files, piece_length, trackers=(), comment="") -> bytes:
    total = sum(size for _, size in files)
    count = max(1, -(-total // piece_length)) if total else 0
    hashes = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(count))
    is_dir = len(files) != 1 or files[0][0] != name
    entries = tuple(FileEntry(path, size) for path, size in files)
    return Metainfo(name=name, piece_length=piece_length, total_size=total,
                    is_directory=is_dir, files=entries, piece_hashes=hashes,
                    trackers=tuple(trackers), created=1700000000,
                    comment=comment).to_bytes()


def metainfo_seeds() -> list[bytes]:
    seeds = [
        _metainfo("a.bin", [("a.bin", 100_000)], 1 << 16),
        _metainfo("album", [("a/b/c.bin", 70_000), ("empty", 0), ("top.txt", 5)], 1 << 14,
                  trackers=[TrackerAddress("127.0.0.1", 59000, bytes(32)),
                            TrackerAddress("2001:db8::1", 1, b"\x01" * 32)],
                  comment="fuzz seed ünïcode"),
    ]
    for name in sorted(os.listdir(GOLDEN)) if os.path.isdir(GOLDEN) else ():
        if name.endswith(".p2p"):
            with open(os.path.join(GOLDEN, name), "rb") as f:
                seeds.append(f.read())
    return seeds


def tracker_seeds() -> list[bytes]:
    ih, pid = b"\x11" * 32, b"\x22" * 32
    info = tracker.PeerInfo(pid, True, 4000, 5000, "192.0.2.1", ("10.0.0.2", "fe80::1"))
    messages = [
        tracker.KeepAlive(),
        tracker.Hello(tcp_port=4000, udp_port=5000, addresses=("10.0.0.2", "2001:db8::2")),
        tracker.Welcome(tracker.Endpoint("198.51.100.7", 40000), 30000, pid),
        tracker.Announce(ih, "started", 12345),
        tracker.PeerListRequest(ih, 50),
        tracker.PeerList(ih, (info, info)),
        tracker.PeerJoined(ih, info),
        tracker.Ping(7), tracker.Pong(7),
        tracker.Error("rate_limited", "slow down", 4, ih),
    ]
    seeds = [tracker.build(m) for m in messages]
    # Every other registered opcode (the NAT messages and any added later) as a header with
    # a zeroed body of plausible length: mutation grows it into the real fields.
    built = {seed[0] for seed in seeds}
    for opcode in sorted(set(tracker.messages._by_opcode) - built):
        seeds.append(bytes([opcode]) + bytes(72))
    return seeds


def peer_seeds() -> list[bytes]:
    ih, pid = b"\x33" * 32, b"\x44" * 32
    messages = [
        peer.KeepAlive(), peer.Handshake(peer.PROTOCOL_VERSION, ih, pid),
        peer.Bitfield(b"\xff\xf0"), peer.Have(9), peer.Request(1, 16384, 16384),
        peer.Block(2, 0, b"\xab" * 64), peer.Cancel(1, 0, 16384), peer.Choke(),
        peer.Unchoke(), peer.Interested(), peer.NotInterested(), peer.Reject(3, 0, 128),
    ]
    return [peer.build(m) for m in messages]


def stun_seeds() -> list[bytes]:
    tid = b"\x55" * 12
    request = stun.StunMessage(stun.BINDING_REQUEST, tid)
    change = stun.StunMessage(stun.BINDING_REQUEST, tid,
                              (stun.change_request(True, True), stun.software("fuzz")))
    success = stun.StunMessage(stun.BINDING_SUCCESS, tid, (
        stun.xor_mapped_address(("192.0.2.9", 4242), tid),
        stun.address_attribute(stun.MAPPED_ADDRESS, ("2001:db8::9", 1)),
        stun.address_attribute(stun.OTHER_ADDRESS, ("192.0.2.10", 3479))))
    error = stun.StunMessage(stun.BINDING_ERROR, tid, (stun.error_code(420, "unknown"),
                                                       stun.unknown_attributes((7, 9))))
    return [stun.build(m) for m in (request, change, success, error)] + \
        [stun.build(request, fingerprint=False)]


def probe_seeds() -> list[bytes]:
    return [probe.encode(kind, b"\x66" * 16, b"\x77" * 32, b"\x88" * 12, b"nonce")
            for kind in probe.KINDS]


class Mutator:
    def __init__(self, seeds: list[bytes], seed: int, max_size: int = 1 << 16):
        self.seeds = [s for s in seeds if s]
        self.rng = random.Random(seed)
        self.max_size = max_size

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.05:
            return rng.randbytes(rng.randrange(0, 256))
        data = bytearray(rng.choice(self.seeds))
        for _ in range(1 + int(rng.expovariate(0.7))):
            self._mutate(data)
            if len(data) > self.max_size:
                del data[self.max_size:]
        return bytes(data)

    def _mutate(self, data: bytearray) -> None:
        rng = self.rng
        op = rng.randrange(10)
        n = len(data)
        if op == 0 and n:
            i = rng.randrange(n)
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            data[rng.randrange(n)] = rng.choice(INTERESTING_8)
        elif op == 2 and n >= 2:
            i = rng.randrange(n - 1)
            data[i:i + 2] = struct.pack(">H", rng.choice(INTERESTING_16))
        elif op == 3 and n >= 4:
            i = rng.randrange(n - 3)
            data[i:i + 4] = struct.pack(">I", rng.choice(INTERESTING_32))
        elif op == 4 and n:
            del data[rng.randrange(n):]  # truncate
        elif op == 5:
            i = rng.randrange(n + 1)
            data[i:i] = rng.randbytes(rng.randrange(1, 32))
        elif op == 6 and n:
            i = rng.randrange(n)
            j = rng.randrange(i, min(n, i + 64) + 1)
            data[i:i] = data[i:j]  # duplicate a run
        elif op == 7 and n:
            i = rng.randrange(n)
            del data[i:rng.randrange(i, min(n, i + 64) + 1)]
        elif op == 8:
            other = rng.choice(self.seeds)
            cut = rng.randrange(n + 1)
            data[cut:] = other[rng.randrange(len(other) + 1):]  # splice
        elif n:
            i = rng.randrange(n)
            data[i] = (data[i] + rng.choice((-1, 1, 16, -16))) & 0xFF


SEEDS = {
    "metainfo": metainfo_seeds,
    "tracker": tracker_seeds,
    "peer": peer_seeds,
    "stun": stun_seeds,
    "probe": probe_seeds,
}
