"""NAT traversal figures in the NAT lab (root): time to first byte per NAT pair, and the bulk
rate of the punched QUIC path with a CPU profile of both daemons.

    sudo .venv/bin/python bench/bench_natlab.py                 # TTFB for every pair + 256 MiB
    sudo .venv/bin/python bench/bench_natlab.py --pairs cone --size 64 --runs 2
    sudo .venv/bin/python bench/bench_natlab.py --pairs none --size 256 --no-profile --bulk-runs 3
    sudo .venv/bin/python bench/bench_natlab.py --pairs none --size 64 --no-profile --loss 10,50


For each NAT pair a fresh lab (tests/natlab/lab.py) gets the real tracker (STUN, punch
coordination, relay) in its public namespace, a seeder behind r2 and a downloader behind r1.
"Time to first byte" runs from the download command (sent over the control socket) to the
first downloaded byte the daemon reports, polled every 10 ms; "connect" is the daemon's own
measure of its race (dial start to handshaken link). Targets from the issue: first byte
<= 1 s cone<->cone, <= 5 s with one symmetric side; >= 120 MB/s over the punched path
(docs/benchmarks.md; 40 in the first round, 60 in the second).

The bulk run moves ``--size`` MiB (default 256) between port-restricted NATs over punched
QUIC; MB/s is measured from first byte to completion, CPU seconds per daemon from
/proc/PID/stat, and both daemons run under cProfile (twistd --profile) whose top entries are
printed after they stop.

``--loss PERMILLE,...`` repeats the bulk run with that share of packets dropped at random on
both routers (nftables ``numgen random``, both directions), side by side with libtorrent over
uTP between the same two hosts through the same lossy NATs (bench/references/
libtorrent_utp_lab.py: uTP only, 4 MiB socket buffers; the seeder's router forwards its uTP
port with a static DNAT rule, since libtorrent has no hole punching). Both are timed from the
first payload byte to completion; the seeder starts with the file already checked.
"""

import argparse
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "natlab"))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE / "references"))

from common import proc_cpu_times  # noqa: E402
from peerit.client import as_json  # noqa: E402
from lab import HOSTS, NAT_TYPES, ROUTER_PUBLIC, NatLab, check_available  # noqa: E402
from test_nat_matrix import (  # noqa: E402
    LabPeers, MiB, random_file, sha256_of)

CONE = ("full-cone", "address-restricted", "port-restricted")


class ProfiledPeers(LabPeers):
    """LabPeers whose daemons run under twistd's cProfile (written when they stop)."""

    def __init__(self, lab, workdir, profile: bool):
        super().__init__(lab, workdir)
        self.profile = profile

    def start_daemon(self, name, host, *extra, timeout=30, twistd_options=()):
        if self.profile:
            twistd_options = ("--profile", str(self.workdir / f"{name}.pstats"),
                              "--profiler", "cprofile", "--savestats", *twistd_options)
        return super().start_daemon(name, host, *extra, timeout=timeout,
                                    twistd_options=twistd_options)


def follow(client, info_hash: str, started: float, timeout: float):
    """(first byte seconds, completion seconds, final status, peers as soon as listed) from
    ``started``, polling every 10 ms (links close once both sides are complete)."""
    first = peers = None
    previous = started
    deadline = started + timeout
    while True:
        status = as_json(client.status(info_hash))
        now = time.monotonic()
        if peers is None and status["peers"] > 0:
            peers = as_json(client.peers(info_hash).peers)
        if first is None and status["downloaded"] > 0:
            first = now - started
        if status["state"] == "seeding":
            if first is None:  # all of it between two polls (a seeder has no swarm counter)
                first = previous - started
            return first, now - started, status, peers or []
        if now > deadline:
            raise TimeoutError(f"not complete within {timeout}s: {status}")
        previous = now
        time.sleep(0.01 if first is None else 0.05)


def run_pair(r1: str, r2: str, payload: Path, workdir: Path, profile=False,
             timeout: float = 120, loss: int = 0) -> dict:
    """One transfer of ``payload`` seeder (b1 behind r2) -> downloader (a1 behind r1);
    ``loss`` per mille of the packets each router forwards are dropped at random."""
    from peerit.client import BlockingClient
    with NatLab(workdir, r1=r1, r2=r2, loss={"r1": loss, "r2": loss}) as lab:
        peers = ProfiledPeers(lab, workdir, profile)
        peers.start_tracker()
        peers.start_daemon("seed", "b1")
        peers.start_daemon("dl", "a1")
        shared = peers.share("seed", payload)
        seed_pid = peers.daemons["seed"][1].pid
        dl_pid = peers.daemons["dl"][1].pid
        cpu_before = (proc_cpu_times(seed_pid), proc_cpu_times(dl_pid))
        client = BlockingClient(peers.daemons["dl"][0])
        try:
            started = time.monotonic()
            client.download(shared["metainfo"], str(workdir / "out"))
            first, total, status, listed = follow(client, shared["info_hash"], started,
                                                  timeout)
        finally:
            client.close()
        cpu_after = (proc_cpu_times(seed_pid), proc_cpu_times(dl_pid))
        ok = sha256_of(workdir / "out" / payload.name) == sha256_of(payload)
        for name in ("seed", "dl"):
            peers.daemons[name][1].stop(timeout=20)  # writes the profile
        return {
            "pair": f"{r1} <-> {r2}", "ok": ok, "first_byte": first, "total": total,
            "path": ",".join(p["path"] for p in listed),
            "connect": max((p["connect_seconds"] for p in listed), default=None),
            "bulk_seconds": total - first, "size": payload.stat().st_size,
            "cpu": tuple(sum(b) - sum(a) for a, b in zip(cpu_before, cpu_after)),
            "kernel": tuple(b[1] - a[1] for a, b in zip(cpu_before, cpu_after)),
            "profiles": [workdir / "seed.pstats", workdir / "dl.pstats"] if profile else [],
        }


UTP_PORT = 6881  # libtorrent's seeder port, forwarded by its router


def utp_forward_ruleset(host: str, port: int) -> str:
    """A static port forward on the router in front of ``host``: what a libtorrent user
    without hole punching configures (or gets from UPnP/NAT-PMP)."""
    return f"""
table ip lab_forward {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "wan" udp dport {port} dnat to {HOSTS[host][1]}:{port}
    }}
}}
"""


def run_libtorrent_utp(payload: Path, workdir: Path, loss: int = 0,
                       timeout: float = 300) -> dict:
    """The same transfer as :func:`run_pair` (port-restricted NATs, seeder on b1, downloader
    on a1, ``loss`` per mille on both routers) with libtorrent over uTP."""
    script = str(HERE / "references" / "libtorrent_utp_lab.py")
    workdir.mkdir(parents=True, exist_ok=True)
    torrent = workdir / (payload.name + ".torrent")
    subprocess.run([sys.executable, script, "torrent", "--file", str(payload),
                    "--out", str(torrent)], check=True, timeout=600)
    with NatLab(workdir, loss={"r1": loss, "r2": loss}) as lab:
        seed_host, seed_router = "b1", HOSTS["b1"][0]
        lab.nft(seed_router, utp_forward_ruleset(seed_host, UTP_PORT))
        ready, result = workdir / "seed.ready", workdir / "dl.result"
        seeder = lab.spawn(seed_host, [
            sys.executable, script, "seed", "--torrent", str(torrent),
            "--save-path", str(payload.parent), "--listen", f"{HOSTS[seed_host][1]}:{UTP_PORT}",
            "--ready", str(ready)], workdir / "lt-seed.log")
        seeder.wait_for_path(ready, 60)
        out = workdir / "out"
        out.mkdir()
        downloader = lab.spawn("a1", [
            sys.executable, script, "download", "--torrent", str(torrent),
            "--save-path", str(out), "--listen", f"{HOSTS['a1'][1]}:{UTP_PORT}",
            "--peer", f"{ROUTER_PUBLIC[seed_router]}:{UTP_PORT}", "--result", str(result),
            "--timeout", str(timeout)], workdir / "lt-dl.log")
        pids = (seeder.pid, downloader.pid)
        cpu_before = [proc_cpu_times(pid) for pid in pids]
        downloader.wait_for_path(result, timeout + 30)
        cpu_after = [proc_cpu_times(pid) for pid in pids]
        times = json.loads(result.read_text())
    ok = times["done"] and sha256_of(out / payload.name) == sha256_of(payload)
    first = times["first_byte"] or times["start"]  # no byte at all: 0 MB/s over the run
    return {"ok": ok, "done": times["done"], "size": times["bytes"],
            "first_byte": first - times["start"],
            "total": times["end"] - times["start"],
            "bulk_seconds": times["end"] - first,
            "cpu": tuple(sum(b) - sum(a) for a, b in zip(cpu_before, cpu_after))}


def pairs_for(which: str):
    if which == "cone":
        return [(a, b) for a in CONE for b in CONE]
    if which == "symmetric":
        return [(a, b) for a in NAT_TYPES for b in NAT_TYPES if "symmetric" in (a, b)]
    return [(a, b) for a in NAT_TYPES for b in NAT_TYPES]


def target_for(r1, r2):
    kinds = (r1 == "symmetric") + (r2 == "symmetric")
    return {0: 1.0, 1: 5.0, 2: None}[kinds]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", choices=("all", "cone", "symmetric", "none"), default="all")
    parser.add_argument("--runs", type=int, default=1, help="TTFB runs per pair")
    parser.add_argument("--size", type=int, default=256, help="MiB for the bulk run (0: skip)")
    parser.add_argument("--bulk-runs", type=int, default=1,
                        help="bulk runs (a fresh lab each); the median ceiling is printed")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--loss", default="",
                        help="comma-separated per-mille random loss on both routers: the bulk "
                             "run at each (instead of the lossless one), beside libtorrent "
                             "over uTP (e.g. 10,50)")
    parser.add_argument("--no-libtorrent", action="store_true",
                        help="with --loss: peer-it only")
    parser.add_argument("--keep-data", action="store_true",
                        help="keep the payloads and downloaded copies in the work directory "
                             "(by default only the logs stay)")
    args = parser.parse_args()
    check_available()
    root = Path(tempfile.mkdtemp(prefix="bench-natlab-"))
    small = random_file(root / "ttfb.bin", 4 * MiB, seed=1)
    rows = []
    if args.pairs != "none":
        print(f"{'NAT pair':42} {'path':6} {'first byte':>10} {'connect':>8} {'target':>7} ok")
        for r1, r2 in pairs_for(args.pairs):
            for run in range(args.runs):
                r = run_pair(r1, r2, small, root / f"{r1}-{r2}-{run}")
                target = target_for(r1, r2)
                met = "-" if target is None else ("yes" if r["first_byte"] <= target else "NO")
                rows.append(r)
                print(f"{r['pair']:42} {r['path']:6} {r['first_byte']:9.2f}s "
                      f"{r['connect']:7.2f}s {('%gs' % target) if target else '-':>7} "
                      f"{met:>3} {'' if r['ok'] else 'CORRUPT'}", flush=True)
    if args.size and not args.loss:
        big = random_file(root / "bulk.bin", args.size * MiB, seed=2)
        ceilings = []
        for run in range(args.bulk_runs):
            r = run_pair("port-restricted", "port-restricted", big,
                         root / ("bulk" if run == 0 else f"bulk{run}"),
                         profile=not args.no_profile and run == 0, timeout=600)
            rate = r["size"] / r["bulk_seconds"] / 1e6
            ceilings.append(r["size"] / max(r["cpu"]) / 1e6)
            print(f"\nbulk: {args.size} MiB over {r['path']} between port-restricted NATs: "
                  f"{rate:.1f} MB/s (first byte {r['first_byte']:.2f}s, total "
                  f"{r['total']:.1f}s, {'intact' if r['ok'] else 'CORRUPT'}); "
                  f"target >= 120 MB/s; load average {os.getloadavg()[0]:.1f}")
            print(f"CPU seconds: seeder {r['cpu'][0]:.1f}, downloader {r['cpu'][1]:.1f} "
                  f"(in the kernel: {r['kernel'][0]:.1f}, {r['kernel'][1]:.1f}) "
                  f"-> CPU-bound ceiling {ceilings[-1]:.1f} MB/s", flush=True)
            if run == 0:
                profiles = r["profiles"]
        if len(ceilings) > 1:
            print(f"\nCPU-bound ceiling over {len(ceilings)} runs: median "
                  f"{statistics.median(ceilings):.1f} MB/s (range {min(ceilings):.1f}-"
                  f"{max(ceilings):.1f})")
        r["profiles"] = profiles
        for label, path in zip(("seeder", "downloader"), r["profiles"]):
            if path.exists():
                print(f"\n--- {label} profile (top 20 by own time) ---")
                pstats.Stats(str(path)).sort_stats("tottime").print_stats(20)
    if args.loss and args.size:
        big = random_file(root / "bulk.bin", args.size * MiB, seed=2)
        for run in range(args.bulk_runs):
            for index, loss in enumerate(int(v) for v in args.loss.split(",")):
                compare_at_loss(big, root / f"loss{loss}-{run}-{index}", loss,
                                libtorrent=not args.no_libtorrent)
    if not args.keep_data:
        drop_payloads(root)
    print(f"\nwork directory (logs): {root}")


def drop_payloads(root: Path) -> None:
    """Delete the payloads and their downloaded copies, keep the logs: each bulk run leaves
    twice its size on disk, and many runs fill /tmp."""
    for path in root.rglob("*.bin"):
        path.unlink()


def compare_at_loss(payload: Path, workdir: Path, loss: int, libtorrent: bool) -> None:
    size = payload.stat().st_size
    ours = run_pair("port-restricted", "port-restricted", payload, workdir / "peerit",
                    timeout=300, loss=loss)
    line = (f"\n{loss / 10:g}% loss on both routers, {size // MiB} MiB: peer-it "
            f"{size / ours['bulk_seconds'] / 1e6:.1f} MB/s over {ours['path']} "
            f"({ours['bulk_seconds']:.2f} s, {'intact' if ours['ok'] else 'CORRUPT'}, "
            f"CPU {ours['cpu'][0]:.1f}/{ours['cpu'][1]:.1f} s)")
    print(line + f"; load average {os.getloadavg()[0]:.1f}", flush=True)
    if libtorrent:
        # uTP under heavy loss is slow: a bound keeps the lab (and its lock) from being held
        # for long; an unfinished run reports its average rate up to the bound.
        theirs = run_libtorrent_utp(payload, workdir / "libtorrent", loss=loss,
                                    timeout=max(60.0, 20 * ours["total"]))
        rate = theirs["size"] / max(theirs["bulk_seconds"], 1e-9) / 1e6
        state = ("intact" if theirs["ok"] else "CORRUPT") if theirs["done"] else \
            f"NOT DONE in {theirs['total']:.0f} s: {theirs['size'] / size:.0%}"
        print(f"  libtorrent uTP {rate:.2f} MB/s ({theirs['bulk_seconds']:.2f} s, {state}, "
              f"CPU {theirs['cpu'][0]:.1f}/{theirs['cpu'][1]:.1f} s) -> peer-it "
              f"{size / ours['bulk_seconds'] / 1e6 / max(rate, 1e-9):.2f}x; "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
