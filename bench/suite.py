"""peer-it side by side with what its users would pick instead, in one run on one machine.

Runs every benchmark of docs/benchmarks.md on loopback (and the NAT lab when root and
``bench/bench_natlab.py`` exists), each tool in its own processes, several runs interleaved so
that a noisy moment hits peer-it and its references alike, and prints one table: median and
range of each figure, the ratio peer-it / reference per round (median and range), CPU seconds
and peak RSS of each process, and the load average. Normally started by ``bench/run``, which
builds ``bench/.venv`` with the references first.

    python bench/suite.py [--quick] [--only SELECTOR[,...]] [--runs N] [--budget SECONDS]
                          [--json FILE] [--keep] [--profile DIR]

SELECTOR is a benchmark (transfer, swarm, small, medium, tree, fresh, code-small, code,
first-piece, natlab, natlab-loss1, natlab-loss5, create, idle)
or BENCHMARK/TOOL (e.g. transfer/peer-it, create/hashlib, small/peer-it-fresh). Everything is
bounded: each sample has a time limit, the whole suite has ``--budget``; samples that would
start past it are reported as not run.
Every process is ended by PID and the work directory is removed unless ``--keep``.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
REFERENCES = BENCH / "references"
sys.path.insert(0, str(REFERENCES))
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))

from common import (  # noqa: E402
    SET_ASIDE_VARIABLE, Child, MiB, install_sigterm_exit, make_file, make_tree, package_versions,
    write_result)


# -- what to run ----------------------------------------------------------------------------
@dataclass
class Sizes:
    transfer: int = 512 * MiB
    swarm: int = 128 * MiB
    swarm_downloaders: int = 8
    small: int = 1 * MiB
    medium: int = 16 * MiB
    tree: int = 32 * MiB
    tree_files: int = 1000
    fresh: int = 256 * MiB
    code_small: int = 10 * MiB
    code: int = 512 * MiB
    first_piece: int = 64 * MiB
    natlab: int = 256 * MiB
    natlab_loss: int = 16 * MiB
    create: int = 1024 * MiB
    idle_shares: int = 1000
    idle_links: int = 50
    idle_window: float = 10.0
    runs: int = 3


QUICK = Sizes(transfer=16 * MiB, swarm=8 * MiB, swarm_downloaders=2, small=256 << 10,
              medium=1 * MiB, tree=640 << 10, tree_files=20, fresh=4 * MiB, code_small=1 * MiB,
              code=8 * MiB, first_piece=4 * MiB, natlab=16 * MiB, natlab_loss=4 * MiB,
              create=32 * MiB, idle_shares=20, idle_links=3, idle_window=2.0, runs=1)

# The NAT lab's rows: the punched path, and the same path with random loss on both routers
# (per mille) beside libtorrent over uTP through the same NATs.
NATLAB_LOSS = {"natlab-loss1": 10, "natlab-loss5": 50}
NATLAB = ("natlab", *NATLAB_LOSS)

# One download from a seeding daemon, timed from the command to the verified file
# (bench/bench_small.py): the downloader's daemon running, or just started ("-fresh").
SMALL = ("small", "medium", "tree", "fresh")
# A file by short code (bench/bench_codes.py): `peerit-ctl receive CODE` against `wormhole
# receive`, and the first verified piece of a download by link against one by .p2p.
CODES = {"code-small": "code_small", "code": "code", "first-piece": "first_piece"}


@dataclass
class Benchmark:
    name: str
    title: str
    unit: str  # "MB/s" (higher is better), "s" (lower is better), "% core"
    tools: list
    target: str
    ratio_goal: dict = field(default_factory=dict)  # reference tool -> (op, bound)
    # reference tool -> (op, bound) that every round's ratio must meet too (the median
    # meeting ratio_goal is not enough: a target must hold on a loaded machine).
    ratio_every: dict = field(default_factory=dict)
    # peer-it's rows: ratios to the references are the first one's; the others' ratio to
    # the first reference with a goal is shown on their own line, with its verdict.
    ours: tuple = ("peer-it",)


def benchmarks(sizes: Sizes) -> list[Benchmark]:
    mib = lambda n: f"{n // MiB} MiB"  # noqa: E731
    return [
        Benchmark("transfer", f"1 seeder -> 1 downloader, {mib(sizes.transfer)}, loopback",
                  "MB/s", ["peer-it", "libtorrent", "magic-wormhole", "tcp-sendfile"],
                  ">= 1.5x libtorrent (every run >= 1.2x) and >= 1.5x magic-wormhole; "
                  "daemon RSS <= 100 MiB",
                  {"libtorrent": (">=", 1.5), "magic-wormhole": (">=", 1.5)},
                  ratio_every={"libtorrent": (">=", 1.2)}),
        Benchmark("swarm", f"1 seeder + {sizes.swarm_downloaders} downloaders, "
                  f"{mib(sizes.swarm)}, time to the last", "s", ["peer-it", "libtorrent"],
                  "<= 0.8x libtorrent's time", {"libtorrent": ("<=", 0.8)}),
        Benchmark("small", f"{sizes.small / MiB:g} MiB file, download command to verified "
                  f"file", "s", ["peer-it", "peer-it-fresh", "libtorrent", "magic-wormhole"],
                  "<= 0.5x libtorrent's time", {"libtorrent": ("<=", 0.5)},
                  ours=("peer-it", "peer-it-fresh")),
        Benchmark("medium", f"{sizes.medium / MiB:g} MiB file, download command to verified "
                  f"file", "s", ["peer-it", "peer-it-fresh", "libtorrent", "magic-wormhole"],
                  "none (measured)", ours=("peer-it", "peer-it-fresh")),
        Benchmark("tree", f"tree of {sizes.tree_files:,} files, {sizes.tree / MiB:g} MiB, "
                  f"download command to verified files", "s",
                  ["peer-it", "peer-it-fresh", "libtorrent", "magic-wormhole"],
                  "<= 0.8x libtorrent's time", {"libtorrent": ("<=", 0.8)},
                  ours=("peer-it", "peer-it-fresh")),
        Benchmark("fresh", f"{mib(sizes.fresh)} to a freshly started downloader, command to "
                  f"verified file",
                  "MB/s", ["peer-it-fresh", "libtorrent"], ">= 1.5x libtorrent",
                  {"libtorrent": (">=", 1.5)}, ours=("peer-it-fresh",)),
        Benchmark("code-small", f"{mib(sizes.code_small)} by short code, receive command to "
                  f"verified file", "s", ["peer-it", "magic-wormhole"],
                  "<= 1.0x magic-wormhole's time", {"magic-wormhole": ("<=", 1.0)}),
        Benchmark("code", f"{mib(sizes.code)} by short code, receive command to verified "
                  f"file", "MB/s", ["peer-it", "magic-wormhole"],
                  ">= 1.5x magic-wormhole", {"magic-wormhole": (">=", 1.5)}),
        Benchmark("first-piece", f"first verified piece of a {mib(sizes.first_piece)} share, "
                  f"download LINK beside download FILE.p2p", "s", ["link", "p2p"],
                  "none (printed side by side)", ours=("link",)),
        Benchmark("natlab", f"1 -> 1 over the punched QUIC path (NAT lab), "
                  f"{mib(sizes.natlab)}", "MB/s", ["peer-it"], ">= 120 MB/s"),
        *(Benchmark(name, f"1 -> 1 over the punched path (NAT lab), {loss / 10:g}% random "
                    f"loss on both routers, {mib(sizes.natlab_loss)}", "MB/s",
                    ["peer-it", "libtorrent-utp"], ">= 1.0x libtorrent over uTP",
                    {"libtorrent-utp": (">=", 1.0)})
          for name, loss in NATLAB_LOSS.items()),
        Benchmark("create", f".p2p creation of {mib(sizes.create)} (page cache)", "MB/s",
                  ["peer-it", "hashlib"], ">= 0.8x hashlib", {"hashlib": (">=", 0.8)}),
        Benchmark("idle", f"idle daemon, {sizes.idle_shares} shares + {sizes.idle_links} "
                  f"open peer links", "% core", ["peer-it"], "< 2% of a core"),
    ]


def selected(bench: Benchmark, tool: str, only: list[str] | None) -> bool:
    if not only:
        return True
    return bench.name in only or f"{bench.name}/{tool}" in only


# -- one sample: a child process that writes one JSON result --------------------------------
def sample_argv(bench: Benchmark, tool: str, sizes: Sizes, files: dict, workdir: Path,
                out: Path, timeout: float, profile: str | None) -> list | None:
    py = sys.executable
    me = str(Path(__file__).resolve())
    common = ["--json", out, "--timeout", timeout]
    if bench.name in ("transfer", "swarm"):
        downloaders = 1 if bench.name == "transfer" else sizes.swarm_downloaders
        size = sizes.transfer if bench.name == "transfer" else sizes.swarm
        if tool == "peer-it":
            argv = [py, me, "sample-peerit", "--size", size, "--downloaders", downloaders,
                    *common]
            return argv + (["--profile", profile] if profile else [])
        src = files[bench.name]
        if tool == "libtorrent":
            return [py, REFERENCES / "libtorrent_peer.py", "run", "--file", src,
                    "--workdir", workdir, "--downloaders", downloaders, *common]
        if tool == "magic-wormhole":
            return [py, REFERENCES / "wormhole_peer.py", "run", "--file", src,
                    "--workdir", workdir, *common]
        if tool == "tcp-sendfile":
            return [py, REFERENCES / "tcp_copy.py", "run", "--file", src,
                    "--workdir", workdir, *common]
    if bench.name in SMALL:
        src = files[bench.name]
        if tool.startswith("peer-it"):
            fresh = ["--fresh"] if tool == "peer-it-fresh" else []
            return [py, BENCH / "bench_small.py", "--source", src, *fresh, *common]
        if tool == "libtorrent":
            return [py, REFERENCES / "libtorrent_peer.py", "run", "--file", src,
                    "--workdir", workdir, "--downloaders", 1, *common]
        if tool == "magic-wormhole":
            return [py, REFERENCES / "wormhole_peer.py", "run", "--file", src,
                    "--workdir", workdir, *common]
    if bench.name in CODES:
        kind = tool if bench.name != "first-piece" else f"first-piece-{tool}"
        return [py, BENCH / "bench_codes.py", "--sample", kind, "--source",
                files[bench.name], *common]
    if bench.name == "create":
        return [py, REFERENCES / "hash_file.py", "--file", files["create"], "--json", out,
                "--what", "create" if tool == "peer-it" else "hashlib"]
    if bench.name == "idle":
        return [py, BENCH / "bench_idle.py", "--shares", sizes.idle_shares,
                "--links", sizes.idle_links, "--window", sizes.idle_window,
                "--windows", sizes.runs, *common]
    if bench.name == "natlab":
        return [py, me, "sample-natlab", "--size", sizes.natlab, *common]
    if bench.name in NATLAB_LOSS:
        return [py, me, "sample-natlab", "--size", sizes.natlab_loss,
                "--loss", NATLAB_LOSS[bench.name], "--tool", tool, *common]
    raise ValueError(f"no runner for {bench.name}/{tool}")


def sample_timeout(bench: Benchmark, sizes: Sizes) -> float:
    """Generous bounds: a sample that needs longer is broken, not slow."""
    if bench.name == "transfer":
        return 60 + sizes.transfer / (5 * 10**6)  # at least 5 MB/s
    if bench.name == "swarm":
        return 90 + sizes.swarm_downloaders * sizes.swarm / (5 * 10**6)
    if bench.name in SMALL:
        return 90 + getattr(sizes, bench.name) / (5 * 10**6)
    if bench.name in CODES:
        return 90 + getattr(sizes, CODES[bench.name]) / (5 * 10**6)
    if bench.name == "create":
        return 30 + sizes.create / (20 * 10**6)
    if bench.name == "idle":
        return 240 + sizes.idle_shares * 0.2 + sizes.idle_window * sizes.runs
    if bench.name in NATLAB_LOSS:  # libtorrent's uTP at 5% loss crawls: its rate until then
        return 120 + sizes.natlab_loss / 10**6
    return 120 + sizes.natlab / (5 * 10**6)


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every process below ``pid``, found in /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                parents[int(entry)] = (int(fields[1]), fields[19])
            except OSError:
                continue
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, started) in parents.items():
            if ppid == parent:
                found.append((child, started))
                frontier.append(child)
    return found


def kill_leftovers(processes: list[tuple[int, str]]) -> None:
    """SIGKILL what a sample started and failed to end, checking each PID is still the
    same process (same start time) before signalling it."""
    for pid, started in processes:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[19] != started:
                    continue
            os.kill(pid, signal.SIGKILL)
        except (OSError, IndexError):
            continue


def run_sample(argv: list, name: str, workdir: Path, out: Path, timeout: float) -> dict:
    out.unlink(missing_ok=True)
    child = Child(name, argv, workdir, cwd=str(workdir))
    started = time.monotonic()
    below, scanned = [], 0.0
    try:
        while child.alive():
            # Scanning /proc costs a few ms: once a second, to keep the suite quiet.
            if time.monotonic() - scanned >= 1.0:
                below = descendants(child.pid) or below
                scanned = time.monotonic()
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"over its {timeout:.0f} s bound")
            time.sleep(0.2)
    except BaseException as e:
        # Let the sample end its own processes (its SIGTERM handler unwinds them), then
        # make sure by PID.
        below = descendants(child.pid) or below
        child.stop(timeout=30)
        kill_leftovers(below)
        if isinstance(e, TimeoutError):
            return {"error": f"{e}; log: {child.output_tail(600)}"}
        raise
    kill_leftovers(below)
    if child.returncode != 0 or not out.exists():
        return {"error": f"exit {child.returncode}: {child.output_tail(1500)}"}
    return json.loads(out.read_text())


# -- peer-it samples run inside this script (bench_transfer does the work) ------------------
def sample_peerit(args) -> None:
    import bench_transfer

    if args.profile:
        inject_profiler(Path(args.profile))
    result = bench_transfer.one_run(args.size, args.downloaders, args.timeout)
    write_result(args.json, {
        "seconds": result["seconds"], "bytes": args.size, "rss": result["rss"],
        "cpu": result.get("cpu", {}),  # each daemon's, from the download command to the end
        "finished": result["finished"]})


def sample_natlab(args) -> None:
    """One bulk run of bench/bench_natlab.py (a fresh lab: port-restricted NATs on both
    sides, punched QUIC, or libtorrent over uTP; ``--loss`` per mille dropped on both
    routers). MB/s from the first byte to completion. libtorrent that has not finished
    within its bound reports the bytes it got in that time."""
    import bench_natlab
    work = Path(tempfile.mkdtemp(prefix="peerit-bench-natlab-"))
    try:
        payload = bench_natlab.random_file(work / "bulk.bin", args.size, seed=2)
        if args.tool == "libtorrent-utp":
            r = bench_natlab.run_libtorrent_utp(payload, work / "bulk", loss=args.loss,
                                                timeout=args.timeout - 60)
            write_result(args.json, {
                "seconds": r["bulk_seconds"], "bytes": r["size"], "done": r["done"],
                "first_byte": r["first_byte"], "total": r["total"],
                "cpu": {"seed": r["cpu"][0], "dl": r["cpu"][1]}})
            if r["done"] and not r["ok"]:
                raise RuntimeError("the downloaded file differs from the shared one")
            return
        r = bench_natlab.run_pair("port-restricted", "port-restricted", payload,
                                  work / "bulk", profile=False, timeout=args.timeout - 30,
                                  loss=args.loss)
        if not r["ok"]:
            raise RuntimeError("the downloaded file differs from the shared one")
        write_result(args.json, {
            "seconds": r["bulk_seconds"], "bytes": r["size"], "path": r["path"],
            "first_byte": r["first_byte"], "total": r["total"],
            "cpu": {"seed": r["cpu"][0], "dl": r["cpu"][1]}})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def inject_profiler(directory: Path) -> None:
    """Every daemon LocalSwarm starts runs under twistd's cProfile, one stats file per
    daemon (named after its data directory), written when it is stopped."""
    from peerit import local_swarm as localswarm
    directory.mkdir(parents=True, exist_ok=True)
    original = localswarm.twistd_argv

    def profiled(plugin, *args, **kwargs):
        argv = original(plugin, *args, **kwargs)
        if plugin != "peerit-daemon":
            return argv
        name = Path(args[list(args).index("--data-dir") + 1]).name
        at = argv.index("-n") + 1
        return argv[:at] + [f"--profile={directory / name}.prof", "--profiler=cprofile",
                            "--savestats"] + argv[at:]
    localswarm.twistd_argv = profiled


# -- figures --------------------------------------------------------------------------------
def figure(bench: Benchmark, result: dict) -> float | None:
    if "error" in result:
        return None
    if bench.unit == "MB/s":
        return result["bytes"] / result["seconds"] / 1e6
    if bench.unit == "s":
        return result["seconds"]
    return result["cpu_percent"]


def rss_text(samples: list[dict]) -> str:
    """Peak RSS of each process over the runs; N similar downloaders shown as one max."""
    peaks: dict[str, float] = {}
    for s in samples:
        for name, mib in s.get("rss", {}).items():
            key = name.rstrip("0123456789") + "*" if name[-1:].isdigit() else name
            peaks[key] = max(peaks.get(key, 0.0), mib)
    return ", ".join(f"{k} {v:.0f}" for k, v in peaks.items())


def cpu_text(samples: list[dict]) -> str:
    totals = [sum(s["cpu"].values()) for s in samples if s.get("cpu")]
    return f"{statistics.median(totals):.1f}" if totals else "-"


def error_summary(text: str) -> str:
    """The line that says what went wrong: the last exception line, else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Exit)\b", line)]
    return (raised or lines or ["?"])[-1][:200]


def compare(op: str, value: float, bound: float) -> bool:
    return value >= bound if op == ">=" else value <= bound if op == "<=" else value < bound


def table(benches: list[Benchmark], results: dict, skipped: dict, only) -> tuple[str, list]:
    lines, verdicts = [], []
    header = (f"{'benchmark / tool':<34}{'median':>9} {'range':>15}{'n':>3}  "
              f"{'CPU s':>6}  {'ratio peer-it/ref (range)':<27}{'target':<20} peak RSS MiB")
    for bench in benches:
        rows = [(tool, results.get((bench.name, tool))) for tool in bench.tools
                if selected(bench, tool, only)]
        if not rows:
            continue
        lines.append("")
        lines.append(f"{bench.title}  [{bench.unit}]   target: {bench.target}")
        ours = results.get((bench.name, bench.ours[0])) or []
        main_ref = next(iter(bench.ratio_goal), None) or next(
            (t for t in bench.tools if t not in bench.ours), None)
        for tool, samples in rows:
            label = f"  {tool}"
            if samples is None:
                lines.append(f"{label:<34}not run ({skipped.get((bench.name, tool), '')})")
                continue
            values = [figure(bench, s) for s in samples]
            good = [v for v in values if v is not None]
            errors = [s["error"] for s in samples if "error" in s]
            if not good:
                lines.append(f"{label:<34}failed: {error_summary(errors[0])}")
                if tool in bench.ours or bench.name in (*NATLAB, "idle"):
                    verdicts.append((bench.name, tool, "FAILED"))
                continue
            fmt = "{:.1f}" if bench.unit != "s" else "{:.2f}"
            med = fmt.format(statistics.median(good))
            rng = f"{fmt.format(min(good))}-{fmt.format(max(good))}"
            ratio, target = "", ""
            # A reference row: the first of ours against it. A second row of ours: it
            # against the main reference, "vs REF" saying so.
            mine, theirs, ref = (ours, samples, tool) if tool not in bench.ours else \
                (samples, results.get((bench.name, main_ref)) or [], main_ref)
            if tool != bench.ours[0]:
                per_round = [figure(bench, a) / figure(bench, b)
                             for a, b in zip(mine, theirs)
                             if figure(bench, a) is not None and figure(bench, b)]
                if per_round:
                    r = statistics.median(per_round)
                    ratio = f"{r:.2f} ({min(per_round):.2f}-{max(per_round):.2f})"
                    if tool in bench.ours:
                        ratio += f" vs {ref}"
                    goal = bench.ratio_goal.get(ref)
                    if goal:
                        ok = compare(goal[0], r, goal[1])
                        target = f"{goal[0]}{goal[1]}"
                        every = bench.ratio_every.get(ref)
                        if every:
                            worst = min(per_round) if every[0] == ">=" else max(per_round)
                            ok = ok and compare(every[0], worst, every[1])
                            target += f",all{every[0]}{every[1]}"
                        target += f" {'PASS' if ok else 'FAIL'}"
                        verdicts.append((bench.name, tool if tool in bench.ours else ref,
                                         "PASS" if ok else "FAIL"))
            if tool == "peer-it" and bench.name == "natlab":
                ok = statistics.median(good) >= 120
                target = f">=120 {'PASS' if ok else 'FAIL'}"
                verdicts.append((bench.name, tool, "PASS" if ok else "FAIL"))
            if tool == "peer-it" and bench.name == "idle":
                ok = statistics.median(good) < 2
                target = f"<2 {'PASS' if ok else 'FAIL'}"
                verdicts.append((bench.name, tool, "PASS" if ok else "FAIL"))
            note = f"  [{len(errors)} failed]" if errors else ""
            wakeups = [s["wakeups_per_s"] for s in samples if "wakeups_per_s" in s]
            if wakeups:
                note += f"  wake-ups {statistics.median(wakeups):.0f}/s"
            finishes = [s["finished"] for s in samples if len(s.get("finished", [])) > 1]
            if finishes:
                note += "  first/last done " + ", ".join(
                    f"{f[0]:.1f}/{f[-1]:.1f}" for f in finishes)
            starts = [s["daemon_start"] for s in samples if s.get("daemon_start")]
            if starts:
                note += f"  daemon start-up {statistics.median(starts):.2f} s (not counted)"
            paths = {s.get("path") for s in samples if s.get("path")}
            if paths:
                note += f"  path {', '.join(sorted(paths))}"
            lines.append(f"{label:<34}{med:>9} {rng:>15}{len(good):>3}  "
                         f"{cpu_text(samples):>6}  {ratio:<27}{target:<20} "
                         f"{rss_text(samples)}{note}")
        if bench.name == "transfer" and ours:
            peaks = [max(s["rss"].values()) for s in ours if s.get("rss")]
            if peaks:
                ok = max(peaks) <= 100
                lines.append(f"{'  peer-it daemon peak RSS (max)':<34}{max(peaks):>9.0f} "
                             f"{'':>15}{len(peaks):>3}  {'':>6}  {'':<27}"
                             f"{'<=100 ' + ('PASS' if ok else 'FAIL'):<20}")
                verdicts.append(("transfer", "peer-it RSS", "PASS" if ok else "FAIL"))
    return header + "\n" + "\n".join(lines), verdicts


def profile_report(directory: Path, top: int = 25) -> str:
    """The costliest functions of each profiled daemon, by own time and by cumulative."""
    import io
    import pstats
    out = io.StringIO()
    for path in sorted(directory.glob("*.prof")):
        stats = pstats.Stats(str(path), stream=out)
        stats.strip_dirs()
        out.write(f"\n===== {path.name}: by own time =====\n")
        stats.sort_stats("tottime").print_stats(top)
        out.write(f"===== {path.name}: by cumulative time =====\n")
        stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue() or f"no profiles in {directory}"


# -- the run --------------------------------------------------------------------------------
def versions() -> str:
    return ", ".join(package_versions(("twisted", "pyOpenSSL", "libtorrent", "magic-wormhole")))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("sample-peerit", help="(internal) one peer-it sample")
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--downloaders", type=int, default=1)
    p.add_argument("--json", required=True)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--profile")
    p = sub.add_parser("sample-natlab", help="(internal) one NAT-lab bulk sample")
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--loss", type=int, default=0, help="per mille, both routers")
    p.add_argument("--tool", choices=("peer-it", "libtorrent-utp"), default="peer-it")
    p.add_argument("--json", required=True)
    p.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, one run: checks that everything still runs")
    parser.add_argument("--only", help="comma-separated BENCHMARK or BENCHMARK/TOOL")
    parser.add_argument("--runs", type=int, help="runs of each (default 3, quick 1)")
    parser.add_argument("--budget", type=float, default=1800,
                        help="seconds for the whole suite (default 1800)")
    parser.add_argument("--json", help="also write every sample's result here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--profile", metavar="DIR",
                        help="run peer-it's daemons under cProfile, stats files in DIR")
    args = parser.parse_args(argv)
    install_sigterm_exit()
    if args.command == "sample-peerit":
        sample_peerit(args)
        return 0
    if args.command == "sample-natlab":
        sample_natlab(args)
        return 0

    sizes = QUICK if args.quick else Sizes()
    if args.runs:
        sizes.runs = args.runs
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    benches = benchmarks(sizes)
    known = {b.name for b in benches} | {f"{b.name}/{t}" for b in benches for t in b.tools}
    if only and not set(only) <= known:
        parser.error(f"unknown selector(s) {sorted(set(only) - known)}; "
                     f"known: {sorted(known)}")
    deadline = time.monotonic() + args.budget
    workdir = Path(tempfile.mkdtemp(prefix="peerit-bench-suite-"))
    profile = str(Path(args.profile).resolve()) if args.profile else None
    load_before = os.getloadavg()
    started = time.time()
    print(f"peer-it benchmark suite: {versions()}; {os.cpu_count()} cores; "
          f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; "
          f"work directory {workdir}", flush=True)
    results: dict[tuple, list] = {}
    skipped: dict[tuple, str] = {}
    sample_loads: list[float] = []
    try:
        files = {}
        for bench in benches:
            tools = [t for t in bench.tools if selected(bench, t, only)]
            if not tools:
                continue
            if bench.name in NATLAB:
                why = ("bench/bench_natlab.py not present" if not
                       (BENCH / "bench_natlab.py").exists() else
                       "needs root" if os.geteuid() != 0 else None)
                if why:
                    for tool in tools:
                        skipped[(bench.name, tool)] = why
                    continue
            if bench.name == "transfer" and set(tools) - {"peer-it"}:
                files["transfer"] = workdir / "transfer.bin"
                make_file(files["transfer"], sizes.transfer)
            if bench.name == "swarm" and set(tools) - {"peer-it"}:
                files["swarm"] = workdir / "swarm.bin"
                make_file(files["swarm"], sizes.swarm)
            if bench.name in SMALL:
                files[bench.name] = workdir / f"{bench.name}-source"
                if bench.name == "tree":
                    make_tree(files["tree"], sizes.tree_files, sizes.tree)
                else:
                    make_file(files[bench.name], getattr(sizes, bench.name))
            if bench.name in CODES:
                files[bench.name] = workdir / f"{bench.name}.bin"
                make_file(files[bench.name], getattr(sizes, CODES[bench.name]))
            if bench.name == "create":
                from bench_create import make_file as make_create_file, warm
                files["create"] = workdir / "create.bin"
                make_create_file(str(files["create"]), sizes.create)
                warm(str(files["create"]))
            set_aside = workdir / "set-aside"
            if bench.name in SMALL:  # see remove_download: trees deleted after the last round
                os.environ[SET_ASIDE_VARIABLE] = str(set_aside)
            # idle takes its runs (windows) inside one sample: its set-up is long.
            rounds = 1 if bench.name == "idle" else sizes.runs
            bound = sample_timeout(bench, sizes)
            for round_ in range(rounds):
                for tool in tools:
                    key = (bench.name, tool)
                    left = deadline - time.monotonic()
                    if left < min(bound, 30):
                        skipped[key] = "suite budget spent"
                        continue
                    out = workdir / f"{bench.name}-{tool}-{round_}.json"
                    argv = sample_argv(bench, tool, sizes, files, workdir, out,
                                       min(bound, left) - 5,
                                       profile if (bench.name, tool) ==
                                       ("transfer", "peer-it") else None)
                    sample_loads.append(os.getloadavg()[0])
                    print(f"  {bench.name}/{tool} run {round_ + 1}/{rounds} ...",
                          end="", flush=True)
                    result = run_sample(argv, f"{bench.name}-{tool}-{round_}", workdir, out,
                                        min(bound, left))
                    found = result.get("windows", [result]) if bench.name == "idle" else \
                        [result]
                    results.setdefault(key, []).extend(found)
                    value = figure(bench, found[0])
                    print(f" {value:.2f} {bench.unit}" if value is not None else
                          f" failed: {error_summary(found[0]['error'])}", flush=True)
            for key in list(skipped):
                if key in results:
                    del skipped[key]
            os.environ.pop(SET_ASIDE_VARIABLE, None)
            shutil.rmtree(set_aside, ignore_errors=True)
            for path in files.values():
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            files.clear()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()
    text, verdicts = table(benches, results, skipped, only)
    loads = sorted(sample_loads) or [load_after[0]]
    summary = (f"\nload average (1 min): {load_before[0]:.2f} before, "
               f"median {statistics.median(loads):.2f} at sample starts "
               f"(range {loads[0]:.2f}-{loads[-1]:.2f}), {load_after[0]:.2f} after; "
               f"{os.cpu_count()} cores; {time.time() - started:.0f} s in all")
    if args.quick:
        summary += ("\n--quick: sizes far below the targets' own, one run each: this checks "
                    "that everything runs; the verdicts mean nothing")
    print(text + summary)
    fails = [f"{b}/{t}" for b, t, v in verdicts if v != "PASS"]
    print(f"targets: {sum(v == 'PASS' for *_, v in verdicts)} met, "
          f"{len(fails)} not met{': ' + ', '.join(fails) if fails else ''}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "started": started, "versions": versions(), "load_before": load_before,
            "load_after": load_after, "sample_loads": sample_loads,
            "results": {f"{b}/{t}": v for (b, t), v in results.items()},
            "not_run": {f"{b}/{t}": v for (b, t), v in skipped.items()},
            "verdicts": verdicts}, indent=1))
    if args.profile:
        print(profile_report(Path(profile)))
    # Exit status says whether the harness ran, not whether peer-it met its targets.
    failed_runs = [k for k, v in results.items() if all("error" in s for s in v)]
    return 1 if failed_runs else 0


if __name__ == "__main__":
    sys.exit(main())
