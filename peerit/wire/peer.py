"""The peer protocol: what two daemons say over a TLS, QUIC or relayed link.

Frames are length-prefixed (``peerit.wire.framing``); each body is an opcode byte and the
message. Block messages carry piece data and take a fast path: a fixed 9-byte header parsed by
a compiled construct, and the payload handed on as a memoryview, never copied field by field.
"""

import struct
from dataclasses import dataclass

from construct import (
    Byte, Bytes, Const, FormatField, GreedyBytes, Int16ub, Int32ub, Renamed, Struct)

from peerit.errors import MalformedMessage
from peerit.wire.messages import MessageSet

PROTOCOL_VERSION = 1
HANDSHAKE_MAGIC = b"PEERIT"
MAX_BLOCK_SIZE = 1 << 20  # largest request a peer may make or serve
DEFAULT_BLOCK_SIZE = 1 << 18  # fewer Python calls per MB than 16-128 KiB; 1 MiB measured no better
MAX_FRAME_SIZE = MAX_BLOCK_SIZE + 64  # a block plus its header; bitfields stay below this

messages = MessageSet("peer")

_BLOCK_ADDRESS = ("piece" / Int32ub, "offset" / Int32ub)
BLOCK_HEADER = Struct(*_BLOCK_ADDRESS)
_RANGE = Struct(*_BLOCK_ADDRESS, "length" / Int32ub)
_HAVE = Struct("piece" / Int32ub)
_EMPTY = Struct()


@messages.register(0, _EMPTY)
@dataclass(frozen=True)
class KeepAlive:
    pass


@messages.register(1, Struct(
    "magic" / Const(HANDSHAKE_MAGIC),
    "version" / Int16ub,
    "info_hash" / Bytes(32),
    "peer_id" / Bytes(32),
))
@dataclass(frozen=True)
class Handshake:
    version: int
    info_hash: bytes
    peer_id: bytes


@messages.register(2, Struct("bits" / GreedyBytes))
@dataclass(frozen=True)
class Bitfield:
    bits: bytes


@messages.register(3, _HAVE)
@dataclass(frozen=True)
class Have:
    piece: int


@messages.register(4, _RANGE)
@dataclass(frozen=True)
class Request:
    piece: int
    offset: int
    length: int


@messages.register(5, Struct(*_BLOCK_ADDRESS, "data" / GreedyBytes))
@dataclass(frozen=True)
class Block:
    piece: int
    offset: int
    data: bytes  # a memoryview when parsed on the fast path


@messages.register(6, _RANGE)
@dataclass(frozen=True)
class Cancel:
    piece: int
    offset: int
    length: int


@messages.register(7, _EMPTY)
@dataclass(frozen=True)
class Choke:
    pass


@messages.register(8, _EMPTY)
@dataclass(frozen=True)
class Unchoke:
    pass


@messages.register(9, _EMPTY)
@dataclass(frozen=True)
class Interested:
    pass


@messages.register(10, _EMPTY)
@dataclass(frozen=True)
class NotInterested:
    pass


@messages.register(11, _RANGE)
@dataclass(frozen=True)
class Reject:
    """The uploader will not serve this request (choked, or it lacks the piece)."""
    piece: int
    offset: int
    length: int


def _layout(body: Struct) -> str:
    """The ``struct`` format of a construct body made of fixed-size numbers, read off its
    declaration (so the fast paths below cannot disagree with it on a field or its order)."""
    codes = []
    for field in body.subcons:
        inner = field.subcon if isinstance(field, Renamed) else field
        if not isinstance(inner, FormatField):
            raise TypeError(f"{field} is not a fixed-size number")
        codes.append(inner.fmtstr)
    if len({code[0] for code in codes}) > 1:
        raise TypeError("fields of mixed byte order")
    return codes[0][0] + "".join(code[1:] for code in codes) if codes else ""


def _with_opcode(body: Struct) -> struct.Struct:
    """opcode byte + body, as one ``struct``: the whole frame body of a fixed-size message."""
    layout = _layout(body)
    return struct.Struct(layout[0] + Byte.fmtstr[1:] + layout[1:])  # MessageSet's opcode


# The hot messages' measured fast paths (construct's parse/build machinery costs a few us
# per call: ~5% of a seeder's reactor thread for Requests). Opcodes and layouts come from the
# declarations above, once, at import; struct range-checks every field (struct.error), so
# nothing out of range is mangled, and the golden and property tests check both ways agree.
BLOCK_OPCODE = messages.opcode_of(Block)
_BLOCK_PREFIX = bytes([BLOCK_OPCODE])
_BLOCK_HEADER_STRUCT = _with_opcode(BLOCK_HEADER)
_HEADER_SIZE = _BLOCK_HEADER_STRUCT.size
_RANGE_STRUCT = _with_opcode(_RANGE)
_HAVE_STRUCT = _with_opcode(_HAVE)
_REQUEST_PREFIX = bytes([messages.opcode_of(Request)])
_REQUEST_SIZE = _RANGE_STRUCT.size
_HAVE_PREFIX = bytes([messages.opcode_of(Have)])
_HAVE_SIZE = _HAVE_STRUCT.size

_unpack_block_address = struct.Struct(_layout(BLOCK_HEADER)).unpack_from
_unpack_range = struct.Struct(_layout(_RANGE)).unpack_from
_unpack_have = struct.Struct(_layout(_HAVE)).unpack_from
_pack_block_header = _BLOCK_HEADER_STRUCT.pack
_pack_range = _RANGE_STRUCT.pack
_pack_have_body = struct.Struct(_layout(_HAVE)).pack


def _range_builder(cls):
    opcode = messages.opcode_of(cls)
    return lambda m: _pack_range(opcode, m.piece, m.offset, m.length)


_FAST_BUILD = {
    Request: _range_builder(Request),
    Cancel: _range_builder(Cancel),
    Reject: _range_builder(Reject),
    Have: lambda m: _HAVE_PREFIX + _pack_have_body(m.piece),
}


def build(message) -> bytes:
    fast = _FAST_BUILD.get(type(message))
    if fast is not None:
        try:
            return fast(message)
        except (struct.error, ValueError, TypeError, OverflowError, AttributeError):
            pass  # let the generic builder name the problem
    return messages.build(message)


def parse(data: bytes):
    """One frame body to a message. Blocks keep their payload as a memoryview of ``data``."""
    if data[:1] == _BLOCK_PREFIX:
        if len(data) < _HEADER_SIZE:
            raise MalformedMessage("bad peer Block: truncated header")
        piece, offset = _unpack_block_address(data, 1)
        return Block(piece, offset, memoryview(data)[_HEADER_SIZE:])
    if data[:1] == _HAVE_PREFIX and len(data) == _HAVE_SIZE:
        # One per verified piece to every peer: in a swarm the most frequent small message.
        return Have(*_unpack_have(data, 1))
    if data[:1] == _REQUEST_PREFIX and len(data) == _REQUEST_SIZE:
        # The uploader's hot message: fixed size, three u32 (struct: construct's parse
        # machinery was ~5% of a seeder's reactor thread).
        return Request(*_unpack_range(data, 1))
    return messages.parse(data)


def block_header(piece: int, offset: int) -> bytes:
    """The bytes before a block's payload, so senders can write the payload without a copy.
    (struct.pack range-checks both fields: struct.error for anything that is not a u32.)"""
    return _pack_block_header(BLOCK_OPCODE, piece, offset)


# -- metadata exchange: a downloader holding only a link fetches the info section from peers
# (docs/links.md). A peer answers its first MetadataRequest on a link with MetadataSize, then
# each request with a MetadataPiece, or MetadataReject while it holds no verified metadata.

METADATA_PIECE_SIZE = 16 * 1024
MAX_METADATA_SIZE = 3 * 1024 * 1024  # the cap a fetcher applies (libtorrent's info-dict cap)


@messages.register(12, Struct("piece" / Int32ub))
@dataclass(frozen=True)
class MetadataRequest:
    piece: int


@messages.register(13, Struct("size" / Int32ub))
@dataclass(frozen=True)
class MetadataSize:
    size: int


@messages.register(14, Struct("piece" / Int32ub, "data" / GreedyBytes))
@dataclass(frozen=True)
class MetadataPiece:
    piece: int
    data: bytes


@messages.register(15, Struct("piece" / Int32ub))
@dataclass(frozen=True)
class MetadataReject:
    piece: int
