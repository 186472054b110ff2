"""Who sent what to whom, and when: a swarm's timeline from its daemons' traces.

    bench/.venv/bin/python bench/bench_transfer.py --size 128Mi --downloaders 8 --runs 1 \\
        --trace /tmp/trace
    bench/.venv/bin/python bench/timeline.py /tmp/trace [--bin 0.25] [--json OUT]

Each daemon started with ``PEERIT_SWARM_TRACE=DIR`` writes one JSON-lines file per swarm
(``peerit/daemon/swarmtrace.py``). This reads every file of DIR (one swarm's) and prints, with
times in seconds from the first event of any daemon:

- per daemon: when its first peer attached, its first request, first block, first verified
  piece, when it first uploaded to anyone and to a downloader, when it completed, and its
  in-flight requests per peer (median / max);
- bytes sent from each daemon to each other (the upload matrix), and each daemon's share of
  uploads over time (``--bin`` seconds per column);
- each uploader's unchokes and chokes (why: interest, free slot, round) in order;
- a ``--json`` dump of the same for plotting.

Daemons are named by the order they appear in the traces: the seeder (the one that never
requested anything) ``seed``, then ``d0``, ``d1``, ... by peer id.
"""

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def load(directory: Path) -> dict[str, list[dict]]:
    """Peer id (12 hex) -> that daemon's events, in order."""
    traces: dict[str, list[dict]] = {}
    for path in sorted(directory.glob("*.jsonl")):
        events = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    break  # a daemon killed mid-line: keep what is whole
        if events and events[0].get("e") == "trace":
            traces.setdefault(events[0]["me"], []).extend(events[1:])
    return traces


def names_of(traces: dict[str, list[dict]]) -> dict[str, str]:
    seeders = [me for me, ev in traces.items() if not any(e["e"] == "request" for e in ev)]
    names = {me: ("seed" if len(seeders) == 1 else f"seed{i}") for i, me in
             enumerate(sorted(seeders))}
    for i, me in enumerate(sorted(set(traces) - set(seeders))):
        names[me] = f"d{i}"
    return names


def first(events: list[dict], kind: str, where=lambda e: True) -> float | None:
    return next((e["t"] for e in events if e["e"] == kind and where(e)), None)


def summarize(traces: dict[str, list[dict]], bin_seconds: float) -> dict:
    names = names_of(traces)
    name = lambda peer: names.get(peer, peer)  # noqa: E731
    t0 = min(e["t"] for ev in traces.values() for e in ev)
    end = max(e["t"] for ev in traces.values() for e in ev)
    seeders = {me for me, n in names.items() if n.startswith("seed")}
    daemons, matrix, rotations = {}, defaultdict(int), {}
    bins = int((end - t0) / bin_seconds) + 1
    upload_bins = {}
    for me, events in sorted(traces.items(), key=lambda kv: names[kv[0]]):
        rel = lambda t: None if t is None else round(t - t0, 3)  # noqa: E731
        in_flight = defaultdict(list)
        per_bin = [0] * bins
        for e in events:
            if e["e"] == "upload":
                matrix[(names[me], name(e["peer"]))] += e["length"]
                per_bin[int((e["t"] - t0) / bin_seconds)] += e["length"]
            elif e["e"] == "request":
                in_flight[name(e["peer"])].append(e["in_flight"])
        upload_bins[names[me]] = per_bin
        daemons[names[me]] = {
            "first_attach": rel(first(events, "attach")),
            "first_request": rel(first(events, "request")),
            "first_block": rel(first(events, "block")),
            "first_verified": rel(first(events, "verified")),
            "first_upload": rel(first(events, "upload")),
            "first_upload_to_downloader": rel(first(
                events, "upload", lambda e: e["peer"] not in seeders)),
            "complete": rel(first(events, "complete")),
            "verified": sum(e["e"] == "verified" for e in events),
            "hash_failed": sum(e["e"] == "hash_failed" for e in events),
            "in_flight": {p: (statistics.median(v), max(v)) for p, v in
                          sorted(in_flight.items())},
            "peer_chokes": sum(e["e"] == "peer_choke" for e in events),
            "rejects": sum(e["e"] == "peer_reject" for e in events),
        }
        rotations[names[me]] = [(rel(e["t"]), e["e"], name(e["peer"]), e.get("why"))
                                for e in events if e["e"] in ("unchoke", "choke")]
    return {"t0": t0, "seconds": round(end - t0, 3), "daemons": daemons,
            "matrix": {f"{a}->{b}": n for (a, b), n in sorted(matrix.items())},
            "upload_bins": upload_bins, "bin_seconds": bin_seconds, "rotations": rotations}


def fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(summary: dict) -> str:
    out = [f"timeline over {summary['seconds']:.2f} s (times from the first event)", ""]
    out.append(f"{'daemon':<7}{'attach':>7}{'1st req':>8}{'1st blk':>8}{'1st ver':>8}"
               f"{'1st up':>7}{'up->dl':>7}{'done':>7}{'pieces':>7}  in flight per peer "
               f"(median/max)")
    for n, d in summary["daemons"].items():
        flight = " ".join(f"{p}:{m:.0f}/{x}" for p, (m, x) in d["in_flight"].items())
        out.append(f"{n:<7}{fmt(d['first_attach']):>7}{fmt(d['first_request']):>8}"
                   f"{fmt(d['first_block']):>8}{fmt(d['first_verified']):>8}"
                   f"{fmt(d['first_upload']):>7}{fmt(d['first_upload_to_downloader']):>7}"
                   f"{fmt(d['complete']):>7}{d['verified']:>7}  {flight}"
                   + (f"  hash failures {d['hash_failed']}" if d["hash_failed"] else "")
                   + (f"  choked by peers {d['peer_chokes']}x" if d["peer_chokes"] else "")
                   + (f"  rejects {d['rejects']}" if d["rejects"] else ""))
    names = list(summary["daemons"])
    out += ["", "MiB sent, row -> column:", " " * 7 + "".join(f"{n:>7}" for n in names)
            + f"{'total':>8}"]
    for a in names:
        row = [summary["matrix"].get(f"{a}->{b}", 0) / (1 << 20) for b in names]
        out.append(f"{a:<7}" + "".join(f"{v:>7.1f}" if v else f"{'.':>7}" for v in row)
                   + f"{sum(row):>8.1f}")
    width = summary["bin_seconds"]
    out += ["", f"MiB uploaded per {width:g} s, by uploader:"]
    for n, bins in summary["upload_bins"].items():
        out.append(f"{n:<7}" + "".join(f"{b / (1 << 20):>5.0f}" for b in bins))
    out += ["", "unchokes (+) and chokes (-) by each uploader, with why:"]
    for n, events in summary["rotations"].items():
        if events:
            out.append(f"{n:<7}" + ", ".join(
                f"{t:.2f}{'+' if e == 'unchoke' else '-'}{p}({why})" for t, e, p, why in events))
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="the PEERIT_SWARM_TRACE directory")
    parser.add_argument("--bin", type=float, default=0.25, help="seconds per column")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)
    traces = load(args.directory)
    if not traces:
        print(f"timeline: no traces in {args.directory}", file=sys.stderr)
        return 2
    summary = summarize(traces, args.bin)
    print(report(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
