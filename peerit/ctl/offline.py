"""peerit-ctl create and inspect: make and read .p2p files; no daemon needed."""

import datetime
import os
import re
import sys

from peerit.addresses import TrackerAddress
from peerit.errors import MetainfoError, UsageError
from peerit.metainfo import Metainfo, create_metainfo_from_share, scan_share
from peerit.wire import metainfo as wire

_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``262144``, ``256K``, ``256KiB``, ``1M``, ``1G``: binary multiples, as users write them."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise UsageError(f"bad size {text!r}: expected a number with an optional K, M, G or "
                         f"T suffix (e.g. 256K, 1M)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def parse_piece_length(text: str) -> int:
    length = parse_size(text)
    try:
        wire.check_piece_length(length)
    except MetainfoError:
        raise UsageError(
            f"bad piece length {text!r}: expected a power of two from "
            f"{format_size(wire.MIN_PIECE_LENGTH)} to {format_size(wire.MAX_PIECE_LENGTH)} "
            f"(e.g. 256K, 1M, 4M)") from None
    return length


def format_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "B":
        return f"{size} B"
    return f"{value:.1f} {unit}".replace(".0 ", " ")


def _printable(text: str) -> str:
    # Names come from a file that may be hostile: never send its control characters (escape
    # sequences, carriage returns) to the terminal as they are.
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _format_time(seconds: int) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return f"{seconds} (seconds since 1970)"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(metainfo: Metainfo) -> dict:
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
        "created_text": _format_time(metainfo.created),
        "comment": metainfo.comment,
    }


# -- create --------------------------------------------------------------------------------

def run_create(args) -> int:
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
    bar = _progress_bar(share.total_size, share.name)
    try:
        metainfo = create_metainfo_from_share(
            share, piece_length=piece_length, trackers=trackers, comment=args.comment,
            progress=bar and (lambda done: bar.update(done - bar.n)))
    finally:
        if bar is not None:
            bar.close()
    metainfo.write(output, overwrite=args.force)
    if args.json:
        from peerit.ctl.main import print_json
        print_json({"path": os.path.abspath(output), **describe(metainfo)})
    else:
        print(f"created {_printable(output)}")
        print(f"info-hash {metainfo.info_hash_hex}")
    return 0


def _progress_bar(total: int, name: str):
    """A tqdm bar on stderr when a person is watching it, None otherwise."""
    if not total or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                desc=f"hashing {_printable(name)}", leave=False, dynamic_ncols=True)


# -- inspect -------------------------------------------------------------------------------

def run_inspect(args) -> int:
    metainfo = Metainfo.read(args.file)
    described = describe(metainfo)
    if args.json:
        from peerit.ctl.main import print_json
        print_json(described)
        return 0
    lines = [
        f"name:         {_printable(metainfo.name)}",
        f"info-hash:    {metainfo.info_hash_hex}",
        f"layout:       {'directory' if metainfo.is_directory else 'single file'}",
        f"total size:   {format_size(metainfo.total_size)} ({metainfo.total_size} bytes)",
        f"piece length: {format_size(metainfo.piece_length)} ({metainfo.piece_length} bytes)",
        f"pieces:       {metainfo.piece_count}",
        f"created:      {described['created_text']}",
        f"comment:      {_printable(metainfo.comment)}" if metainfo.comment
        else "comment:      (none)",
        f"trackers:     {len(metainfo.trackers) or '(none)'}",
    ]
    for tracker in metainfo.trackers:
        pin = "" if tracker.fingerprint else "   (no fingerprint: tracker key not pinned)"
        lines.append(f"  {_printable(str(tracker))}{pin}")
    lines.append(f"files:        {len(metainfo.files)}")
    for entry in metainfo.files:
        lines.append(f"  {_printable(entry.path)}  {format_size(entry.size)} "
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
  peerit-ctl create big.iso -o /tmp/big.p2p --piece-length 4M --comment "release 1.2"
"""

INSPECT_DESCRIPTION = """\
Show what a .p2p file describes: name, info-hash, sizes, pieces, files, trackers (with the
fingerprint each is pinned to), creation time and comment. The file is fully validated; a
damaged or hostile file is refused with the reason."""


def register(subparsers, common) -> None:
    import argparse
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
                             "PORT defaults to 59000")
    create.add_argument("--piece-length", metavar="SIZE",
                        help="bytes per piece, a power of two from 16K to 64M (default: "
                             "about 2048 pieces, from 256K to 16M)")
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
