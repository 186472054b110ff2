"""What a user feels first: one download, from the ``peerit-ctl download`` command to the
verified file, with a tracker and a seeding daemon already running on loopback.

    .venv/bin/python bench/bench_small.py --size 1Mi --runs 3
    .venv/bin/python bench/bench_small.py --tree 1000 --size 32Mi --runs 3
    .venv/bin/python bench/bench_small.py --size 256Mi --fresh --runs 3

Two kinds of downloader: **running** (its daemon has been up a while: tracker session
established) and **fresh** (``--fresh``: its daemon has just started, the download command
is the first thing it is told, the moment its control socket answers). Either way the clock
starts when the ``peerit-ctl download`` process is started (CLI start-up included, as a
user waits for it) and stops when it has exited after reporting every piece verified; the
data is then compared with the source outside the timed part. A fresh daemon's own
start-up (twistd to an answering control socket) is reported apart, as is
``peerit-ctl --version``'s time. Loopback only, every wait bounded, every process ended by
PID (``LocalSwarm``).
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH / "references"))
sys.path.insert(0, str(BENCH.parent))

from common import (install_sigterm_exit, make_file, make_tree, remove_download,  # noqa: E402
                    size_of, write_result)
from peerit.local_swarm import LocalSwarm  # noqa: E402
from peerit.processes import environment  # noqa: E402
from peerit.units import parse_size  # noqa: E402

def ctl_command() -> list[str]:
    """What a user types: the ``peerit-ctl`` script next to this interpreter when installed
    (bench/.venv has it), else the module."""
    script = Path(sys.executable).parent / "peerit-ctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "peerit.ctl.main"]


def digest_tree(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``root`` (or of ``root`` itself)."""
    if root.is_file():
        return {"": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def timed(argv: list[str], timeout: float, cwd: str) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            env=environment(), cwd=cwd)
    return time.monotonic() - started, result


def wait_for_tracker_session(swarm: LocalSwarm, name: str, timeout: float) -> None:
    """A running daemon: its tracker session is up before the clock starts."""
    deadline = time.monotonic() + timeout
    while True:
        info = swarm.ctl_json(name, "status")["daemon"]
        if info["trackers_connected"]:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: no tracker session after {timeout}s")
        time.sleep(0.05)


def one_run(src: Path, work: Path, fresh: bool, timeout: float,
            env: dict | None = None) -> dict:
    """One download of ``src`` (a file or a directory tree) from a seeding daemon."""
    with LocalSwarm(work / "swarm") as swarm:
        swarm.start_tracker()
        swarm.start_daemon("seed")
        shared = swarm.ctl_json("seed", "share", str(src), "-o", str(work / "share.p2p"))
        if not fresh:
            swarm.start_daemon("dl")
            wait_for_tracker_session(swarm, "dl", 30)
            # Settled: the start-up's own work (tracker session, first announces) is done.
            time.sleep(0.5)
            daemon_start = None
        else:
            before = time.monotonic()
            swarm.start_daemon("dl")
            daemon_start = time.monotonic() - before
        control = swarm.daemons["dl"].control
        target = work / "dl-files"
        seconds, result = timed(
            [*ctl_command(), "download", shared["metainfo"], "--to", str(target), "--json",
             "--timeout", str(int(timeout)), "--control", control],
            timeout + 10, str(work))
        if result.returncode != 0:
            raise RuntimeError(f"peerit-ctl download failed ({result.returncode}): "
                               f"{result.stderr}\n{swarm.daemons['dl'].process.log()[-3000:]}")
        status = json.loads(result.stdout)
        got = target / src.name
        if digest_tree(got) != digest_tree(src):
            raise RuntimeError(f"{got} differs from {src}")
        version_seconds, _ = timed([*ctl_command(), "--version"], 30, str(work))
        return {"seconds": seconds, "pieces": status.get("pieces"),
                "daemon_start": daemon_start, "ctl_version": version_seconds}


def sample(args) -> None:
    """One sample for bench/suite.py: ``--source`` is made by the suite."""
    src = Path(args.source)
    with tempfile.TemporaryDirectory(prefix="peerit-bench-small-") as work:
        r = one_run(src, Path(work), args.fresh, args.timeout - 20)
        remove_download(Path(work) / "dl-files")
    write_result(args.json, {**r, "bytes": size_of(src)})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1Mi", help="file size, or a tree's total (1Mi, 32Mi; units as in every peer-it option)")
    parser.add_argument("--tree", type=int, metavar="FILES",
                        help="a directory of FILES files instead of one file")
    parser.add_argument("--fresh", action="store_true",
                        help="the downloader's daemon starts just before the command")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--source", help="(bench/suite.py) the file or tree to share")
    parser.add_argument("--json", help="(bench/suite.py) write one sample's result here")
    args = parser.parse_args(argv)
    install_sigterm_exit()
    if args.json:
        sample(args)
        return 0
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="peerit-bench-small-") as work:
        src = Path(work) / ("tree" if args.tree else "payload.bin")
        if args.tree:
            make_tree(src, args.tree, size)
        else:
            make_file(src, size)
        runs = []
        for i in range(args.runs):
            run_dir = Path(work) / f"run{i}"
            run_dir.mkdir()
            runs.append(one_run(src, run_dir, args.fresh, args.timeout))
            print(f"  run {i + 1}: {runs[-1]['seconds']:.3f} s, load "
                  f"{os.getloadavg()[0]:.2f}", flush=True)
    seconds = [r["seconds"] for r in runs]
    what = f"a tree of {args.tree} files, {args.size}" if args.tree else args.size
    print(f"peer-it, {what} to a {'fresh' if args.fresh else 'running'} daemon: "
          f"median {statistics.median(seconds):.3f} s (range {min(seconds):.3f}-"
          f"{max(seconds):.3f}), {size / statistics.median(seconds) / 1e6:.1f} MB/s")
    if args.fresh:
        print("  daemon start-up: " + ", ".join(f"{r['daemon_start']:.2f}" for r in runs))
    print("  peerit-ctl --version: " + ", ".join(f"{r['ctl_version']:.2f}" for r in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
