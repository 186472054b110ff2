"""CPU of an idle daemon with many shares and open peer links (real daemons on loopback).

The target: an idle daemon with 1,000 shares and 50 open peer links under 2% of a core:
no polling loops. Set-up, with a local tracker:

- daemon ``idle`` (the one measured) shares ``--shares`` small files;
- ``--links`` swarms that nobody seeds are downloaded by both ``idle`` and a second daemon
  ``partner``: the tracker introduces them, they link up, and since neither has a piece to
  offer, each link stays open and idle (keep-alives only). ``idle`` then holds ``--links``
  peer links, one per swarm, as a daemon waiting for a rare file would.

CPU is utime + stime from /proc/PID/stat over ``--windows`` windows of ``--window`` seconds,
first with the shares alone, then with the links open; voluntary context switches per second
(wake-ups: a polling loop shows here even when each wake-up is cheap) come from
/proc/PID/status. The figure is the median window with links, in % of one core.

    .venv/bin/python bench/bench_idle.py [--shares 1000] [--links 50] [--window 10]
        [--windows 3] [--json OUT]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "references"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (install_sigterm_exit, proc_cpu_seconds, proc_peak_rss_mib,  # noqa: E402
                    write_result)
from peerit.client import BlockingClient  # noqa: E402
from peerit.share_builder import create_metainfo  # noqa: E402
from peerit.testing.localswarm import LocalSwarm  # noqa: E402

SHARE_SIZE = 4096
SETTLE = 3.0  # seconds after a change before measuring: announces and handshakes finish


def wakeups(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


def measure(pids: dict[str, int], seconds: float) -> dict:
    """% of one core and wake-ups per second of each process over ``seconds``."""
    before = {n: (proc_cpu_seconds(p), wakeups(p)) for n, p in pids.items()}
    start = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - start
    out = {}
    for name, pid in pids.items():
        cpu, woke = proc_cpu_seconds(pid), wakeups(pid)
        out[name] = {"cpu_percent": 100 * (cpu - before[name][0]) / wall,
                     "wakeups_per_s": (woke - before[name][1]) / wall}
    return out


def make_p2p(directory: Path, name: str) -> tuple[Path, Path]:
    data = directory / name
    data.write_bytes(os.urandom(SHARE_SIZE))
    p2p = directory / f"{name}.p2p"
    create_metainfo(str(data), threads=1).write(str(p2p))
    return data, p2p


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout:.0f} s")
        time.sleep(0.2)


def run(shares: int, links: int, window: float, windows: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="peerit-bench-idle-") as work, \
            LocalSwarm(Path(work) / "swarm") as swarm:
        work = Path(work)
        # The tracker's defaults admit 256 swarms per daemon and bursts of 300 requests
        # (docs/benchmarks.md: a daemon with 1,000 shares is refused the rest, and does not
        # retry); this benchmark measures the daemon, so its tracker admits them all.
        swarm.start_tracker("--max-swarms", str(shares + links + 16),
                            "--request-burst", str(2 * (shares + links) + 300))
        swarm.start_daemon("idle")
        swarm.start_daemon("partner")
        idle = BlockingClient(swarm.daemons["idle"].control)
        partner = BlockingClient(swarm.daemons["partner"].control)
        (work / "shares").mkdir()
        started = time.monotonic()
        for i in range(shares):
            data, p2p = make_p2p(work / "shares", f"share-{i:05d}.bin")
            idle.share(str(data), str(p2p))
        setup_shares = time.monotonic() - started
        pids = {n: swarm.daemons[n].process.pid for n in ("idle", "partner")}
        time.sleep(SETTLE)
        alone = [measure(pids, window) for _ in range(windows)]

        (work / "orphans").mkdir()
        hashes = []
        for i in range(links):
            data, p2p = make_p2p(work / "orphans", f"orphan-{i:03d}.bin")
            data.unlink()  # nobody has it: the two downloaders only have each other
            hashes.append(idle.download(str(p2p), str(work / "idle-dl")).info_hash)
            partner.download(str(p2p), str(work / "partner-dl"))

        def linked() -> int:
            return sum(idle.status(h).peers for h in hashes)
        try:
            wait_until(lambda: linked() >= links, max(10.0, deadline - time.monotonic() -
                                                       2 * windows * window - 10),
                       f"{links} open links")
        except TimeoutError as e:
            refused = swarm.daemons["idle"].process.log().count("tracker refused")
            raise TimeoutError(f"{e}: {linked()} open; the tracker refused {refused} "
                               f"requests") from None
        time.sleep(SETTLE)
        with_links = [measure(pids, window) for _ in range(windows)]
        still_linked = linked()
        rss = {n: proc_peak_rss_mib(p) for n, p in pids.items()}
        refused = swarm.daemons["idle"].process.log().count("tracker refused")
        idle.close()
        partner.close()
    return {"alone": alone, "with_links": with_links, "links_at_end": still_linked,
            "tracker_refusals": refused,
            "setup_shares_seconds": setup_shares, "rss": rss}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shares", type=int, default=1000)
    parser.add_argument("--links", type=int, default=50)
    parser.add_argument("--window", type=float, default=10.0, help="seconds per window")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", help="write the result here (for bench/suite.py)")
    args = parser.parse_args()
    install_sigterm_exit()
    result = run(args.shares, args.links, args.window, args.windows, args.timeout)

    def median(windows, name, key):
        return statistics.median(w[name][key] for w in windows)
    for phase, label in (("alone", f"{args.shares} shares"),
                         ("with_links", f"{args.shares} shares + {args.links} links")):
        for name in ("idle", "partner"):
            cpu = [w[name]["cpu_percent"] for w in result[phase]]
            print(f"{name:<8} {label:<28} CPU median {statistics.median(cpu):5.2f}% of a core"
                  f" (range {min(cpu):.2f}-{max(cpu):.2f}), wake-ups "
                  f"{median(result[phase], name, 'wakeups_per_s'):.0f}/s")
    print(f"links open at the end: {result['links_at_end']} of {args.links}; "
          f"{args.shares} shares added in {result['setup_shares_seconds']:.1f} s; "
          f"peak RSS idle {result['rss']['idle']:.0f} MiB; tracker refusals "
          f"{result['tracker_refusals']}")
    if args.json:
        # The suite's figure per window: the measured daemon with its links open.
        write_result(args.json, {
            "windows": [{"cpu_percent": w["idle"]["cpu_percent"],
                         "wakeups_per_s": w["idle"]["wakeups_per_s"],
                         "rss": {"idle": result["rss"]["idle"]},
                         "cpu": {}} for w in result["with_links"]],
            **{k: v for k, v in result.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
