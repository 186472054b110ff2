"""libtorrent over uTP between two NAT-lab hosts: the reference for peer-it's punched QUIC path.

One seeder and one downloader, each its own process inside a lab namespace (started by
bench/bench_natlab.py). uTP only (TCP off both ways), 4 MiB socket buffers, DHT, LSD, UPnP
and NAT-PMP off, no tracker: the downloader is told the seeder's public address. The seeder
listens on a fixed port that its router forwards (a static DNAT rule the benchmark adds), so
the downloader's first packet reaches it through the NAT.

The downloader writes ``{"start", "first_byte", "end", "done", "bytes"}`` (time.monotonic)
to ``--result``: from ``add_torrent``, the first payload byte, and the torrent seeding (every
piece checked) or ``--timeout`` (then ``done`` is false and ``bytes`` says how far it got).
uTP gives up on a link after too many lost packets; with no tracker to hand the seeder out
again, the downloader dials it again after a few seconds without a peer.

    python libtorrent_utp_lab.py seed --torrent T --save-path DIR --listen IP:PORT --ready F
    python libtorrent_utp_lab.py download --torrent T --save-path DIR --listen IP:PORT \
        --peer IP:PORT --result F
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import install_sigterm_exit  # noqa: E402
from libtorrent_peer import add, make_torrent, wait_seeding  # noqa: E402

POLL = 0.005  # seconds between status checks while downloading
SOCKET_BUFFER = 4 * 1024 * 1024
RECONNECT = 2.0  # seconds without a peer before dialling the seeder again


def session(listen: str):
    import libtorrent as lt
    return lt.session({
        "listen_interfaces": listen,
        "enable_dht": False,
        "dht_bootstrap_nodes": "",
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_tcp": False,
        "enable_incoming_tcp": False,
        "enable_outgoing_utp": True,
        "enable_incoming_utp": True,
        "send_socket_buffer_size": SOCKET_BUFFER,
        "recv_socket_buffer_size": SOCKET_BUFFER,
        "alert_mask": 0,
    })


def seed(torrent: Path, save_path: Path, listen: str, ready: Path) -> None:
    ses = session(listen)
    handle = add(ses, torrent, save_path, seed=True)
    wait_seeding(handle, 60)
    ready.write_text(str(ses.listen_port()))
    while True:  # until the benchmark ends us by PID
        time.sleep(1)


def download(torrent: Path, save_path: Path, listen: str, peer: str, result: Path,
             timeout: float) -> None:
    """Until seeding or ``timeout``; the result says how far it got either way. A dropped
    link is dialled again every RECONNECT seconds, as a tracker's peer list would have it."""
    ses = session(listen)
    host, port = peer.rsplit(":", 1)
    start = time.monotonic()
    handle = add(ses, torrent, save_path, seed=False)
    handle.connect_peer((host, int(port)))
    dialled = start
    first = None
    deadline = start + timeout
    while True:
        status = handle.status()
        now = time.monotonic()
        if first is None and status.total_wanted_done > 0:
            first = now
        if status.is_seeding or now > deadline:
            break
        if status.num_peers == 0 and now - dialled > RECONNECT:
            handle.connect_peer((host, int(port)))
            dialled = now
        time.sleep(POLL)
    result.write_text(json.dumps({
        "start": start, "first_byte": first, "end": now, "done": status.is_seeding,
        "bytes": status.total_wanted_done}))
    while True:  # until the benchmark ends us by PID
        time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("torrent")
    p.add_argument("--file", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("seed")
    p.add_argument("--torrent", type=Path, required=True)
    p.add_argument("--save-path", type=Path, required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--ready", type=Path, required=True)
    p = sub.add_parser("download")
    p.add_argument("--torrent", type=Path, required=True)
    p.add_argument("--save-path", type=Path, required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--peer", required=True)
    p.add_argument("--result", type=Path, required=True)
    p.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    install_sigterm_exit()
    if args.mode == "torrent":
        make_torrent(args.file, args.out)
    elif args.mode == "seed":
        seed(args.torrent, args.save_path, args.listen, args.ready)
    else:
        download(args.torrent, args.save_path, args.listen, args.peer, args.result,
                 args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
