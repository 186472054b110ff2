"""peerit-ctl commands that drive a running daemon over its control socket."""

import os
import sys
import time

from peerit.ctl import options
from peerit.ctl.offline import describe
from peerit.ctl.output import emit, format_eta, format_rate, format_size, printable, progress_bar
from peerit.errors import (
    DaemonNotRunning, MetadataMismatch, MetadataTooLarge, MetainfoError, PeeritError, PermissionDenied, TimedOut,
    UsageError)

# The daemon is reached through a blocking client on a plain socket (no Twisted, no reactor);
# the metainfo model, links and share creation are imported inside the functions that use
# them: importing them costs most of peerit-ctl's start-up, and --help, --version or a typo
# should not wait for cryptography and construct to load.

FINISHED_STATES = ("seeding",)
# A download from a link whose only peers served oversized or tampered metadata.
METADATA_FAILURES = {"metadata too large": MetadataTooLarge,
                     "metadata mismatch": MetadataMismatch}


def with_client(function):
    """An argparse ``run`` that connects to the daemon and calls ``function(client, args)``.

    The commands print what the daemon answered, as text or JSON: they take the client's
    typed answers as JSON-ready values (:func:`as_json`) from the start."""
    def run(args):
        from peerit.control.blocking_client import BlockingClient
        with BlockingClient(args.control) as client:
            return function(client, args) or 0
    return run


def checked_first(check, run):
    """A ``run`` that checks its arguments (a link, a code) before reaching the daemon: bad
    input gets its own error and exit code even when no daemon runs."""
    def checked(args):
        check(args)
        return run(args)
    return checked


def status_line(s: dict) -> str:
    percent = 100.0 * s["done"] / s["size"] if s["size"] else 100.0
    line = (f"{s['info_hash'][:16]}  {s['state']:<17} {percent:5.1f}%  "
            f"{format_size(s['size']):>10}  down {format_rate(s['down_rate']):>11}  "
            f"up {format_rate(s['up_rate']):>11}  peers {s['peers']:>3}  "
            f"{printable(s['name'])}")
    if s["error"]:
        line += f"  ({printable(s['error'])})"
    return line


# -- share ---------------------------------------------------------------------------------

def as_json(result):
    from peerit.control.results import as_json
    return as_json(result)


def share(client, args):
    from peerit.addresses import TrackerAddress
    from peerit.metainfo import Metainfo
    from peerit.share_builder import scan_share
    data_path = os.path.abspath(args.path)
    if not os.path.exists(data_path):
        raise UsageError(f"{args.path} does not exist")
    if args.p2p:
        metainfo = Metainfo.read(args.p2p)
        metainfo_path, check = os.path.abspath(args.p2p), True
    else:
        info = as_json(client.info())
        trackers = [TrackerAddress.parse(t) for t in info["trackers"]]
        trackers += [TrackerAddress.parse(t) for t in args.tracker
                     if TrackerAddress.parse(t) not in trackers]
        local = scan_share(data_path)
        metainfo_path = os.path.abspath(args.output or f"{local.name}.p2p")
        metainfo = hash_share(local, trackers, args)
        if os.path.exists(metainfo_path):
            try:
                same = Metainfo.read(metainfo_path).info_hash == metainfo.info_hash
            except PeeritError:
                same = False
            if not same and not args.force:
                raise UsageError(f"{metainfo_path} already exists for other data "
                                 "(use -o elsewhere or --force)")
        metainfo.write(metainfo_path, overwrite=True)
        check = False
    answer = as_json(client.share(data_path, metainfo_path, check=check))
    try:
        link = (client.link_of(answer["info_hash"])).link
    except PeeritError:
        link = ""  # no tracker with a fingerprint to name in a link
    result = {"metainfo": metainfo_path, "info_hash": answer["info_hash"],
              "name": answer["name"], "state": answer["state"], "link": link,
              **describe(metainfo)}
    emit(args, result, f"sharing {printable(answer['name'])} in place\n"
                       f"metainfo  {metainfo_path}\ninfo-hash {answer['info_hash']}"
                       + (f"\nlink      {link}" if link else ""))


def hash_share(local, trackers, args):
    """The metainfo of scanned files, hashed with a progress bar."""
    from peerit.share_builder import create_metainfo_from_share
    bar = progress_bar(local.total_size, f"hashing {local.name}", args)
    try:
        return create_metainfo_from_share(
            local, trackers=tuple(trackers),
            progress=bar and (lambda done: bar.update(done - bar.n)))
    finally:
        if bar is not None:
            bar.close()


# -- download ------------------------------------------------------------------------------

def check_link(args) -> None:
    """A bad link is reported before the daemon is asked (or even reached)."""
    from peerit import links
    if links.looks_like_link(args.file):
        links.parse(args.file)


def download(client, args):
    from peerit import links
    if links.looks_like_link(args.file):
        answer = as_json(client.download_link(args.file.strip(), args.to or ""))
    else:
        answer = as_json(started_download(client, args.file, args.to or ""))
    info_hash = answer["info_hash"]
    if args.detach:
        emit(args, answer, f"downloading {printable(answer['name'])} to "
                           f"{answer['path']}\ninfo-hash {info_hash}")
        return
    status = follow(client, info_hash, args, f"{printable(answer['name'])}")
    emit(args, status, f"done: {status['path']} ({format_size(status['size'])}, "
                       f"{status['pieces']} pieces verified)")


def started_download(client, path: str, target: str):
    """The daemon reads the .p2p; a bad one is then read here too, to report it in the
    user's terms (the path as typed). The metainfo model is loaded only then."""
    try:
        return client.download(path, target)
    except (MetainfoError, UsageError, PermissionDenied):
        from peerit.metainfo import Metainfo
        Metainfo.read(path)
        raise


def follow(client, info_hash: str, args, desc: str) -> dict:
    """Follow the daemon's events for the transfer until it is complete and verified (or
    fails), with a progress bar: it ends the moment the last piece is verified."""
    bar = None
    last_line = 0.0
    deadline = time.monotonic() + args.timeout if args.timeout else None
    status = as_json(client.follow(info_hash))
    try:
        while True:
            if status is None:
                raise PeeritError("the download was removed")
            if status["state"] == "error":
                raise PeeritError(f"download failed: {status['error']}")
            if status["state"] in METADATA_FAILURES:
                raise METADATA_FAILURES[status["state"]](
                    f"{status['error'] or status['state']} (the daemon keeps looking for "
                    f"other peers)")
            if status["state"] in FINISHED_STATES:
                return status
            if bar is None:
                bar = progress_bar(status["size"], desc, args)
            if bar is not None:
                bar.update(status["done"] - bar.n)
                bar.set_postfix_str(f"{status['state']}, {status['peers']} peers, "
                                    f"ETA {format_eta(status['eta'])}", refresh=False)
                bar.refresh()
            elif not args.json and time.monotonic() - last_line > 5:
                last_line = time.monotonic()
                print(status_line(status), file=sys.stderr)
            latest = status
            try:
                status = client.next_change(
                    None if deadline is None else max(0.0, deadline - time.monotonic()))
            except DaemonNotRunning:
                raise DaemonNotRunning("the daemon closed the connection") from None
            except TimedOut:
                raise TimedOut(f"not complete after {args.timeout:.0f}s ({latest['state']}, "
                               f"{latest['pieces_done']}/{latest['pieces']} pieces); "
                               "the daemon keeps going") from None
            status = as_json(status) if status is not None else None
    finally:
        if bar is not None:
            bar.close()


# -- the rest ------------------------------------------------------------------------------

def status(client, args):
    if args.id:
        s = as_json(client.status(args.id))
        emit(args, s, status_line(s))
    else:
        transfers = as_json(client.list())
        info = as_json(client.info())
        emit(args, {"daemon": info, "transfers": transfers},
             f"peer id {info['peer_id'][:16]}, listening on port {info['listen_port']}, "
             f"trackers connected {len(info['trackers_connected'])}/{len(info['trackers'])}"
             + "".join("\n" + status_line(s) for s in transfers))


def list_(client, args):
    transfers = as_json(client.list())
    emit(args, transfers, "\n".join(status_line(s) for s in transfers) or "nothing shared")


def peers(client, args):
    answer = as_json(client.peers(args.id))
    lines = [f"{p['peer_id'][:16]}  {p['path']:<5} {p['address']:<22} "
             f"connected in {p['connect_seconds'] * 1000:.0f} ms  pieces {p['pieces']:>6}  "
             f"down {format_rate(p['download_rate']):>11}  "
             f"up {format_rate(p['upload_rate']):>11}" for p in answer["peers"]]
    emit(args, answer, "\n".join(lines) or "no peers connected")


def simple(method: str, verb: str):
    def run(client, args):
        answer = as_json(getattr(client, method)(args.id))
        emit(args, answer, f"{verb} {answer['info_hash']}")
    return run


def remove(client, args):
    answer = as_json(client.remove(args.id, delete_data=args.delete_data))
    emit(args, answer, f"removed {answer['info_hash']}"
                       + (" and deleted its files" if args.delete_data else ""))


def netcheck(client, args):
    report = client.netcheck()
    emit(args, report, report.get("text") or "\n".join(f"{k}: {v}" for k, v in
                                                      sorted(report.items())))


def register(subparsers, common) -> None:
    add = options.daemon_command_adder(subparsers, common, with_client)

    p = add("share", share, "share a file or directory in place",
            "Create the .p2p for PATH (with a progress bar) and have the daemon seed PATH "
            "in place, without copying it; print the .p2p path and the share's peerit: "
            "link. With --p2p, use an existing .p2p instead; the daemon checks the data "
            "against it first.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("-o", "--output", metavar="FILE.p2p",
                   help="where to write the .p2p (default: NAME.p2p here)")
    p.add_argument("--p2p", metavar="FILE.p2p", help="seed under this existing .p2p")
    p.add_argument("--tracker", action="append", default=[],
                   metavar="HOST:PORT#FINGERPRINT",
                   help="also list this tracker in the .p2p (the daemon's own are listed)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")

    p = add("download", download, "download what a .p2p or a peerit: link describes",
            "Start downloading, then show a live progress bar (percent, rate, ETA, peers) "
            "until every piece is verified. The daemon keeps the download (and then seeds "
            "it) if you interrupt this command. Given a peerit: link, the daemon first "
            "fetches the share's metadata from its peers and checks it against the link's "
            "info-hash.")
    p.add_argument("file", metavar="FILE.p2p|LINK")
    p.set_defaults(run=checked_first(check_link, with_client(download)))
    p.add_argument("--to", metavar="DIR", help="download into DIR (default: the daemon's "
                   "DATA_DIR/downloads)")
    p.add_argument("--detach", action="store_true", help="return as soon as it started")
    p.add_argument("--timeout", type=float, default=0, metavar="SECONDS",
                   help="stop waiting after SECONDS (exit code 9; the download goes on)")

    p = add("status", status, "show the daemon and its transfers, or one transfer")
    p.add_argument("id", nargs="?", metavar="ID", help="info-hash or unique prefix")
    add("list", list_, "list shares and downloads")
    for name, help in (("peers", "list the peers of a transfer, with the path used"),
                       ("pause", "pause a transfer (disconnect, keep state)"),
                       ("resume", "resume a paused transfer")):
        function = peers if name == "peers" else simple(name, name + "d")
        add(name, function, help).add_argument("id", metavar="ID",
                                               help="info-hash or unique prefix")
    p = add("remove", remove, "stop a transfer and forget it")
    p.add_argument("id", metavar="ID", help="info-hash or unique prefix")
    p.add_argument("--delete-data", action="store_true",
                   help="also delete its files (for a share: your original files!)")
    add("netcheck", netcheck, "check how this daemon is reachable over UDP (NAT type)")
