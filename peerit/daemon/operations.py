"""What a person can ask of the daemon, implemented once: the AMP responders (``peerit-ctl``)
and the JSON API (the web page) both call these methods and see the same errors.

Every method takes and returns plain values (str, int, dicts of them) and raises only
:class:`peerit.errors.PeeritError` subclasses for the user's mistakes, so each face only
translates: AMP maps the classes to error codes, the web maps them to HTTP statuses.
"""

import os

from twisted.internet import defer

from peerit import __version__
from peerit.errors import PeeritError, UsageError
from peerit.metainfo import Metainfo, create_metainfo_from_share, scan_share

MAX_PAGE = 100
MAX_PEERS_LISTED = 100
PIECE_MAP_CELLS = 1024  # a piece map longer than this shows groups of pieces per cell


def check_paths(*paths: str) -> None:
    """A NUL cannot be in a path (the OS raises ValueError, not OSError, deep inside)."""
    for path in paths:
        if "\x00" in path:
            raise UsageError(f"{path[:60]!r}: a path cannot contain a NUL character")


def check_share_path(path: str) -> str:
    """The path a person typed for a share, as ``peerit-ctl share`` checks it: absolute
    (there is no current directory to be relative to), existing."""
    check_paths(path)
    if not path or not os.path.isabs(os.path.expanduser(path)):
        raise UsageError(f"{path!r}: give an absolute path on the daemon's machine")
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise UsageError(f"{path} does not exist")
    return path


def piece_map(piece_count: int, have, in_flight, cells: int = PIECE_MAP_CELLS) -> str:
    """One character per cell: ``2`` every piece verified, ``1`` some verified or in flight,
    ``0`` missing; a cell covers ``ceil(piece_count / cells)`` pieces."""
    if not piece_count:
        return ""
    per = -(-piece_count // cells)
    out = []
    for start in range(0, piece_count, per):
        stop = min(start + per, piece_count)
        got = sum(1 for i in range(start, stop) if i in have)
        if got == stop - start:
            out.append("2")
        elif got or any(i in in_flight for i in range(start, stop)):
            out.append("1")
        else:
            out.append("0")
    return "".join(out)


class Operations:
    """The daemon's operations; ``daemon`` is the running :class:`Daemon`."""

    def __init__(self, daemon):
        self.daemon = daemon

    # -- the daemon -----------------------------------------------------------------------
    def info(self) -> dict:
        d = self.daemon
        down = up = 0.0
        for transfer in d.transfers.values():
            swarm = transfer.swarm
            if swarm is not None:
                if swarm.download.above(0):
                    down += swarm.download.rate
                if swarm.upload.above(0):
                    up += swarm.upload.rate
        report = d.nat.report if d.nat is not None else None
        public = None
        if report is not None and report.public_host:
            public = f"{report.public_host}:{report.public_port}"
        return {
            "version": __version__,
            "peer_id": d.peer_id.hex(),
            "data_dir": d.data_dir,
            "listen_port": d.listen_port,
            "udp_port": d.nat.udp_port if d.nat is not None else 0,
            "trackers": [str(a) for a in d.trackers],
            "trackers_connected": [str(a) for a, c in d.trackers.items() if c.connected],
            "public_address": public or "",
            "nat_type": report.nat_type if report is not None else "",
            "down_rate": down,
            "up_rate": up,
            "transfers": len(d.transfers),
        }

    def netcheck(self) -> defer.Deferred:
        netcheck = getattr(self.daemon, "netcheck", None)
        if netcheck is None:
            return defer.fail(PeeritError(
                "this daemon has no UDP socket to check (start it with --udp)"))
        return netcheck()

    # -- adding ---------------------------------------------------------------------------
    def share(self, data_path: str, metainfo_path: str, check: bool) -> dict:
        check_paths(data_path, metainfo_path)
        t = self.daemon.add_seed(data_path, metainfo_path, check)
        return {"info_hash": t.info_hash.hex(), "name": t.metainfo.name, "state": t.state}

    def download(self, metainfo_path: str, target_dir: str) -> dict:
        check_paths(metainfo_path, target_dir)
        t = self.daemon.add_download(metainfo_path, target_dir)
        return {"info_hash": t.info_hash.hex(), "name": t.metainfo.name, "path": t.path}

    def download_metainfo(self, data: bytes, target_dir: str = "") -> dict:
        """Download from the bytes of a .p2p (an upload): checked, kept in the data
        directory (the transfer's record holds it too), then :meth:`download`."""
        check_paths(target_dir)
        if target_dir and not os.path.isabs(os.path.expanduser(target_dir)):
            raise UsageError(f"{target_dir!r}: give an absolute folder on the daemon's machine")
        metainfo = Metainfo.from_bytes(data)  # MetainfoError: one line for the person
        path = self._metainfo_path(metainfo)
        metainfo.write(path, overwrite=True)
        return self.download(path, target_dir)

    async def share_path(self, path: str) -> dict:
        """Share a file or directory on this machine, as ``peerit-ctl share PATH`` does:
        hash it (in a thread), keep its .p2p in the data directory, seed it in place."""
        path = check_share_path(path)
        trackers = tuple(self.daemon.tracker_addresses)
        # Walking a tree and hashing it both take time: off the reactor. scan_share refuses
        # links and special files inside a directory, naming the first.
        metainfo = await self.daemon.in_thread(
            lambda: create_metainfo_from_share(scan_share(path), trackers=trackers))
        metainfo_path = self._metainfo_path(metainfo)
        metainfo.write(metainfo_path, overwrite=True)
        return {**self.share(path, metainfo_path, check=False), "metainfo": metainfo_path}

    def _metainfo_path(self, metainfo) -> str:
        directory = os.path.join(self.daemon.data_dir, "metainfo")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        return os.path.join(directory, metainfo.info_hash.hex() + ".p2p")

    # -- one transfer ---------------------------------------------------------------------
    def status(self, ident: str) -> dict:
        return self.daemon.find(ident).summary()

    def list(self, offset: int = 0, limit: int = MAX_PAGE) -> dict:
        if offset < 0 or not 0 < limit <= MAX_PAGE:
            raise UsageError(f"page limit must be 1..{MAX_PAGE}")
        transfers = sorted(self.daemon.transfers.values(), key=lambda t: t.metainfo.name)
        page = transfers[offset:offset + limit]
        return {"transfers": [t.summary() for t in page], "total": len(transfers)}

    def list_all(self) -> "list[dict]":
        """Every transfer at once, for a face with no 64 KiB cap per answer (the web)."""
        transfers = sorted(self.daemon.transfers.values(), key=lambda t: t.metainfo.name)
        return [t.summary() for t in transfers]

    def peers(self, ident: str, limit: int = MAX_PEERS_LISTED) -> dict:
        transfer = self.daemon.find(ident)
        peers = transfer.swarm.peer_summaries() if transfer.swarm else []
        return {"peers": peers[:limit], "total": len(peers)}

    def detail(self, ident: str) -> dict:
        """A transfer's summary, peers, files and piece map (for the page's detail view)."""
        transfer = self.daemon.find(ident)
        metainfo = transfer.metainfo
        swarm = transfer.swarm
        in_flight = set()
        if swarm is not None:
            in_flight = set(swarm.picker.in_progress) | swarm.picker.verifying
        files = [{"path": f.path, "size": f.size} for f in metainfo.files[:1000]]
        now = self.daemon.clock.seconds()
        return {
            "transfer": transfer.summary(),
            "peers": self.peers(ident)["peers"],
            "files": files,
            "file_count": len(metainfo.files),
            "piece_length": metainfo.piece_length,
            "piece_map": piece_map(metainfo.piece_count, transfer.have, in_flight),
            # [seconds ago, down, up], oldest first, sampled while someone watched
            "rate_history": [[round(now - t, 1), round(down), round(up)]
                             for t, down, up in transfer.rate_history],
        }

    def metainfo(self, ident: str) -> tuple[str, bytes]:
        """The transfer's .p2p as a file name and its bytes (to hand to someone else)."""
        transfer = self.daemon.find(ident)
        return transfer.metainfo.name + ".p2p", transfer.metainfo.to_bytes()

    def pause(self, ident: str) -> dict:
        t = self.daemon.find(ident)
        t.pause()
        return {"info_hash": t.info_hash.hex()}

    def resume(self, ident: str) -> dict:
        t = self.daemon.find(ident)
        t.resume()
        return {"info_hash": t.info_hash.hex()}

    def remove(self, ident: str, delete_data: bool) -> dict:
        t = self.daemon.find(ident)
        self.daemon.remove(t, delete_data)
        return {"info_hash": t.info_hash.hex()}

