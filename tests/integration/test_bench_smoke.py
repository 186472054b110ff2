"""The benchmark harness still runs (bench/suite.py --quick), without its references' venv.

Only the pieces that need nothing beyond the project's own environment: peer-it 1->1 over
loopback against the plain TCP sendfile copy, and .p2p creation against hashlib. No speed is
asserted: speed is bench/'s business; this checks that every sample produced a figure, that
the table was printed, and that the suite left no process or work directory behind.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def processes_marked(marker: str) -> list[str]:
    """Processes whose environment carries ``marker``: everything the suite started
    inherits it, whoever else is running benchmarks on this machine."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if marker.encode() in environ:
            found.append(f"{entry}: {cmdline.decode(errors='replace')[:200]}")
    return found


def test_quick_suite_produces_every_figure_and_cleans_up(tmp_path):
    """Each selected sample yields a figure, the ratios are computed, the work directory is
    removed and no process started for the run outlives it."""
    results = tmp_path / "results.json"
    marker = f"peerit-bench-smoke-{uuid.uuid4().hex}"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "suite.py"), "--quick", "--budget", "90",
         "--only", "transfer/peer-it,transfer/tcp-sendfile,create", "--json", str(results)],
        capture_output=True, text=True, timeout=110, cwd=str(tmp_path),
        env={**os.environ, "PEERIT_BENCH_SMOKE": marker})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    data = json.loads(results.read_text())
    for key in ("transfer/peer-it", "transfer/tcp-sendfile", "create/peer-it",
                "create/hashlib"):
        samples = data["results"][key]
        assert samples and all("error" not in s for s in samples), (key, samples)
        assert all(s["seconds"] > 0 and s["bytes"] > 0 for s in samples), (key, samples)
    peerit = data["results"]["transfer/peer-it"][0]
    assert set(peerit["rss"]) == {"seed", "d0"} and all(peerit["rss"].values())

    assert "ratio peer-it/ref" in run.stdout
    assert re.search(r"tcp-sendfile\s+[\d.]+\s+[\d.]+-[\d.]+\s+1\s", run.stdout), run.stdout
    assert re.search(r"hashlib .*>=0\.8 (PASS|FAIL)", run.stdout), run.stdout
    assert "load average" in run.stdout

    workdir = re.search(r"work directory (\S+)", run.stdout).group(1)
    assert not Path(workdir).exists()
    assert processes_marked(marker) == []


def test_unknown_selector_is_refused():
    """A mistyped --only names the known selectors instead of silently running nothing."""
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "suite.py"), "--only", "transfr"],
        capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "transfer/peer-it" in run.stderr


def test_tracker_load_produces_every_figure_and_stops_its_tracker(tmp_path):
    """bench/tracker_load.py in a tiny configuration: every step answered in full, the
    summary beside the targets, RSS figures, and its tracker ended by the script."""
    results = tmp_path / "load.json"
    marker = f"peerit-bench-smoke-{uuid.uuid4().hex}"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "tracker_load.py"), "--sessions", "20",
         "--swarms-per-session", "5", "--pool", "50", "--rates", "200,400", "--seconds", "1",
         "--runs", "2", "--json", str(results)],
        capture_output=True, text=True, timeout=100, cwd=str(tmp_path),
        env={**os.environ, "PEERIT_BENCH_SMOKE": marker, "TMPDIR": str(tmp_path)})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["load.json"], "temporary files removed"

    data = json.loads(results.read_text())
    assert [(s["run"], s["offered"]) for s in data["steps"]] == [
        (1, 200), (1, 400), (2, 200), (2, 400)]
    for step in data["steps"]:
        assert step["errors"] == step["lost"] == step["unanswered"] == 0, step
        assert 0.8 * step["offered"] < step["achieved"] < 1.2 * step["offered"], step
        assert 0 < step["p50_ms"] <= step["p99_ms"] <= step["max_ms"], step
        assert step["us_per_request"] > 0 and step["tracker_cpu"] > 0, step
    # 100 entries may not grow the RSS by a page: only that the figures are there.
    assert {"bytes_per_entry", "bytes_per_session"} <= set(data["rss"])
    assert all(data["rss"][k] > 0 for k in ("idle", "sessions", "entries"))
    assert [r["offered"] for r in data["summary"]["rows"]] == [200, 400]
    assert "model name" not in data["machine"] and "CPUs" in data["machine"]
    assert re.search(r"p99 at 20,000 req/s\s+not offered\s+< 50 ms", run.stdout), run.stdout
    assert re.search(r"tracker RSS per swarm entry\s+-?\d+ B\s+<= 1024 B", run.stdout)
    assert processes_marked(marker) == []


def test_tracker_logic_alone_gives_a_figure():
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "tracker_load.py"), "--logic-only",
         "--sessions", "20", "--swarms-per-session", "5", "--pool", "50"],
        capture_output=True, text=True, timeout=100)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert re.search(r"session logic alone: [\d.]+ us/request", run.stdout), run.stdout


def test_tracker_load_refuses_bad_arguments_in_one_line():
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "tracker_load.py"), "--rates", "10k"],
        capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "--rates must be integers" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not "
                    "installed (bin/setup --test installs it)")
@pytest.mark.timeout(300)
def test_tracker_load_side_by_side_memory_redis_and_two_workers(tmp_path):
    """bench/tracker_load.py --modes memory,redis,redis-2 at a tiny size: every deployment
    answers every request, Redis's bytes per entry are measured, the side-by-side table and
    the ratios are printed, and no tracker or redis-server outlives the run."""
    results = tmp_path / "load.json"
    marker = f"peerit-bench-smoke-{uuid.uuid4().hex}"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "tracker_load.py"), "--sessions", "64",
         "--swarms-per-session", "8", "--pool", "200", "--rates", "500", "--seconds", "2",
         "--runs", "1", "--modes", "memory,redis,redis-2", "--json", str(results)],
        capture_output=True, text=True, timeout=280, cwd=str(tmp_path),
        env={**os.environ, "PEERIT_BENCH_SMOKE": marker})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    modes = json.loads(results.read_text())["modes"]
    assert list(modes) == ["memory", "redis", "redis-2"]
    for mode, result in modes.items():
        [step] = result["steps"]
        assert step["errors"] == step["lost"] == step["unanswered"] == 0, (mode, step)
        assert step["achieved"] > 0 and step["tracker_cpu"] > 0, (mode, step)
    assert modes["redis-2"]["processes"] == 2
    for mode in ("redis", "redis-2"):
        assert 0 < modes[mode]["redis"]["bytes_per_entry"] < 2000, modes[mode]["redis"]
    assert "side by side" in run.stdout and "redis-2 / redis" in run.stdout, run.stdout
    assert processes_marked(marker) == []


def run_quick_rows(tmp_path, only: list[str], budget: int) -> tuple:
    """bench/suite.py --quick on the rows ``only``: (its run, its JSON results); checks that
    it ran, that every row gave one sample without error and that it left no process."""
    results = tmp_path / "results.json"
    marker = f"peerit-bench-smoke-{uuid.uuid4().hex}"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "suite.py"), "--quick", "--budget", str(budget),
         "--only", ",".join(only), "--json", str(results)],
        capture_output=True, text=True, timeout=budget + 20, cwd=str(tmp_path),
        env={**os.environ, "PEERIT_BENCH_SMOKE": marker})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads(results.read_text())
    assert sorted(data["results"]) == sorted(only)
    for key in only:
        (sample,) = data["results"][key]
        assert "error" not in sample, (key, sample)
        assert sample["seconds"] > 0, (key, sample)
    assert processes_marked(marker) == []
    return run, data


def test_quick_small_transfer_rows_time_the_download_command(tmp_path):
    """The rows of one download from the command to the verified file (bench_small.py):
    a file to a freshly started daemon and a directory tree to a running one each give a
    time; libtorrent beside them when this environment has it. Nothing left behind."""
    import importlib.util
    only = ["small/peer-it-fresh", "tree/peer-it"]
    has_libtorrent = importlib.util.find_spec("libtorrent") is not None
    if has_libtorrent:
        only.append("small/libtorrent")
    run, data = run_quick_rows(tmp_path, only, 90)
    for key in only:
        assert data["results"][key][0]["bytes"] > 0, key
    assert data["results"]["tree/peer-it"][0]["bytes"] == 640 << 10
    assert data["results"]["small/peer-it-fresh"][0]["daemon_start"] > 0
    assert data["results"]["tree/peer-it"][0]["daemon_start"] is None
    assert re.search(r"peer-it-fresh .* daemon start-up [\d.]+ s", run.stdout), run.stdout
    if has_libtorrent:
        assert re.search(r"peer-it-fresh .* vs libtorrent<=0\.5 (PASS|FAIL)", run.stdout), \
            run.stdout
    workdir = re.search(r"work directory (\S+)", run.stdout).group(1)
    assert not Path(workdir).exists()


def test_quick_code_rows_time_receive_and_first_piece(tmp_path):
    """The short-code rows (bench_codes.py --sample): `peerit-ctl receive CODE` to a verified
    file, magic-wormhole beside it when this environment has its mailbox server and transit
    relay, and the first verified piece by link beside by .p2p. Nothing left behind."""
    import importlib.util
    only = ["code-small/peer-it", "first-piece/link", "first-piece/p2p"]
    has_wormhole = all(importlib.util.find_spec(m) is not None for m in
                       ("wormhole", "wormhole_mailbox_server", "wormhole_transit_relay"))
    if has_wormhole:
        only.append("code-small/magic-wormhole")
    run, data = run_quick_rows(tmp_path, only, 100)
    assert data["results"]["code-small/peer-it"][0]["bytes"] == 1 << 20
    assert re.search(r"^  p2p .* \d\.\d\d \(", run.stdout, re.M), run.stdout  # link/p2p ratio
    if has_wormhole:
        assert re.search(r"magic-wormhole .* <=1\.0 (PASS|FAIL)", run.stdout), run.stdout


def test_swarm_trace_gives_a_timeline(tmp_path):
    """bench_transfer.py --trace has every daemon write its swarm's events, and
    bench/timeline.py turns them into per-daemon milestones and an upload matrix that
    accounts for every byte each downloader received."""
    trace = tmp_path / "trace"
    marker = f"peerit-bench-smoke-{uuid.uuid4().hex}"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_transfer.py"), "--size", "2Mi",
         "--downloaders", "2", "--runs", "1", "--trace", str(trace)],
        capture_output=True, text=True, timeout=100, cwd=str(tmp_path),
        env={**os.environ, "PEERIT_BENCH_SMOKE": marker})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert len(list((trace / "run1").glob("*.jsonl"))) == 3

    summary_file = tmp_path / "timeline.json"
    shown = subprocess.run(
        [sys.executable, str(REPO / "bench" / "timeline.py"), str(trace / "run1"),
         "--json", str(summary_file)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(summary_file.read_text())
    assert sorted(summary["daemons"]) == ["d0", "d1", "seed"]
    for name in ("d0", "d1"):
        daemon = summary["daemons"][name]
        assert daemon["verified"] > 0 and daemon["complete"] is not None, daemon
        assert daemon["first_request"] <= daemon["first_block"] <= daemon["complete"]
        received = sum(n for pair, n in summary["matrix"].items()
                       if pair.endswith(f"->{name}"))
        assert received >= 2 << 20, (name, summary["matrix"])  # duplicates may add
    assert "MiB sent, row -> column" in shown.stdout
    assert processes_marked(marker) == []

    missing = subprocess.run(
        [sys.executable, str(REPO / "bench" / "timeline.py"), str(tmp_path / "none")],
        capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no traces" in missing.stderr
