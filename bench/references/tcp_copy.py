"""The limit for a direct link: a plain TCP copy, ``os.sendfile`` into ``recv_into`` + write.

Two processes on 127.0.0.1, as peer-it's seeder and downloader are: the receiver listens and
writes what it gets to a file; the sender connects and ``sendfile``s the source. Timed from
the sender's connect to the receiver's last write (CLOCK_MONOTONIC is one clock for both).
No encryption, no hashing, no protocol: what the kernel and one copy per side cost.

    python tcp_copy.py run --file SRC --workdir DIR --json OUT [--timeout 120]
"""

import argparse
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_run_parser, Children, install_sigterm_exit, wait_for_file, write_result  # noqa: E402

RECV_BUFFER = 1 << 20


def receive(port_file: Path, out: Path, size: int, times_file: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(60)
        port_file.write_text(str(listener.getsockname()[1]))
        conn, _ = listener.accept()
    buf = bytearray(RECV_BUFFER)
    view = memoryview(buf)
    got = 0
    conn.settimeout(60)
    with conn, open(out, "wb", buffering=0) as f:
        while got < size:
            n = conn.recv_into(buf)
            if not n:
                raise SystemExit(f"sender closed after {got} of {size} bytes")
            f.write(view[:n])
            got += n
    times_file.write_text(str(time.monotonic()))


def send(port: int, src: Path, times_file: Path) -> None:
    size = src.stat().st_size
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock, \
            open(src, "rb") as f:
        sock.settimeout(None)  # blocking: sendfile on a socket with a timeout gives EAGAIN
        offset = 0
        while offset < size:
            sent = os.sendfile(sock.fileno(), f.fileno(), offset, size - offset)
            if not sent:
                raise SystemExit("sendfile sent nothing")
            offset += sent
    times_file.write_text(str(start))


def run(src: Path, workdir: Path, timeout: float) -> dict:
    workdir = workdir / "tcp"  # this tool's files and logs apart from the others'
    workdir.mkdir(exist_ok=True)
    size = src.stat().st_size
    me = Path(__file__).resolve()
    for stale in ("tcp.port", "tcp.recv-time", "tcp.send-time"):
        (workdir / stale).unlink(missing_ok=True)
    with Children(workdir) as children:
        receiver = children.start("tcp-receiver", [
            sys.executable, me, "receive", "--port-file", workdir / "tcp.port",
            "--out", workdir / "tcp.out", "--size", size,
            "--times", workdir / "tcp.recv-time"])
        port = int(wait_for_file(workdir / "tcp.port", 30, receiver))
        sender = children.start("tcp-sender", [
            sys.executable, me, "send", "--port", port, "--file", src,
            "--times", workdir / "tcp.send-time"])
        for child in (sender, receiver):
            if child.wait(timeout) != 0:
                raise RuntimeError(f"{child.name} failed:\n{child.output_tail()}")
    seconds = float((workdir / "tcp.recv-time").read_text()) - \
        float((workdir / "tcp.send-time").read_text())
    (workdir / "tcp.out").unlink()
    return {"seconds": seconds, "bytes": size,
            "rss": {"sender": sender.peak_rss_mib, "receiver": receiver.peak_rss_mib},
            "cpu": {"sender": sender.cpu_seconds, "receiver": receiver.cpu_seconds}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    add_run_parser(sub)
    p = sub.add_parser("receive")
    p.add_argument("--port-file", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--times", type=Path, required=True)
    p = sub.add_parser("send")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--file", type=Path, required=True)
    p.add_argument("--times", type=Path, required=True)
    args = parser.parse_args()
    install_sigterm_exit()
    if args.mode == "receive":
        receive(args.port_file, args.out, args.size, args.times)
    elif args.mode == "send":
        send(args.port, args.file, args.times)
    else:
        write_result(args.json, run(args.file, args.workdir, args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
