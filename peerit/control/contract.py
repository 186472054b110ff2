"""The control contract, declared once without Twisted: each command's name, arguments and
answer, the error classes' codes and the page limits.

:mod:`peerit.control.commands` makes Twisted AMP ``Command`` classes of it (the daemon and
:class:`peerit.client.Client`); :mod:`peerit.control.boxes` encodes the same declarations on a
plain socket (``peerit-ctl`` and :class:`peerit.client.BlockingClient`), so a command run from
the shell needs no reactor. A field is ``(name, kind)``; a kind is one of the AMP argument types
the contract uses. AMP caps a value at 64 KiB, so lists are paged (``List``) or capped
(``Peers``).
"""

from collections import namedtuple

from peerit import errors

# The declarations are named tuples, not dataclasses: peerit-ctl reads them before it can
# send anything to the daemon, and importing dataclasses (with inspect, ast, dis) cost ~9 ms
# of that.


class Scalar(namedtuple("Scalar", "amp python")):
    """A single value: ``amp`` names the AMP argument type, ``python`` its value's type."""
    __slots__ = ()


TEXT = Scalar("Unicode", str)
INTEGER = Scalar("Integer", int)
FLOAT = Scalar("Float", float)
BOOLEAN = Scalar("Boolean", bool)


class ListOf(namedtuple("ListOf", "element")):
    """A list of scalars (AMP ``ListOf``)."""
    __slots__ = ()


class Records(namedtuple("Records", "fields")):
    """A list of records with the same fields (AMP ``AmpList``)."""
    __slots__ = ()


class Command(namedtuple("Command", "name arguments response doc requires_answer",
                         defaults=(True,))):
    """One command: its name, argument and response fields, what it does, and whether the
    caller waits for an answer."""
    __slots__ = ()


# Most specific first: an error is sent under the code of the first class it is an instance of.
ERRORS = (
    (errors.UnsupportedLink, b"UNSUPPORTED_LINK"),
    (errors.UnpinnedTracker, b"UNPINNED_TRACKER"),
    (errors.BadLink, b"BAD_LINK"),
    (errors.MetadataTooLarge, b"METADATA_TOO_LARGE"),
    (errors.MetadataMismatch, b"METADATA_MISMATCH"),
    (errors.WrongCode, b"WRONG_CODE"),
    (errors.CodeExpired, b"CODE_EXPIRED"),
    (errors.RendezvousUnreachable, b"RENDEZVOUS_UNREACHABLE"),
    (errors.ReceiverRefused, b"RECEIVER_REFUSED"),
    (errors.UnknownSwarm, b"UNKNOWN_SWARM"),
    (errors.MetainfoError, b"BAD_METAINFO"),
    (errors.NoSpace, b"NO_SPACE"),
    (errors.PermissionDenied, b"PERMISSION_DENIED"),
    (errors.UsageError, b"BAD_REQUEST"),
    (errors.TimedOut, b"TIMED_OUT"),
    (errors.PeeritError, b"FAILED"),
)

MAX_PAGE = 100
MAX_PEERS_LISTED = 100

TRANSFER_FIELDS = (
    (b"info_hash", TEXT),
    (b"name", TEXT),
    (b"role", TEXT),  # seed (shared in place) or download
    (b"state", TEXT),  # checking, downloading, stalled, seeding, paused, error
    (b"path", TEXT),
    (b"size", INTEGER),
    (b"done", INTEGER),  # verified bytes
    (b"pieces", INTEGER),
    (b"pieces_done", INTEGER),
    (b"down_rate", FLOAT),
    (b"up_rate", FLOAT),
    (b"downloaded", INTEGER),
    (b"uploaded", INTEGER),
    (b"peers", INTEGER),
    (b"known_peers", INTEGER),
    (b"eta", FLOAT),  # seconds, -1 when unknown
    (b"hash_failures", INTEGER),
    (b"banned", INTEGER),
    (b"error", TEXT),
)

PEER_FIELDS = (
    (b"peer_id", TEXT),
    (b"path", TEXT),  # tcp, quic (punched), relay
    (b"address", TEXT),
    (b"connect_seconds", FLOAT),
    (b"pieces", INTEGER),
    (b"download_rate", FLOAT),
    (b"upload_rate", FLOAT),
    (b"downloaded", INTEGER),
    (b"uploaded", INTEGER),
    (b"choked_by_us", BOOLEAN),
    (b"choking_us", BOOLEAN),
    (b"interested", BOOLEAN),
    (b"peer_interested", BOOLEAN),
)

SEND_FIELDS = (
    (b"info_hash", TEXT),
    (b"code", TEXT),
    (b"state", TEXT),  # waiting for the receiver, sending, delivered, failed
    (b"receiver", TEXT),
    (b"delivered", BOOLEAN),
    (b"error", TEXT),
    (b"error_code", INTEGER),  # the exit code of the error class, when failed
    (b"size", INTEGER),
    (b"uploaded", INTEGER),
    (b"peers", INTEGER),
)

_ID = ((b"id", TEXT),)
_STARTED = ((b"info_hash", TEXT), (b"name", TEXT), (b"path", TEXT))

COMMANDS = (
    Command("DaemonInfo", (), (
        (b"version", TEXT), (b"peer_id", TEXT), (b"data_dir", TEXT),
        (b"listen_port", INTEGER), (b"trackers", ListOf(TEXT)),
        (b"trackers_connected", ListOf(TEXT))),
        "Who the daemon is and how it is connected."),
    Command("Share", ((b"data_path", TEXT), (b"metainfo_path", TEXT), (b"check", BOOLEAN)),
            ((b"info_hash", TEXT), (b"name", TEXT), (b"state", TEXT)),
            "Seed ``data_path`` in place under the metainfo at ``metainfo_path``.\n\n"
            "``check`` asks the daemon to verify the data against the metainfo first (an "
            "existing .p2p); a .p2p just created from the same data by the CLI needs no "
            "second pass."),
    Command("Download", ((b"metainfo_path", TEXT), (b"target_dir", TEXT)), _STARTED,
            "Download the share described by ``metainfo_path`` into ``target_dir`` "
            "('' = default)."),
    Command("Status", _ID, TRANSFER_FIELDS,
            "One transfer; ``id`` is an info-hash or a unique prefix of one."),
    Command("List", ((b"offset", INTEGER), (b"limit", INTEGER)),
            ((b"transfers", Records(TRANSFER_FIELDS)), (b"total", INTEGER)),
            "A page of the transfers, by name."),
    Command("Peers", _ID, ((b"peers", Records(PEER_FIELDS)), (b"total", INTEGER)),
            "The connected peers of a transfer (at most MAX_PEERS_LISTED)."),
    Command("Pause", _ID, ((b"info_hash", TEXT),), "Pause a transfer."),
    Command("Resume", _ID, ((b"info_hash", TEXT),), "Resume a paused transfer."),
    Command("Remove", ((b"id", TEXT), (b"delete_data", BOOLEAN)), ((b"info_hash", TEXT),),
            "Stop a transfer and forget it."),
    Command("NetCheck", (), ((b"report", TEXT),),
            "Measure the daemon's UDP reachability; the report is a JSON object (see docs)."),
    Command("WebLogin", (), ((b"url", TEXT),),
            "A URL of the daemon's web page carrying a one-time login token "
            "(``peerit-ctl ui``)."),
    Command("Follow", _ID, ((b"info_hash", TEXT),),
            "Send this connection ``TransferChanged`` whenever the transfer changes (the "
            "daemon's event stream, at most once a second, at once when it completes or "
            "fails)."),
    Command("TransferChanged", ((b"id", TEXT), (b"transfers", Records(TRANSFER_FIELDS))), (),
            "Daemon -> client, after ``Follow``: the transfer's new status; ``transfers`` is "
            "empty once it has been removed.", requires_answer=False),
    # -- links and codes (docs/links.md) ------------------------------------------------------
    Command("DownloadLink", ((b"link", TEXT), (b"target_dir", TEXT)), _STARTED,
            "Download what a ``peerit:`` link names: its metadata from peers, then the data."),
    Command("LinkOf", _ID, ((b"link", TEXT), (b"info_hash", TEXT)),
            "The ``peerit:`` link of a transfer."),
    Command("ExportMetainfo", ((b"id", TEXT), (b"path", TEXT), (b"overwrite", BOOLEAN)),
            ((b"path", TEXT), (b"info_hash", TEXT)),
            "Write a transfer's metadata (fetched from peers or not) as a .p2p file."),
    Command("Send", ((b"data_path", TEXT), (b"metainfo_path", TEXT)),
            ((b"code", TEXT), (b"info_hash", TEXT), (b"name", TEXT), (b"link", TEXT)),
            "Share privately under a short code; only the peer who uses the code may "
            "connect."),
    Command("SendStatus", _ID, SEND_FIELDS,
            "Where a send stands; ``id`` is the full info-hash that Send answered."),
    Command("Receive", ((b"code", TEXT), (b"target_dir", TEXT)), _STARTED,
            "Take what a code names, from the sender it pins (waits for the exchange)."),
)

BY_NAME = {command.name: command for command in COMMANDS}
