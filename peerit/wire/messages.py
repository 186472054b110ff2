"""A set of messages sharing one opcode byte: the pattern every framed protocol here follows.

Each message is a frozen dataclass whose fields match a construct ``Struct`` body. Adding a
message to a protocol is one dataclass and one ``register`` decorator; ``build``/``parse``
handle the opcode, the ``Switch`` on it, and turn every construct error into
:class:`MalformedMessage`.
"""

import dataclasses
import io
import struct
from typing import Any

from construct import (
    Byte, ConstructError, StreamError, Container, Error, ListContainer, Struct, Switch, Terminated, this)

from peerit.errors import MalformedMessage


class MessageSet:
    def __init__(self, name: str):
        self.name = name
        self._by_class: dict[type, tuple[int, Struct]] = {}
        self._by_opcode: dict[int, type] = {}
        self._bodies: dict[int, Struct] = {}
        self._format = None
        self._compiled = None

    def register(self, opcode: int, body: Struct):
        """Class decorator: ``@messages.register(3, Struct(...))``."""
        def decorate(cls):
            if opcode in self._by_opcode:
                raise ValueError(f"opcode {opcode} used twice in {self.name}")
            self._by_class[cls] = (opcode, body)
            self._by_opcode[opcode] = cls
            self._bodies[opcode] = body
            self._format = None
            self._compiled = None
            return cls
        return decorate

    @property
    def format(self):
        """The whole protocol as one construct: opcode byte, then the body it selects."""
        if self._format is None:
            self._format = Struct(
                "opcode" / Byte,
                "body" / Switch(this.opcode, dict(self._bodies), default=Error),
                Terminated,
            )
        return self._format

    @property
    def _parser(self):
        # Compiled once: several times faster than the interpreted Struct on every frame.
        # Without Terminated: its compiled read(1) expects a short read, which the strict
        # stream below refuses; the end of the message is checked by position instead.
        if self._compiled is None:
            self._compiled = Struct(
                "opcode" / Byte,
                "body" / Switch(this.opcode, dict(self._bodies), default=Error),
            ).compile()
        return self._compiled

    @property
    def message_types(self) -> tuple[type, ...]:
        return tuple(self._by_class)

    def opcode_of(self, cls) -> int:
        return self._by_class[cls][0]

    def build(self, message) -> bytes:
        opcode, body = self._by_class[type(message)]
        # Interpreted, not compiled: compiled Bytes(n) writes a value of any length.
        try:
            return bytes([opcode]) + body.build(_to_construct(message))
        except (ConstructError, struct.error, ValueError, OverflowError, TypeError) as e:
            raise MalformedMessage(f"cannot encode {type(message).__name__}: {_short(e)}") \
                from None

    def parse(self, data: bytes):
        if not data:
            raise MalformedMessage(f"empty {self.name} message")
        cls = self._by_opcode.get(data[0])
        if cls is None:
            raise MalformedMessage(f"unknown {self.name} message type {data[0]}")
        try:
            stream = StrictBytesIO(data)
            parsed = self._parser.parse_stream(stream)
            if stream.tell() != len(data):
                raise StreamError(f"{len(data) - stream.tell()} bytes after the message")
        except ConstructError as e:
            raise MalformedMessage(f"bad {self.name} {cls.__name__}: {_short(e)}") from None
        except (ValueError, UnicodeDecodeError, OverflowError, struct.error) as e:
            raise MalformedMessage(f"bad {self.name} {cls.__name__}: {e}") from None
        return _from_construct(cls, parsed.body)


class StrictBytesIO(io.BytesIO):
    """Compiled construct reads ``Bytes(n)`` with a bare ``read(n)`` and accepts a short
    result; here a short read is an error, so a truncated message never parses."""

    def read(self, size=-1):
        data = super().read(size)
        if size is not None and size >= 0 and len(data) != size:
            raise StreamError(f"truncated: expected {size} bytes, found {len(data)}")
        return data


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__


def _to_construct(value: Any):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_construct(getattr(value, f.name))
                for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_construct(v) for v in value]
    return value


def _from_construct(cls, fields: Container):
    """Rebuild a dataclass from a parsed Container, nesting into dataclass-typed fields.

    A message class names its nested dataclass fields in ``__nested__`` ({field: class}).
    """
    nested = getattr(cls, "__nested__", {})
    kwargs = {}
    for f in dataclasses.fields(cls):
        raw = fields[f.name]
        inner = nested.get(f.name)
        if isinstance(raw, ListContainer):
            raw = tuple(_from_construct(inner, item) if inner else _plain(item)
                        for item in raw)
        elif inner is not None and isinstance(raw, Container):
            raw = _from_construct(inner, raw)
        kwargs[f.name] = _plain(raw)
    return cls(**kwargs)


def _plain(value):
    # construct's Enum values are str subclasses; hand the logic plain strings.
    if isinstance(value, str) and type(value) is not str:
        return str(value)
    return value
