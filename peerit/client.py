"""Python client API for a running peer-it daemon (what ``peerit-ctl`` uses).

Asynchronous use, inside a Twisted program::

    client = await Client.connect(reactor)          # same socket rule as peerit-ctl
    started = await client.download("/tmp/x.p2p", "/tmp/out")
    status = await client.status(started.info_hash)

Scripts without a reactor use :class:`BlockingClient`, which runs one in a background thread.
Answers are frozen dataclasses (:class:`TransferStatus`, :class:`PeerInfo`, ...) whose fields
are derived from the AMP response lists in :mod:`peerit.control.commands`, so the two cannot
disagree; :func:`as_json` turns one into JSON-ready values. Every error is a
:class:`peerit.errors.PeeritError` subclass with a one-line message.
"""

import dataclasses
import errno
import json
import os
import threading

from twisted.internet import defer, endpoints, error as twisted_error, threads
from twisted.protocols import amp

from peerit.control import commands
from peerit.control.paths import control_path_of, default_control_path
from peerit.errors import DaemonNotRunning, PermissionDenied, PeeritError, TimedOut

CONNECT_TIMEOUT = 5
CALL_TIMEOUT = 60

_SCALARS = {amp.Unicode: str, amp.Integer: int, amp.Float: float, amp.Boolean: bool}


def _result_class(name: str, fields, nested: dict, doc: str):
    """A frozen dataclass with one field per ``(name, amp argument)`` of an AMP field list;
    ``nested`` gives the dataclass of each ``AmpList`` field's items."""
    spec = []
    for raw, argument in fields:
        key = raw.decode()
        if isinstance(argument, amp.AmpList):
            kind = list[nested[key]]
        elif isinstance(argument, amp.ListOf):
            kind = list[_SCALARS[type(argument.elementType)]]
        else:
            kind = _SCALARS[type(argument)]
        spec.append((key, kind))
    cls = dataclasses.make_dataclass(name, spec, frozen=True)
    cls.__module__ = __name__
    cls.__doc__ = doc
    cls._nested = nested
    return cls


def _from_answer(cls, answer: dict):
    values = {}
    for field in dataclasses.fields(cls):
        value = answer[field.name]
        item = cls._nested.get(field.name)
        values[field.name] = [_from_answer(item, v) for v in value] if item else value
    return cls(**values)


def as_json(result):
    """A result (or a list of them) as plain dicts and lists, for ``json.dump``."""
    if isinstance(result, list):
        return [as_json(r) for r in result]
    return dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result


TransferStatus = _result_class("TransferStatus", commands.TRANSFER_FIELDS, {},
                               "One transfer, as ``status`` and ``list`` report it.")
PeerInfo = _result_class("PeerInfo", commands.PEER_FIELDS, {}, "One connected peer.")
DaemonInfo = _result_class("DaemonInfo", commands.DaemonInfo.response, {},
                           "Who the daemon is and how it is connected.")
Shared = _result_class("Shared", commands.Share.response, {}, "A share the daemon now seeds.")
Started = _result_class("Started", commands.Download.response, {}, "A download begun.")
PeerList = _result_class("PeerList", commands.Peers.response, {"peers": PeerInfo},
                         "The peers of a transfer (at most MAX_PEERS_LISTED) and how many.")
Done = _result_class("Done", commands.Pause.response, {},
                     "The transfer a pause, resume or remove acted on.")
LinkOf = _result_class("LinkOf", commands.LinkOf.response, {}, "A transfer's peerit: link.")
Exported = _result_class("Exported", commands.ExportMetainfo.response, {},
                         "Where a transfer's metadata was written as a .p2p.")
SendOffer = _result_class("SendOffer", commands.Send.response, {},
                          "A private share and the code that names it.")
SendState = _result_class("SendState", commands.SEND_FIELDS, {}, "Where a send stands.")


def control_path(explicit: str | None = None) -> str:
    """The control socket: ``explicit``, else $PEERIT_CONTROL, else the daemon's default."""
    spec = explicit or os.environ.get("PEERIT_CONTROL") or default_control_path()
    return control_path_of(spec)


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
    if code in (errno.EACCES, errno.EPERM) or "Permission denied" in str(e):
        return PermissionDenied(f"cannot reach the daemon's control socket {path}: "
                                "permission denied (it belongs to another user)")
    return DaemonNotRunning(f"no peer-it daemon is listening on {path} (start one with "
                            "'twistd peerit-daemon', or point --control/PEERIT_CONTROL at it)")


class BlockingClient:
    """The same calls, blocking, for scripts: runs a reactor in a daemon thread."""

    _reactor_started = False

    def __init__(self, path: str | None = None):
        from twisted.internet import reactor  # the global reactor is this class's purpose
        self._reactor = reactor
        self._start_reactor()
        self._client = self._blocking(Client.connect, reactor, path)

    @classmethod
    def _start_reactor(cls):
        if cls._reactor_started:
            return
        from twisted.internet import reactor
        threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False},
                         daemon=True, name="peerit-client-reactor").start()
        cls._reactor_started = True

    def _blocking(self, coroutine_function, *args, **kwargs):
        return threads.blockingCallFromThread(
            self._reactor, lambda: defer.ensureDeferred(coroutine_function(*args, **kwargs)))

    def info(self) -> DaemonInfo:
        return self._blocking(self._client.info)

    def share(self, data_path: str, metainfo_path: str, check: bool = False) -> Shared:
        return self._blocking(self._client.share, data_path, metainfo_path, check)

    def download(self, metainfo_path: str, target_dir: str = "") -> Started:
        return self._blocking(self._client.download, metainfo_path, target_dir)

    def status(self, ident: str) -> TransferStatus:
        return self._blocking(self._client.status, ident)

    def list(self) -> list[TransferStatus]:
        return self._blocking(self._client.list)

    def peers(self, ident: str) -> PeerList:
        return self._blocking(self._client.peers, ident)

    def pause(self, ident: str) -> Done:
        return self._blocking(self._client.pause, ident)

    def resume(self, ident: str) -> Done:
        return self._blocking(self._client.resume, ident)

    def remove(self, ident: str, delete_data: bool = False) -> Done:
        return self._blocking(self._client.remove, ident, delete_data)

    def netcheck(self) -> dict:
        return self._blocking(self._client.netcheck)

    def download_link(self, link: str, target_dir: str = "") -> Started:
        return self._blocking(self._client.download_link, link, target_dir)

    def link_of(self, ident: str) -> LinkOf:
        return self._blocking(self._client.link_of, ident)

    def export_metainfo(self, ident: str, path: str, overwrite: bool = False) -> Exported:
        return self._blocking(self._client.export_metainfo, ident, path, overwrite)

    def send(self, data_path: str, metainfo_path: str) -> SendOffer:
        return self._blocking(self._client.send, data_path, metainfo_path)

    def send_status(self, info_hash: str) -> SendState:
        return self._blocking(self._client.send_status, info_hash)

    def receive(self, code: str, target_dir: str = "") -> Started:
        return self._blocking(self._client.receive, code, target_dir)

    def close(self) -> None:
        self._reactor.callFromThread(self._client.close)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
