"""The cost of metrics: the same runs with metrics off, then on and scraped every second.

    .venv/bin/python bench/bench_metrics.py [--size 256M] [--runs 3]
        [--tracker-sessions 1000] [--tracker-rates 10000,20000,30000] [--tracker-seconds 5]

1. A 1->1 transfer over loopback (real tracker and daemons): ``--runs`` pairs, metrics off
   and on alternating (the order swapped every pair, so drift hits both alike); with
   metrics on, the tracker and both daemons run ``--metrics tcp:0`` and a separate process
   scrapes all three every second. Throughput is the file size over the time from the
   download command to "every piece verified".
2. The tracker under ``bench/tracker_load.py`` (reduced: ``--tracker-*``), once without
   and once with ``--metrics``; the figures compared are the highest rate achieved with a
   clean step and the tracker's CPU time per request.

The issue's targets: transfer >= 0.98x and tracker requests/s >= 0.95x with metrics on.
Loopback only; every run bounded by a deadline, every process ended by PID.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "references"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_transfer import make_file  # noqa: E402
from common import proc_cpu_times  # noqa: E402
from peerit.client import BlockingClient  # noqa: E402
from peerit.units import parse_size  # noqa: E402
from peerit.testing.localswarm import LocalSwarm  # noqa: E402
from peerit.testing.metrics import Scraper, metrics_url  # noqa: E402
from peerit.testing.processes import environment  # noqa: E402

HERE = Path(__file__).resolve().parent


def transfer(size: int, metrics: bool, deadline: float) -> dict:
    extra = ("--metrics", "tcp:0") if metrics else ()
    with tempfile.TemporaryDirectory(prefix="peerit-bench-metrics-") as work, \
            LocalSwarm(Path(work) / "swarm") as swarm:
        swarm.start_tracker(*extra)
        swarm.start_daemon("seed", *extra)
        swarm.start_daemon("dl", *extra)
        scraper = None
        if metrics:
            urls = [metrics_url(p.wait_for_log("serving Prometheus")) for p in (
                swarm.tracker_process, swarm.daemons["seed"].process,
                swarm.daemons["dl"].process)]
            scraper = Scraper(urls, interval=1.0, limit=deadline + 60)
        try:
            src = Path(work) / "payload.bin"
            make_file(src, size)
            shared = swarm.ctl_json("seed", "share", str(src), "-o", str(Path(work) / "p.p2p"))
            client = BlockingClient(swarm.daemons["dl"].control)
            pids = [swarm.daemons[n].process.pid for n in ("seed", "dl")]
            cpu_before = sum(sum(proc_cpu_times(pid)) for pid in pids)
            started = time.monotonic()
            client.download(shared["metainfo"], str(Path(work) / "out"))
            while client.status(shared["info_hash"]).state != "seeding":
                if time.monotonic() - started > deadline:
                    raise TimeoutError(f"not done within {deadline}s")
                time.sleep(0.02)
            seconds = time.monotonic() - started
            cpu = sum(sum(proc_cpu_times(pid)) for pid in pids) - cpu_before
            client.close()
        finally:
            scrapes = scraper.stop() if scraper is not None else (0, 0)
        return {"metrics": metrics, "seconds": seconds, "mb_s": size / seconds / 1e6,
                "cpu": cpu,
                "scrapes": scrapes[0], "scrape_failures": scrapes[1]}


def tracker_load(args, metrics: bool) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        argv = [sys.executable, str(HERE / "tracker_load.py"),
                "--sessions", str(args.tracker_sessions), "--rates", args.tracker_rates,
                "--seconds", str(args.tracker_seconds), "--runs", "1", "--json", out.name,
                *(["--metrics"] if metrics else [])]
        result = subprocess.run(argv, env=environment(), capture_output=True, text=True,
                                timeout=1800)
        if result.returncode != 0:
            raise SystemExit(f"tracker_load failed:\n{result.stdout[-3000:]}"
                             f"{result.stderr[-3000:]}")
        figures = json.loads(Path(out.name).read_text())
    rows = figures["summary"]["rows"]
    clean = [r for r in rows if r["clean"]]
    best = max(clean or rows, key=lambda r: r["achieved"])
    return {"metrics": metrics, "rows": rows, "best_achieved": best["achieved"],
            "us_per_request": statistics.median(r["us_per_request"] for r in rows),
            "scrapes": figures.get("scrapes", {})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="256M")
    parser.add_argument("--runs", type=int, default=3, help="transfer pairs (at most 10)")
    parser.add_argument("--deadline", type=float, default=300)
    parser.add_argument("--tracker-sessions", type=int, default=1000)
    parser.add_argument("--tracker-rates", default="10000,20000,30000")
    parser.add_argument("--tracker-seconds", type=float, default=5)
    parser.add_argument("--skip-tracker", action="store_true")
    args = parser.parse_args()
    if not 0 < args.runs <= 10:
        parser.error("--runs must be 1..10")
    size = parse_size(args.size)

    runs = []
    for pair in range(args.runs):
        for metrics in ((False, True) if pair % 2 == 0 else (True, False)):
            runs.append(transfer(size, metrics, args.deadline))
            r = runs[-1]
            print(f"transfer {args.size}, metrics {'on ' if metrics else 'off'}: "
                  f"{r['seconds']:.2f} s, {r['mb_s']:.0f} MB/s, daemons' CPU {r['cpu']:.2f} s"
                  + (f" ({r['scrapes']} scrapes, {r['scrape_failures']} failed)"
                     if metrics else ""), flush=True)
    off = statistics.median(r["mb_s"] for r in runs if not r["metrics"])
    on = statistics.median(r["mb_s"] for r in runs if r["metrics"])
    cpu_off = statistics.median(r["cpu"] for r in runs if not r["metrics"])
    cpu_on = statistics.median(r["cpu"] for r in runs if r["metrics"])
    print(f"1->1 transfer, median of {args.runs}: off {off:.0f} MB/s, on {on:.0f} MB/s, "
          f"on/off {on / off:.3f} (target >= 0.98); daemons' CPU seconds off {cpu_off:.2f}, "
          f"on {cpu_on:.2f} (on/off {cpu_on / cpu_off:.3f}: the figure a loaded machine "
          f"disturbs least)")
    if args.skip_tracker:
        return 0
    loads = [tracker_load(args, metrics) for metrics in (False, True)]
    for load in loads:
        rows = ", ".join(f"{r['offered']}: {r['achieved']:.0f}/s p99 {r['p99_ms']:.1f} ms "
                         f"{r['us_per_request']:.1f} us/req" for r in load["rows"])
        print(f"tracker, metrics {'on ' if load['metrics'] else 'off'}: {rows}"
              + (f" ({load['scrapes'].get('done', 0)} scrapes)" if load["metrics"] else ""))
    off, on = loads
    print(f"tracker best clean rate: off {off['best_achieved']:.0f}/s, on "
          f"{on['best_achieved']:.0f}/s, on/off {on['best_achieved'] / off['best_achieved']:.3f}"
          f" (target >= 0.95); CPU per request: off {off['us_per_request']:.1f} us, on "
          f"{on['us_per_request']:.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
