"""Suite 1, crash safety: SIGKILL at random moments loses nothing and corrupts nothing.

- A downloader killed at random moments of one download (4 in the short form, 20 in the long
  one), restarted each time. Its only seeder is a recording hostile peer in ``honest`` mode
  that logs every request, so "no verified piece is fetched twice" is checked exactly: a piece
  in the persisted ``verified`` set at a kill is never requested after that kill. At every
  kill each persisted piece is hashed on disk (the daemon never reports an unverified piece),
  and the same peer downloads from the daemon and checks every block it is served.
- A seeder killed at random moments (2 / 5) while a daemon downloads from it.
- The daemon and ``peerit-ctl share`` killed while a share is being created.
- A process writing the resume state killed at random moments (20 / 200): the SQLite file is
  always intact and holds at least every write acknowledged before the kill.
"""

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from types import SimpleNamespace

from reliability_kit import (MiB, differing_bytes, pick, random_file, share, start_badpeer,
                             wait_until)

from peerit.bitfield import Bitfield
from peerit.daemon.state import StateDB
from peerit.metainfo import Metainfo
from peerit.testing.processes import ctl_argv, environment


def persisted_verified(data_dir, info_hash: bytes, piece_count: int) -> Bitfield:
    """The verified bitfield a (dead) daemon left in its state database."""
    path = data_dir / "state.sqlite3"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT verified FROM swarms WHERE info_hash=?",
                         (info_hash,)).fetchone()
    finally:
        db.close()
    verified = row[0] if row is not None else None
    # Pieces verified since the last full write are in the daemon's journal; merge them
    # with the daemon's own reader (read-only here: the daemon is dead).
    if hasattr(StateDB, "_merge_journal"):
        journal = data_dir / "journal" / f"{info_hash.hex()}.log"
        verified = StateDB._merge_journal(
            SimpleNamespace(_journal_path=lambda _: str(journal)), info_hash, verified,
            piece_count)
    if verified is None:
        return Bitfield(piece_count)
    return Bitfield(piece_count, verified)


def bad_pieces_on_disk(path, metainfo: Metainfo, pieces) -> list[int]:
    bad = []
    with open(path, "rb") as f:
        for piece in pieces:
            f.seek(piece * metainfo.piece_length)
            data = f.read(metainfo.piece_size(piece))
            if hashlib.sha256(data).digest() != metainfo.piece_hash(piece):
                bad.append(piece)
    return bad


def test_downloader_killed_at_random_moments_loses_and_refetches_nothing(
        swarm, tmp_path, figures):
    kills = pick(3, 20)
    size = pick(16, 64) * MiB
    rng = random.Random(11)
    src = random_file(tmp_path / "src" / "crash.bin", size, seed=11)
    swarm.start_daemon("maker")
    s = share(swarm, "maker", src)
    swarm.stop_daemon("maker")  # the recording peer is the only seeder
    metainfo = Metainfo.read(s["metainfo"])
    info_hash = metainfo.info_hash
    _, report_path = start_badpeer(swarm, "seeder", "honest", s["metainfo"], src,
                                   "--rate", str(pick(2, 1) * MiB), "--check-uploads")
    swarm.start_daemon("dl")
    out = tmp_path / "out"
    swarm.ctl("dl", "download", s["metainfo"], "--to", str(out), "--detach")
    moments = sorted(rng.uniform(0.03, 0.9) for _ in range(kills))
    history = []  # (kill time, persisted verified pieces)
    recoveries = []
    unverified_reported = 0
    for fraction in moments:
        target = int(fraction * metainfo.piece_count)
        try:
            status = swarm.wait_for("dl", s["info_hash"],
                                    lambda st: st["pieces_done"] >= target
                                    or st["state"] == "seeding", timeout=120, interval=0.05)
        except TimeoutError:
            raise
        if status["state"] == "seeding":
            break
        swarm.kill_daemon("dl")
        killed_at = time.time()
        verified = persisted_verified(swarm.daemons["dl"].data_dir, info_hash,
                                      metainfo.piece_count)
        # Whatever it reported verified must be verified on disk and remembered.
        assert len(verified) >= status["pieces_done"], (status, len(verified))
        unverified_reported += len(bad_pieces_on_disk(out / "crash.bin", metainfo, verified))
        history.append((killed_at, set(verified)))
        restart = time.monotonic()
        swarm.restart_daemon("dl")
        after = swarm.wait_for("dl", s["info_hash"], lambda st: st["state"] != "checking",
                               timeout=60, interval=0.05)
        recoveries.append(time.monotonic() - restart)
        assert after["pieces_done"] >= len(verified), (after, len(verified))
    done = swarm.wait_complete("dl", s["info_hash"], timeout=300)
    assert unverified_reported == 0
    assert differing_bytes(out / "crash.bin", src) == 0

    wait_until(lambda: json.loads(report_path.read_text())["checked_blocks"] > 0, 30,
               what="the seeder to check blocks served by the downloader")
    report = json.loads(report_path.read_text())
    refetched = set()
    for killed_at, verified in history:
        for piece, offset, length, when in report["requests"]:
            if when > killed_at and piece in verified:
                refetched.add(piece)
    assert refetched == set(), sorted(refetched)
    assert report["mismatched_blocks"] == 0, report["mismatches"]
    fetched = sum(r[2] for r in report["requests"])
    figures.update({
        "size_mib": size // MiB, "pieces": metainfo.piece_count, "kills": len(history),
        "verified_pieces_refetched": len(refetched), "unverified_pieces_reported": 0,
        "corrupt_bytes": 0, "blocks_served_by_downloader_checked": report["checked_blocks"],
        "blocks_served_unverified": report["mismatched_blocks"],
        "bytes_requested_over_size": round(fetched / size, 3),
        "restart_to_running_s_max": round(max(recoveries, default=0), 2),
        "restart_to_running_s_median": round(sorted(recoveries)[len(recoveries) // 2], 2)
        if recoveries else 0,
        "hash_failures": done["hash_failures"],
    })


def test_seeder_killed_at_random_moments_download_still_completes(swarm, tmp_path, figures):
    kills = pick(2, 5)
    size = pick(16, 48) * MiB
    rng = random.Random(12)
    src = random_file(tmp_path / "src" / "seeded.bin", size, seed=12)
    swarm.start_daemon("seed", "--max-upload-rate", pick("4M", "1M"))
    s = share(swarm, "seed", src)
    swarm.start_daemon("dl")
    swarm.ctl("dl", "download", s["metainfo"], "--to", str(tmp_path / "out"), "--detach")
    pieces = swarm.status("seed", s["info_hash"])["pieces"]
    recoveries = []
    for fraction in sorted(rng.uniform(0.05, 0.9) for _ in range(kills)):
        status = swarm.wait_for("dl", s["info_hash"],
                                lambda st: st["pieces_done"] >= fraction * pieces
                                or st["state"] == "seeding", timeout=120, interval=0.05)
        if status["state"] == "seeding":
            break
        swarm.kill_daemon("seed")
        restart = time.monotonic()
        swarm.restart_daemon("seed")
        # The seeder's data did not change: back to seeding without hashing it all again.
        swarm.wait_for("seed", s["info_hash"], lambda st: st["state"] == "seeding",
                       timeout=60, interval=0.05)
        recoveries.append(time.monotonic() - restart)
    done = swarm.wait_complete("dl", s["info_hash"], timeout=180)
    assert differing_bytes(tmp_path / "out" / "seeded.bin", src) == 0
    assert done["hash_failures"] == 0
    figures.update({"size_mib": size // MiB, "seeder_kills": len(recoveries),
                    "corrupt_bytes": 0,
                    "seeder_restart_to_seeding_s_max": round(max(recoveries, default=0), 2)})


def test_kill_while_a_share_is_being_created(swarm, tmp_path, figures):
    """``peerit-ctl share`` hashes, writes the .p2p atomically, then asks the daemon. Killing
    the CLI or the daemon at any moment of that leaves either no share or a whole one, never
    a half-written .p2p, and the share can simply be made again."""
    rounds = pick(2, 12)
    rng = random.Random(13)
    src = random_file(tmp_path / "src" / "new.bin", 48 * MiB, seed=13)
    swarm.start_daemon("seed")
    outcomes = {"no_share": 0, "whole_share": 0}
    for n in range(rounds):
        p2p = swarm.workdir / f"new{n}.p2p"
        ctl = subprocess.Popen(ctl_argv("share", str(src), "-o", str(p2p), "--control",
                                        swarm.daemons["seed"].control),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=environment(), start_new_session=True)
        time.sleep(rng.uniform(0.0, 3.0))
        victim = "ctl" if n % 2 == 0 else "daemon"
        if victim == "ctl":
            if ctl.poll() is None:
                os.kill(ctl.pid, signal.SIGKILL)
        else:
            swarm.kill_daemon("seed")
        ctl.wait(30)
        if victim == "daemon":
            swarm.restart_daemon("seed")
        leftovers = [p.name for p in swarm.workdir.iterdir()
                     if p.name.startswith(f".new{n}.p2p.")]
        assert leftovers == [], leftovers
        listed = swarm.ctl_json("seed", "list")
        if p2p.exists():
            Metainfo.read(str(p2p))  # whole and valid, or this raises
        if listed:
            outcomes["whole_share"] += 1
            assert [t["state"] for t in listed] in (["seeding"], ["checking"]), listed
            swarm.ctl("seed", "remove", listed[0]["info_hash"])
        else:
            outcomes["no_share"] += 1
        # The share can be made again at once.
        again = swarm.ctl_json("seed", "share", str(src), "-o", str(p2p), "--force")
        swarm.wait_complete("seed", again["info_hash"], timeout=60)
        swarm.ctl("seed", "remove", again["info_hash"])
    figures.update({"kills": rounds, **outcomes, "half_written_p2p": 0})


_WRITER = r"""
import sys
from peerit.daemon.state import StateDB, SwarmRecord
db = StateDB(sys.argv[1])
h = b"\x01" * 32
db.add(SwarmRecord(h, b"m", "/r", "download", False, None, None, None, 0.0, None))
n = 0
while True:
    n += 1
    db.set_verified(h, n.to_bytes(8, "big") * 64)
    sys.stdout.write(f"{n}\n")
    sys.stdout.flush()
"""


def test_kill_while_the_state_is_being_written(tmp_path, figures):
    """A process commits resume-state updates as fast as it can and is SIGKILLed at random
    moments; every time, the database opens intact and holds at least the last update that
    was acknowledged before the kill (and a value that was really written, never a mix)."""
    kills = pick(10, 200)
    rng = random.Random(14)
    path = tmp_path / "state.sqlite3"
    lost = torn = 0
    for _ in range(kills):
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)],
                                  stdout=subprocess.PIPE, env=environment())
        acknowledged = 0
        deadline = time.monotonic() + rng.uniform(0.15, 0.6)
        while time.monotonic() < deadline:
            line = writer.stdout.readline()
            if not line:
                break
            acknowledged = int(line)
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        (value,) = db.execute("SELECT verified FROM swarms").fetchone()
        db.close()
        if value is None:  # killed before this run's first update
            lost += acknowledged > 0
            continue
        parts = {value[i:i + 8] for i in range(0, len(value), 8)}
        if len(value) != 512 or len(parts) != 1:
            torn += 1
        elif int.from_bytes(value[:8], "big") < acknowledged:
            lost += 1
    assert (lost, torn) == (0, 0)
    figures.update({"kills": kills, "acknowledged_writes_lost": lost, "torn_values": torn,
                    "integrity_check_failures": 0})
