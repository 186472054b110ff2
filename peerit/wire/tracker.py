"""The tracker protocol: what a daemon and the tracker say over their one TLS session.

Frames are length-prefixed (``peerit.wire.framing``); each body is an opcode byte and the
message. The daemon opens with ``Hello``; the tracker answers ``Welcome`` and from then on
either side may speak at any time: the daemon announces and asks for peers, the tracker answers
and pushes (``PeerJoined``; the NAT traversal messages of docs/nat-protocol.md:
``StunInfo``, ``Punch``, ``RelayOffer``). Addresses travel as 4 or 16 raw bytes and
appear in the dataclasses as ``ipaddress`` text ("192.0.2.1", "2001:db8::1").

Peer lists are the hot path; :func:`peer_list_body` builds one from per-peer bytes that the
tracker encodes once (with :data:`PEER_INFO`, the same construct the message uses).
"""

import ipaddress
import struct
from dataclasses import dataclass, field

from construct import (
    Adapter, Byte, Bytes, Enum, ExprValidator, Flag, FormatField, GreedyBytes, Int16ub, Int32ub,
    Int64ub, PrefixedArray, Struct, ValidationError, this)

from peerit.wire.messages import MessageSet

PROTOCOL_VERSION = 1
INFO_HASH_SIZE = 32
PEER_ID_SIZE = 32
MAX_LAN_ADDRESSES = 8       # a host with more interfaces than this lists its best ones
MAX_PEERS_PER_LIST = 200    # as opentracker: enough to start a swarm, bounded frame size
MAX_REASON_BYTES = 255
# Largest frame the tracker sends: a full peer list (200 peers of at most 191 bytes each).
MAX_TRACKER_FRAME_SIZE = 64 * 1024
# Largest frame a daemon needs to send (a Hello with every LAN address); the tracker's default.
MAX_DAEMON_FRAME_SIZE = 4 * 1024
NO_INFO_HASH = bytes(INFO_HASH_SIZE)

messages = MessageSet("tracker")


def _exact_bytes(size):
    # construct 2.10's compiled Bytes reads short at the end of the input without complaint
    # (so do compiled Prefixed and PascalString); checking the length read makes a truncated
    # message malformed in the compiled parser too.
    return ExprValidator(Bytes(size), lambda obj, ctx: len(obj) == (
        size(ctx) if callable(size) else size))


_COUNTED_BYTES = Struct("length" / Byte, "data" / _exact_bytes(this.length))


class _IPAddress(Adapter):
    """An IPv4 or IPv6 address: a length byte (4 or 16) and the packed address."""

    def _decode(self, obj, context, path):
        if len(obj.data) not in (4, 16):
            raise ValidationError(f"address of {len(obj.data)} bytes", path=path)
        return str(ipaddress.ip_address(obj.data))

    def _encode(self, obj, context, path):
        try:
            packed = ipaddress.ip_address(obj).packed
        except ValueError as e:
            raise ValidationError(str(e), path=path) from None
        return {"length": len(packed), "data": packed}


class _ShortText(Adapter):
    """UTF-8 text of at most 255 bytes, after a length byte."""

    def _decode(self, obj, context, path):
        return obj.data.decode("utf8")

    def _encode(self, obj, context, path):
        data = obj.encode("utf8")
        return {"length": len(data), "data": data}


class _TrailingIPAddress(Adapter):
    """An optional IPv4 or IPv6 address as a message's last field: 4 or 16 packed bytes to
    the end of the message, or none at all for "" (so a message without one has the bytes
    it had before the field existed)."""

    def _decode(self, obj, context, path):
        if len(obj) not in (0, 4, 16):
            raise ValidationError(f"address of {len(obj)} bytes", path=path)
        return str(ipaddress.ip_address(obj)) if obj else ""

    def _encode(self, obj, context, path):
        if not obj:
            return b""
        try:
            return ipaddress.ip_address(obj).packed
        except ValueError as e:
            raise ValidationError(str(e), path=path) from None


IP_ADDRESS = _IPAddress(_COUNTED_BYTES)
LAN_ADDRESSES = ExprValidator(
    PrefixedArray(Byte, IP_ADDRESS), lambda obj, ctx: len(obj) <= MAX_LAN_ADDRESSES)


INFO_HASH = _exact_bytes(INFO_HASH_SIZE)
PEER_ID = _exact_bytes(PEER_ID_SIZE)
# Closed: an announce with an event this version does not know is malformed.
EVENT = ExprValidator(Enum(Byte, update=0, started=1, completed=2, stopped=3),
                      lambda obj, ctx: isinstance(obj, str))
ERROR_CODE = Enum(
    Int16ub,
    malformed=1,            # a frame that does not parse, or is too large
    unknown_message=2,      # an opcode this tracker does not know
    protocol_violation=3,   # a message out of order, or one only the tracker may send
    unsupported_version=4,
    too_many_swarms=5,      # the announce was refused; the session stays
    rate_limited=6,         # the request was refused; the session stays
    too_many_sessions=7,
    timed_out=8,
    superseded=9,           # the same peer id opened a newer session
    shutting_down=10,
    internal=11,
    # NAT traversal refusals (docs/nat-protocol.md); each refuses one request, the session stays
    peer_unavailable=12,    # the target is not connected, or one side is not in that swarm
    too_many_attempts=13,   # the requester already has its cap of punches/relays under way
    relay_unavailable=14,   # this tracker runs no relay, or it is full
)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


ENDPOINT = Struct("host" / IP_ADDRESS, "port" / Int16ub)


@dataclass(frozen=True)
class PeerInfo:
    """How to reach one peer of a swarm, as the tracker knows it."""
    peer_id: bytes
    seeder: bool
    tcp_port: int
    udp_port: int          # 0: the peer has no UDP socket (yet)
    public_address: str    # the source address the tracker sees for the peer's session
    lan_addresses: tuple[str, ...] = ()


PEER_INFO = Struct(
    "peer_id" / PEER_ID,
    "seeder" / Flag,
    "tcp_port" / Int16ub,
    "udp_port" / Int16ub,
    "public_address" / IP_ADDRESS,
    "lan_addresses" / LAN_ADDRESSES,
)
_build_peer_info = PEER_INFO.compile().build


@messages.register(0, Struct())
@dataclass(frozen=True)
class KeepAlive:
    pass


@messages.register(1, Struct(
    "version" / Int16ub,
    "tcp_port" / Int16ub,
    "udp_port" / Int16ub,
    "addresses" / LAN_ADDRESSES,
))
@dataclass(frozen=True)
class Hello:
    """The daemon's first message: how it can be reached besides the address the tracker sees."""
    tcp_port: int
    udp_port: int = 0
    addresses: tuple[str, ...] = ()
    version: int = PROTOCOL_VERSION


@messages.register(2, Struct(
    "observed" / ENDPOINT,
    "keepalive_ms" / Int32ub,
    "peer_id" / PEER_ID,
))
@dataclass(frozen=True)
class Welcome:
    """The tracker's answer to Hello: the daemon's public address and proven id.

    ``keepalive_ms`` is how often the daemon must say something; a session silent for
    three times as long is dropped.
    """
    observed: Endpoint
    keepalive_ms: int
    peer_id: bytes
    __nested__ = {"observed": Endpoint}


_ANNOUNCE = Struct(
    "info_hash" / INFO_HASH,
    "event" / EVENT,
    "left" / Int64ub,
)


@messages.register(3, _ANNOUNCE)
@dataclass(frozen=True)
class Announce:
    """``left`` is the number of bytes still missing; 0 makes the peer a seeder."""
    info_hash: bytes
    event: str
    left: int


_PEER_LIST_REQUEST = Struct("info_hash" / INFO_HASH, "max_peers" / Int16ub)


@messages.register(4, _PEER_LIST_REQUEST)
@dataclass(frozen=True)
class PeerListRequest:
    info_hash: bytes
    max_peers: int


@messages.register(5, Struct(
    "info_hash" / INFO_HASH,
    "peers" / ExprValidator(PrefixedArray(Int16ub, PEER_INFO),
                            lambda obj, ctx: len(obj) <= MAX_PEERS_PER_LIST),
))
@dataclass(frozen=True)
class PeerList:
    info_hash: bytes
    peers: tuple[PeerInfo, ...]
    __nested__ = {"peers": PeerInfo}


@messages.register(6, Struct("info_hash" / INFO_HASH, "peer" / PEER_INFO))
@dataclass(frozen=True)
class PeerJoined:
    """Pushed by the tracker: a new peer announced into a swarm the receiver is in."""
    info_hash: bytes
    peer: PeerInfo
    __nested__ = {"peer": PeerInfo}


@messages.register(7, Struct("nonce" / Int64ub))
@dataclass(frozen=True)
class Ping:
    nonce: int


@messages.register(8, Struct("nonce" / Int64ub))
@dataclass(frozen=True)
class Pong:
    nonce: int


@messages.register(9, Struct(
    "code" / ERROR_CODE,
    "refused_opcode" / Byte,
    "info_hash" / INFO_HASH,
    "reason" / _ShortText(_COUNTED_BYTES),
))
@dataclass(frozen=True)
class Error:
    """A refusal. ``refused_opcode``/``info_hash`` name the request it answers, so a client
    can fail the right pending call; both are zero for errors about the whole session."""
    code: str
    reason: str
    refused_opcode: int = 0
    info_hash: bytes = field(default=NO_INFO_HASH)


# -- NAT traversal (docs/nat-protocol.md) ---------------------------------------------------

ATTEMPT_ID_SIZE = 16
PUNCH_NONCE_SIZE = 32
RELAY_TOKEN_SIZE = 32
# A peer's LAN addresses and a public one, with room for a second public (IPv4 and IPv6).
MAX_PUNCH_CANDIDATES = MAX_LAN_ADDRESSES + 2

MAPPINGS = ("unknown", "independent", "dependent")
FILTERINGS = ("unknown", "independent", "address", "address-and-port")
CANDIDATE_KINDS = ("lan", "public")


def _closed_enum(names):
    # A value this version does not know is malformed, as for Announce events.
    return ExprValidator(Enum(Byte, **{name: i for i, name in enumerate(names)}),
                         lambda obj, ctx: isinstance(obj, str))


MAPPING = _closed_enum(MAPPINGS)
FILTERING = _closed_enum(FILTERINGS)


@messages.register(10, Struct(
    "public" / ENDPOINT,
    "mapping" / MAPPING,
    "filtering" / FILTERING,
))
@dataclass(frozen=True)
class NatReport:
    """The daemon's STUN result: its public UDP endpoint and how its NAT maps and filters.

    Sent after each result that changed (and again when a session starts); the tracker keeps
    the latest per session and hands it to peers that punch towards this one.
    """
    public: Endpoint
    mapping: str = "unknown"
    filtering: str = "unknown"
    __nested__ = {"public": Endpoint}


@messages.register(11, Struct(
    "stun_port" / Int16ub,
    "stun_alt_port" / Int16ub,
    "relay_port" / Int16ub,
))
@dataclass(frozen=True)
class StunInfo:
    """Sent by the tracker right after Welcome: where its UDP STUN responder (primary and
    alternate port) and TCP relay listen, on the tracker's own host; 0 = not running."""
    stun_port: int
    stun_alt_port: int = 0
    relay_port: int = 0


@messages.register(12, Struct("info_hash" / INFO_HASH, "peer_id" / PEER_ID))
@dataclass(frozen=True)
class PunchRequest:
    """"I want a direct UDP path to ``peer_id`` of swarm ``info_hash``": the tracker answers
    with a Punch (to both), or an Error refusing it."""
    info_hash: bytes
    peer_id: bytes


@dataclass(frozen=True)
class PunchCandidate:
    """An address to ping in a punch: ``kind`` is ``lan`` or ``public``."""
    host: str
    port: int
    kind: str


PUNCH_CANDIDATE = Struct("host" / IP_ADDRESS, "port" / Int16ub,
                         "kind" / _closed_enum(CANDIDATE_KINDS))


@messages.register(13, Struct(
    "attempt_id" / _exact_bytes(ATTEMPT_ID_SIZE),
    "nonce" / _exact_bytes(PUNCH_NONCE_SIZE),
    "info_hash" / INFO_HASH,
    "peer_id" / PEER_ID,
    "controlling" / Flag,
    "candidates" / ExprValidator(PrefixedArray(Byte, PUNCH_CANDIDATE),
                                 lambda obj, ctx: len(obj) <= MAX_PUNCH_CANDIDATES),
    "mapping" / MAPPING,
))
@dataclass(frozen=True)
class Punch:
    """Pushed to both sides of a punch at once: the other peer (``peer_id``), where to ping
    it and its NAT mapping. The requester gets ``controlling=True``."""
    attempt_id: bytes
    nonce: bytes
    info_hash: bytes
    peer_id: bytes
    controlling: bool
    candidates: tuple[PunchCandidate, ...]
    mapping: str = "unknown"
    __nested__ = {"candidates": PunchCandidate}


@messages.register(14, Struct("info_hash" / INFO_HASH, "peer_id" / PEER_ID))
@dataclass(frozen=True)
class RelayRequest:
    """"Connect me to ``peer_id`` through your relay": answered by a RelayOffer (to both) or
    an Error."""
    info_hash: bytes
    peer_id: bytes


@messages.register(15, Struct(
    "token" / _exact_bytes(RELAY_TOKEN_SIZE),
    "info_hash" / INFO_HASH,
    "peer_id" / PEER_ID,
    "initiator" / Flag,
    "port" / Int16ub,
    "host" / _TrailingIPAddress(GreedyBytes),
))
@dataclass(frozen=True)
class RelayOffer:
    """Pushed to both sides: connect to the relay at ``host`` and ``port`` and present
    ``token``. The requester (``initiator=True``) is the TLS client inside.

    ``host`` "" (absent on the wire) means the host of the tracker this offer came from; a
    tracker process names its own address when the two sessions are on different hosts,
    since the token is redeemed only at the relay that issued it."""
    token: bytes
    info_hash: bytes
    peer_id: bytes
    initiator: bool
    port: int
    host: str = ""


FATAL_ERRORS = frozenset({
    "malformed", "unknown_message", "protocol_violation", "unsupported_version",
    "too_many_sessions", "timed_out", "superseded", "shutting_down", "internal"})

_PEER_LIST_HEADER = bytes([messages.opcode_of(PeerList)])
_PEER_JOINED_HEADER = bytes([messages.opcode_of(PeerJoined)])
# The PeerList count is the Int16ub of the message definition; int.to_bytes builds the same
# two bytes without construct's per-call cost (~4 us, a tenth of a peer list's CPU). The unit
# test comparing peer_list_body with build(PeerList) holds the two together.
_COUNT_SIZE = Int16ub.sizeof()


def build(message) -> bytes:
    return messages.build(message)


# The requests a tracker parses thousands of times a second have a fixed size, so they take a
# fast path: once the length is right no field can read short, and a ``struct.Struct``
# derived from the construct definition (not written a second time) unpacks the fields.
# Measured: 22 us -> 2 us per Announce. A unit test holds both paths together.
def _fixed_layout(body: Struct) -> tuple[struct.Struct, list]:
    """The struct format of a fixed-size construct Struct, and a decoder per field (an
    Enum's mapping, or None for the raw value)."""
    formats, decoders = [">"], []
    for member in body.subcons:
        inner = member.subcon
        while isinstance(inner, ExprValidator):
            inner = inner.subcon
        decoder = None
        if isinstance(inner, Enum):
            decoder = {value: str(name) for value, name in inner.decmapping.items()}
            inner = inner.subcon
        if isinstance(inner, Bytes) and isinstance(inner.length, int):
            formats.append(f"{inner.length}s")
        elif isinstance(inner, FormatField) and inner.fmtstr[0] == ">":
            formats.append(inner.fmtstr[1:])
        else:
            raise TypeError(f"no fixed layout for {member.name}")
        decoders.append(decoder)
    return struct.Struct("".join(formats)), decoders


def _fast_parser(cls, body: Struct):
    layout, decoders = _fixed_layout(body)
    if layout.size != body.sizeof():
        raise AssertionError(f"derived layout of {cls.__name__} has the wrong size")
    unpack = layout.unpack_from
    if not any(decoders):
        return layout.size + 1, lambda data: cls(*unpack(data, 1))

    def parse_fields(data):
        values = list(unpack(data, 1))
        for i, decoder in enumerate(decoders):
            if decoder is not None:
                values[i] = decoder.get(values[i])
                if values[i] is None:
                    return None  # not a valid value: let the generic parser explain
        return cls(*values)
    return layout.size + 1, parse_fields


_FAST_PARSERS = {
    messages.opcode_of(Announce): _fast_parser(Announce, _ANNOUNCE),
    messages.opcode_of(PeerListRequest): _fast_parser(PeerListRequest, _PEER_LIST_REQUEST),
}


def parse(data: bytes):
    """One frame body to a message; raises only MalformedMessage."""
    fast = _FAST_PARSERS.get(data[0]) if data else None
    if fast is not None and len(data) == fast[0]:
        message = fast[1](data)
        if message is not None:
            return message
    return messages.parse(data)


def encode_peer_info(peer: PeerInfo) -> bytes:
    """One peer as it appears inside PeerList/PeerJoined, for the tracker to cache."""
    return _build_peer_info({
        "peer_id": peer.peer_id, "seeder": peer.seeder, "tcp_port": peer.tcp_port,
        "udp_port": peer.udp_port, "public_address": peer.public_address,
        "lan_addresses": list(peer.lan_addresses)})


def peer_list_body(info_hash: bytes, encoded_peers: list[bytes]) -> bytes:
    """The PeerList message built from :func:`encode_peer_info` outputs, without re-encoding.

    Same bytes as ``build(PeerList(info_hash, peers))`` (a unit test holds the two together).
    """
    if len(info_hash) != INFO_HASH_SIZE or len(encoded_peers) > MAX_PEERS_PER_LIST:
        raise ValueError("bad peer list")
    return b"".join((_PEER_LIST_HEADER, info_hash,
                     len(encoded_peers).to_bytes(_COUNT_SIZE, "big"), *encoded_peers))


def peer_joined_body(info_hash: bytes, encoded_peer: bytes) -> bytes:
    """The PeerJoined message around one :func:`encode_peer_info` output."""
    if len(info_hash) != INFO_HASH_SIZE:
        raise ValueError("bad info-hash")
    return b"".join((_PEER_JOINED_HEADER, info_hash, encoded_peer))
