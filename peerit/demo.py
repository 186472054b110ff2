"""The README's first command: a local peer-it swarm on embedded defaults, end to end.

Starts a tracker and three daemons (alice, bob, carol) as real processes in a temporary
folder, has alice share a sample file, has bob and carol download it at once (with progress
bars), prints the verified SHA-256 of every copy, then stops everything and cleans up.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from peerit.client import BlockingClient
from peerit.local_swarm import LocalSwarm, sha256_of
from peerit.units import format_size, parse_size




def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="bin/demo", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="256Mi", help="sample file size (k, M, G = powers of 1000; Ki, Mi, Gi = of 1024) [default: 256Mi]")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder (logs, data) instead of deleting it")
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    from tqdm import tqdm

    work = Path(tempfile.mkdtemp(prefix="peerit-demo-"))
    print(f"peer-it demo in {work}")
    try:
        with LocalSwarm(work) as swarm:
            endpoint = swarm.start_tracker()
            print(f"tracker   {endpoint}")
            for name in ("alice", "bob", "carol"):
                swarm.start_daemon(name)
                print(f"daemon    {name} (control socket {swarm.daemons[name].control[5:]})")
            sample = work / "share" / "sample.bin"
            sample.parent.mkdir()
            with open(sample, "wb") as f:
                for _ in range(0, size, 1 << 20):
                    f.write(os.urandom(min(1 << 20, size)))
                f.truncate(size)
            shared = swarm.ctl_json("alice", "share", str(sample), "-o",
                                    str(work / "sample.p2p"))
            print(f"alice shares {sample.name} ({format_size(size)}), "
                  f"info-hash {shared['info_hash']}")
            started = time.monotonic()
            for name in ("bob", "carol"):
                swarm.ctl(name, "download", shared["metainfo"], "--to", str(work / name),
                          "--detach")
            bars = {name: tqdm(total=size, desc=f"{name:<6}", unit="B", unit_scale=True,
                               unit_divisor=1024, position=i, file=sys.stdout,
                               dynamic_ncols=True)
                    for i, name in enumerate(("bob", "carol"))}
            # Poll through the Python client API (peerit.client), as a script would.
            clients = {name: BlockingClient(swarm.daemons[name].control) for name in bars}
            pending = set(bars)
            while pending:
                for name in sorted(pending):
                    status = clients[name].status(shared["info_hash"])
                    bars[name].update(status.done - bars[name].n)
                    bars[name].set_postfix_str(
                        f"{status.peers} peers, {status.state}", refresh=True)
                    if status.state == "seeding":
                        pending.discard(name)
                    elif status.state == "error":
                        raise SystemExit(f"{name}: {status.error}")
                time.sleep(0.2)
            for bar in bars.values():
                bar.close()
            for client in clients.values():
                client.close()
            elapsed = time.monotonic() - started
            print(f"both downloads verified in {elapsed:.1f}s")
            source = sha256_of(sample)
            print(f"sha256 alice (source) {source}")
            ok = True
            for name in ("bob", "carol"):
                digest = sha256_of(work / name / sample.name)
                print(f"sha256 {name:<14} {digest}")
                ok &= digest == source
            print("all copies identical" if ok else "COPIES DIFFER")
            return 0 if ok else 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
