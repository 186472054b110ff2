"""Twisted's TCP transport: how much one ``doWrite`` may send.

``abstract.FileDescriptor.SEND_LIMIT`` (128 KiB) bounds what a connection sends per reactor
turn; peer links raise it per connection (``peerit.daemon.peerlink``, see TCP_BUFFER there
for the measurements). Checked against Twisted 24.3 to 26.10.
"""

from twisted.internet import abstract

#: the class attribute doWrite reads, so that an instance attribute overrides it per connection
SEND_LIMIT_TUNABLE = isinstance(vars(abstract.FileDescriptor).get("SEND_LIMIT"), int)


def set_send_limit(transport, limit: int) -> bool:
    """Let ``transport`` send up to ``limit`` bytes per ``doWrite``; False (Twisted's default
    stays) where the probe failed."""
    if not SEND_LIMIT_TUNABLE:
        return False
    transport.SEND_LIMIT = limit
    return True
