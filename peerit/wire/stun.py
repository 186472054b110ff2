"""STUN messages (RFC 5389 / RFC 8489, with the RFC 5780 attributes netcheck uses).

A message is a 20-byte header (two zero bits, a 14-bit type, the attributes' length, the
magic cookie 0x2112A442, a 96-bit transaction id) and attributes as type-length-value padded to
4 bytes. This module holds the one definition of that format; no Twisted here.

Parsing is strict where strictness is cheap: the header's length must match the datagram,
every attribute must fit inside it, a FINGERPRINT, when present, must be last and correct.
Unknown attributes are kept as raw bytes (a responder needs them to answer 420). Every
failure is a :class:`MalformedMessage`; nothing is allocated from a length that has not been
checked against the bytes actually received.
"""

import ipaddress
import zlib
from dataclasses import dataclass

from construct import (
    BitsInteger, BitStruct, Byte, Bytes, Const, ConstructError, Enum, Error, GreedyBytes,
    GreedyRange,
    Int16ub, Int32ub, Padding, Struct, Switch, Terminated, this)

from peerit.errors import MalformedMessage

MAGIC_COOKIE = 0x2112A442
MAGIC_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
HEADER_SIZE = 20
TRANSACTION_ID_SIZE = 12
# A STUN message over UDP fits one datagram; its length field is 16 bits anyway.
MAX_MESSAGE_SIZE = HEADER_SIZE + 0xFFFC

# Methods and classes (RFC 8489 section 5): the class bits C1 C0 sit at bits 8 and 4.
BINDING = 0x001
REQUEST, INDICATION, SUCCESS, ERROR = 0, 1, 2, 3

BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111

# Attribute types. 0x0000-0x7FFF are comprehension-required, 0x8000-0xFFFF optional.
MAPPED_ADDRESS = 0x0001
CHANGE_REQUEST = 0x0003  # RFC 5780
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
XOR_MAPPED_ADDRESS = 0x0020
PADDING = 0x0026  # RFC 5780
RESPONSE_PORT = 0x0027  # RFC 5780
SOFTWARE = 0x8022
FINGERPRINT = 0x8028
RESPONSE_ORIGIN = 0x802B  # RFC 5780
OTHER_ADDRESS = 0x802C  # RFC 5780

FINGERPRINT_XOR = 0x5354554E
CHANGE_IP_FLAG = 0x04
CHANGE_PORT_FLAG = 0x02
MAX_SOFTWARE_BYTES = 763  # RFC 8489 15.10: fewer than 128 characters, at most 763 bytes
MAX_REASON_BYTES = 763

_IPV4, _IPV6 = 1, 2

ATTRIBUTE = Struct(
    "type" / Int16ub,
    "length" / Int16ub,
    "value" / Bytes(this.length),
    Padding(lambda ctx: -ctx.length % 4),
)

MESSAGE = Struct(
    "header" / BitStruct(
        Const(0, BitsInteger(2)),
        "type" / BitsInteger(14),
    ),
    "length" / Int16ub,
    Const(MAGIC_COOKIE_BYTES),
    "transaction_id" / Bytes(TRANSACTION_ID_SIZE),
    "attributes" / GreedyRange(ATTRIBUTE),
    Terminated,
)

# MAPPED-ADDRESS, XOR-MAPPED-ADDRESS, RESPONSE-ORIGIN, OTHER-ADDRESS share this layout.
ADDRESS = Struct(
    Padding(1),
    "family" / Enum(Byte, ipv4=_IPV4, ipv6=_IPV6),
    "port" / Int16ub,
    "address" / Switch(this.family, {"ipv4": Bytes(4), "ipv6": Bytes(16)}, default=Error),
    Terminated,
)

ERROR_CODE_VALUE = Struct(
    Const(0, Int16ub),
    "code_class" / Byte,  # only the low 3 bits are defined; the rest must be zero
    "number" / Byte,
    "reason" / GreedyBytes,
)

UINT32_VALUE = Struct("value" / Int32ub, Terminated)
ATTRIBUTE_TYPES_VALUE = Struct("types" / GreedyRange(Int16ub), Terminated)


@dataclass(frozen=True)
class Attribute:
    type: int
    value: bytes


@dataclass(frozen=True)
class StunMessage:
    type: int
    transaction_id: bytes
    attributes: tuple[Attribute, ...] = ()

    @property
    def method(self) -> int:
        return split_type(self.type)[0]

    @property
    def message_class(self) -> int:
        return split_type(self.type)[1]

    def get(self, attribute_type: int) -> bytes | None:
        """The value of the first attribute of this type (RFC 8489: later ones are ignored)."""
        for attribute in self.attributes:
            if attribute.type == attribute_type:
                return attribute.value
        return None

    def unknown_required(self, known: frozenset[int]) -> tuple[int, ...]:
        """Comprehension-required attribute types not in ``known``, in order, once each."""
        seen: list[int] = []
        for attribute in self.attributes:
            if attribute.type < 0x8000 and attribute.type not in known \
                    and attribute.type not in seen:
                seen.append(attribute.type)
        return tuple(seen)


def message_type(method: int, message_class: int) -> int:
    return ((method & 0xF80) << 2) | ((method & 0x070) << 1) | (method & 0x00F) \
        | ((message_class & 2) << 7) | ((message_class & 1) << 4)


def split_type(type_: int) -> tuple[int, int]:
    method = ((type_ >> 2) & 0xF80) | ((type_ >> 1) & 0x070) | (type_ & 0x00F)
    message_class = ((type_ >> 7) & 2) | ((type_ >> 4) & 1)
    return method, message_class


def is_stun(datagram: bytes) -> bool:
    """Cheap test for the demultiplexer: top two bits 00, the magic cookie, a 4-aligned length.

    It does not parse; a datagram that passes may still be malformed.
    """
    return (len(datagram) >= HEADER_SIZE
            and datagram[0] & 0xC0 == 0
            and datagram[4:8] == MAGIC_COOKIE_BYTES
            and datagram[3] & 0x03 == 0)


def build(message: StunMessage, fingerprint: bool = True) -> bytes:
    """Encode a message; with ``fingerprint`` a FINGERPRINT attribute is appended last."""
    if len(message.transaction_id) != TRANSACTION_ID_SIZE:
        raise MalformedMessage("STUN transaction id must be 12 bytes")
    attributes = [{"type": a.type, "length": len(a.value), "value": a.value}
                  for a in message.attributes]
    if fingerprint:
        attributes.append({"type": FINGERPRINT, "length": 4, "value": bytes(4)})
    length = sum(4 + len(a["value"]) + (-len(a["value"]) % 4) for a in attributes)
    if length > 0xFFFC or any(a["length"] > 0xFFFF for a in attributes):
        raise MalformedMessage("STUN message too long")
    try:
        data = MESSAGE.build({
            "header": {"type": message.type},
            "length": length,
            "transaction_id": message.transaction_id,
            "attributes": attributes,
        })
    except ConstructError as e:
        raise MalformedMessage(f"cannot encode STUN message: {e}") from None
    if fingerprint:
        data = data[:-4] + _fingerprint_value(data[:-8])
    return data


def parse(data: bytes) -> StunMessage:
    """Decode one datagram; FINGERPRINT is checked when present. Raises MalformedMessage."""
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise MalformedMessage(f"STUN message too short ({len(data)} bytes)")
    if data[0] & 0xC0:
        raise MalformedMessage("not STUN: the top two bits are not zero")
    if data[4:8] != MAGIC_COOKIE_BYTES:
        raise MalformedMessage("not STUN: no magic cookie")
    length = int.from_bytes(data[2:4], "big")
    if length % 4:
        raise MalformedMessage(f"STUN length {length} is not a multiple of 4")
    if HEADER_SIZE + length != len(data):
        raise MalformedMessage(
            f"STUN length {length} does not match the {len(data) - HEADER_SIZE} bytes received")
    try:
        parsed = MESSAGE.parse(data)
    except ConstructError as e:
        raise MalformedMessage(f"bad STUN message: {_short(e)}") from None
    attributes = tuple(Attribute(a.type, a.value) for a in parsed.attributes)
    for index, attribute in enumerate(attributes):
        if attribute.type == FINGERPRINT:
            if index != len(attributes) - 1:
                raise MalformedMessage("STUN FINGERPRINT is not the last attribute")
            if len(attribute.value) != 4 or attribute.value != _fingerprint_value(data[:-8]):
                raise MalformedMessage("STUN FINGERPRINT does not match")
    return StunMessage(parsed.header.type, parsed.transaction_id, attributes)


def _fingerprint_value(covered: bytes) -> bytes:
    return UINT32_VALUE.build({"value": (zlib.crc32(covered) ^ FINGERPRINT_XOR) & 0xFFFFFFFF})


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__


# --- attribute values -------------------------------------------------------------------


def _xor_pad(transaction_id: bytes, size: int) -> bytes:
    return (MAGIC_COOKIE_BYTES + transaction_id)[:size]


def encode_address(address: tuple[str, int], xor_with: bytes | None = None) -> bytes:
    """An address attribute value; ``xor_with`` is the transaction id for XOR-MAPPED-ADDRESS."""
    host, port = address
    ip = ipaddress.ip_address(host)
    packed = ip.packed
    if xor_with is not None:
        port ^= MAGIC_COOKIE >> 16
        packed = bytes(a ^ b for a, b in zip(packed, _xor_pad(xor_with, len(packed))))
    return ADDRESS.build({"family": "ipv4" if ip.version == 4 else "ipv6",
                          "port": port, "address": packed})


def decode_address(value: bytes, xor_with: bytes | None = None) -> tuple[str, int]:
    try:
        parsed = ADDRESS.parse(value)
    except ConstructError as e:
        raise MalformedMessage(f"bad STUN address attribute: {_short(e)}") from None
    port, packed = parsed.port, parsed.address
    if xor_with is not None:
        port ^= MAGIC_COOKIE >> 16
        packed = bytes(a ^ b for a, b in zip(packed, _xor_pad(xor_with, len(packed))))
    return str(ipaddress.ip_address(packed)), port


def xor_mapped_address(address: tuple[str, int], transaction_id: bytes) -> Attribute:
    return Attribute(XOR_MAPPED_ADDRESS, encode_address(address, xor_with=transaction_id))


def address_attribute(attribute_type: int, address: tuple[str, int]) -> Attribute:
    """MAPPED-ADDRESS, RESPONSE-ORIGIN or OTHER-ADDRESS (plain, not XOR-ed)."""
    return Attribute(attribute_type, encode_address(address))


def mapped_address(message: StunMessage) -> tuple[str, int] | None:
    """The reflexive address: XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS (old servers)."""
    value = message.get(XOR_MAPPED_ADDRESS)
    if value is not None:
        return decode_address(value, xor_with=message.transaction_id)
    value = message.get(MAPPED_ADDRESS)
    if value is not None:
        return decode_address(value)
    return None


def read_address(message: StunMessage, attribute_type: int) -> tuple[str, int] | None:
    value = message.get(attribute_type)
    return None if value is None else decode_address(value)


def padding(length: int) -> Attribute:
    """RFC 5780 PADDING: zero bytes that make a request as long as the answer it asks for."""
    return Attribute(PADDING, bytes(max(0, length)))


def software(text: str) -> Attribute:
    value = text.encode("utf-8")
    if len(value) > MAX_SOFTWARE_BYTES or len(text) >= 128:
        raise MalformedMessage("STUN SOFTWARE is longer than 127 characters")
    return Attribute(SOFTWARE, value)


def read_software(message: StunMessage) -> str | None:
    value = message.get(SOFTWARE)
    if value is None:
        return None
    if len(value) > MAX_SOFTWARE_BYTES:
        raise MalformedMessage("STUN SOFTWARE too long")
    return value.decode("utf-8", errors="replace")


def error_code(code: int, reason: str) -> Attribute:
    if not 300 <= code <= 699:
        raise MalformedMessage(f"STUN error code {code} out of range 300-699")
    text = reason.encode("utf-8")[:MAX_REASON_BYTES]
    return Attribute(ERROR_CODE, ERROR_CODE_VALUE.build(
        {"code_class": code // 100, "number": code % 100, "reason": text}))


def read_error_code(message: StunMessage) -> tuple[int, str] | None:
    value = message.get(ERROR_CODE)
    if value is None:
        return None
    try:
        parsed = ERROR_CODE_VALUE.parse(value)
    except ConstructError as e:
        raise MalformedMessage(f"bad STUN ERROR-CODE: {_short(e)}") from None
    if not 3 <= parsed.code_class <= 6 or parsed.number > 99:
        raise MalformedMessage("bad STUN ERROR-CODE: code out of range")
    if len(parsed.reason) > MAX_REASON_BYTES:
        raise MalformedMessage("bad STUN ERROR-CODE: reason too long")
    return parsed.code_class * 100 + parsed.number, parsed.reason.decode("utf-8", "replace")


def change_request(change_ip: bool = False, change_port: bool = False) -> Attribute:
    flags = (CHANGE_IP_FLAG if change_ip else 0) | (CHANGE_PORT_FLAG if change_port else 0)
    return Attribute(CHANGE_REQUEST, UINT32_VALUE.build({"value": flags}))


def read_change_request(message: StunMessage) -> tuple[bool, bool]:
    """(change_ip, change_port); both False when the attribute is absent."""
    value = message.get(CHANGE_REQUEST)
    if value is None:
        return False, False
    try:
        flags = UINT32_VALUE.parse(value).value
    except ConstructError as e:
        raise MalformedMessage(f"bad STUN CHANGE-REQUEST: {_short(e)}") from None
    return bool(flags & CHANGE_IP_FLAG), bool(flags & CHANGE_PORT_FLAG)


def unknown_attributes(types: tuple[int, ...]) -> Attribute:
    return Attribute(UNKNOWN_ATTRIBUTES, ATTRIBUTE_TYPES_VALUE.build({"types": list(types)}))


def read_unknown_attributes(message: StunMessage) -> tuple[int, ...]:
    value = message.get(UNKNOWN_ATTRIBUTES)
    if value is None:
        return ()
    if len(value) % 2:
        raise MalformedMessage("bad STUN UNKNOWN-ATTRIBUTES: odd length")
    try:
        return tuple(ATTRIBUTE_TYPES_VALUE.parse(value).types)
    except ConstructError as e:
        raise MalformedMessage(f"bad STUN UNKNOWN-ATTRIBUTES: {_short(e)}") from None
