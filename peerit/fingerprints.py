"""Peer ids and tracker fingerprints as people write them (64 hex digits), without the
cryptography that derives them (:mod:`peerit.identity`): reading an address or a link from
the command line should not load a crypto library."""

from peerit.errors import PeeritError

PEER_ID_SIZE = 32


def format_fingerprint(peer_id: bytes) -> str:
    return peer_id.hex()


def parse_fingerprint(text: str) -> bytes:
    """A fingerprint as users write it: 64 hex digits (colons allowed)."""
    cleaned = text.strip().replace(":", "").lower()
    try:
        raw = bytes.fromhex(cleaned)
    except ValueError:
        raw = b""
    if len(raw) != PEER_ID_SIZE:
        raise PeeritError(f"bad fingerprint {text!r}: expected 64 hex digits")
    return raw
