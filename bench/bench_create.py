"""How fast `peerit-ctl create` hashes a share, against plain hashlib over the same file.

Writes a file of random-ish data in a temporary directory (removed afterwards), reads it once
so it sits in the page cache, then alternates runs of ``create_metainfo`` and of a plain
``hashlib.sha256`` loop (1 MiB reads) over the same file. Prints MB/s (10**6 bytes per second)
median and range for both, the median CPU seconds (all threads: the work done, which other
load on the machine does not inflate), and the ratio of the medians.

    .venv/bin/python bench/bench_create.py [--size 1Gi] [--runs 3] [--threads N]
        [--piece-length 512Ki]
"""

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peerit.units import parse_size  # noqa: E402
from peerit.share_builder import choose_piece_length, create_metainfo  # noqa: E402

READ_SIZE = 1 << 20


def make_file(path: str, size: int) -> None:
    # 64 MiB of random bytes repeated: content does not change SHA-256's speed, and
    # generating gigabytes of randomness would dominate the set-up time.
    pattern = os.urandom(min(size, 64 << 20)) or b""
    with open(path, "wb") as f:
        written = 0
        while written < size:
            chunk = pattern[:size - written]
            f.write(chunk)
            written += len(chunk)


def warm(path: str) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(8 << 20):
            pass


def plain_sha256(path: str) -> bytes:
    h = hashlib.sha256()
    buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.digest()


def timed(fn) -> tuple[float, float]:
    """Wall-clock seconds, and CPU seconds of the whole process (all threads)."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def describe(label: str, size: int, runs: list[tuple[float, float]]) -> float:
    rates = sorted(size / wall / 1e6 for wall, _ in runs)
    median = statistics.median(rates)
    cpu = statistics.median(cpu for _, cpu in runs)
    print(f"{label:<28} median {median:8.1f} MB/s   range {rates[0]:.1f}..{rates[-1]:.1f}"
          f"   CPU {cpu:.2f} s   ({len(rates)} runs)")
    return median


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1Gi", help="test file size, e.g. 256Mi, 1Gi (k, M, G are powers of 1000)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each (at least 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="hashing threads for create_metainfo (default: its own choice)")
    parser.add_argument("--piece-length", default=None,
                        help="piece length (default: what create would choose)")
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    runs = max(3, args.runs)
    piece_length = parse_size(args.piece_length) if args.piece_length else \
        choose_piece_length(size)
    directory = tempfile.mkdtemp(prefix="peerit-bench-create-")
    try:
        path = os.path.join(directory, "share.bin")
        make_file(path, size)
        warm(path)
        print(f"file {size} bytes, piece length {piece_length}, threads "
              f"{args.threads or 'default'}, cpus {os.cpu_count()}, "
              f"load average before {os.getloadavg()[0]:.2f}")
        create_runs, plain_runs = [], []
        for _ in range(runs):
            plain_runs.append(timed(lambda: plain_sha256(path)))
            create_runs.append(timed(lambda: create_metainfo(
                path, piece_length=piece_length, threads=args.threads)))
        plain = describe("hashlib.sha256, 1 MiB reads", size, plain_runs)
        create = describe("create_metainfo", size, create_runs)
        print(f"ratio create / plain: {create / plain:.2f}   "
              f"(load average after {os.getloadavg()[0]:.2f})")
    finally:
        shutil.rmtree(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
