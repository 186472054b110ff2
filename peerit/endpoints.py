"""Endpoint strings users type (Twisted's ``kind:arg:key=value`` syntax) and peer-it's ports.

One parser per kind of endpoint: :func:`parse_udp_endpoint` for the UDP sockets (STUN, the
daemon's punching/QUIC socket), :func:`tcp_description` for TLS-over-TCP listeners, which
also reads ``ssl:`` as ``tcp:`` under peer-it's own TLS, and :func:`metrics_description`
for the plain-HTTP metrics listener (loopback unless told otherwise). Both honour Twisted's ``\\:`` escape
of colons inside IPv6 addresses.
"""

import re

from peerit.errors import UsageError

DEFAULT_TRACKER_PORT = 59000
DEFAULT_RELAY_PORT = 59001
DEFAULT_MAILBOX_PORT = 59002  # the code rendezvous a tracker may run (--mailbox auto)
DEFAULT_STUN_PORT = 3478      # RFC 8489
DEFAULT_STUN_ALT_PORT = 3479  # RFC 5780's second port: the primary + 1
DEFAULT_METRICS_INTERFACE = "127.0.0.1"

# Keyword arguments of Twisted's ssl: endpoint that peer-it's own TLS layer replaces.
_SSL_ONLY = ("privatekey", "certkey", "extracertchain", "sslmethod", "dhparameters",
             "cacertsdir", "method")


def split_unescaped(text: str) -> list[str]:
    """Split on ``:`` but not on ``\\:`` (the escaped colons of an IPv6 address), unescaping."""
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_udp_endpoint(spec: str, what: str = "UDP endpoint") -> tuple[int, str]:
    """``udp:3478``, ``udp:3478:interface=198.18.0.1``, ``udp:port=3478:interface=\\:\\:1``
    or a bare port to ``(port, interface)``; the interface is '' (all IPv4 addresses) when not
    given. ``what`` names the option in error messages."""
    kind, sep, rest = spec.partition(":")
    if not sep and kind.isdigit():
        kind, rest = "udp", kind
    if kind != "udp" or not rest:
        raise UsageError(f"bad {what} {spec!r}: expected udp:PORT[:interface=ADDR]")
    return _port_and_interface(rest, spec, what, default_interface="")


def _port_and_interface(rest: str, spec: str, what: str,
                        default_interface: str) -> tuple[int, str]:
    """``PORT[:interface=ADDR]`` or ``port=PORT[:interface=ADDR]`` (what follows ``kind:``)."""
    port_text, interface = None, default_interface
    for index, part in enumerate(split_unescaped(rest)):
        key, sep, value = part.partition("=")
        if not sep and index == 0:
            port_text = key
        elif key == "port":
            port_text = value
        elif key == "interface" and value:
            interface = value
        else:
            raise UsageError(f"bad {what} {spec!r}: unknown part {part!r}")
    if port_text is None or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise UsageError(f"bad {what} {spec!r}: expected a port 0-65535")
    return int(port_text), interface


def tcp_description(description: str, option: str = "--listen") -> str:
    """``tcp:...`` as given, or ``ssl:...`` as the ``tcp:`` endpoint under peer-it's TLS.

    Both mean TLS over TCP: peer-it never speaks plaintext and always uses its own identity,
    so certificate arguments of an ``ssl:`` string are dropped.
    """
    parts = re.split(r"(?<!\\):", description)
    kind = parts[0].lower()
    if kind not in ("tcp", "ssl") or len(parts) < 2:
        raise UsageError(f"bad {option} {description!r}: expected tcp:PORT[:interface=ADDR] "
                         f"or ssl:PORT[:interface=ADDR]")
    kept = [p for p in parts[1:] if p.split("=", 1)[0].lower() not in _SSL_ONLY]
    return ":".join(["tcp", *kept])


def metrics_description(spec: str, option: str = "--metrics") -> str:
    """``tcp:PORT[:interface=ADDR]`` (or ``tcp:port=PORT...``) as the Twisted description
    the metrics listener uses; the interface is 127.0.0.1 unless given, not Twisted's "all
    addresses", so turning metrics on publishes nothing by itself."""
    kind, _, rest = spec.partition(":")
    if kind != "tcp" or not rest:
        raise UsageError(f"bad {option} {spec!r}: expected tcp:PORT[:interface=ADDR]")
    port, interface = _port_and_interface(rest, spec, option, DEFAULT_METRICS_INTERFACE)
    escaped = interface.replace(":", "\\:")
    return f"tcp:{port}:interface={escaped}"


def listen_parts(description: str) -> tuple[int, str]:
    """Port and interface of a ``tcp:`` description."""
    port, interface = 0, ""
    for index, part in enumerate(split_unescaped(description)[1:]):
        key, sep, value = part.partition("=")
        if not sep and index == 0 or key == "port":
            port = int(value if sep else key)
        elif key == "interface":
            interface = value
    return port, interface
