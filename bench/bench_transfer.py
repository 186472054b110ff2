"""One seeder -> one downloader (or N downloaders) over loopback with the real daemons.

    .venv/bin/python bench/bench_transfer.py --size 512Mi --runs 3
    .venv/bin/python bench/bench_transfer.py --size 128Mi --downloaders 8 --runs 3
    .venv/bin/python bench/bench_transfer.py --size 128Mi --downloaders 8 --runs 1 --trace DIR

Times from the download command to "every piece verified" (for a swarm: from the moment
every downloader is told at once until the last has it all; completion as the daemon pushes
it to a follower), and reads each daemon's peak RSS (VmHWM) from /proc. ``--trace DIR``
has every daemon record its swarm's events there (one subdirectory per run) for
``bench/timeline.py``. Loopback only,
bounded: every run has a deadline and every process is ended by PID.
"""

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "references"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import proc_cpu_times  # noqa: E402
from peerit.client import BlockingClient  # noqa: E402
from peerit.daemon.swarmtrace import TRACE_VARIABLE  # noqa: E402
from peerit.units import parse_size  # noqa: E402
from peerit.testing.localswarm import LocalSwarm  # noqa: E402


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + kernel) per thread name of a process, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                head, tail = f.read().rsplit(")", 1)
        except OSError:
            continue  # the thread ended meanwhile
        name = head.split("(", 1)[1]
        fields = tail.split()
        name = "reactor" if tid == str(pid) else name.rstrip("0123456789-")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        chunk = os.urandom(1 << 20)
        for i in range(0, size, 1 << 20):
            f.write(chunk[: min(1 << 20, size - i)])
            chunk = chunk[1:] + chunk[:1]


def one_run(size: int, downloaders: int, deadline: float, seeder_args=()) -> dict:
    with tempfile.TemporaryDirectory(prefix="peerit-bench-") as work, \
            LocalSwarm(Path(work) / "swarm") as swarm:
        swarm.start_tracker()
        swarm.start_daemon("seed", *seeder_args)
        names = [f"d{i}" for i in range(downloaders)]
        for name in names:
            swarm.start_daemon(name)
        src = Path(work) / "payload.bin"
        make_file(src, size)
        shared = swarm.ctl_json("seed", "share", str(src), "-o", str(Path(work) / "p.p2p"))
        clients = {n: BlockingClient(swarm.daemons[n].control) for n in names}
        pids = {n: swarm.daemons[n].process.pid for n in ["seed", *names]}
        cpu_before = {n: proc_cpu_times(pid) for n, pid in pids.items()}
        threads_before = {n: thread_cpu(pid) for n, pid in pids.items()}
        # Every downloader is told at the same moment, each by its own thread, and learns of
        # its completion from the daemon's push (Follow), as libtorrent's downloaders are
        # released together and each watches its own status: not eight commands one after
        # the other (the last ~0.2 s after the first) and a poll of each every 160 ms.
        release = threading.Barrier(len(names) + 1)
        finish: dict[str, float] = {}
        failures: list[BaseException] = []
        started = 0.0

        def download(name: str) -> None:
            client = clients[name]
            try:
                release.wait(deadline)
                status = client.follow(client.download(
                    shared["metainfo"], str(Path(work) / name)).info_hash)
                while status.state != "seeding":
                    status = client.next_change(deadline - (time.monotonic() - started))
                    if status is None:
                        raise RuntimeError(f"{name}: the download was removed")
                finish[name] = time.monotonic() - started
            except BaseException as e:  # reported by the main thread
                failures.append(e)
        workers = [threading.Thread(target=download, args=(n,), daemon=True) for n in names]
        for worker in workers:
            worker.start()
        started = time.monotonic()
        release.wait(deadline)
        for worker in workers:
            worker.join(max(0.0, deadline - (time.monotonic() - started)))
        if failures:
            raise failures[0]
        if len(finish) < len(names):
            raise TimeoutError(f"not done within {deadline}s")
        kernel = {n: proc_cpu_times(pid)[1] - cpu_before[n][1] for n, pid in pids.items()}
        threads = {}
        for n, pid in pids.items():
            after = thread_cpu(pid)
            threads[n] = {t: after[t] - threads_before[n].get(t, 0.0) for t in after}
        cpu = {n: sum(proc_cpu_times(pid)) - sum(cpu_before[n]) for n, pid in pids.items()}
        rss = {n: peak_rss_mib(pid) for n, pid in pids.items()}
        for c in clients.values():
            c.close()
        return {"seconds": max(finish.values()), "first": min(finish.values()),
                "finished": sorted(finish.values()), "rss": rss, "cpu": cpu,
                "kernel": kernel, "threads": threads}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="512Mi")
    parser.add_argument("--downloaders", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=300)
    parser.add_argument("--trace", type=Path, metavar="DIR",
                        help="daemons write swarm traces to DIR/runN (bench/timeline.py)")
    args = parser.parse_args()
    size = parse_size(args.size)
    results = []
    for i in range(args.runs):
        if args.trace:
            # The daemons inherit this process's environment (peerit.testing.processes).
            os.environ[TRACE_VARIABLE] = str(args.trace.resolve() / f"run{i + 1}")
        results.append(one_run(size, args.downloaders, args.deadline))
    seconds = [r["seconds"] for r in results]
    rates = [size / s / 1e6 for s in seconds]
    seed_rss = max(r["rss"]["seed"] for r in results)
    dl_rss = max(v for r in results for k, v in r["rss"].items() if k != "seed")
    print(f"peer-it, {args.size} to {args.downloaders} downloader(s), {args.runs} runs")
    print(f"  time to last verified: median {statistics.median(seconds):.2f} s "
          f"(range {min(seconds):.2f}-{max(seconds):.2f})")
    if args.downloaders > 1:
        print("  first / last downloader done (s): " + ", ".join(
            f"{r['first']:.2f} / {r['seconds']:.2f}" for r in results))
    if args.downloaders == 1:
        print(f"  throughput: median {statistics.median(rates):.0f} MB/s "
              f"(range {min(rates):.0f}-{max(rates):.0f})")
    print(f"  peak RSS: seeder {seed_rss:.0f} MiB, downloader(s) max {dl_rss:.0f} MiB")
    seed_cpu = statistics.median(r["cpu"]["seed"] for r in results)
    dl_cpu = statistics.median(max(v for k, v in r["cpu"].items() if k != "seed")
                               for r in results)
    seed_sys = statistics.median(r["kernel"]["seed"] for r in results)
    dl_sys = statistics.median(max(v for k, v in r["kernel"].items() if k != "seed")
                               for r in results)
    print(f"  CPU seconds (median): seeder {seed_cpu:.2f}, busiest downloader {dl_cpu:.2f}"
          f" (of which in the kernel: {seed_sys:.2f}, {dl_sys:.2f})")
    if args.downloaders == 1:
        for side in ("seed", "d0"):
            names = sorted({t for r in results for t in r["threads"][side]})
            parts = ", ".join(
                f"{t} {statistics.median(r['threads'][side].get(t, 0.0) for r in results):.2f}"
                for t in names)
            print(f"  {'seeder' if side == 'seed' else 'downloader'} threads (median CPU s): "
                  f"{parts}")
    total_cpu = statistics.median(sum(r["cpu"].values()) for r in results)
    total_sys = statistics.median(sum(r["kernel"].values()) for r in results)
    print(f"  CPU seconds of all daemons (median): {total_cpu:.2f} "
          f"(of which in the kernel: {total_sys:.2f})")
    if args.downloaders == 1:
        # Robust to a loaded machine: what the busier side could do with a core to itself.
        print(f"  CPU-bound ceiling: {size / max(seed_cpu, dl_cpu) / 1e6:.0f} MB/s")
    print(f"  load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
