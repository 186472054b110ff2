"""What writing a download into the page cache costs on this machine (no peer-it code).

    .venv/bin/python bench/bench_pagecache.py --size 1024 --rounds 3

Each round pwrites SIZE MiB in 256 KiB blocks (the daemon's block size) into a new
preallocated file and prints wall and kernel seconds, then rewrites the same range of the
same file (pages already in the cache). On this VM the first pass is several times slower
than the second: the guest's fresh page-cache pages are first touched there (the 512 MiB
benchmark's downloader spends ~1.5-2 CPU seconds of its writer thread here, docs/benchmarks.md).
Every download pays it, peer-it's and libtorrent's alike. Files live in --dir (default: the
system temp dir) and are removed at the end.
"""

import argparse
import os
import resource
import tempfile
import time

BLOCK = 256 * 1024


def timed_writes(fd: int, blocks: list, count: int) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    started = time.perf_counter()
    for i in range(count):
        os.pwrite(fd, blocks[i % len(blocks)], i * BLOCK)
    wall = time.perf_counter() - started
    return wall, resource.getrusage(resource.RUSAGE_SELF).ru_stime - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    count = args.size * 1024 * 1024 // BLOCK
    blocks = [os.urandom(BLOCK) for _ in range(8)]
    paths = []
    try:
        for n in range(args.rounds):
            fd, path = tempfile.mkstemp(prefix="peerit-pagecache-", dir=args.dir)
            paths.append(path)
            os.posix_fallocate(fd, 0, count * BLOCK)
            fresh = timed_writes(fd, blocks, count)
            again = timed_writes(fd, blocks, count)
            os.close(fd)
            print(f"round {n + 1}: {args.size} MiB new pages: {args.size / fresh[0]:.0f} MB/s "
                  f"({fresh[0]:.2f} s, kernel {fresh[1]:.2f} s); same pages again: "
                  f"{args.size / again[0]:.0f} MB/s ({again[0]:.2f} s, kernel {again[1]:.2f} s)",
                  flush=True)
    finally:
        for path in paths:
            os.unlink(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
