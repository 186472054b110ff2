"""peerit-ctl create and inspect: make and read .p2p files; no daemon needed."""

import argparse
import os

from peerit import units
from peerit.ctl.output import emit, format_size, format_time, printable, progress_bar
from peerit.endpoints import DEFAULT_TRACKER_PORT
from peerit.errors import MetainfoError, UsageError

# The metainfo model, addresses and the construct formats cost most of peerit-ctl's start-up
# (cryptography, construct): they are imported by the commands that use them, not at module
# level, so that --help, --version and the daemon commands do not pay for them.


def parse_piece_length(text: str) -> int:
    from peerit.wire import metainfo as wire

    def check(length):
        try:
            wire.check_piece_length(length)
        except MetainfoError:
            raise UsageError(
                f"bad piece length {text!r}: expected a power of two from "
                f"{format_size(wire.MIN_PIECE_LENGTH)} to "
                f"{format_size(wire.MAX_PIECE_LENGTH)} (e.g. 256Ki, 1Mi, 4Mi)") from None
    return units.parse_piece_length(text, check)


def describe(metainfo) -> dict:
    """Everything a .p2p says, as JSON-ready values."""
    return {
        "name": metainfo.name,
        "info_hash": metainfo.info_hash_hex,
        "layout": "directory" if metainfo.is_directory else "single",
        "total_size": metainfo.total_size,
        "piece_length": metainfo.piece_length,
        "piece_count": metainfo.piece_count,
        "files": [{"path": f.path, "size": f.size} for f in metainfo.files],
        "trackers": [{"address": str(t), "host": t.host, "port": t.port,
                      "fingerprint": t.fingerprint.hex() if t.fingerprint else None}
                     for t in metainfo.trackers],
        "created": metainfo.created,
        "created_text": format_time(metainfo.created),
        "comment": metainfo.comment,
    }


# -- create --------------------------------------------------------------------------------

def run_create(args) -> int:
    from peerit.addresses import TrackerAddress
    from peerit.share_builder import create_metainfo_from_share, scan_share
    piece_length = parse_piece_length(args.piece_length) if args.piece_length else None
    trackers = tuple(TrackerAddress.parse(text) for text in args.tracker)
    name = os.path.basename(os.path.abspath(args.path))
    output = args.output or f"{name or 'share'}.p2p"
    # Refuse before hashing what could take minutes, not after.
    if os.path.lexists(output) and not args.force:
        raise UsageError(f"{output} already exists (use --force to replace it)")
    output_dir = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(output_dir):
        raise UsageError(f"cannot write {output}: directory {output_dir} does not exist")
    share = scan_share(args.path)
    bar = progress_bar(share.total_size, f"hashing {share.name}")
    try:
        metainfo = create_metainfo_from_share(
            share, piece_length=piece_length, trackers=trackers, comment=args.comment,
            progress=bar and (lambda done: bar.update(done - bar.n)))
    finally:
        if bar is not None:
            bar.close()
    metainfo.write(output, overwrite=args.force)
    emit(args, {"path": os.path.abspath(output), **describe(metainfo)},
         f"created {printable(output)}\ninfo-hash {metainfo.info_hash_hex}")
    return 0


# -- inspect -------------------------------------------------------------------------------

def run_inspect(args) -> int:
    from peerit.metainfo import Metainfo
    metainfo = Metainfo.read(args.file)
    described = describe(metainfo)
    if args.json:
        emit(args, described, "")
        return 0
    lines = [
        f"name:         {printable(metainfo.name)}",
        f"info-hash:    {metainfo.info_hash_hex}",
        f"layout:       {'directory' if metainfo.is_directory else 'single file'}",
        f"total size:   {format_size(metainfo.total_size)} ({metainfo.total_size} bytes)",
        f"piece length: {format_size(metainfo.piece_length)} ({metainfo.piece_length} bytes)",
        f"pieces:       {metainfo.piece_count}",
        f"created:      {described['created_text']}",
        f"comment:      {printable(metainfo.comment)}" if metainfo.comment
        else "comment:      (none)",
        f"trackers:     {len(metainfo.trackers) or '(none)'}",
    ]
    for tracker in metainfo.trackers:
        pin = "" if tracker.fingerprint else "   (no fingerprint: tracker key not pinned)"
        lines.append(f"  {printable(str(tracker))}{pin}")
    lines.append(f"files:        {len(metainfo.files)}")
    for entry in metainfo.files:
        lines.append(f"  {printable(entry.path)}  {format_size(entry.size)} "
                     f"({entry.size} bytes)")
    print("\n".join(lines))
    return 0


# -- registration --------------------------------------------------------------------------

CREATE_DESCRIPTION = """\
Hash a file or a directory tree into a .p2p metainfo file that others use to download it.
Works without a daemon. The share is named after PATH's last component; a directory is
shared with all its files and subdirectories (empty directories are not recorded). PATH may
be a symbolic link, but symbolic links, FIFOs, sockets and devices inside a directory are
refused. Prints the .p2p path and the share's info-hash."""

CREATE_EPILOG = """\
examples:
  peerit-ctl create holiday-photos/ --tracker tracker.example:59000#<64 hex digits>
  peerit-ctl create big.iso -o /tmp/big.p2p --piece-length 4Mi --comment "release 1.2"
"""

INSPECT_DESCRIPTION = """\
Show what a .p2p file describes: name, info-hash, sizes, pieces, files, trackers (with the
fingerprint each is pinned to), creation time and comment. The file is fully validated; a
damaged or hostile file is refused with the reason."""


def register(subparsers, common) -> None:
    create = subparsers.add_parser(
        "create", parents=[common], help="make a .p2p file for a file or directory",
        description=CREATE_DESCRIPTION, epilog=CREATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    create.add_argument("path", metavar="PATH", help="the file or directory to share")
    create.add_argument("-o", "--output", metavar="FILE.p2p",
                        help="where to write the .p2p (default: NAME.p2p in the current "
                             "directory)")
    create.add_argument("--tracker", action="append", default=[],
                        metavar="HOST:PORT[#FINGERPRINT]",
                        help="a tracker to announce to; repeat for several. FINGERPRINT (64 "
                             "hex digits, printed by the tracker) pins the tracker's key; "
                             f"PORT defaults to {DEFAULT_TRACKER_PORT}")
    create.add_argument("--piece-length", metavar="SIZE",
                        help="bytes per piece, a power of two from 16Ki to 64Mi (default: "
                             "about 512 pieces, from 256Ki to 16Mi); 256K and 1M are "
                             "read as 256Ki and 1Mi here, since no SI size is a power of two")
    create.add_argument("--comment", default="", metavar="TEXT",
                        help="free text stored in the .p2p (not part of the info-hash)")
    create.add_argument("--force", action="store_true",
                        help="replace the output file if it exists")
    create.set_defaults(run=run_create)

    inspect = subparsers.add_parser(
        "inspect", parents=[common], help="show what a .p2p file describes",
        description=INSPECT_DESCRIPTION)
    inspect.add_argument("file", metavar="FILE.p2p", help="the .p2p file to read")
    inspect.set_defaults(run=run_inspect)
