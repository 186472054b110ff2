"""What a daemon can be asked to do: one implementation of each operation.

The control socket's AMP responders call these, and so does the web page's JSON API
(``peerit.web.api``): each returns the plain result the ``peerit.control.commands`` contract
describes, or raises one of the project's errors (``UsageError``, ``UnknownSwarm``,
``PeeritError`` and the storage errors), which each front maps to its own way of saying it.
"""

import os

from twisted.internet import defer

from peerit import __version__
from peerit.control import commands
from peerit.errors import PeeritError, UsageError
from peerit.metainfo import Metainfo
from peerit.share_builder import create_metainfo_from_share, scan_share

PIECE_MAP_CELLS = 1024  # a piece map longer than this shows groups of pieces per cell
MAX_FILES_LISTED = 1000


def _check_paths(*paths: str) -> None:
    """A NUL cannot be in a path (the OS raises ValueError, not OSError, deep inside)."""
    for path in paths:
        if "\x00" in path:
            raise UsageError(f"{path[:60]!r}: a path cannot contain a NUL character")


def check_share_path(path: str) -> str:
    """The path a person typed for a share, as ``peerit-ctl share`` checks it: absolute
    (there is no current directory to be relative to), existing."""
    _check_paths(path)
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


class DaemonOperations:
    """``node`` (identity, data folder), ``transfers`` (the registry), ``peers`` (the
    listener's port), ``trackers`` (the sessions), ``udp`` (netcheck; None without a
    UDP socket), ``events`` (the hub followers subscribe to) and ``codes`` (send and
    receive by short code)."""

    def __init__(self, node, transfers, peers, trackers, udp=None, events=None, codes=None):
        self.node = node
        self.transfers = transfers
        self.peer_links = peers
        self.trackers = trackers
        self.udp = udp
        self.events = events
        # () -> a one-time sign-in URL, when a web page is served (the composition sets it)
        self.web_sign_in = None
        self.codes = codes

    def info(self) -> dict:
        clients = self.trackers.clients
        down = up = 0.0
        for transfer in self.transfers.all():
            swarm = transfer.data_swarm
            if swarm is not None:
                if swarm.download.above(0):
                    down += swarm.download.rate
                if swarm.upload.above(0):
                    up += swarm.upload.rate
        nat = self.udp.nat if self.udp is not None else None
        report = nat.report if nat is not None else None
        public = ""
        if report is not None and report.public_host:
            public = f"{report.public_host}:{report.public_port}"
        return {
            "version": __version__,
            "peer_id": self.node.peer_id.hex(),
            "data_dir": self.node.data_dir,
            "listen_port": self.peer_links.listen_port,
            "trackers": [str(a) for a in clients],
            "trackers_connected": [str(a) for a, c in clients.items() if c.connected],
            "udp_port": self.udp.udp_port if self.udp is not None else 0,
            "public_address": public,
            "nat_type": report.nat_type if report is not None else "",
            "down_rate": down,
            "up_rate": up,
            "transfers": len(self.transfers.all()),
        }

    def web_login(self) -> str:
        """A one-time sign-in URL for the web page (``peerit-ctl ui``)."""
        if self.web_sign_in is None:
            raise PeeritError("this daemon serves no web page (it was started with "
                              "--web none)")
        return self.web_sign_in()

    def download_metainfo(self, data: bytes, target_dir: str = "") -> defer.Deferred:
        """Download from the bytes of a .p2p (an upload): checked, kept in the data
        folder (the transfer's record holds it too), then :meth:`download`."""
        _check_paths(target_dir)
        if target_dir and not os.path.isabs(os.path.expanduser(target_dir)):
            raise UsageError(f"{target_dir!r}: give an absolute folder on the daemon's "
                             "machine")
        metainfo = Metainfo.from_bytes(data)  # MetainfoError: one line for the person
        path = self._metainfo_path(metainfo)
        metainfo.write(path, overwrite=True)
        return self.download(path, target_dir)

    async def share_path(self, path: str) -> dict:
        """Share a file or directory on this machine, as ``peerit-ctl share PATH`` does:
        hash it (off the reactor), keep its .p2p in the data folder, seed it in place."""
        path = check_share_path(path)
        trackers = tuple(self.trackers.clients)
        # Walking a tree and hashing it both take time. scan_share refuses links and
        # special files inside a directory, naming the first.
        metainfo = await self.transfers.host.in_thread(
            lambda: create_metainfo_from_share(scan_share(path), trackers=trackers))
        metainfo_path = self._metainfo_path(metainfo)
        metainfo.write(metainfo_path, overwrite=True)
        return {**self.share(path, metainfo_path, check=False), "metainfo": metainfo_path}

    def _metainfo_path(self, metainfo) -> str:
        directory = os.path.join(self.node.data_dir, "metainfo")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        return os.path.join(directory, metainfo.info_hash.hex() + ".p2p")

    def share(self, data_path: str, metainfo_path: str, check: bool) -> dict:
        _check_paths(data_path, metainfo_path)
        t = self.transfers.add_seed(data_path, metainfo_path, check)
        return {"info_hash": t.info_hash.hex(), "name": t.name,
                "state": t.state.value}

    def download(self, metainfo_path: str, target_dir: str) -> defer.Deferred:
        """Fires once the download's files exist (they are made off the reactor)."""
        _check_paths(metainfo_path, target_dir)
        return self.transfers.add_download(metainfo_path, target_dir).addCallback(
            lambda t: {"info_hash": t.info_hash.hex(), "name": t.name, "path": t.path})

    def status(self, ident: str) -> dict:
        return self.transfers.find(ident).summary()

    def list(self, offset: int, limit: int) -> dict:
        if offset < 0 or not 0 < limit <= commands.MAX_PAGE:
            raise UsageError(f"page limit must be 1..{commands.MAX_PAGE}")
        transfers = sorted(self.transfers.all(), key=lambda t: t.name)
        page = transfers[offset:offset + limit]
        return {"transfers": [t.summary() for t in page], "total": len(transfers)}

    def list_all(self) -> "list[dict]":
        """Every transfer at once, for a front with no 64 KiB cap per answer (the web)."""
        transfers = sorted(self.transfers.all(), key=lambda t: t.name)
        return [t.summary() for t in transfers]

    def peers(self, ident: str) -> dict:
        transfer = self.transfers.find(ident)
        peers = transfer.swarm.peer_summaries() if transfer.swarm else []
        return {"peers": peers[:commands.MAX_PEERS_LISTED], "total": len(peers)}

    def detail(self, ident: str) -> dict:
        """A transfer's summary, peers, files, piece map and recent rates (the page's
        detail view)."""
        transfer = self.transfers.find(ident)
        metainfo = transfer.metainfo
        swarm = transfer.data_swarm
        if metainfo is None:  # a link's download still fetching its metadata
            return {"transfer": transfer.summary(), "peers": self.peers(ident)["peers"],
                    "files": [], "file_count": 0, "piece_length": 0, "piece_map": "",
                    "rate_history": []}
        in_flight = set()
        if swarm is not None:
            in_flight = set(swarm.picker.in_progress) | swarm.picker.verifying
        now = transfer.clock.seconds()
        return {
            "transfer": transfer.summary(),
            "peers": self.peers(ident)["peers"],
            "files": [{"path": f.path, "size": f.size}
                      for f in metainfo.files[:MAX_FILES_LISTED]],
            "file_count": len(metainfo.files),
            "piece_length": metainfo.piece_length,
            "piece_map": piece_map(metainfo.piece_count, transfer.have, in_flight),
            # [seconds ago, down, up], oldest first, sampled while someone watched
            "rate_history": [[round(now - t, 1), round(down), round(up)]
                             for t, down, up in transfer.rate_history],
        }

    def metainfo(self, ident: str) -> tuple[str, bytes]:
        """The transfer's .p2p as a file name and its bytes (to hand to someone else)."""
        transfer = self.transfers.find(ident)
        if transfer.metainfo is None:
            raise UsageError(f"{transfer.short}: its metadata is still being fetched from peers")
        return transfer.metainfo.name + ".p2p", transfer.metainfo.to_bytes()

    def pause(self, ident: str) -> dict:
        t = self.transfers.find(ident)
        t.pause()
        return {"info_hash": t.info_hash.hex()}

    def resume(self, ident: str) -> dict:
        t = self.transfers.find(ident)
        t.resume()
        return {"info_hash": t.info_hash.hex()}

    def remove(self, ident: str, delete_data: bool) -> dict:
        t = self.transfers.find(ident)
        self.transfers.remove(t, delete_data)
        if self.events is not None:
            self.events.changed_now(t.event_key)  # gone: followers hear it at once
        return {"info_hash": t.info_hash.hex()}

    # -- links and codes (docs/links.md) ----------------------------------------------------
    def download_link(self, link: str, target_dir: str) -> dict:
        _check_paths(target_dir)
        t = self.transfers.add_link(link, target_dir)
        return {"info_hash": t.info_hash.hex(), "name": t.name, "path": t.path}

    def link(self, ident: str) -> dict:
        t = self.transfers.find(ident)
        return {"link": str(self.transfers.link_of(t)), "info_hash": t.info_hash.hex()}

    def export_metainfo(self, ident: str, path: str, overwrite: bool) -> dict:
        _check_paths(path)
        t = self.transfers.find(ident)
        return {"path": self.transfers.export_metainfo(t, path, overwrite),
                "info_hash": t.info_hash.hex()}

    def send(self, data_path: str, metainfo_path: str) -> defer.Deferred:
        """Deferred firing with the code (and the share's info-hash, name and link)."""
        _check_paths(data_path, metainfo_path)
        return defer.ensureDeferred(self.codes.send(data_path, metainfo_path))

    def send_status(self, info_hash: str) -> dict:
        return self.codes.send_status(info_hash)

    def receive(self, code: str, target_dir: str) -> defer.Deferred:
        """Deferred firing once the code's sender pinned us and the download started."""
        _check_paths(target_dir)
        d = defer.ensureDeferred(self.codes.receive(code, target_dir))
        d.addCallback(lambda t: {"info_hash": t.info_hash.hex(), "name": t.name,
                                 "path": t.path})
        return d

    def netcheck(self) -> defer.Deferred:
        """Deferred firing with the NAT report (a dict; see ``NatManager.netcheck``)."""
        if self.udp is None:
            return defer.fail(PeeritError(
                "this daemon has no UDP socket to check (start it with --udp)"))
        return self.udp.netcheck()
