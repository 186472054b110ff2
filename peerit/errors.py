"""The project's own exceptions: what parsers raise and what users may see.

Every error a user can meet is a :class:`PeeritError`; its message is one plain line and its
``exit_code`` is what ``peerit-ctl`` exits with. This module is the one place that mapping lives.
"""


class PeeritError(Exception):
    """Base of every error peer-it raises on purpose; its message is meant for a user."""
    exit_code = 1


class UsageError(PeeritError):
    """Bad command-line input: a path that does not exist, a malformed address, ..."""
    exit_code = 2


class DaemonNotRunning(PeeritError):
    exit_code = 3


class UnknownSwarm(PeeritError):
    exit_code = 4


class MalformedMessage(PeeritError, ValueError):
    """Bytes from outside (a file, a socket, a datagram) that do not follow the format."""
    exit_code = 5


class FrameTooLarge(MalformedMessage):
    """A length prefix larger than the protocol allows; refused before buffering the body."""


class MetainfoError(MalformedMessage):
    """A .p2p file that is truncated, corrupted or hostile."""


class NoSpace(PeeritError):
    exit_code = 6


class PermissionDenied(PeeritError):
    exit_code = 7


class IdentityMismatch(PeeritError):
    """The other side of a TLS link proved a key other than the pinned one."""
    exit_code = 8


class TimedOut(PeeritError):
    exit_code = 9


# -- links and codes (docs/links.md) ---------------------------------------------------------

class BadLink(UsageError):
    """A ``peerit:`` link that does not follow the format (a missing or repeated field, a
    value that does not parse, a link longer than the limit)."""
    exit_code = 10


class UnsupportedLink(BadLink):
    """Not a ``peerit:`` link, or one of a version this program does not read."""
    exit_code = 11


class UnpinnedTracker(BadLink):
    """A link naming a tracker without its fingerprint: nothing would authenticate it."""
    exit_code = 12


class MetadataTooLarge(PeeritError):
    """Peers announce share metadata larger than the cap; nothing was allocated for it."""
    exit_code = 13


class MetadataMismatch(PeeritError):
    """Metadata assembled from peers does not hash to the link's info-hash."""
    exit_code = 14


class WrongCode(PeeritError):
    """The two sides of a code exchange typed different codes (the code is now burnt)."""
    exit_code = 15


class CodeExpired(PeeritError):
    """A code was not used in time, or names no waiting sender."""
    exit_code = 16


class RendezvousUnreachable(PeeritError):
    """The rendezvous (mailbox) server that codes go through could not be reached."""
    exit_code = 17


class ReceiverRefused(PeeritError):
    """A private send admits one receiver; this peer is not it."""
    exit_code = 18
