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
