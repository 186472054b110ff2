"""Python client API for a running peer-it daemon.

Asynchronous use, inside a Twisted program::

    client = await Client.connect(reactor)          # same socket rule as peerit-ctl
    started = await client.download("/tmp/x.p2p", "/tmp/out")
    status = await client.status(started.info_hash)

Scripts without a reactor (and ``peerit-ctl``) use :class:`BlockingClient`: the same calls,
blocking, on a plain socket (:mod:`peerit.control.blocking_client`), without loading Twisted.
Two clients because the asynchronous one lives on its caller's reactor while a blocking one
must not need one; both speak the one contract of :mod:`peerit.control.contract` and return
the same frozen dataclasses (:class:`TransferStatus`, :class:`PeerInfo`, ...,
:mod:`peerit.control.results`); :func:`as_json` turns one into JSON-ready values. Every error is
a :class:`peerit.errors.PeeritError` subclass with a one-line message.
"""

import json
import os

from twisted.internet import defer, endpoints, error as twisted_error
from twisted.protocols import amp

from peerit.control import commands
from peerit.control.blocking_client import (  # noqa: F401 (this module's API)
    CALL_TIMEOUT, CONNECT_TIMEOUT, BlockingClient, connect_error, control_path)
from peerit.control.results import (  # noqa: F401 (this module's API)
    DaemonInfo, Done, Exported, LinkOf, PeerInfo, PeerList, SendOffer, SendState, Shared,
    Started, TransferStatus, as_json, from_answer as _from_answer)
from peerit.errors import DaemonNotRunning, PeeritError, TimedOut


class ClientProtocol(amp.AMP):
    """The client's end: also answers the daemon's ``TransferChanged`` (after ``Follow``)."""

    def __init__(self):
        super().__init__()
        self.followers = {}  # info-hash -> callback(TransferStatus, or None once removed)
        self.on_lost = []  # callables, told when the daemon's connection ends

    def connectionLost(self, reason):
        for callback in self.on_lost:
            callback()
        super().connectionLost(reason)

    @commands.TransferChanged.responder
    def transfer_changed(self, id, transfers):
        callback = self.followers.get(id)
        if callback is not None:
            callback(_from_answer(TransferStatus, transfers[0]) if transfers else None)
        return {}


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
            protocol = await endpoints.connectProtocol(endpoint, ClientProtocol())
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

    async def info(self) -> DaemonInfo:
        return _from_answer(DaemonInfo, await self._call(commands.DaemonInfo))

    async def share(self, data_path: str, metainfo_path: str, check: bool = False) -> Shared:
        return _from_answer(Shared, await self._call(
            commands.Share, data_path=os.path.abspath(data_path),
            metainfo_path=os.path.abspath(metainfo_path), check=check))

    async def download(self, metainfo_path: str, target_dir: str = "") -> Started:
        return _from_answer(Started, await self._call(
            commands.Download, metainfo_path=os.path.abspath(metainfo_path),
            target_dir=os.path.abspath(target_dir) if target_dir else ""))

    async def status(self, ident: str) -> TransferStatus:
        return _from_answer(TransferStatus, await self._call(commands.Status, id=ident))

    async def list(self) -> list[TransferStatus]:
        out, offset = [], 0
        while True:
            page = await self._call(commands.List, offset=offset, limit=commands.MAX_PAGE)
            out.extend(_from_answer(TransferStatus, t) for t in page["transfers"])
            offset += len(page["transfers"])
            if not page["transfers"] or offset >= page["total"]:
                return out

    async def peers(self, ident: str) -> PeerList:
        return _from_answer(PeerList, await self._call(commands.Peers, id=ident))

    async def pause(self, ident: str) -> Done:
        return _from_answer(Done, await self._call(commands.Pause, id=ident))

    async def resume(self, ident: str) -> Done:
        return _from_answer(Done, await self._call(commands.Resume, id=ident))

    async def remove(self, ident: str, delete_data: bool = False) -> Done:
        return _from_answer(Done, await self._call(commands.Remove, id=ident,
                                                   delete_data=delete_data))

    # -- links and codes (docs/links.md) --------------------------------------------------
    async def download_link(self, link: str, target_dir: str = "") -> Started:
        return _from_answer(Started, await self._call(
            commands.DownloadLink, link=link,
            target_dir=os.path.abspath(target_dir) if target_dir else ""))

    async def link_of(self, ident: str) -> LinkOf:
        return _from_answer(LinkOf, await self._call(commands.LinkOf, id=ident))

    async def export_metainfo(self, ident: str, path: str, overwrite: bool = False) -> Exported:
        return _from_answer(Exported, await self._call(
            commands.ExportMetainfo, id=ident, path=os.path.abspath(path),
            overwrite=overwrite))

    async def send(self, data_path: str, metainfo_path: str) -> SendOffer:
        # Reaching the rendezvous is bounded by the daemon (15 s): within the call timeout.
        return _from_answer(SendOffer, await self._call(
            commands.Send, data_path=os.path.abspath(data_path),
            metainfo_path=os.path.abspath(metainfo_path)))

    async def send_status(self, info_hash: str) -> SendState:
        return _from_answer(SendState, await self._call(commands.SendStatus, id=info_hash))

    async def receive(self, code: str, target_dir: str = "") -> Started:
        # The daemon bounds the exchange (rendezvous, the sender's answer); this only
        # needs to outlast it.
        return _from_answer(Started, await self._call(
            commands.Receive, timeout=CALL_TIMEOUT * 2, code=code,
            target_dir=os.path.abspath(target_dir) if target_dir else ""))

    async def netcheck(self) -> dict:
        """The NAT report: a JSON object whose keys depend on what could be measured."""
        answer = await self._call(commands.NetCheck, timeout=30)
        return json.loads(answer["report"])

    async def follow(self, ident: str, callback, on_lost=None) -> TransferStatus:
        """Call ``callback(status)`` (a :class:`TransferStatus`) on each change of the
        transfer (``None`` once it is removed) and ``on_lost()`` if the daemon goes away;
        returns its status as of when following began."""
        info_hash = (await self.status(ident)).info_hash
        self.protocol.followers[info_hash] = callback
        if on_lost is not None:
            self.protocol.on_lost.append(on_lost)
        await self._call(commands.Follow, id=info_hash)
        # Asked again after subscribing: a change in between is not lost.
        return await self.status(info_hash)

    async def web_login(self) -> str:
        """A one-time sign-in URL for the daemon's web page."""
        return (await self._call(commands.WebLogin))["url"]

    def close(self) -> None:
        self.protocol.transport.loseConnection()


def _connect_error(e: Exception, path: str) -> PeeritError:
    os_error = getattr(e, "osError", None)
    code = os_error if isinstance(os_error, int) else getattr(os_error, "errno", None)
    return connect_error(code, path, str(e))
