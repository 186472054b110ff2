"""Twisted's UDP port: reading with our own ``doRead``.

The reactor calls ``port.doRead()`` when the socket is readable; ``udp.Port.doRead`` reads
one datagram per ``recvfrom`` and calls ``datagramReceived`` for each. A
:class:`peerit.nat.udp_batch.DatagramReader` installed in its place reads coalesced (UDP GRO)
batches and hands QUIC datagrams straight to their receiver (docs/quic.md, "GSO/GRO").
Checked against Twisted 24.3 to 26.10.
"""

from twisted.internet import udp

#: the port's doRead is a plain method on udp.Port, which the reactor looks up on the port at
#: every readable event: an instance attribute then replaces it for that port alone
READER_REPLACEABLE = callable(vars(udp.Port).get("doRead"))


def install_reader(port, reader) -> bool:
    """Make ``reader`` the port's ``doRead``; False (the port keeps Twisted's, which feeds
    the protocol's ``datagramReceived``) where the probe failed or ``port`` has no socket."""
    if not READER_REPLACEABLE or getattr(port, "socket", None) is None:
        return False
    port.doRead = reader
    return True
