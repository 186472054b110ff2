"""Hole-punch probes: the small authenticated UDP datagrams two peers trade to find a path.

Every probe is 82 bytes::

    magic        4  A5 'P' 'I' 'T'   first byte 0xA5: top bits 10, so never STUN (00) and,
                                      with the 0x40 bit clear, never QUIC
    version      1  1
    kind         1  ping 1 | pong 2 | nominate 3 | nominate_ack 4
    attempt_id  16  chosen by the tracker for this punch attempt
    sender      32  the sending peer's id (SHA-256 of its public key)
    transaction 12  random per ping / nomination; a pong or ack echoes it
    mac         16  HMAC-SHA256 keyed by the attempt's shared nonce over the 66 bytes above,
                    truncated to 128 bits

Only the two peers and the tracker know the nonce, so nobody else can make a probe that
:func:`verify` accepts: a third party cannot inject a path. ``peerit.nat.udp`` recognises a
probe by :data:`PROBE_MAGIC` alone and hands it to the punch logic; no Twisted here.
"""

import hashlib
import hmac
from dataclasses import dataclass

from construct import Bytes, Const, ConstructError, Enum, Int8ub, Struct

from peerit.errors import MalformedMessage

PROBE_MAGIC = b"\xa5PIT"
VERSION = 1
ATTEMPT_ID_SIZE = 16
PEER_ID_SIZE = 32
TRANSACTION_SIZE = 12
MAC_SIZE = 16
KINDS = ("ping", "pong", "nominate", "nominate_ack")

_KIND = Enum(Int8ub, ping=1, pong=2, nominate=3, nominate_ack=4)

# The authenticated part; the MAC follows it. One definition, used to build, parse and verify.
SIGNED = Struct(
    "magic" / Const(PROBE_MAGIC),
    "version" / Const(VERSION, Int8ub),
    "kind" / _KIND,
    "attempt_id" / Bytes(ATTEMPT_ID_SIZE),
    "sender" / Bytes(PEER_ID_SIZE),
    "transaction" / Bytes(TRANSACTION_SIZE),
)
SIGNED_SIZE = SIGNED.sizeof()
PROBE_SIZE = SIGNED_SIZE + MAC_SIZE
ATTEMPT_ID_OFFSET = len(PROBE_MAGIC) + 2  # after magic, version and kind

_signed = SIGNED.compile()


@dataclass(frozen=True)
class Probe:
    kind: str
    attempt_id: bytes
    sender: bytes
    transaction: bytes
    mac: bytes


def looks_like_probe(data: bytes) -> bool:
    """Cheap first test (length and magic) before any parsing."""
    return len(data) == PROBE_SIZE and data[:4] == PROBE_MAGIC


def attempt_id_of(data: bytes) -> bytes:
    """The attempt id of a datagram that :func:`looks_like_probe`, without parsing the rest:
    lets a router drop probes for attempts it does not know at the cost of a slice."""
    return bytes(data[ATTEMPT_ID_OFFSET:ATTEMPT_ID_OFFSET + ATTEMPT_ID_SIZE])


def _header(kind: str, attempt_id: bytes, sender: bytes, transaction: bytes) -> bytes:
    # Checked here because the compiled builder would pad, truncate or raise struct.error.
    if kind not in KINDS:
        raise MalformedMessage(f"cannot encode probe: unknown kind {kind!r}")
    for name, value, size in (("attempt_id", attempt_id, ATTEMPT_ID_SIZE),
                              ("sender", sender, PEER_ID_SIZE),
                              ("transaction", transaction, TRANSACTION_SIZE)):
        if not isinstance(value, (bytes, bytearray)) or len(value) != size:
            raise MalformedMessage(f"cannot encode probe: {name} must be {size} bytes")
    try:
        return _signed.build({
            "kind": kind, "attempt_id": attempt_id, "sender": sender,
            "transaction": transaction})
    except (ConstructError, KeyError, TypeError, ValueError) as e:
        raise MalformedMessage(f"cannot encode probe: {e}") from None


def _mac(nonce: bytes, header: bytes) -> bytes:
    return hmac.new(nonce, header, hashlib.sha256).digest()[:MAC_SIZE]


def encode(kind: str, attempt_id: bytes, sender: bytes, transaction: bytes,
           nonce: bytes) -> bytes:
    """The datagram for one probe, authenticated with the attempt's nonce."""
    header = _header(kind, attempt_id, sender, transaction)
    return header + _mac(nonce, header)


def build(probe: Probe) -> bytes:
    """A probe whose MAC is already known (e.g. re-sending a parsed one, or tests)."""
    if len(probe.mac) != MAC_SIZE:
        raise MalformedMessage(f"probe MAC must be {MAC_SIZE} bytes")
    return _header(probe.kind, probe.attempt_id, probe.sender, probe.transaction) + probe.mac


def parse(data: bytes) -> Probe:
    """Bytes to a :class:`Probe`; the MAC is NOT checked here (see :func:`verify`)."""
    if len(data) != PROBE_SIZE:
        raise MalformedMessage(f"probe of {len(data)} bytes, expected {PROBE_SIZE}")
    data = bytes(data)
    if data[:4] != PROBE_MAGIC:
        raise MalformedMessage("bad probe: wrong magic")
    if data[4] != VERSION:
        raise MalformedMessage(f"bad probe: unsupported version {data[4]}")
    try:
        header = _signed.parse(data[:SIGNED_SIZE])
    except ConstructError as e:
        text = str(e).strip().splitlines()
        raise MalformedMessage(f"bad probe: {text[-1] if text else type(e).__name__}") \
            from None
    kind = str(header.kind)
    if kind not in KINDS:  # construct's Enum passes unknown values through
        raise MalformedMessage(f"bad probe: unknown kind {data[5]}")
    return Probe(kind, header.attempt_id, header.sender, header.transaction,
                 data[SIGNED_SIZE:])


def verify(probe: Probe, nonce: bytes) -> bool:
    """True when ``probe`` was made by someone who knows ``nonce``; constant-time compare."""
    try:
        header = _header(probe.kind, probe.attempt_id, probe.sender, probe.transaction)
    except MalformedMessage:
        return False
    return hmac.compare_digest(_mac(nonce, header), probe.mac)
