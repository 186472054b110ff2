"""peerit-ctl commands for links and short codes: link, export, send, receive
(docs/links.md)."""

import os
import sys
import time

from peerit import errors
from peerit.ctl import options
from peerit.ctl.daemon_commands import as_json, checked_first, follow, hash_share, with_client
from peerit.ctl.output import emit, format_size, print_json, printable, progress_bar
from peerit.errors import PeeritError, TimedOut, UsageError

# Heavy imports (the links' addresses and identities, share creation) happen inside the
# commands, as in daemon_commands: --help must not wait for them.

# How often `send` asks where its send stands (a send's progress is not on the event hub yet).
SEND_POLL_INTERVAL = 0.5

# A failed send reaches the CLI as the daemon's message and exit code; the class back.
_SEND_ERRORS = {cls.exit_code: cls for cls in (
    errors.WrongCode, errors.CodeExpired, errors.ReceiverRefused,
    errors.RendezvousUnreachable)}


def link(client, args):
    answer = as_json(client.link_of(args.id))
    emit(args, answer, answer["link"])


def export(client, args):
    answer = as_json(client.export_metainfo(args.id, args.output,
                                                  overwrite=args.force))
    emit(args, answer, f"wrote {answer['path']}")


def send(client, args):
    from peerit.addresses import TrackerAddress
    from peerit.share_builder import scan_share
    data_path = os.path.abspath(args.path)
    if not os.path.exists(data_path):
        raise UsageError(f"{args.path} does not exist")
    info = as_json(client.info())
    local = scan_share(data_path)
    metainfo = hash_share(
        local, [TrackerAddress.parse(t) for t in info["trackers"]], args)
    # The .p2p is the daemon's business here (the receiver gets the metadata from it).
    directory = os.path.join(info["data_dir"], "sends")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    metainfo_path = os.path.join(directory, f"{metainfo.info_hash_hex}.p2p")
    metainfo.write(metainfo_path)
    answer = as_json(client.send(data_path, metainfo_path))
    code = answer["code"]
    if args.json:
        print_json({"code": code, "info_hash": answer["info_hash"], "link": answer["link"]})
    else:
        print(f"code {code}", flush=True)
        print(f"on the other side: peerit-ctl receive {code}", file=sys.stderr, flush=True)
    status = _follow_send(client, answer["info_hash"], args,
                                printable(answer["name"]))
    emit(args, status, f"delivered: {printable(answer['name'])} "
                       f"({format_size(status['size'])}) to {status['receiver'][:16]}")


def _follow_send(client, info_hash: str, args, desc: str) -> dict:
    """Poll until the receiver holds everything (upload progress meanwhile)."""
    bar = None
    started = time.monotonic()
    waiting_said = False
    try:
        while True:
            status = as_json(client.send_status(info_hash))
            if status["state"] == "failed":
                raise _SEND_ERRORS.get(status["error_code"], PeeritError)(status["error"])
            if status["delivered"]:
                return status
            if args.timeout and time.monotonic() - started > args.timeout:
                raise TimedOut(f"not delivered after {args.timeout:.0f}s "
                               f"({status['state']}); the daemon keeps sending")
            if status["state"] == "waiting for the receiver":
                if not waiting_said and not args.json:
                    print("waiting for the receiver...", file=sys.stderr, flush=True)
                    waiting_said = True
            else:
                if bar is None:
                    bar = progress_bar(status["size"], f"sending {desc}", args)
                if bar is not None:
                    bar.update(min(status["uploaded"], status["size"]) - bar.n)
            time.sleep(SEND_POLL_INTERVAL)
    finally:
        if bar is not None:
            bar.close()


def check_code(args) -> None:
    """A code that cannot be one is reported before the daemon is asked."""
    from peerit.short_codes import check_code
    check_code(args.code)


def receive(client, args):
    answer = as_json(client.receive(args.code, args.to or ""))
    status = follow(client, answer["info_hash"], args,
                          printable(answer["name"]))
    emit(args, status, f"done: {status['path']} ({format_size(status['size'])}, "
                       f"{status['pieces']} pieces verified)")


def register(subparsers, common) -> None:
    add = options.daemon_command_adder(subparsers, common, with_client)

    p = add("link", link, "print the peerit: link of a share or download",
            "Print the peerit: link of a transfer: its info-hash and trackers (with their "
            "fingerprints), its name and size for the eye, and this daemon's peer id when "
            "it holds everything. Anyone with the link and the tracker can download it "
            "with 'peerit-ctl download LINK'.")
    p.add_argument("id", metavar="ID", help="info-hash or unique prefix")

    p = add("export", export, "write a transfer's metadata out as a .p2p",
            "Write the .p2p of a transfer, e.g. of a download started from a link once "
            "its metadata was fetched from peers.")
    p.add_argument("id", metavar="ID", help="info-hash or unique prefix")
    p.add_argument("-o", "--output", metavar="FILE.p2p", required=True)
    p.add_argument("--force", action="store_true", help="replace an existing file")

    p = add("send", send, "send a file or directory to one person with a short code",
            "Share PATH privately and print a short code (like 7-guitarist-revenge) to read "
            "to the receiver, who runs 'peerit-ctl receive CODE'. The code goes through the "
            "rendezvous of the daemon's --mailbox with a PAKE: the rendezvous learns "
            "neither the code's key nor what is sent. Only the peer that used the code may "
            "then download; a wrong code burns it (exit 15), an unused one expires (exit "
            "16, after the daemon's --code-lifetime). Shows upload progress until the "
            "receiver holds every verified piece.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--timeout", type=float, default=0, metavar="SECONDS",
                   help="stop waiting after SECONDS (exit code 9; the daemon goes on)")

    p = add("receive", receive, "receive what a short code names",
            "Exchange CODE with the sender through the daemon's rendezvous, then download "
            "from that sender only, with the usual progress bar. A wrong code fails on both "
            "sides (exit 15); a code no sender is waiting on fails after a bounded wait "
            "(exit 16).")
    p.add_argument("code", metavar="CODE")
    p.set_defaults(run=checked_first(check_code, with_client(receive)))
    p.add_argument("--to", metavar="DIR", help="download into DIR (default: the daemon's "
                   "DATA_DIR/downloads)")
    p.add_argument("--timeout", type=float, default=0, metavar="SECONDS",
                   help="stop waiting after SECONDS (exit code 9; the download goes on)")
