"""Short codes and links against magic-wormhole, over loopback with the real programs.

    bench/.venv/bin/python bench/bench_codes.py --sizes 10Mi,512Mi --runs 3
    bench/.venv/bin/python bench/bench_codes.py --sizes 10Mi,64Mi --runs 1      (a quick look)

``bench/run`` runs the same measurements as its rows ``code-small``, ``code`` and
``first-piece``, one sample per process (``--sample``).

Two measurements, side by side in one run:

1. **Code to verified file.** peer-it: a tracker with its rendezvous (``--mailbox``), two
   daemons; ``peerit-ctl send FILE`` prints its code, then ``peerit-ctl receive CODE`` is
   timed from its start to its exit (it exits once every piece is verified on disk).
   magic-wormhole: a local mailbox server and transit relay, ``wormhole send --code`` waiting,
   then ``wormhole receive`` timed the same way (direct loopback path, as in
   ``references/wormhole_peer.py``). Both files are hashed afterwards, outside the timing.
   Targets (docs/links.md): at most 1.0x wormhole's time at 10 MiB; at least 1.5x its speed
   at 512 MiB.
2. **First verified piece.** One seeder, one downloader: the time from asking the daemon to
   download (``Download`` with a .p2p, ``DownloadLink`` with a link) to its status showing a
   verified piece, polled every 10 ms over the control socket; the link adds the metadata
   exchange.

Every process is started here and ended by PID; every wait has a deadline.
"""

import argparse
import hashlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "references"))
sys.path.insert(0, str(HERE.parent))

from common import (Child, free_port, install_sigterm_exit, make_file,  # noqa: E402
                    package_versions, wait_for_port, write_result)
from peerit.client import BlockingClient  # noqa: E402
from peerit.units import parse_size  # noqa: E402
from peerit.testing.localswarm import LocalSwarm  # noqa: E402
from peerit.testing.processes import Process, ctl_argv  # noqa: E402

WORMHOLE_CODE = "7-peerit-bench"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def wait_for_text(process: Process, pattern: str, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, process.log(), re.M)
        if found:
            return found
        if not process.alive():
            raise RuntimeError(f"exited before {pattern!r}:\n{process.log()[-2000:]}")
        time.sleep(0.02)
    raise TimeoutError(f"no {pattern!r} in {timeout}s")


def peerit_code(src: Path, work: Path, timeout: float) -> float:
    with LocalSwarm(work / "peerit") as swarm:
        swarm.start_tracker("--mailbox", "tcp:0:interface=127.0.0.1")
        mailbox = (swarm.workdir / "tracker" / "mailbox.url").read_text().strip()
        for name in ("alice", "bob"):
            swarm.start_daemon(name, "--mailbox", mailbox)
        sender = Process(ctl_argv("send", str(src), "--control", swarm.daemons["alice"].control),
                         swarm.workdir / "send.log")
        try:
            code = wait_for_text(sender, r"^code (\S+)$", timeout).group(1)
            start = time.monotonic()
            result = subprocess.run(
                ctl_argv("receive", code, "--to", str(work / "bob"), "--control",
                         swarm.daemons["bob"].control),
                capture_output=True, text=True, timeout=timeout)
            seconds = time.monotonic() - start
            if result.returncode != 0:
                raise RuntimeError(f"peerit-ctl receive failed: {result.stderr[-2000:]}")
            sender.popen.wait(timeout)
        finally:
            sender.stop()
    received = work / "bob" / src.name
    if sha256_of(received) != sha256_of(src):
        raise RuntimeError("peer-it: received file differs")
    received.unlink()
    return seconds


def wormhole_code(src: Path, work: Path, timeout: float) -> float:
    work = work / "wormhole"
    work.mkdir()
    twist = Path(sys.executable).parent / "twist"
    reference = HERE / "references" / "wormhole_peer.py"
    out = work / "received.bin"
    children = []
    try:
        mailbox_port, relay_port = free_port(), free_port()
        mailbox = Child("mailbox", [twist, "wormhole-mailbox",
                                    f"--port=tcp:{mailbox_port}:interface=127.0.0.1",
                                    f"--channel-db={work / 'mailbox.sqlite'}"], work)
        children.append(mailbox)
        wait_for_port(mailbox_port, 30, mailbox)
        relay = Child("relay", [twist, "transitrelay",
                                f"--port=tcp:{relay_port}:interface=127.0.0.1"], work)
        children.append(relay)
        wait_for_port(relay_port, 30, relay)
        common = ["--relay-url", f"ws://127.0.0.1:{mailbox_port}/v1",
                  "--transit-helper", f"tcp:127.0.0.1:{relay_port}"]
        sender = Process([sys.executable, str(reference), "cli", *common, "send",
                          "--hide-progress", "--code", WORMHOLE_CODE, str(src)],
                         work / "send.log", cwd=str(work))
        try:
            wait_for_text(sender, r"wormhole receive", timeout)  # waiting for its receiver
            start = time.monotonic()
            result = subprocess.run(
                [sys.executable, str(reference), "cli", *common, "receive", "--hide-progress",
                 "--accept-file", "-o", str(out), WORMHOLE_CODE],
                capture_output=True, text=True, timeout=timeout, cwd=str(work))
            seconds = time.monotonic() - start
            if result.returncode != 0:
                raise RuntimeError(f"wormhole receive failed: {result.stderr[-2000:]}\n"
                                   f"sender: {sender.log()[-2000:]}")
            sender.popen.wait(timeout)
        finally:
            sender.stop()
    finally:
        for child in reversed(children):
            child.stop()
    if sha256_of(out) != sha256_of(src):
        raise RuntimeError("wormhole: received file differs")
    out.unlink()
    return seconds


def first_piece(src: Path, work: Path, timeout: float, kinds=("p2p", "link")) -> dict:
    """Seconds to the first verified piece, by .p2p and by link, alternating."""
    out = {}
    with LocalSwarm(work / "first") as swarm:
        swarm.start_tracker()
        swarm.start_daemon("seed")
        swarm.start_daemon("dl")
        shared = swarm.ctl_json("seed", "share", str(src), "-o", str(work / "src.p2p"))
        swarm.wait_complete("seed", shared["info_hash"])
        with BlockingClient(swarm.daemons["dl"].control) as client:
            for kind, call in (("p2p", lambda: client.download(shared["metainfo"],
                                                               str(work / "dl-p2p"))),
                               ("link", lambda: client.download_link(shared["link"],
                                                                     str(work / "dl-link")))):
                if kind not in kinds:
                    continue
                start = time.monotonic()
                call()
                while client.status(shared["info_hash"]).pieces_done < 1:
                    if time.monotonic() - start > timeout:
                        raise TimeoutError(f"{kind}: no verified piece in {timeout}s")
                    time.sleep(0.01)
                out[kind] = time.monotonic() - start
                client.remove(shared["info_hash"], delete_data=True)
    return out


SAMPLES = {"peer-it": peerit_code, "magic-wormhole": wormhole_code}


def sample(args) -> None:
    """One sample for bench/suite.py, on the file it made (``--source``)."""
    src = Path(args.source)
    with tempfile.TemporaryDirectory(prefix="bench-codes-") as tmp:
        work = Path(tmp)
        if args.sample in SAMPLES:
            seconds = SAMPLES[args.sample](src, work, args.timeout - 20)
        else:
            kind = args.sample.removeprefix("first-piece-")
            seconds = first_piece(src, work, args.timeout - 20, kinds=(kind,))[kind]
    write_result(args.json, {"seconds": seconds, "bytes": src.stat().st_size})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", choices=[*SAMPLES, "first-piece-link", "first-piece-p2p"],
                        help="(bench/suite.py) one sample of this kind on --source")
    parser.add_argument("--source", help="(bench/suite.py) the file to send")
    parser.add_argument("--json", help="(bench/suite.py) write the sample's result here")
    parser.add_argument("--sizes", default="10Mi,512Mi",
                        help="file sizes for the code comparison [default: 10Mi,512Mi]")
    parser.add_argument("--first-piece-size", default="64Mi")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    install_sigterm_exit()
    if args.sample:
        if not (args.source and args.json):
            parser.error("--sample needs --source and --json")
        sample(args)
        return 0
    print("# " + ", ".join(package_versions(["magic-wormhole", "twisted"])))
    print(f"{'size':>8} {'tool':<14} {'median s':>9} {'MiB/s':>8}  runs")
    for text in args.sizes.split(","):
        size = parse_size(text)
        times = {"peer-it": [], "magic-wormhole": []}
        with tempfile.TemporaryDirectory(prefix="bench-codes-") as tmp:
            src = Path(tmp) / "payload.bin"
            make_file(src, size)
            for run in range(args.runs):
                for tool, measure in (("peer-it", peerit_code),
                                      ("magic-wormhole", wormhole_code)):
                    work = Path(tmp) / f"{tool}-{run}"
                    work.mkdir()
                    times[tool].append(measure(src, work, args.timeout))
        for tool, samples in times.items():
            median = statistics.median(samples)
            print(f"{text:>8} {tool:<14} {median:9.2f} {size / median / (1 << 20):8.1f}  "
                  + " ".join(f"{s:.2f}" for s in samples), flush=True)
        ratio = statistics.median(times["peer-it"]) / statistics.median(
            times["magic-wormhole"])
        print(f"{text:>8} peer-it time / wormhole time = {ratio:.2f}", flush=True)
    size = parse_size(args.first_piece_size)
    samples = {"p2p": [], "link": []}
    with tempfile.TemporaryDirectory(prefix="bench-first-") as tmp:
        src = Path(tmp) / "payload.bin"
        make_file(src, size)
        for run in range(args.runs):
            work = Path(tmp) / f"run-{run}"
            work.mkdir()
            for kind, seconds in first_piece(src, work, args.timeout).items():
                samples[kind].append(seconds)
    for kind in ("p2p", "link"):
        print(f"first verified piece ({args.first_piece_size}) download {kind:<4}: "
              f"median {statistics.median(samples[kind]) * 1000:7.1f} ms  "
              + " ".join(f"{s * 1000:.1f}" for s in samples[kind]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
