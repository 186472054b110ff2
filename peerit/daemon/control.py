"""AMP responders for the control socket: each one a thin call into the ``Daemon``."""

import json

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from peerit import __version__
from peerit.control import commands
from peerit.errors import PeeritError, UsageError

MAX_CONTROL_SESSIONS = 32


def _check_paths(*paths: str) -> None:
    """A NUL cannot be in a path (the OS raises ValueError, not OSError, deep inside)."""
    for path in paths:
        if "\x00" in path:
            raise UsageError(f"{path[:60]!r}: a path cannot contain a NUL character")


class ControlProtocol(amp.AMP):
    def __init__(self, daemon):
        super().__init__()
        self.daemon = daemon

    def connectionMade(self):
        super().connectionMade()
        self.factory.sessions += 1

    def connectionLost(self, reason):
        self.factory.sessions -= 1
        super().connectionLost(reason)

    def locateResponder(self, name):
        """AMP parses a command's arguments before our code runs and answers a value of the
        wrong type (``offset=abc``) with an opaque UNHANDLED error and a logged traceback;
        answer it as the contract's BAD_REQUEST instead."""
        responder = super().locateResponder(name)
        if responder is None:
            return None

        def checked(box):
            try:
                return responder(box)
            except (KeyError, ValueError, TypeError, OverflowError) as e:
                return defer.fail(amp.RemoteAmpError(
                    commands.ERRORS[UsageError],
                    f"malformed {name.decode(errors='replace')} request: {e}"))
        return checked

    @commands.DaemonInfo.responder
    def info(self):
        d = self.daemon
        return {
            "version": __version__,
            "peer_id": d.peer_id.hex(),
            "data_dir": d.data_dir,
            "listen_port": d.listen_port,
            "trackers": [str(a) for a in d.trackers],
            "trackers_connected": [str(a) for a, c in d.trackers.items() if c.connected],
        }

    @commands.Share.responder
    def share(self, data_path, metainfo_path, check):
        _check_paths(data_path, metainfo_path)
        t = self.daemon.add_seed(data_path, metainfo_path, check)
        return {"info_hash": t.info_hash.hex(), "name": t.metainfo.name, "state": t.state}

    @commands.Download.responder
    def download(self, metainfo_path, target_dir):
        _check_paths(metainfo_path, target_dir)
        t = self.daemon.add_download(metainfo_path, target_dir)
        return {"info_hash": t.info_hash.hex(), "name": t.metainfo.name, "path": t.path}

    @commands.Status.responder
    def status(self, id):
        return self.daemon.find(id).summary()

    @commands.List.responder
    def list(self, offset, limit):
        if offset < 0 or not 0 < limit <= commands.MAX_PAGE:
            raise UsageError(f"page limit must be 1..{commands.MAX_PAGE}")
        transfers = sorted(self.daemon.transfers.values(), key=lambda t: t.name)
        page = transfers[offset:offset + limit]
        return {"transfers": [t.summary() for t in page], "total": len(transfers)}

    @commands.Peers.responder
    def peers(self, id):
        transfer = self.daemon.find(id)
        peers = transfer.swarm.peer_summaries() if transfer.swarm else []
        return {"peers": peers[:commands.MAX_PEERS_LISTED], "total": len(peers)}

    @commands.Pause.responder
    def pause(self, id):
        t = self.daemon.find(id)
        t.pause()
        return {"info_hash": t.info_hash.hex()}

    @commands.Resume.responder
    def resume(self, id):
        t = self.daemon.find(id)
        t.resume()
        return {"info_hash": t.info_hash.hex()}

    @commands.Remove.responder
    def remove(self, id, delete_data):
        t = self.daemon.find(id)
        self.daemon.remove(t, delete_data)
        return {"info_hash": t.info_hash.hex()}

    @commands.DownloadLink.responder
    def download_link(self, link, target_dir):
        _check_paths(target_dir)
        t = self.daemon.add_link(link, target_dir)
        return {"info_hash": t.info_hash.hex(), "name": t.name, "path": t.path}

    @commands.LinkOf.responder
    def link_of(self, id):
        t = self.daemon.find(id)
        return {"link": str(self.daemon.link_of(t)), "info_hash": t.info_hash.hex()}

    @commands.ExportMetainfo.responder
    def export_metainfo(self, id, path, overwrite):
        _check_paths(path)
        t = self.daemon.find(id)
        return {"path": self.daemon.export_metainfo(t, path, overwrite),
                "info_hash": t.info_hash.hex()}

    @commands.Send.responder
    def send(self, data_path, metainfo_path):
        _check_paths(data_path, metainfo_path)
        return defer.ensureDeferred(self.daemon.send(data_path, metainfo_path))

    @commands.SendStatus.responder
    def send_status(self, id):
        return self.daemon.send_status(id)

    @commands.Receive.responder
    def receive(self, code, target_dir):
        _check_paths(target_dir)
        d = defer.ensureDeferred(self.daemon.receive(code, target_dir))
        d.addCallback(lambda t: {"info_hash": t.info_hash.hex(), "name": t.name,
                                 "path": t.path})
        return d

    @commands.NetCheck.responder
    def netcheck(self):
        netcheck = getattr(self.daemon, "netcheck", None)
        if netcheck is None:
            raise PeeritError("this daemon has no UDP socket to check (start it with --udp)")
        d = netcheck()
        d.addCallback(lambda report: {"report": json.dumps(report)})
        return d


class ControlFactory(Factory):
    def __init__(self, daemon):
        self.daemon = daemon
        self.sessions = 0

    def buildProtocol(self, addr):
        if self.sessions >= MAX_CONTROL_SESSIONS:
            return None
        protocol = ControlProtocol(self.daemon)
        protocol.factory = self
        return protocol


def control_factory(daemon) -> Factory:
    return ControlFactory(daemon)
