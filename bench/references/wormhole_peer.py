"""The magic-wormhole reference: ``wormhole send`` -> ``wormhole receive`` on this machine.

A local mailbox server (``twist wormhole-mailbox``) and transit relay (``twist transitrelay``)
on 127.0.0.1, and the two CLIs in their own processes with a fixed code. Direct transfer:
each side's direct hints are limited to 127.0.0.1 (wormhole would otherwise advertise this
host's other addresses), and its transit logic waits 2 s before trying the relay, so the
direct link wins; the receiver's log says which path was used and the result records it.

Timed end to end, as a user sees it: from starting both commands until both have exited
(the file written and its hash acknowledged), CLI start-up included. A directory is sent as
wormhole sends one: zipped by the sender, unpacked by the receiver.

    python wormhole_peer.py run --file SRC --workdir DIR --json OUT
    python wormhole_peer.py cli [wormhole arguments]   (the CLI, hints on loopback only)
"""

import argparse
import re
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (add_run_parser, Children, free_port, install_sigterm_exit,  # noqa: E402
                    remove_download, size_of, wait_for_port, write_result)

CODE = "7-peerit-bench"


def cli(args: list[str]) -> None:
    install_sigterm_exit()
    from wormhole import ipaddrs
    from wormhole.cli import cli as wormhole_cli
    ipaddrs.find_addresses = lambda: ["127.0.0.1"]  # loopback only: see the docstring
    wormhole_cli.wormhole.main(args=args, prog_name="wormhole")


def run(src: Path, workdir: Path, timeout: float) -> dict:
    workdir = workdir / "wormhole"  # this tool's files and logs apart from the others'
    workdir.mkdir(exist_ok=True)
    me = Path(__file__).resolve()
    twist = Path(sys.executable).parent / "twist"
    out = workdir / "wormhole.out"
    if out.is_dir():
        shutil.rmtree(out)
    out.unlink(missing_ok=True)
    with Children(workdir) as children:
        mailbox_port, relay_port = free_port(), free_port()
        mailbox = children.start("mailbox", [
            twist, "wormhole-mailbox", f"--port=tcp:{mailbox_port}:interface=127.0.0.1",
            f"--channel-db={workdir / 'mailbox.sqlite'}"], cwd=str(workdir))
        # One after the other, so that a server that fails to start is the one named.
        wait_for_port(mailbox_port, 30, mailbox)
        relay = children.start("relay", [
            twist, "transitrelay", f"--port=tcp:{relay_port}:interface=127.0.0.1"],
            cwd=str(workdir))
        wait_for_port(relay_port, 30, relay)
        common = ["--relay-url", f"ws://127.0.0.1:{mailbox_port}/v1",
                  "--transit-helper", f"tcp:127.0.0.1:{relay_port}"]
        start = time.monotonic()
        sender = children.start("send", [
            sys.executable, me, "cli", *common, "send", "--hide-progress", "--code", CODE,
            src], cwd=str(workdir))
        receiver = children.start("receive", [
            sys.executable, me, "cli", *common, "receive", "--hide-progress",
            "--accept-file", "-o", out, CODE], cwd=str(workdir))
        for child in (receiver, sender):
            if child.wait(timeout - (time.monotonic() - start)) != 0:
                raise RuntimeError(f"{child.name} failed:\n{child.output_tail()}")
        seconds = time.monotonic() - start
        log = receiver.output_tail(20000)
    size = size_of(out)
    remove_download(out)
    if size != size_of(src):
        raise RuntimeError(f"received {size} bytes of {size_of(src)}")
    path = re.search(r"Receiving \(([^)]*)\)", log)
    everyone = [sender, receiver, mailbox, relay]
    return {"seconds": seconds, "bytes": size,
            "path": path.group(1) if path else "unknown",
            "rss": {c.name: c.peak_rss_mib for c in everyone},
            "cpu": {c.name: c.cpu_seconds for c in everyone}}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "cli":
        cli(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    add_run_parser(sub)
    args = parser.parse_args()
    install_sigterm_exit()
    write_result(args.json, run(args.file, args.workdir, args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
