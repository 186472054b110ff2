"""The control socket: a child service listening on a UNIX socket, and its AMP responders,
each one a thin call into the :class:`~peerit.daemon.operations.DaemonOperations`."""

import json
import os

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from peerit.control import commands
from peerit.daemon.operations import DaemonOperations
from peerit.errors import PeeritError, UsageError

MAX_CONTROL_SESSIONS = 32


class ControlProtocol(amp.AMP):
    def __init__(self, operations: DaemonOperations):
        super().__init__()
        self.operations = operations
        self._following: set[str] = set()  # info-hashes this client follows
        self._subscription = None

    def connectionMade(self):
        super().connectionMade()
        self.factory.sessions += 1

    def connectionLost(self, reason):
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
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
        return self.operations.info()

    @commands.Share.responder
    def share(self, data_path, metainfo_path, check):
        return self.operations.share(data_path, metainfo_path, check)

    @commands.Download.responder
    def download(self, metainfo_path, target_dir):
        return self.operations.download(metainfo_path, target_dir)

    @commands.Status.responder
    def status(self, id):
        return self.operations.status(id)

    @commands.List.responder
    def list(self, offset, limit):
        return self.operations.list(offset, limit)

    @commands.Peers.responder
    def peers(self, id):
        return self.operations.peers(id)

    @commands.Pause.responder
    def pause(self, id):
        return self.operations.pause(id)

    @commands.Resume.responder
    def resume(self, id):
        return self.operations.resume(id)

    @commands.DownloadLink.responder
    def download_link(self, link, target_dir):
        return self.operations.download_link(link, target_dir)

    @commands.LinkOf.responder
    def link_of(self, id):
        return self.operations.link(id)

    @commands.ExportMetainfo.responder
    def export_metainfo(self, id, path, overwrite):
        return self.operations.export_metainfo(id, path, overwrite)

    @commands.Send.responder
    def send(self, data_path, metainfo_path):
        return self.operations.send(data_path, metainfo_path)

    @commands.SendStatus.responder
    def send_status(self, id):
        return self.operations.send_status(id)

    @commands.Receive.responder
    def receive(self, code, target_dir):
        return self.operations.receive(code, target_dir)

    @commands.Remove.responder
    def remove(self, id, delete_data):
        return self.operations.remove(id, delete_data)

    @commands.NetCheck.responder
    def netcheck(self):
        d = self.operations.netcheck()
        d.addCallback(lambda report: {"report": json.dumps(report)})
        return d

    @commands.Follow.responder
    def follow(self, id):
        info_hash = self.operations.status(id)["info_hash"]
        self._following.add(info_hash)
        if self._subscription is None:
            self._subscription = self.operations.events.subscribe(self._changed)
        return {"info_hash": info_hash}

    def _changed(self, events) -> None:
        for event in events:
            if event["kind"] == "transfer" and event["id"] in self._following:
                data = event["data"]
                self.callRemote(commands.TransferChanged, id=event["id"],
                                transfers=[data] if data is not None else [])

    @commands.WebLogin.responder
    def web_login(self):
        return {"url": self.operations.web_login()}


class ControlFactory(Factory):
    def __init__(self, operations: DaemonOperations):
        self.operations = operations
        self.sessions = 0

    def buildProtocol(self, addr):
        if self.sessions >= MAX_CONTROL_SESSIONS:
            return None
        protocol = ControlProtocol(self.operations)
        protocol.factory = self
        return protocol


def control_factory(operations: DaemonOperations) -> Factory:
    return ControlFactory(operations)


class ControlSocket(service.Service):
    """Listens on ``path`` for peerit-ctl; the last child to start, the first to stop."""

    name = "control"

    def __init__(self, reactor, path: str, operations: DaemonOperations):
        self.reactor = reactor
        self.path = path
        self.operations = operations
        self._port = None

    def startService(self):
        super().startService()
        return defer.ensureDeferred(self._listen())

    async def _listen(self):
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # Permissions come from the directory (Twisted's advice): only we may enter it.
        os.chmod(directory, 0o700)
        endpoint = endpoints.UNIXServerEndpoint(self.reactor, self.path, mode=0o600,
                                                wantPID=True)
        try:
            self._port = await endpoint.listen(control_factory(self.operations))
        except CannotListenError as e:
            if "lock" in str(e):
                raise PeeritError(f"another peer-it daemon already uses the control socket "
                                  f"{self.path} (give this one its own --control)") from None
            raise PeeritError(f"cannot listen on {self.path}: {e.socketError}") from None

    def stopService(self):
        super().stopService()
        if self._port is not None:
            return self._port.stopListening()
