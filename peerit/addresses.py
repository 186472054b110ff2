"""Addresses users type: ``HOST:PORT`` and a tracker's ``HOST:PORT#FINGERPRINT``."""

import ipaddress
import urllib.parse
from dataclasses import dataclass

from peerit.endpoints import DEFAULT_MAILBOX_PORT, DEFAULT_TRACKER_PORT
from peerit.errors import UsageError
from peerit.fingerprints import format_fingerprint, parse_fingerprint



def parse_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or (with a default port) a bare host."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise UsageError(f"bad address {text!r}: missing ']'")
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else None)
        if port_text is None:
            raise UsageError(f"bad address {text!r}")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        raise UsageError(f"bad address {text!r}: write IPv6 addresses as [addr]:port")
    else:
        host, port_text = text, ""
    if not host:
        raise UsageError(f"bad address {text!r}: no host")
    if not port_text:
        if default_port is None:
            raise UsageError(f"bad address {text!r}: expected HOST:PORT")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"bad port in {text!r}: expected 1-65535")
    return host, int(port_text)


def format_host_port(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


@dataclass(frozen=True)
class TrackerAddress:
    host: str
    port: int
    fingerprint: bytes | None = None  # SHA-256 of the tracker's public key, when pinned

    @classmethod
    def parse(cls, text: str) -> "TrackerAddress":
        where, sep, fingerprint = text.partition("#")
        host, port = parse_host_port(where, DEFAULT_TRACKER_PORT)
        try:
            pin = parse_fingerprint(fingerprint) if sep else None
        except Exception as e:
            raise UsageError(f"bad tracker {text!r}: {e}") from None
        return cls(host, port, pin)

    def __str__(self) -> str:
        base = format_host_port(self.host, self.port)
        if self.fingerprint:
            return f"{base}#{format_fingerprint(self.fingerprint)}"
        return base


def default_mailbox_url(tracker: TrackerAddress) -> str:
    """The rendezvous for short codes (a magic-wormhole mailbox) that a tracker operator may
    run beside the tracker (``twistd peerit-tracker --mailbox auto``): daemons look for it on
    the default port of their first tracker's host unless told another URL."""
    return f"ws://{format_host_port(tracker.host, DEFAULT_MAILBOX_PORT)}/v1"


def check_mailbox_url(url: str) -> str:
    """A rendezvous URL as the user gave it: ``ws://HOST:PORT/v1`` or ``wss://...``."""
    parsed = urllib.parse.urlparse(url.strip())
    if parsed.scheme not in ("ws", "wss") or not parsed.hostname:
        raise UsageError(f"bad mailbox URL {url!r}: expected ws://HOST:PORT/v1")
    try:
        parsed.port
    except ValueError:
        raise UsageError(f"bad port in mailbox URL {url!r}") from None
    return url.strip()
