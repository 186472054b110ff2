"""A small Redis client on Twisted: RESP2 over TCP, TLS or a UNIX socket, pipelined, every
answer bounded in time and size.

Why not txredisapi (installed, Twisted-native): a command issued while its pool is
reconnecting waits for a connection with no bound (``getConnection`` loops on a queue), so a
tracker whose Redis is down would pile up writes without limit; its replies are decoded as
text unless told otherwise, while every key and value here is a binary id. Why not redis-py's
asyncio client: it needs Twisted's asyncio reactor under the whole tracker, and the epoll
reactor is what the tracker's hot path was measured on. The store needs six commands and
pipelining; RESP is a page of code.

:func:`connect` returns a :class:`RedisConnection` that has authenticated and selected its
database. A command on a lost connection fails at once with :class:`RedisUnavailable`;
reconnecting is the caller's loop (``peerit.tracker.redis_store``), which knows what to
resynchronise afterwards.
"""

import os
import socket
import ssl
from collections import deque
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory, Protocol

MAX_REPLY_BYTES = 64 * 1024 * 1024   # one reply (a page of SCAN, a batch of XREAD) fits well
DEFAULT_PORT = 6379


class RedisError(Exception):
    """Redis answered with an error reply (``-ERR ...``)."""


class RedisUnavailable(Exception):
    """No connection, the connection was lost, or Redis did not answer in time."""


@dataclass(frozen=True)
class RedisURL:
    """Where Redis is (from :func:`parse_redis_url`)."""
    scheme: str                 # redis, rediss, unix
    host: str = ""
    port: int = DEFAULT_PORT
    path: str = ""              # unix
    db: int = 0
    ca: str | None = None       # rediss: a directory of PEM CA certificates
    display: str = ""           # for logs; never holds a password (none is accepted)

    def endpoint(self, connect_timeout: float) -> str:
        """The Twisted client endpoint string."""
        timeout = f":timeout={connect_timeout:g}"
        if self.scheme == "unix":
            return f"unix:path={_escape(self.path)}{timeout}"
        kind = "tcp" if self.scheme == "redis" else "tls"
        out = f"{kind}:host={_escape(self.host)}:port={self.port}{timeout}"
        if self.ca:
            out += f":trustRoots={_escape(self.ca)}"
        return out


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def parse_redis_url(text: str) -> RedisURL:
    """``redis://HOST[:PORT][/DB]``, ``rediss://HOST[:PORT][/DB][?ca=DIR]`` (TLS, the
    server's certificate checked against the PEM files in ``ca`` or the system's roots) or
    ``unix://PATH[?db=N]``. Raises ValueError with a message for the user.

    A password in the URL is refused: command lines are visible to every local user
    (``/proc/PID/cmdline``); it comes from a file instead.
    """
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"bad Redis URL {text!r}: expected redis://HOST:PORT/DB, "
                         f"rediss://HOST:PORT/DB or unix://PATH")
    if parts.password is not None or parts.username is not None:
        raise ValueError("no user or password in the Redis URL: give the password with "
                         "--redis-password-file")
    query = parse_qs(parts.query)
    if scheme == "unix":
        path = unquote(parts.netloc + parts.path)
        if not path.startswith("/"):
            raise ValueError(f"bad Redis URL {text!r}: unix://ABSOLUTE-PATH")
        db = query.get("db", ["0"])[0]
        if not db.isdigit():
            raise ValueError(f"bad Redis URL {text!r}: the database is a number")
        return RedisURL("unix", path=path, db=int(db), display=f"unix://{path}")
    host = parts.hostname
    if not host:
        raise ValueError(f"bad Redis URL {text!r}: no host")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"bad Redis URL {text!r}: bad port") from None
    db = parts.path.lstrip("/") or "0"
    if not db.isdigit():
        raise ValueError(f"bad Redis URL {text!r}: the database is a number")
    ca = query.get("ca", [None])[0] if scheme == "rediss" else None
    return RedisURL(scheme, host=host, port=port, db=int(db), ca=ca,
                    display=f"{scheme}://{parts.netloc}/{int(db)}")


def check_reachable(url: RedisURL, password: bytes | None, timeout: float = 5.0) -> None:
    """Before the reactor runs: connect, authenticate, select and PING, blocking at most
    ``timeout`` per step. Raises :class:`RedisUnavailable` or :class:`RedisError` with a
    message for the user (a tracker told to use Redis must not start without it)."""
    try:
        if url.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(url.path)
        else:
            sock = socket.create_connection((url.host, url.port), timeout)
            if url.scheme == "rediss":
                context = ssl.create_default_context()
                if url.ca:
                    # Twisted's trustRoots= takes a directory of PEM files: the same here.
                    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    for name in sorted(os.listdir(url.ca)):
                        context.load_verify_locations(cafile=os.path.join(url.ca, name))
                sock = context.wrap_socket(sock, server_hostname=url.host)
    except (OSError, ssl.SSLError) as e:
        raise RedisUnavailable(f"cannot reach Redis at {url.display}: {e}") from None
    with sock:
        commands = ([("AUTH", password)] if password is not None else []) + \
            [("SELECT", url.db), ("PING",)]
        parser = ReplyParser()
        try:
            sock.sendall(b"".join(encode_command(c) for c in commands))
            replies = []
            while len(replies) < len(commands):
                data = sock.recv(65536)
                if not data:
                    raise RedisUnavailable(f"Redis at {url.display} closed the connection")
                replies += parser.feed(data)
        except (OSError, ValueError) as e:
            raise RedisUnavailable(f"Redis at {url.display} did not answer: {e}") from None
        for command, reply in zip(commands, replies):
            if isinstance(reply, RedisError):
                raise RedisError(f"Redis at {url.display} refused {command[0]}: {reply}")


class _Incomplete(Exception):
    pass


def encode_command(args) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, (int, float)):
            arg = repr(arg).encode()
        out.append(b"$%d\r\n" % len(arg))
        out.append(arg)
        out.append(b"\r\n")
    return b"".join(out)


class ReplyParser:
    """RESP2 replies from a byte stream. Error replies come out as :class:`RedisError`
    instances (values, not raised), so one bad command fails only its own Deferred."""

    def __init__(self, max_bytes: int = MAX_REPLY_BYTES):
        self._buffer = b""
        self._max = max_bytes

    def feed(self, data: bytes) -> list:
        self._buffer += data
        if len(self._buffer) > self._max:
            raise ValueError(f"Redis reply over {self._max} bytes")
        replies = []
        position = 0
        buffer = self._buffer
        while position < len(buffer):
            try:
                reply, position = self._parse(buffer, position)
            except _Incomplete:
                break
            replies.append(reply)
        self._buffer = buffer[position:]
        return replies

    def _parse(self, buffer: bytes, position: int):
        end = buffer.find(b"\r\n", position)
        if end < 0:
            raise _Incomplete()
        kind = buffer[position:position + 1]
        line = buffer[position + 1:end]
        after = end + 2
        if kind == b"$":
            length = int(line)
            if length < 0:
                return None, after
            if length > self._max:
                raise ValueError(f"Redis bulk reply of {length} bytes")
            if len(buffer) < after + length + 2:
                raise _Incomplete()
            return buffer[after:after + length], after + length + 2
        if kind == b":":
            return int(line), after
        if kind == b"*":
            count = int(line)
            if count < 0:
                return None, after
            items = []
            for _ in range(count):
                item, after = self._parse(buffer, after)
                items.append(item)
            return items, after
        if kind == b"+":
            return line, after
        if kind == b"-":
            return RedisError(line.decode("utf8", "replace")), after
        raise ValueError(f"not a Redis reply: {kind!r}")


class RedisConnection(Protocol):
    """One connection; :meth:`command` pipelines (written at once, answered in order)."""

    def __init__(self, clock, reply_timeout: float = 5.0):
        self.clock = clock
        self.reply_timeout = reply_timeout
        self._parser = ReplyParser()
        self._pending: deque = deque()   # (Deferred, sent at)
        self._timer = None
        self.connected_now = False
        self.lost = defer.Deferred()     # fires (with None) when the connection ends

    def connectionMade(self):
        self.connected_now = True

    def command(self, *args) -> defer.Deferred:
        """Send one command; its Deferred fires with the reply or fails with
        :class:`RedisError` / :class:`RedisUnavailable`. A blocking command (``XREAD
        BLOCK``) must block for less than ``reply_timeout``."""
        if not self.connected_now:
            return defer.fail(RedisUnavailable("not connected to Redis"))
        d = defer.Deferred()
        self._pending.append((d, self.clock.seconds()))
        self.transport.write(encode_command(args))
        if self._timer is None:
            self._timer = self.clock.callLater(self.reply_timeout, self._check_age)
        return d

    def _check_age(self):
        self._timer = None
        now = self.clock.seconds()
        if not self._pending:
            return
        sent = self._pending[0][1]
        if now - sent >= self.reply_timeout:
            # Redis is stuck or the path to it is: every later answer would be late too, so
            # drop the connection and let the caller reconnect.
            self.transport.abortConnection()
            return
        self._timer = self.clock.callLater(self.reply_timeout - (now - sent), self._check_age)

    def dataReceived(self, data):
        try:
            replies = self._parser.feed(data)
        except ValueError:
            self.transport.abortConnection()
            return
        for reply in replies:
            if not self._pending:
                self.transport.abortConnection()
                return
            d, _ = self._pending.popleft()
            if isinstance(reply, RedisError):
                d.errback(reply)
            else:
                d.callback(reply)

    def connectionLost(self, reason):
        self.connected_now = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        pending, self._pending = self._pending, deque()
        for d, _ in pending:
            d.errback(RedisUnavailable("connection to Redis lost"))
        self.lost.callback(None)

    def close(self):
        if self.transport is not None:
            self.transport.loseConnection()


async def connect(reactor, url: RedisURL, password: bytes | None = None,
                  reply_timeout: float = 5.0, connect_timeout: float = 5.0) -> RedisConnection:
    """A connection that has authenticated and selected ``url.db``.

    Raises :class:`RedisUnavailable` when Redis cannot be reached, :class:`RedisError` when
    it refuses the password or the database.
    """
    endpoint = clientFromString(reactor, url.endpoint(connect_timeout))
    factory = Factory.forProtocol(lambda: RedisConnection(reactor, reply_timeout))
    factory.noisy = False   # one log line per reconnection attempt says nothing useful
    try:
        connection = await endpoint.connect(factory)
    except Exception as e:
        raise RedisUnavailable(f"cannot connect to Redis at {url.display}: {e}") from None
    try:
        if password is not None:
            await connection.command("AUTH", password)
        if url.db:
            await connection.command("SELECT", url.db)
        else:
            await connection.command("PING")
    except BaseException:
        connection.close()
        raise
    return connection
