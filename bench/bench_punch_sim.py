"""Simulated hole-punch success and time to a path, per NAT pair, over many seeds.

Runs peerit.nat.punch between two peers on peerit.testing.fake_internet (simulated clock: the
times are simulated seconds, not wall time). Default latencies: 0.5 ms LAN and 10 ms uplink
per side, so a round trip between the two homes is 42 ms. Roles alternate with the seed.

    .venv/bin/python bench/bench_punch_sim.py [--seeds 200] [--loss 0 0.05]
"""

import argparse
import statistics
import time

from peerit.testing.fake_internet import OPEN, punch_between

TYPES = (OPEN, "full-cone", "restricted-cone", "port-restricted", "symmetric")
UNKNOWN = {"my_mapping": "unknown", "their_mapping": "unknown"}


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_pair(a_type, b_type, seeds, loss, options=None):
    times, probes, reasons = [], [], {}
    for seed in range(seeds):
        outcome = punch_between(a_type, b_type, seed, loss=loss, a_controls=seed % 2 == 0,
                                a_options=options, b_options=options)
        if outcome.connected:
            times.append(outcome.time)
        else:
            for peer in (outcome.a, outcome.b):
                for _, reason in peer.failures:
                    reasons[reason] = reasons.get(reason, 0) + 1
        probes.append(outcome.a.host.sent + outcome.b.host.sent)
    return times, probes, reasons


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--loss", type=float, nargs="*", default=[0.0, 0.05])
    args = parser.parse_args()
    pairs = [(a, b) for i, a in enumerate(TYPES) for b in TYPES[i:]]
    started = time.perf_counter()
    print(f"{'NAT pair':38} {'loss':>5} {'success':>8} {'median s':>9} {'p95 s':>7} "
          f"{'max s':>7} {'datagrams':>9}  failures")
    for loss in args.loss:
        rows = [(f"{a} <-> {b}", a, b, None) for a, b in pairs]
        rows.append(("symmetric <-> port-restricted, no bday", "symmetric", "port-restricted",
                     UNKNOWN))
        for label, a, b, options in rows:
            times, probes, reasons = run_pair(a, b, args.seeds, loss, options)
            success = 100.0 * len(times) / args.seeds
            if times:
                median = f"{statistics.median(times):9.3f}"
                p95 = f"{percentile(times, 0.95):7.3f}"
                worst = f"{max(times):7.3f}"
            else:
                median, p95, worst = f"{'-':>9}", f"{'-':>7}", f"{'-':>7}"
            why = ", ".join(f"{r} x{n}" for r, n in sorted(reasons.items()))
            print(f"{label:38} {loss:5.2f} {success:7.1f}% {median} {p95} {worst} "
                  f"{statistics.median(probes):9.0f}  {why}")
    print(f"({args.seeds} seeds per row, {time.perf_counter() - started:.1f} s wall)")


if __name__ == "__main__":
    main()
