"""What a daemon can be asked to do: one implementation of each operation.

The control socket's AMP responders call these, and so will any other front (a web JSON API):
each returns the plain result the ``peerit.control.commands`` contract describes, or raises
one of the project's errors (``UsageError``, ``UnknownSwarm``, ``PeeritError`` and the
storage errors), which each front maps to its own way of saying it.
"""

from twisted.internet import defer

from peerit import __version__
from peerit.control import commands
from peerit.errors import PeeritError, UsageError


def _check_paths(*paths: str) -> None:
    """A NUL cannot be in a path (the OS raises ValueError, not OSError, deep inside)."""
    for path in paths:
        if "\x00" in path:
            raise UsageError(f"{path[:60]!r}: a path cannot contain a NUL character")


class DaemonOperations:
    """``node`` (identity, data folder), ``transfers`` (the registry), ``peers`` (the
    listener's port), ``trackers`` (the sessions), ``udp`` (netcheck; None without a
    UDP socket) and ``codes`` (send and receive by short code)."""

    def __init__(self, node, transfers, peers, trackers, udp=None, codes=None):
        self.node = node
        self.transfers = transfers
        self.peer_links = peers
        self.trackers = trackers
        self.udp = udp
        self.codes = codes

    def info(self) -> dict:
        clients = self.trackers.clients
        return {
            "version": __version__,
            "peer_id": self.node.peer_id.hex(),
            "data_dir": self.node.data_dir,
            "listen_port": self.peer_links.listen_port,
            "trackers": [str(a) for a in clients],
            "trackers_connected": [str(a) for a, c in clients.items() if c.connected],
        }

    def share(self, data_path: str, metainfo_path: str, check: bool) -> dict:
        _check_paths(data_path, metainfo_path)
        t = self.transfers.add_seed(data_path, metainfo_path, check)
        return {"info_hash": t.info_hash.hex(), "name": t.name,
                "state": t.state.value}

    def download(self, metainfo_path: str, target_dir: str) -> dict:
        _check_paths(metainfo_path, target_dir)
        t = self.transfers.add_download(metainfo_path, target_dir)
        return {"info_hash": t.info_hash.hex(), "name": t.name, "path": t.path}

    def status(self, ident: str) -> dict:
        return self.transfers.find(ident).summary()

    def list(self, offset: int, limit: int) -> dict:
        if offset < 0 or not 0 < limit <= commands.MAX_PAGE:
            raise UsageError(f"page limit must be 1..{commands.MAX_PAGE}")
        transfers = sorted(self.transfers.all(), key=lambda t: t.name)
        page = transfers[offset:offset + limit]
        return {"transfers": [t.summary() for t in page], "total": len(transfers)}

    def peers(self, ident: str) -> dict:
        transfer = self.transfers.find(ident)
        peers = transfer.swarm.peer_summaries() if transfer.swarm else []
        return {"peers": peers[:commands.MAX_PEERS_LISTED], "total": len(peers)}

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
