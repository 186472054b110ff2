"""Suite 6, disk full: downloads into a small tmpfs (root only).

- Refused up front (files are preallocated): one clear error, nothing recorded, no files
  left; once the file system has room, the same download succeeds.
- Full in the middle (a daemon on a file system without ``fallocate``, so files are sparse):
  the transfer stops with one clear "no space left" error, the verified pieces stay
  verified and correct on disk, and ``resume`` after freeing space completes the download.
"""

import os
import subprocess
import time

import pytest

from reliability_kit import MiB, differing_bytes, random_file, share

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tmpfs")


@pytest.fixture
def small_fs(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def resize(mount, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)


def test_refused_up_front_then_succeeds_once_there_is_room(swarm, tmp_path, small_fs, figures):
    src = random_file(tmp_path / "src" / "eight.bin", 8 * MiB, seed=61)
    swarm.start_daemon("seed")
    swarm.start_daemon("dl")
    s = share(swarm, "seed", src)
    result = swarm.ctl("dl", "download", s["metainfo"], "--to", str(small_fs), check=False)
    assert result.returncode == 6, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert swarm.ctl_json("dl", "list") == [] and list(small_fs.iterdir()) == []
    resize(small_fs, "16m")
    swarm.ctl("dl", "download", s["metainfo"], "--to", str(small_fs), "--detach")
    swarm.wait_complete("dl", s["info_hash"], timeout=120)
    assert differing_bytes(small_fs / "eight.bin", src) == 0
    figures.update({"refusals": 1, "exit_code": 6, "error_lines": 1, "corrupt_bytes": 0})


def test_full_in_the_middle_stops_with_one_error_and_resumes(swarm, tmp_path, small_fs,
                                                              figures):
    src = random_file(tmp_path / "src" / "sparse.bin", 8 * MiB, seed=62)
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * (3 * MiB))  # leaves 3 MiB for an 8 MiB download
    swarm.start_daemon("seed", "--max-upload-rate", "4M")
    swarm.start_daemon("dl", module="tests.reliability.no_fallocate_daemon")
    s = share(swarm, "seed", src)
    swarm.ctl("dl", "download", s["metainfo"], "--to", str(small_fs), "--detach")
    failed = swarm.wait_for("dl", s["info_hash"], lambda st: st["state"] == "error",
                            timeout=60)
    assert "no space left on device" in failed["error"], failed
    assert 0 < failed["pieces_done"] < failed["pieces"], failed
    # It stays stopped (no retry storm) and the daemon logged no unhandled error.
    stopped_at = swarm.status("dl", s["info_hash"])
    log = swarm.daemons["dl"].process.log()
    assert "Unhandled Error" not in log and "Traceback" not in log, log[-3000:]
    # State consistent across a restart: the same verified pieces, all correct on disk.
    swarm.stop_daemon("dl")
    swarm.restart_daemon("dl")
    # Still full: after the restart it tries once more and stops with the same error.
    after = swarm.wait_for("dl", s["info_hash"], lambda st: st["state"] == "error",
                           timeout=60)
    assert after["pieces_done"] >= stopped_at["pieces_done"], (stopped_at, after)
    assert "no space left on device" in after["error"], after
    filler.unlink()
    resize(small_fs, "16m")  # room for the whole share now
    swarm.ctl("dl", "resume", s["info_hash"])
    resumed = time.monotonic()
    # Seconds: the seeder's old link to us (should it have missed the close) is replaced by
    # the new one instead of refusing it until its 120 s idle timeout.
    done = swarm.wait_complete("dl", s["info_hash"], timeout=120)
    resume_s = time.monotonic() - resumed
    assert differing_bytes(small_fs / "sparse.bin", src) == 0
    figures.update({"pieces_done_when_full": failed["pieces_done"],
                    "pieces": failed["pieces"], "error": failed["error"][:80],
                    "unhandled_errors": 0, "corrupt_bytes": 0,
                    "hash_failures": done["hash_failures"],
                    "resume_to_complete_s": round(resume_s, 1)})
