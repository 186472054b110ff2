"""AMP boxes without Twisted: the framing and the value encodings of the control contract.

An AMP box is a sequence of (key, value) pairs, each a 16-bit big-endian length then the bytes
(a key at most 255 bytes, a value at most 65,535), ended by an empty key. Values are encoded as
Twisted's ``amp`` argument types do (the unit tests check both ways against Twisted's own), so
:class:`peerit.client.BlockingClient` on a plain socket and the Twisted daemon understand each
other. Nothing here does I/O: :class:`BoxDecoder` takes bytes in and hands whole boxes out.
"""

import struct

from peerit.control import contract
from peerit.errors import MalformedMessage

MAX_KEY_LENGTH = 0xFF
MAX_VALUE_LENGTH = 0xFFFF
# A box holds at most this many pairs: the largest answer (a page of transfers) has a few.
MAX_PAIRS = 64

ASK, ANSWER, COMMAND = b"_ask", b"_answer", b"_command"
ERROR, ERROR_CODE, ERROR_DESCRIPTION = b"_error", b"_error_code", b"_error_description"
UNHANDLED_ERROR_CODE = b"UNHANDLED"

_LENGTH = struct.Struct("!H")


def encode_box(box: dict) -> bytes:
    """A box (``bytes`` keys and values) on the wire."""
    out = []
    for key, value in sorted(box.items()):
        if not 0 < len(key) <= MAX_KEY_LENGTH or len(value) > MAX_VALUE_LENGTH:
            raise ValueError(f"AMP key {key[:20]!r} or its value is too long")
        out += [_LENGTH.pack(len(key)), key, _LENGTH.pack(len(value)), value]
    out.append(_LENGTH.pack(0))
    return b"".join(out)


class BoxDecoder:
    """Bytes in, whole boxes out; a box that is not AMP raises :class:`MalformedMessage`.

    Lengths are 16-bit, so a value can never be longer than 64 KiB; a box with more than
    ``MAX_PAIRS`` pairs is refused instead of being buffered.
    """

    def __init__(self):
        self._buffer = bytearray()
        self._box = {}
        self._key = None

    def feed(self, data: bytes) -> list[dict]:
        self._buffer += data
        boxes, offset = [], 0
        while len(self._buffer) - offset >= 2:
            (length,) = _LENGTH.unpack_from(self._buffer, offset)
            if self._key is None and length > MAX_KEY_LENGTH:
                raise MalformedMessage(f"AMP key of {length} bytes (at most {MAX_KEY_LENGTH})")
            if len(self._buffer) - offset - 2 < length:
                break
            chunk = bytes(self._buffer[offset + 2:offset + 2 + length])
            offset += 2 + length
            if self._key is None:
                if not chunk:
                    boxes.append(self._box)
                    self._box = {}
                    continue
                if len(self._box) >= MAX_PAIRS:
                    raise MalformedMessage(f"AMP box of more than {MAX_PAIRS} pairs")
                self._key = chunk
            else:
                self._box[self._key] = chunk
                self._key = None
        del self._buffer[:offset]
        return boxes

    def between_boxes(self) -> bool:
        """Whether everything fed so far ended with a whole box."""
        return not self._buffer and not self._box and self._key is None


def parse_boxes(data: bytes) -> list[dict]:
    """Whole boxes one after another (the value of an AMP ``AmpList``)."""
    decoder = BoxDecoder()
    boxes = decoder.feed(data)
    if not decoder.between_boxes():
        raise MalformedMessage("an AMP list ends inside a box")
    return boxes


def _encode_scalar(kind: contract.Scalar, value) -> bytes:
    if kind is contract.TEXT:
        return value.encode("utf-8")
    if kind is contract.INTEGER:
        return b"%d" % (value,)
    if kind is contract.FLOAT:
        if not isinstance(value, float):
            raise ValueError(f"bad float value {value!r}")
        return str(value).encode("ascii")
    return b"True" if value else b"False"


def _decode_scalar(kind: contract.Scalar, data: bytes):
    if kind is contract.TEXT:
        return data.decode("utf-8")
    if kind is contract.INTEGER:
        return int(data)
    if kind is contract.FLOAT:
        return float(data)
    if data not in (b"True", b"False"):
        raise ValueError(f"bad boolean value {data[:20]!r}")
    return data == b"True"


def _encode_value(kind, value) -> bytes:
    if isinstance(kind, contract.ListOf):
        items = [_encode_scalar(kind.element, v) for v in value]
        return b"".join(_LENGTH.pack(len(item)) + item for item in items)
    if isinstance(kind, contract.Records):
        return b"".join(encode_box(encode_fields(kind.fields, record)) for record in value)
    return _encode_scalar(kind, value)


def _decode_value(kind, data: bytes):
    if isinstance(kind, contract.ListOf):
        items, offset = [], 0
        while offset < len(data):
            if len(data) - offset < 2:
                raise ValueError("an AMP list ends inside a length")
            (length,) = _LENGTH.unpack_from(data, offset)
            if len(data) - offset - 2 < length:
                raise ValueError("an AMP list item is longer than the list")
            items.append(_decode_scalar(kind.element, data[offset + 2:offset + 2 + length]))
            offset += 2 + length
        return items
    if isinstance(kind, contract.Records):
        return [decode_fields(kind.fields, box) for box in parse_boxes(data)]
    return _decode_scalar(kind, data)


def encode_fields(fields, values: dict) -> dict:
    """``values`` (by field name, as ``str``) as a box's pairs."""
    return {name: _encode_value(kind, values[name.decode()]) for name, kind in fields}


def decode_fields(fields, box: dict) -> dict:
    """A box's pairs as values by field name; a missing or malformed value raises
    :class:`MalformedMessage`."""
    try:
        return {name.decode(): _decode_value(kind, box[name]) for name, kind in fields}
    except KeyError as e:
        raise MalformedMessage(f"the AMP box lacks {e.args[0]!r}") from None
    except (ValueError, UnicodeDecodeError) as e:
        if isinstance(e, MalformedMessage):
            raise
        raise MalformedMessage(f"bad AMP value: {e}") from None
