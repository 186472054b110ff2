"""One timed pass over a file: plain ``hashlib.sha256`` (the limit), or peer-it's
``create_metainfo`` (what ``peerit-ctl create`` does), in a fresh process each.

The file is expected in the page cache (the suite reads it once first), so both measure
hashing and Python overhead, not the disk. The functions are bench/bench_create.py's.

    python hash_file.py --file F --what hashlib|create --json OUT [--piece-length N]
"""

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))

from common import install_sigterm_exit, proc_peak_rss_mib, write_result  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", required=True)
    parser.add_argument("--what", choices=["hashlib", "create"], required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--piece-length", type=int, default=None)
    args = parser.parse_args()
    install_sigterm_exit()
    from bench_create import plain_sha256, timed
    size = Path(args.file).stat().st_size
    if args.what == "hashlib":
        wall, cpu = timed(lambda: plain_sha256(args.file))
    else:
        from peerit.share_builder import choose_piece_length, create_metainfo
        piece_length = args.piece_length or choose_piece_length(size)
        wall, cpu = timed(lambda: create_metainfo(args.file, piece_length=piece_length))
    peak = proc_peak_rss_mib(os.getpid())  # VmHWM: this program's own, unlike ru_maxrss
    write_result(args.json, {"seconds": wall, "bytes": size,
                             "rss": {args.what: peak}, "cpu": {args.what: cpu}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
