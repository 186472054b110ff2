"""Python client API for a running peer-it daemon (what ``peerit-ctl`` uses).

Asynchronous use, inside a Twisted program::

    client = await Client.connect(reactor)          # same socket rule as peerit-ctl
    info = await client.download("/tmp/x.p2p", "/tmp/out")
    status = await client.status(info["info_hash"])

Scripts without a reactor use :class:`BlockingClient`, which runs one in a helper thread.
Every error is a :class:`peerit.errors.PeeritError` subclass with a one-line message.
"""

import errno
import json
import os

from twisted.internet import defer, endpoints, error as twisted_error
from twisted.protocols import amp

from peerit.control import commands
from peerit.control.paths import control_path_of, default_control_path
from peerit.errors import DaemonNotRunning, PermissionDenied, PeeritError, TimedOut

CONNECT_TIMEOUT = 5
CALL_TIMEOUT = 60


def control_path(explicit: str | None = None) -> str:
    """The control socket: ``explicit``, else $PEERIT_CONTROL, else the daemon's default."""
    spec = explicit or os.environ.get("PEERIT_CONTROL") or default_control_path()
    return control_path_of(spec)


class Client:
    def __init__(self, protocol: amp.AMP, path: str, clock):
        self.protocol = protocol
        self.path = path
        self.clock = clock

    @classmethod
    async def connect(cls, reactor, path: str | None = None) -> "Client":
        path = control_path(path)
        endpoint = endpoints.UNIXClientEndpoint(reactor, path, timeout=CONNECT_TIMEOUT)
        try:
            protocol = await endpoints.connectProtocol(endpoint, amp.AMP())
        except twisted_error.ConnectError as e:
            raise _connect_error(e, path) from None
        return cls(protocol, path, reactor)

    async def _call(self, command, timeout: float = CALL_TIMEOUT, **kwargs) -> dict:
        d = self.protocol.callRemote(command, **kwargs)
        d.addTimeout(timeout, self.clock)
        try:
            return await d
        except defer.TimeoutError:
            raise TimedOut(f"the daemon did not answer {command.__name__} within "
                           f"{timeout:.0f}s") from None
        except (twisted_error.ConnectionLost, twisted_error.ConnectionDone):
            raise DaemonNotRunning(f"the daemon at {self.path} closed the connection") \
                from None
        except amp.UnknownRemoteError as e:
            raise PeeritError(f"the daemon failed: {e}") from None

    async def info(self) -> dict:
        return await self._call(commands.DaemonInfo)

    async def share(self, data_path: str, metainfo_path: str, check: bool = False) -> dict:
        return await self._call(commands.Share, data_path=os.path.abspath(data_path),
                                metainfo_path=os.path.abspath(metainfo_path), check=check)

    async def download(self, metainfo_path: str, target_dir: str = "") -> dict:
        return await self._call(
            commands.Download, metainfo_path=os.path.abspath(metainfo_path),
            target_dir=os.path.abspath(target_dir) if target_dir else "")

    async def status(self, ident: str) -> dict:
        return await self._call(commands.Status, id=ident)

    async def list(self) -> list[dict]:
        out, offset = [], 0
        while True:
            page = await self._call(commands.List, offset=offset, limit=commands.MAX_PAGE)
            out.extend(page["transfers"])
            offset += len(page["transfers"])
            if not page["transfers"] or offset >= page["total"]:
                return out

    async def peers(self, ident: str) -> dict:
        return await self._call(commands.Peers, id=ident)

    async def pause(self, ident: str) -> dict:
        return await self._call(commands.Pause, id=ident)

    async def resume(self, ident: str) -> dict:
        return await self._call(commands.Resume, id=ident)

    async def remove(self, ident: str, delete_data: bool = False) -> dict:
        return await self._call(commands.Remove, id=ident, delete_data=delete_data)

    async def download_link(self, link: str, target_dir: str = "") -> dict:
        return await self._call(
            commands.DownloadLink, link=link,
            target_dir=os.path.abspath(target_dir) if target_dir else "")

    async def link_of(self, ident: str) -> dict:
        return await self._call(commands.LinkOf, id=ident)

    async def export_metainfo(self, ident: str, path: str, overwrite: bool = False) -> dict:
        return await self._call(commands.ExportMetainfo, id=ident,
                                path=os.path.abspath(path), overwrite=overwrite)

    async def send(self, data_path: str, metainfo_path: str) -> dict:
        # Reaching the rendezvous is bounded by the daemon (15 s); allow for it.
        return await self._call(commands.Send, data_path=os.path.abspath(data_path),
                                metainfo_path=os.path.abspath(metainfo_path))

    async def send_status(self, info_hash: str) -> dict:
        return await self._call(commands.SendStatus, id=info_hash)

    async def receive(self, code: str, target_dir: str = "") -> dict:
        # The daemon bounds the exchange (rendezvous, the sender's answer); this only
        # needs to outlast it.
        return await self._call(commands.Receive, timeout=CALL_TIMEOUT * 2, code=code,
                                target_dir=os.path.abspath(target_dir) if target_dir else "")

    async def netcheck(self) -> dict:
        answer = await self._call(commands.NetCheck, timeout=30)
        return json.loads(answer["report"])

    def close(self) -> None:
        self.protocol.transport.loseConnection()


def _connect_error(e: Exception, path: str) -> PeeritError:
    os_error = getattr(e, "osError", None)
    code = os_error if isinstance(os_error, int) else getattr(os_error, "errno", None)
    if code in (errno.EACCES, errno.EPERM) or "Permission denied" in str(e):
        return PermissionDenied(f"cannot reach the daemon's control socket {path}: "
                                "permission denied (it belongs to another user)")
    return DaemonNotRunning(f"no peer-it daemon is listening on {path} (start one with "
                            "'twistd peerit-daemon', or point --control/PEERIT_CONTROL at it)")


class BlockingClient:
    """The same calls, blocking, for scripts: runs a reactor in a daemon thread."""

    _reactor_started = False

    def __init__(self, path: str | None = None):
        from twisted.internet import reactor
        self._reactor = reactor
        self._start_reactor()
        self._client = self._blocking(lambda: defer.ensureDeferred(
            Client.connect(reactor, path)))

    @classmethod
    def _start_reactor(cls):
        if cls._reactor_started:
            return
        import threading
        from twisted.internet import reactor
        threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False},
                         daemon=True, name="peerit-client-reactor").start()
        cls._reactor_started = True

    def _blocking(self, function):
        from twisted.internet.threads import blockingCallFromThread
        return blockingCallFromThread(self._reactor, function)

    def __getattr__(self, name):
        method = getattr(self._client, name)
        if name == "close":
            return lambda: self._reactor.callFromThread(method)
        return lambda *a, **k: self._blocking(lambda: defer.ensureDeferred(method(*a, **k)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
