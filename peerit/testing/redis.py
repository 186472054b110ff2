"""A throwaway ``redis-server`` for tests: loopback, a free port, no persistence, stopped by
PID, and a blocking command for checking what a tracker wrote."""

import shutil
import socket
import time
from pathlib import Path

from peerit.testing.processes import Process
from peerit.tracker.resp import ReplyParser, RedisError, encode_command


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``redis-server`` on 127.0.0.1:``port`` (a free one by default), or only on a UNIX
    socket ``directory/redis.sock`` with ``unix=True`` (reachable from any network
    namespace), logging to ``directory/redis.log``. :meth:`stop` and :meth:`start` again keep
    the address: a restart that lost everything, as a Redis without persistence does."""

    def __init__(self, directory: Path, port: int | None = None, password: str | None = None,
                 unix: bool = False):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket_path = self.directory / "redis.sock" if unix else None
        self.port = 0 if unix else (port or free_port())
        self.password = password
        self.process: Process | None = None

    @property
    def url(self) -> str:
        if self.socket_path is not None:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "RedisServer":
        argv = [redis_server_path(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        if self.socket_path is not None:
            argv += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        if self.password:
            argv += ["--requirepass", self.password]
        self.process = Process(argv, self.directory / "redis.log")
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.command("PING")
                return self
            except (OSError, RedisError):
                if time.monotonic() > deadline or not self.process.alive():
                    raise RuntimeError(f"redis-server did not start:\n{self.process.log()}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def command(self, *args, timeout: float = 5.0):
        """One command, blocking; returns the reply (raises RedisError for an error reply)."""
        if self.socket_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(str(self.socket_path))
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout)
        with sock:
            commands = ([("AUTH", self.password)] if self.password else []) + [args]
            sock.sendall(b"".join(encode_command(c) for c in commands))
            parser, replies = ReplyParser(), []
            while len(replies) < len(commands):
                data = sock.recv(1 << 20)
                if not data:
                    raise OSError("redis closed the connection")
                replies += parser.feed(data)
        if isinstance(replies[-1], RedisError):
            raise replies[-1]
        return replies[-1]
