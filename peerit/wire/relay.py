"""The relay hello: the first bytes each peer sends on its TCP connection to the tracker's relay.

::

    magic  13  "PEERIT-RELAY" 0x01
    token  32  the one-time token from the peers' RelayOffer (docs/nat-protocol.md)

One declaration for both sides: the daemon builds it (``peerit.daemon.relay_client``), the
tracker's relay parses it (``peerit.tracker.relay``). No Twisted here.
"""

from construct import Bytes, Const, ConstructError, Struct

from peerit.errors import MalformedMessage
from peerit.wire.tracker import RELAY_TOKEN_SIZE

RELAY_HELLO_MAGIC = b"PEERIT-RELAY\x01"

RELAY_HELLO = Struct(
    "magic" / Const(RELAY_HELLO_MAGIC),
    "token" / Bytes(RELAY_TOKEN_SIZE),
)
RELAY_HELLO_SIZE = RELAY_HELLO.sizeof()


def relay_hello(token: bytes) -> bytes:
    """What a client sends first: the magic and its token."""
    if len(token) != RELAY_TOKEN_SIZE:
        raise ValueError(f"relay token must be {RELAY_TOKEN_SIZE} bytes")
    return RELAY_HELLO.build({"token": token})


def could_be_relay_hello(received: bytes) -> bool:
    """Whether ``received`` (the bytes so far) can still begin a relay hello: lets the relay
    close a stranger's connection at its first wrong byte instead of waiting for 45."""
    n = min(len(received), len(RELAY_HELLO_MAGIC))
    return received[:n] == RELAY_HELLO_MAGIC[:n]


def parse_relay_hello(data: bytes) -> bytes:
    """The token of the hello at the start of ``data`` (at least :data:`RELAY_HELLO_SIZE`
    bytes; what follows is the caller's)."""
    try:
        return RELAY_HELLO.parse(bytes(data[:RELAY_HELLO_SIZE])).token
    except ConstructError as e:
        raise MalformedMessage(f"not a relay hello: {e}") from None
