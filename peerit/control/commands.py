"""AMP commands: the contract between ``peerit-ctl`` (and ``peerit.client``) and the daemon.

Both sides import this module. ``ERRORS`` maps each user-facing error class to an AMP error
code, so an error raised in the daemon reaches the CLI as the same class with the same one-line
message (and so the same exit code, from ``peerit.errors``). AMP caps a value at 64 KiB, so
lists are paged (``List``) or capped (``Peers``).
"""

from twisted.protocols import amp

from peerit import errors

# Most specific first: AMP picks the first class that matches.
ERRORS = {
    errors.UnsupportedLink: b"UNSUPPORTED_LINK",
    errors.UnpinnedTracker: b"UNPINNED_TRACKER",
    errors.BadLink: b"BAD_LINK",
    errors.MetadataTooLarge: b"METADATA_TOO_LARGE",
    errors.MetadataMismatch: b"METADATA_MISMATCH",
    errors.WrongCode: b"WRONG_CODE",
    errors.CodeExpired: b"CODE_EXPIRED",
    errors.RendezvousUnreachable: b"RENDEZVOUS_UNREACHABLE",
    errors.ReceiverRefused: b"RECEIVER_REFUSED",
    errors.UnknownSwarm: b"UNKNOWN_SWARM",
    errors.MetainfoError: b"BAD_METAINFO",
    errors.NoSpace: b"NO_SPACE",
    errors.PermissionDenied: b"PERMISSION_DENIED",
    errors.UsageError: b"BAD_REQUEST",
    errors.TimedOut: b"TIMED_OUT",
    errors.PeeritError: b"FAILED",
}

MAX_PAGE = 100
MAX_PEERS_LISTED = 100

TRANSFER_FIELDS = [
    (b"info_hash", amp.Unicode()),
    (b"name", amp.Unicode()),
    (b"role", amp.Unicode()),  # seed (shared in place) or download
    (b"state", amp.Unicode()),  # checking, downloading, stalled, seeding, paused, error
    (b"path", amp.Unicode()),
    (b"size", amp.Integer()),
    (b"done", amp.Integer()),  # verified bytes
    (b"pieces", amp.Integer()),
    (b"pieces_done", amp.Integer()),
    (b"down_rate", amp.Float()),
    (b"up_rate", amp.Float()),
    (b"downloaded", amp.Integer()),
    (b"uploaded", amp.Integer()),
    (b"peers", amp.Integer()),
    (b"known_peers", amp.Integer()),
    (b"eta", amp.Float()),  # seconds, -1 when unknown
    (b"hash_failures", amp.Integer()),
    (b"banned", amp.Integer()),
    (b"error", amp.Unicode()),
]

PEER_FIELDS = [
    (b"peer_id", amp.Unicode()),
    (b"path", amp.Unicode()),  # tcp, quic (punched), relay
    (b"address", amp.Unicode()),
    (b"connect_seconds", amp.Float()),
    (b"pieces", amp.Integer()),
    (b"download_rate", amp.Float()),
    (b"upload_rate", amp.Float()),
    (b"downloaded", amp.Integer()),
    (b"uploaded", amp.Integer()),
    (b"choked_by_us", amp.Boolean()),
    (b"choking_us", amp.Boolean()),
    (b"interested", amp.Boolean()),
    (b"peer_interested", amp.Boolean()),
]


class Command(amp.Command):
    errors = ERRORS


class DaemonInfo(Command):
    """Who the daemon is and how it is connected."""
    arguments = []
    response = [
        (b"version", amp.Unicode()),
        (b"peer_id", amp.Unicode()),
        (b"data_dir", amp.Unicode()),
        (b"listen_port", amp.Integer()),
        (b"trackers", amp.ListOf(amp.Unicode())),
        (b"trackers_connected", amp.ListOf(amp.Unicode())),
    ]


class Share(Command):
    """Seed ``data_path`` in place under the metainfo at ``metainfo_path``.

    ``check`` asks the daemon to verify the data against the metainfo first (an existing
    .p2p); a .p2p just created from the same data by the CLI needs no second pass.
    """
    arguments = [
        (b"data_path", amp.Unicode()),
        (b"metainfo_path", amp.Unicode()),
        (b"check", amp.Boolean()),
    ]
    response = [(b"info_hash", amp.Unicode()), (b"name", amp.Unicode()),
                (b"state", amp.Unicode())]


class Download(Command):
    """Download the share described by ``metainfo_path`` into ``target_dir`` ('' = default)."""
    arguments = [
        (b"metainfo_path", amp.Unicode()),
        (b"target_dir", amp.Unicode()),
    ]
    response = [(b"info_hash", amp.Unicode()), (b"name", amp.Unicode()),
                (b"path", amp.Unicode())]


class Status(Command):
    """One transfer; ``id`` is an info-hash or a unique prefix of one."""
    arguments = [(b"id", amp.Unicode())]
    response = TRANSFER_FIELDS


class List(Command):
    arguments = [(b"offset", amp.Integer()), (b"limit", amp.Integer())]
    response = [(b"transfers", amp.AmpList(TRANSFER_FIELDS)), (b"total", amp.Integer())]


class Peers(Command):
    arguments = [(b"id", amp.Unicode())]
    response = [(b"peers", amp.AmpList(PEER_FIELDS)), (b"total", amp.Integer())]


class Pause(Command):
    arguments = [(b"id", amp.Unicode())]
    response = [(b"info_hash", amp.Unicode())]


class Resume(Command):
    arguments = [(b"id", amp.Unicode())]
    response = [(b"info_hash", amp.Unicode())]


class Remove(Command):
    arguments = [(b"id", amp.Unicode()), (b"delete_data", amp.Boolean())]
    response = [(b"info_hash", amp.Unicode())]


class NetCheck(Command):
    """Measure the daemon's UDP reachability; the report is a JSON object (see docs)."""
    arguments = []
    response = [(b"report", amp.Unicode())]


class WebLogin(Command):
    """A URL of the daemon's web page carrying a one-time login token (``peerit-ctl ui``)."""
    arguments = []
    response = [(b"url", amp.Unicode())]


class Follow(Command):
    """Send this connection ``TransferChanged`` whenever the transfer changes (the daemon's
    event stream, at most once a second, at once when it completes or fails)."""
    arguments = [(b"id", amp.Unicode())]
    response = [(b"info_hash", amp.Unicode())]


class TransferChanged(Command):
    """Daemon -> client, after ``Follow``: the transfer's new status; ``transfers`` is empty
    once it has been removed."""
    arguments = [(b"id", amp.Unicode()), (b"transfers", amp.AmpList(TRANSFER_FIELDS))]
    response = []
    requiresAnswer = False


# -- links and codes (docs/links.md) ----------------------------------------------------------

class DownloadLink(Command):
    """Download what a ``peerit:`` link names: its metadata from peers, then the data."""
    arguments = [(b"link", amp.Unicode()), (b"target_dir", amp.Unicode())]
    response = [(b"info_hash", amp.Unicode()), (b"name", amp.Unicode()),
                (b"path", amp.Unicode())]


class LinkOf(Command):
    """The ``peerit:`` link of a transfer."""
    arguments = [(b"id", amp.Unicode())]
    response = [(b"link", amp.Unicode()), (b"info_hash", amp.Unicode())]


class ExportMetainfo(Command):
    """Write a transfer's metadata (fetched from peers or not) as a .p2p file."""
    arguments = [(b"id", amp.Unicode()), (b"path", amp.Unicode()),
                 (b"overwrite", amp.Boolean())]
    response = [(b"path", amp.Unicode()), (b"info_hash", amp.Unicode())]


class Send(Command):
    """Share privately under a short code; only the peer who uses the code may connect."""
    arguments = [(b"data_path", amp.Unicode()), (b"metainfo_path", amp.Unicode())]
    response = [(b"code", amp.Unicode()), (b"info_hash", amp.Unicode()),
                (b"name", amp.Unicode()), (b"link", amp.Unicode())]


SEND_FIELDS = [
    (b"info_hash", amp.Unicode()),
    (b"code", amp.Unicode()),
    (b"state", amp.Unicode()),  # waiting for the receiver, sending, delivered, failed
    (b"receiver", amp.Unicode()),
    (b"delivered", amp.Boolean()),
    (b"error", amp.Unicode()),
    (b"error_code", amp.Integer()),  # the exit code of the error class, when failed
    (b"size", amp.Integer()),
    (b"uploaded", amp.Integer()),
    (b"peers", amp.Integer()),
]


class SendStatus(Command):
    """Where a send stands; ``id`` is the full info-hash that Send answered."""
    arguments = [(b"id", amp.Unicode())]
    response = SEND_FIELDS


class Receive(Command):
    """Take what a code names, from the sender it pins (waits for the exchange)."""
    arguments = [(b"code", amp.Unicode()), (b"target_dir", amp.Unicode())]
    response = [(b"info_hash", amp.Unicode()), (b"name", amp.Unicode()),
                (b"path", amp.Unicode())]
