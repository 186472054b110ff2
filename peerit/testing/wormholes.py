"""An in-memory magic-wormhole mailbox and clients: the code exchange's unit tests without
sockets. Same surface as ``wormhole.create``'s Deferred wormhole (welcome, allocate/set code,
send/get message, close) and the same outcomes: matching codes deliver the messages, different
words on one nameplate fail both sides with WrongPasswordError, a released nameplate leaves a
late receiver waiting alone, a third side is refused."""

import itertools

from twisted.internet import defer
from wormhole.errors import ServerConnectionError, WormholeClosed, WrongPasswordError

WORDS = ("guitarist", "revenge")


class FakeMailbox:
    def __init__(self):
        self.reachable = True
        self.nameplates: dict[str, list] = {}
        self._ids = itertools.count(4)

    def create(self, appid, relay_url, reactor):
        return FakeWormhole(self)

    def allocate(self) -> str:
        while True:
            nameplate = str(next(self._ids))
            if nameplate not in self.nameplates:
                return nameplate

    def join(self, side, nameplate: str) -> None:
        sides = self.nameplates.setdefault(nameplate, [])
        if len(sides) >= 2:
            side._fail(ServerConnectionError("crowded", None))
            return
        sides.append(side)
        if len(sides) == 2:
            a, b = sides
            a._paired(b)
            b._paired(a)

    def leave(self, side) -> None:
        for nameplate, sides in list(self.nameplates.items()):
            if side in sides:
                sides.remove(side)
                if not sides:
                    del self.nameplates[nameplate]


class FakeWormhole:
    def __init__(self, mailbox: FakeMailbox):
        self.mailbox = mailbox
        self.code = None
        self._peer = None
        self._outbox = []
        self._inbox = []
        self._waiting = []
        self._error = None
        self._closed = False
        self._code_waiters = []

    def get_welcome(self):
        if self.mailbox.reachable:
            return defer.succeed({})
        return defer.Deferred()  # never answers: the caller's timeout decides

    def allocate_code(self, code_length=2):
        nameplate = self.mailbox.allocate()
        self.code = "-".join((nameplate,) + WORDS[:code_length])
        self.mailbox.join(self, nameplate)
        for d in self._code_waiters:
            d.callback(self.code)

    def set_code(self, code):
        self.code = code
        self.mailbox.join(self, code.split("-")[0])

    def get_code(self):
        if self.code is not None:
            return defer.succeed(self.code)
        d = defer.Deferred()
        self._code_waiters.append(d)
        return d

    def send_message(self, plaintext: bytes):
        self._outbox.append(plaintext)
        self._flush()

    def get_message(self):
        if self._inbox:
            return defer.succeed(self._inbox.pop(0))
        if self._error is not None:
            return defer.fail(self._error)
        d = defer.Deferred()
        self._waiting.append(d)
        return d

    def close(self):
        if not self._closed:
            self._closed = True
            self.mailbox.leave(self)
            self._fail(WormholeClosed("closed"), only_if_unset=True)
        return defer.fail(self._error) if isinstance(self._error, WrongPasswordError) \
            else defer.succeed(None)

    # -- the mailbox's side ---------------------------------------------------------------
    def _paired(self, peer) -> None:
        self._peer = peer
        if peer.code != self.code:
            self._fail(WrongPasswordError())
        else:
            self._flush()

    def _flush(self) -> None:
        if self._peer is None or self._error is not None or self._peer.code != self.code:
            return
        while self._outbox:
            self._peer._deliver(self._outbox.pop(0))

    def _deliver(self, message: bytes) -> None:
        if self._waiting:
            self._waiting.pop(0).callback(message)
        else:
            self._inbox.append(message)

    def _fail(self, error, only_if_unset=False) -> None:
        if only_if_unset and self._error is not None:
            return
        self._error = error
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(error)
