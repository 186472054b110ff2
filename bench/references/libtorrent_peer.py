"""The libtorrent reference: one seeder and N downloaders, each its own process, on 127.0.0.1.

Python bindings of libtorrent-rasterbar (PyPI ``libtorrent``). DHT, local peer discovery,
UPnP and NAT-PMP are off and no tracker is used: each downloader is told the seeder's address
(and the other downloaders', as a tracker would tell it) with ``connect_peer``. uTP is off so
the links are TCP, as peer-it's are (libtorrent's own defaults otherwise; REFERENCES.md has
uTP's loopback figure). ``allow_multiple_connections_per_ip`` lets several peers on
127.0.0.1 connect to each other.

The source is a file or a directory tree (a multi-file torrent). Timed from ``add_torrent``
to the torrent seeding (every piece hash-checked); for a swarm,
from the moment the downloaders are released together until the last one seeds.

    python libtorrent_peer.py run --file SRC --workdir DIR --downloaders N --json OUT
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (add_run_parser, Children, install_sigterm_exit,  # noqa: E402
                    remove_download, size_of, wait_for_file, write_result)

POLL = 0.005  # seconds between status checks while downloading


def session():
    import libtorrent as lt
    return lt.session({
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False,
        "dht_bootstrap_nodes": "",
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "allow_multiple_connections_per_ip": True,
        "alert_mask": 0,
    })


def make_torrent(src: Path, out: Path) -> None:
    import warnings

    import libtorrent as lt
    files = lt.file_storage()
    with warnings.catch_warnings():  # the 2.1 bindings deprecate these with no equivalent
        warnings.simplefilter("ignore", DeprecationWarning)
        lt.add_files(files, str(src))
        torrent = lt.create_torrent(files)
    lt.set_piece_hashes(torrent, str(src.parent))
    out.write_bytes(lt.bencode(torrent.generate()))


def add(ses, torrent: Path, save_path: Path, seed: bool):
    import libtorrent as lt
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(str(torrent))
    params.save_path = str(save_path)
    if seed:
        params.flags |= lt.torrent_flags.seed_mode  # the data is known good: no re-check
    return ses.add_torrent(params)


def wait_seeding(handle, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not handle.status().is_seeding:
        if time.monotonic() > deadline:
            status = handle.status()
            raise SystemExit(f"not seeding after {timeout}s: {status.progress:.3f} done, "
                             f"{status.num_peers} peers")
        time.sleep(POLL)


def seed(torrent: Path, save_path: Path, port_file: Path) -> None:
    ses = session()
    handle = add(ses, torrent, save_path, seed=True)
    wait_seeding(handle, 60)
    port_file.write_text(str(ses.listen_port()))
    while True:  # until the suite ends us by PID
        time.sleep(1)


def download(torrent: Path, save_path: Path, port_file: Path, go_file: Path,
             result_file: Path, timeout: float) -> None:
    ses = session()
    port_file.write_text(str(ses.listen_port()))
    peers = json.loads(wait_for_file(go_file, timeout))  # every port, released together
    my_port = ses.listen_port()
    start = time.monotonic()
    handle = add(ses, torrent, save_path, seed=False)
    for port in peers:
        if port != my_port:
            handle.connect_peer(("127.0.0.1", port))
    wait_seeding(handle, timeout)
    result_file.write_text(json.dumps({"start": start, "end": time.monotonic()}))
    # Stay (and keep uploading to the others) until the suite ends us.
    while True:
        time.sleep(1)


def run(src: Path, workdir: Path, downloaders: int, timeout: float) -> dict:
    workdir = workdir / "libtorrent"  # this tool's files and logs apart from the others'
    workdir.mkdir(exist_ok=True)
    me = Path(__file__).resolve()
    torrent = workdir / (src.name + ".torrent")
    if not torrent.exists():
        make_torrent(src, torrent)
    names = [f"d{i}" for i in range(downloaders)]
    for name in ["seed", *names]:
        for suffix in (".port", ".result"):
            (workdir / (name + suffix)).unlink(missing_ok=True)
    go = workdir / "lt.go"
    go.unlink(missing_ok=True)
    with Children(workdir) as children:
        seeder = children.start("seed", [
            sys.executable, me, "seed", "--torrent", torrent, "--save-path", src.parent,
            "--port-file", workdir / "seed.port"])
        seed_port = int(wait_for_file(workdir / "seed.port", 60, seeder))
        procs = {}
        for name in names:
            (workdir / name).mkdir(exist_ok=True)
            procs[name] = children.start(name, [
                sys.executable, me, "download", "--torrent", torrent,
                "--save-path", workdir / name, "--port-file", workdir / f"{name}.port",
                "--go", go, "--result", workdir / f"{name}.result", "--timeout", timeout])
        ports = [seed_port] + [int(wait_for_file(workdir / f"{n}.port", 60, procs[n]))
                               for n in names]
        go.write_text(json.dumps(ports))
        released = time.monotonic()
        finished = {}
        for name in names:
            finished[name] = json.loads(wait_for_file(
                workdir / f"{name}.result", timeout - (time.monotonic() - released),
                procs[name]))
    for name in names:
        remove_download(workdir / name)
    # All downloaders started within a few ms of the release; count from the earliest.
    start = min(f["start"] for f in finished.values())
    end = max(f["end"] for f in finished.values())
    everyone = [seeder, *procs.values()]
    return {"seconds": end - start, "bytes": size_of(src),
            "rss": {c.name: c.peak_rss_mib for c in everyone},
            "cpu": {c.name: c.cpu_seconds for c in everyone}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    add_run_parser(sub).add_argument("--downloaders", type=int, default=1)
    p = sub.add_parser("seed")
    p.add_argument("--torrent", type=Path, required=True)
    p.add_argument("--save-path", type=Path, required=True)
    p.add_argument("--port-file", type=Path, required=True)
    p = sub.add_parser("download")
    p.add_argument("--torrent", type=Path, required=True)
    p.add_argument("--save-path", type=Path, required=True)
    p.add_argument("--port-file", type=Path, required=True)
    p.add_argument("--go", type=Path, required=True)
    p.add_argument("--result", type=Path, required=True)
    p.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    install_sigterm_exit()
    if args.mode == "seed":
        seed(args.torrent, args.save_path, args.port_file)
    elif args.mode == "download":
        download(args.torrent, args.save_path, args.port_file, args.go, args.result,
                 args.timeout)
    else:
        write_result(args.json, run(args.file, args.workdir, args.downloaders,
                                    args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
