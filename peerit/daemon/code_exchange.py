"""Short codes: a share's link and both peer ids passed through a PAKE (magic-wormhole).

The sender's daemon asks the rendezvous (a magic-wormhole mailbox server, which a tracker
operator runs with ``twistd peerit-tracker --mailbox``) for a code such as ``7-guitarist-
revenge``; the person reads it to the receiver, whose daemon gives the same code. SPAKE2 turns
the code into a shared key the mailbox never learns, so the mailbox can neither read the link
nor sit in the middle: it gets one guess, and a wrong guess burns the code for both sides.

Through that channel, three messages: the sender passes the link (with its own peer id); the
receiver's daemon prepares the download (a target it cannot write is refused now, not after
the exchange) and answers with its peer id, or with why it refused; the sender pins that
receiver (its daemon now admits only that peer to the share: a private send) and says
``ready``, and only then does the receiver start, taking data only from that sender (a dial
before the pin would be refused, and retried seconds later).

Every wait is bounded: reaching the mailbox (``connect_timeout``), a sender waiting for its
receiver (the code's lifetime, after which the code is released and no longer works) and a
receiver waiting for a sender to answer its code (``receive_wait``: a code that names no
waiting sender, because it expired or never existed, fails after it).
"""

import contextlib
import json
import os

from twisted.internet import defer
from twisted.logger import Logger

from peerit import links
from peerit.short_codes import check_code
from peerit.errors import (
    BadLink, CodeExpired, PeeritError, ReceiverRefused, RendezvousUnreachable, WrongCode)

log = Logger()

APPID = "peer-it.net/send/v1"  # wormhole's namespace: our codes never meet other apps'
DEFAULT_CODE_LIFETIME = 600.0
CONNECT_TIMEOUT = 15.0
RECEIVE_WAIT = 30.0
MAX_MESSAGE = 16 * 1024  # a link and a peer id: far less; checked before decoding
AUTOBAHN_NVX = "AUTOBAHN_USE_NVX"  # autobahn's switch for its native (cffi) helpers


class CodeExchange:
    """One daemon's side of code exchanges. ``create`` makes a wormhole (magic-wormhole's
    ``wormhole.create`` or an in-memory one in tests); ``clock`` bounds every wait."""

    def __init__(self, reactor, mailbox_url: str, clock=None, create=None,
                 code_lifetime: float = DEFAULT_CODE_LIFETIME,
                 connect_timeout: float = CONNECT_TIMEOUT, receive_wait: float = RECEIVE_WAIT):
        self.reactor = reactor
        self.clock = clock or reactor
        self.mailbox_url = mailbox_url
        self._create = create
        self.code_lifetime = code_lifetime
        self.connect_timeout = connect_timeout
        self.receive_wait = receive_wait

    def _open(self):
        create = self._create or _magic_wormhole().create
        return create(APPID, self.mailbox_url, self.reactor)

    async def _connected(self, w) -> None:
        async with self._closed_on_error(w, "", RendezvousUnreachable(
                f"the rendezvous {self.mailbox_url} did not answer within "
                f"{self.connect_timeout:g}s")):
            await self._within(w.get_welcome(), self.connect_timeout)

    # -- sender ---------------------------------------------------------------------------
    async def offer(self, link: links.Link, my_peer_id: bytes, admit=None):
        """A code for ``link``; returns ``(code, receiver)`` where ``receiver`` is a Deferred
        firing with the receiver's peer id (or failing with WrongCode, CodeExpired or
        ReceiverRefused). ``admit(peer_id)`` pins the receiver before it is told to start."""
        w = self._open()
        await self._connected(w)
        w.allocate_code(2)
        async with self._closed_on_error(w, "", RendezvousUnreachable(
                f"the rendezvous {self.mailbox_url} gave no code within "
                f"{self.connect_timeout:g}s")):
            code = await self._within(w.get_code(), self.connect_timeout)
        sent = links.Link(link.info_hash, link.trackers, link.name, link.size, my_peer_id)
        w.send_message(json.dumps({"link": str(sent), "peer": my_peer_id.hex()}).encode())
        receiver = defer.ensureDeferred(self._await_receiver(w, code, admit))
        return code, receiver

    async def _await_receiver(self, w, code: str, admit) -> bytes:
        # Closing on expiry releases the nameplate: the code no longer works.
        async with self._closed_on_error(w, code, CodeExpired(
                f"code {code} expired: nobody used it within {self.code_lifetime:g}s")):
            message = await self._within(w.get_message(), self.code_lifetime)
            refusal = _decode(message).get("refused")
            if refusal is not None:
                raise ReceiverRefused(f"the receiver refused: {str(refusal)[:200]}")
            peer = _peer_of(message)
            if admit is not None:
                admit(peer)
        w.send_message(json.dumps({"ready": True}).encode())
        await self._close(w)
        log.info("code {code}: receiver {peer} pinned", code=code, peer=peer.hex()[:16])
        return peer

    # -- receiver -------------------------------------------------------------------------
    async def accept(self, code: str, my_peer_id: bytes, prepare=None):
        """The sender's link (its ``peer_id`` the sender's, pinned) for a code, and what
        ``prepare(link)`` returned: it readies the download and raises a PeeritError to
        refuse it (the sender is told why). Returns once the sender has pinned us."""
        code = check_code(code)
        w = self._open()
        await self._connected(w)
        w.set_code(code)
        async with self._closed_on_error(w, code, CodeExpired(
                f"no sender answered code {code} within {self.receive_wait:g}s "
                f"(it expired, was used, or was never given)")):
            message = await self._within(w.get_message(), self.receive_wait)
            sender = _peer_of(message)
            link = _link_of(message)
        if link.peer_id != sender:
            await self._close(w)
            raise PeeritError(f"code {code}: the sender's link names another peer")
        prepared = None
        try:
            if prepare is not None:
                prepared = await defer.maybeDeferred(prepare, link)
        except PeeritError as e:
            w.send_message(json.dumps({"refused": str(e)}).encode())
            await self._close(w)
            raise
        w.send_message(json.dumps({"peer": my_peer_id.hex()}).encode())
        async with self._closed_on_error(w, code, CodeExpired(
                f"code {code}: the sender did not confirm within {self.receive_wait:g}s")):
            ready = _decode(await self._within(w.get_message(), self.receive_wait))
        if ready.get("ready") is not True:
            await self._close(w)
            raise PeeritError(f"code {code}: the sender sent a malformed confirmation")
        # The download starts now, not after the mailbox acknowledged our leaving: the
        # close (the nameplate's and mailbox's release, one more round trip) finishes
        # meanwhile.
        defer.ensureDeferred(self._close(w))
        return link, prepared

    # -- plumbing -------------------------------------------------------------------------
    def _within(self, d: defer.Deferred, seconds: float) -> defer.Deferred:
        return d.addTimeout(seconds, self.clock)

    @contextlib.asynccontextmanager
    async def _closed_on_error(self, w, code: str, timed_out: PeeritError):
        """Run a step of the exchange; on any failure close the wormhole and raise one
        PeeritError: ``timed_out`` when a bounded wait ran out, else the error translated."""
        try:
            yield
        except defer.TimeoutError:
            await self._close(w)
            raise timed_out from None
        except Exception as e:
            await self._close(w)
            raise self._translate(e, code) from None

    @staticmethod
    async def _close(w) -> None:
        try:
            await w.close()
        except Exception:
            pass  # closing after an error reports that error again

    def _translate(self, error: Exception, code: str) -> PeeritError:
        if isinstance(error, PeeritError):
            return error
        wormhole_errors = _magic_wormhole().errors
        if isinstance(error, wormhole_errors.WrongPasswordError):
            return WrongCode(f"wrong code{' ' + code if code else ''}: the other side typed "
                             f"another one; the code is burnt, ask for a new one")
        if isinstance(error, (wormhole_errors.ServerConnectionError, wormhole_errors.ServerError,
                              wormhole_errors.WelcomeError, ConnectionError)):
            return RendezvousUnreachable(
                f"cannot reach the rendezvous {self.mailbox_url}: {_one_line(error)}")
        if isinstance(error, wormhole_errors.WormholeClosed):
            return CodeExpired(f"code {code} was closed before the exchange finished")
        return PeeritError(f"code exchange failed: {_one_line(error)}")


def _magic_wormhole():
    """magic-wormhole, imported when a daemon first exchanges a code: with what it pulls in
    (autobahn, PyNaCl, SPAKE2, ...) it adds ~13 MiB to a daemon's memory, and most daemons
    never exchange one.

    That import is on the receiver's path from the command to its first byte (~0.1 s), so
    autobahn is told not to use its native UTF-8 validator and XOR masker (unless the
    operator said otherwise): loading them declares their C interface to cffi, whose C
    parser alone takes ~18 ms, for a dozen small JSON messages per code."""
    os.environ.setdefault(AUTOBAHN_NVX, "0")
    import wormhole
    import wormhole.errors
    return wormhole


def _decode(message) -> dict:
    if not isinstance(message, bytes) or len(message) > MAX_MESSAGE:
        raise PeeritError("the other side sent an oversized message")
    try:
        value = json.loads(message.decode())
    except (UnicodeDecodeError, ValueError):
        raise PeeritError("the other side sent a malformed message") from None
    if not isinstance(value, dict):
        raise PeeritError("the other side sent a malformed message")
    return value


def _peer_of(message) -> bytes:
    peer = _decode(message).get("peer")
    if not isinstance(peer, str) or len(peer) != 64:
        raise PeeritError("the other side sent no valid peer id")
    try:
        return bytes.fromhex(peer)
    except ValueError:
        raise PeeritError("the other side sent no valid peer id") from None


def _link_of(message) -> links.Link:
    text = _decode(message).get("link")
    if not isinstance(text, str):
        raise PeeritError("the sender sent no link")
    try:
        return links.parse(text)
    except BadLink as e:
        raise PeeritError(f"the sender sent a bad link: {e}") from None


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__
