"""The daemon's control socket from a program without a reactor: ``peerit-ctl`` and scripts.

One blocking UNIX socket, the contract of :mod:`peerit.control.contract` encoded by
:mod:`peerit.control.boxes`: a shell command pays neither for Twisted's import (a few tenths
of a second) nor for a reactor thread. The calls, their arguments, answers and errors are
those of the asynchronous :class:`peerit.client.Client` (the unit tests hold both to the same
signatures); :mod:`peerit.client` offers this class as ``BlockingClient``. Every wait is
bounded: connecting by ``CONNECT_TIMEOUT``, each call by its timeout, a change by the caller's.
"""

from __future__ import annotations  # the answers' classes are made when first used

import errno
import json
import os
import socket
import time

from peerit.control import boxes, contract, results
from peerit.control.paths import control_path_of, default_control_path
from peerit.errors import DaemonNotRunning, MalformedMessage, PermissionDenied, PeeritError, \
    TimedOut

CONNECT_TIMEOUT = 5
CALL_TIMEOUT = 60
READ_SIZE = 65536

_ERROR_CLASSES = {code: cls for cls, code in contract.ERRORS}
_CHANGED = contract.BY_NAME["TransferChanged"]


def control_path(explicit: str | None = None) -> str:
    """The control socket: ``explicit``, else $PEERIT_CONTROL, else the daemon's default."""
    spec = explicit or os.environ.get("PEERIT_CONTROL") or default_control_path()
    return control_path_of(spec)


def connect_error(code: int | None, path: str, text: str = "") -> PeeritError:
    """What a user is told when the control socket cannot be reached."""
    if code in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        return PermissionDenied(f"cannot reach the daemon's control socket {path}: "
                                "permission denied (it belongs to another user)")
    return DaemonNotRunning(f"no peer-it daemon is listening on {path} (start one with "
                            "'twistd peerit-daemon', or point --control/PEERIT_CONTROL at it)")


class BlockingClient:
    """The calls of :class:`peerit.client.Client`, blocking, on a plain socket."""

    def __init__(self, path: str | None = None, *, connected: socket.socket | None = None):
        """Connect to the control socket at ``path`` (see :func:`control_path`), or use the
        ``connected`` socket given (the unit tests' end of a socket pair)."""
        self.path = control_path(path)
        self._socket = connected
        if connected is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._socket.settimeout(CONNECT_TIMEOUT)
            try:
                self._socket.connect(self.path)
            except OSError as e:
                self._socket.close()
                raise connect_error(e.errno, self.path, str(e)) from None
        self._decoder = boxes.BoxDecoder()
        self._counter = 0
        self._pending = []  # boxes read while waiting for another
        self._following = None  # the info-hash whose changes are kept
        self._changes = []  # TransferStatus (or None once removed), oldest first

    # -- the connection -----------------------------------------------------------------------
    def _send(self, box: dict) -> None:
        try:
            self._socket.sendall(boxes.encode_box(box))
        except OSError:
            raise self._closed() from None

    def _closed(self) -> PeeritError:
        return DaemonNotRunning(f"the daemon at {self.path} closed the connection")

    def _next_box(self, deadline: float | None) -> dict | None:
        """The next box the daemon sends; None if none came by ``deadline``."""
        while not self._pending:
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                return None
            self._socket.settimeout(timeout)
            try:
                data = self._socket.recv(READ_SIZE)
            except TimeoutError:
                return None
            except OSError:
                raise self._closed() from None
            if not data:
                raise self._closed()
            try:
                self._pending.extend(self._decoder.feed(data))
            except MalformedMessage as e:
                raise PeeritError(f"the daemon at {self.path} sent what is not AMP: "
                                  f"{e}") from None
        return self._pending.pop(0)

    def _command_received(self, box: dict) -> None:
        """A command from the daemon: only ``TransferChanged`` (after ``follow``) is one."""
        if box.get(boxes.COMMAND) != _CHANGED.name.encode():
            if boxes.ASK in box:
                self._send({boxes.ERROR: box[boxes.ASK],
                            boxes.ERROR_CODE: boxes.UNHANDLED_ERROR_CODE,
                            boxes.ERROR_DESCRIPTION: b"not a command a client answers"})
            return
        if boxes.ASK in box:
            self._send({boxes.ANSWER: box[boxes.ASK]})
        try:
            changed = boxes.decode_fields(_CHANGED.arguments, box)
        except MalformedMessage:
            return
        if changed["id"] == self._following:
            transfers = changed["transfers"]
            self._changes.append(
                results.from_answer(results.TransferStatus, transfers[0]) if transfers
                else None)

    def _call(self, name: str, timeout: float = CALL_TIMEOUT, **kwargs) -> dict:
        command = contract.BY_NAME[name]
        self._counter += 1
        tag = b"%x" % self._counter
        self._send({boxes.COMMAND: name.encode(), boxes.ASK: tag,
                    **boxes.encode_fields(command.arguments, kwargs)})
        deadline = time.monotonic() + timeout
        while True:
            box = self._next_box(deadline)
            if box is None:
                raise TimedOut(f"the daemon did not answer {name} within {timeout:.0f}s")
            if boxes.COMMAND in box:
                self._command_received(box)
            elif box.get(boxes.ANSWER) == tag:
                try:
                    return boxes.decode_fields(command.response, box)
                except MalformedMessage as e:
                    raise PeeritError(f"the daemon failed: {e}") from None
            elif box.get(boxes.ERROR) == tag:
                description = box.get(boxes.ERROR_DESCRIPTION, b"").decode("utf-8", "replace")
                cls = _ERROR_CLASSES.get(box.get(boxes.ERROR_CODE))
                if cls is None:
                    raise PeeritError(f"the daemon failed: {description}")
                raise cls(description)

    # -- the calls ----------------------------------------------------------------------------
    def info(self) -> results.DaemonInfo:
        return results.from_answer(results.DaemonInfo, self._call("DaemonInfo"))

    def share(self, data_path: str, metainfo_path: str, check: bool = False) -> results.Shared:
        return results.from_answer(results.Shared, self._call(
            "Share", data_path=os.path.abspath(data_path),
            metainfo_path=os.path.abspath(metainfo_path), check=check))

    def download(self, metainfo_path: str, target_dir: str = "") -> results.Started:
        return results.from_answer(results.Started, self._call(
            "Download", metainfo_path=os.path.abspath(metainfo_path),
            target_dir=os.path.abspath(target_dir) if target_dir else ""))

    def status(self, ident: str) -> results.TransferStatus:
        return results.from_answer(results.TransferStatus, self._call("Status", id=ident))

    def list(self) -> list[results.TransferStatus]:
        out, offset = [], 0
        while True:
            page = self._call("List", offset=offset, limit=contract.MAX_PAGE)
            out.extend(results.from_answer(results.TransferStatus, t)
                       for t in page["transfers"])
            offset += len(page["transfers"])
            if not page["transfers"] or offset >= page["total"]:
                return out

    def peers(self, ident: str) -> results.PeerList:
        return results.from_answer(results.PeerList, self._call("Peers", id=ident))

    def pause(self, ident: str) -> results.Done:
        return results.from_answer(results.Done, self._call("Pause", id=ident))

    def resume(self, ident: str) -> results.Done:
        return results.from_answer(results.Done, self._call("Resume", id=ident))

    def remove(self, ident: str, delete_data: bool = False) -> results.Done:
        return results.from_answer(results.Done, self._call("Remove", id=ident,
                                                            delete_data=delete_data))

    def download_link(self, link: str, target_dir: str = "") -> results.Started:
        return results.from_answer(results.Started, self._call(
            "DownloadLink", link=link,
            target_dir=os.path.abspath(target_dir) if target_dir else ""))

    def link_of(self, ident: str) -> results.LinkOf:
        return results.from_answer(results.LinkOf, self._call("LinkOf", id=ident))

    def export_metainfo(self, ident: str, path: str,
                        overwrite: bool = False) -> results.Exported:
        return results.from_answer(results.Exported, self._call(
            "ExportMetainfo", id=ident, path=os.path.abspath(path), overwrite=overwrite))

    def send(self, data_path: str, metainfo_path: str) -> results.SendOffer:
        # Reaching the rendezvous is bounded by the daemon (15 s): within the call timeout.
        return results.from_answer(results.SendOffer, self._call(
            "Send", data_path=os.path.abspath(data_path),
            metainfo_path=os.path.abspath(metainfo_path)))

    def send_status(self, info_hash: str) -> results.SendState:
        return results.from_answer(results.SendState, self._call("SendStatus", id=info_hash))

    def receive(self, code: str, target_dir: str = "") -> results.Started:
        # The daemon bounds the exchange (rendezvous, the sender's answer); this only
        # needs to outlast it.
        return results.from_answer(results.Started, self._call(
            "Receive", timeout=CALL_TIMEOUT * 2, code=code,
            target_dir=os.path.abspath(target_dir) if target_dir else ""))

    def netcheck(self) -> dict:
        """The NAT report: a JSON object whose keys depend on what could be measured."""
        return json.loads(self._call("NetCheck", timeout=30)["report"])

    def web_login(self) -> str:
        """A one-time sign-in URL for the daemon's web page."""
        return self._call("WebLogin")["url"]

    # -- following a transfer -----------------------------------------------------------------
    def follow(self, ident: str) -> results.TransferStatus:
        """Keep the transfer's changes for :meth:`next_change`; returns its status as of
        when following began."""
        info_hash = self.status(ident).info_hash
        self._following = info_hash
        self._changes.clear()
        self._call("Follow", id=info_hash)
        # Asked again after subscribing: a change in between is not lost.
        return self.status(info_hash)

    def next_change(self, timeout: float | None) -> results.TransferStatus | None:
        """The followed transfer's next status (None once it was removed), waiting at most
        ``timeout`` seconds (None: as long as it takes) before :class:`TimedOut`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._changes:
            box = self._next_box(deadline)
            if box is None:
                raise TimedOut(f"no change within {timeout:.0f}s")
            if boxes.COMMAND in box:
                self._command_received(box)
        return self._changes.pop(0)

    def close(self) -> None:
        self._socket.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
