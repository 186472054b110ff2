"""End to end with real processes on loopback: twistd tracker and daemons, peerit-ctl."""

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from peerit.testing.localswarm import LocalSwarm
from peerit.testing.processes import ctl_argv, environment
from peerit.testing.files import random_file, sha256_of, tree_digest  # noqa: F401

pytestmark = pytest.mark.integration

MiB = 1 << 20








@pytest.fixture
def swarm(tmp_path):
    with LocalSwarm(tmp_path / "swarm") as s:
        s.start_tracker()
        yield s


def share(swarm: LocalSwarm, name: str, path: Path) -> dict:
    p2p = swarm.workdir / f"{path.name}.p2p"
    return swarm.ctl_json(name, "share", str(path), "-o", str(p2p))


def test_file_and_directory_shared_by_one_downloaded_by_three(swarm, tmp_path):
    """A 64 MiB file and a directory tree (nested folders, an empty file) reach three
    downloaders byte for byte, through the real tracker, daemons and peerit-ctl."""
    big = random_file(tmp_path / "src" / "big.bin", 64 * MiB, seed=1)
    tree = tmp_path / "src" / "album"
    random_file(tree / "a" / "b" / "deep.bin", 3 * MiB + 17, seed=2)
    random_file(tree / "top.bin", 700_000, seed=3)
    (tree / "a" / "empty.txt").write_bytes(b"")
    for name in ("seed", "d1", "d2", "d3"):
        swarm.start_daemon(name)
    file_share = share(swarm, "seed", big)
    tree_share = share(swarm, "seed", tree)
    for name in ("d1", "d2", "d3"):
        for s in (file_share, tree_share):
            swarm.ctl(name, "download", s["metainfo"], "--to", str(tmp_path / name),
                      "--detach")
    for name in ("d1", "d2", "d3"):
        swarm.wait_complete(name, file_share["info_hash"])
        swarm.wait_complete(name, tree_share["info_hash"])
        assert sha256_of(tmp_path / name / "big.bin") == sha256_of(big)
        assert tree_digest(tmp_path / name / "album") == tree_digest(tree)
        assert (tmp_path / name / "album" / "a" / "empty.txt").stat().st_size == 0


def test_download_command_shows_progress_and_waits_until_verified(swarm, tmp_path):
    """`peerit-ctl download` (not detached) returns only when every piece is verified."""
    src = random_file(tmp_path / "src" / "movie.bin", 16 * MiB, seed=4)
    swarm.start_daemon("seed")
    swarm.start_daemon("dl")
    s = share(swarm, "seed", src)
    result = swarm.ctl("dl", "download", s["metainfo"], "--to", str(tmp_path / "out"),
                       "--json", "--timeout", "120")
    status = json.loads(result.stdout)
    assert status["state"] == "seeding"
    assert status["pieces_done"] == status["pieces"]
    assert sha256_of(tmp_path / "out" / "movie.bin") == sha256_of(src)


def test_killed_downloader_resumes_without_refetching_verified_pieces(swarm, tmp_path):
    """SIGKILL at about half way; after a restart the daemon goes on by itself, keeps every
    verified piece and fetches only the rest."""
    src = random_file(tmp_path / "src" / "half.bin", 64 * MiB, seed=5)
    swarm.start_daemon("seed", "--max-upload-rate", "16M")
    swarm.start_daemon("dl")
    s = share(swarm, "seed", src)
    swarm.ctl("dl", "download", s["metainfo"], "--to", str(tmp_path / "out"), "--detach")
    before = swarm.wait_for("dl", s["info_hash"],
                            lambda st: st["pieces_done"] >= st["pieces"] // 2, timeout=60)
    assert before["state"] != "seeding"
    swarm.kill_daemon("dl")
    swarm.restart_daemon("dl")
    after = swarm.status("dl", s["info_hash"])
    # Every piece it reported verified survived the kill.
    assert after["pieces_done"] >= before["pieces_done"], (before, after)
    done = swarm.wait_complete("dl", s["info_hash"], timeout=120)
    piece_length = done["size"] // done["pieces"]
    refetch_allowance = 8 * piece_length  # pieces in flight at the kill, endgame copies
    # "downloaded" counts bytes received since the restart.
    missing_at_kill = done["size"] - before["pieces_done"] * piece_length
    assert done["downloaded"] <= missing_at_kill + refetch_allowance, (before, done)
    assert done["downloaded"] < done["size"] * 0.6
    assert sha256_of(tmp_path / "out" / "half.bin") == sha256_of(src)


def test_seeder_leaving_mid_transfer_does_not_stall(swarm, tmp_path):
    """The first seeder dies mid-transfer; a second one that has every piece finishes it."""
    src = random_file(tmp_path / "src" / "leave.bin", 48 * MiB, seed=6)
    swarm.start_daemon("first", "--max-upload-rate", "8M")
    swarm.start_daemon("second", "--max-upload-rate", "8M")
    swarm.start_daemon("dl")
    s = share(swarm, "first", src)
    swarm.ctl_json("second", "share", str(src), "--p2p", s["metainfo"])
    swarm.wait_complete("second", s["info_hash"])
    swarm.ctl("dl", "download", s["metainfo"], "--to", str(tmp_path / "out"), "--detach")
    swarm.wait_for("dl", s["info_hash"], lambda st: st["pieces_done"] >= st["pieces"] // 4,
                   timeout=60)
    swarm.kill_daemon("first")
    swarm.wait_complete("dl", s["info_hash"], timeout=120)
    assert sha256_of(tmp_path / "out" / "leave.bin") == sha256_of(src)


def test_peer_serving_corrupt_blocks_is_banned_and_result_is_correct(swarm, tmp_path):
    """A daemon that flips bytes in what it uploads gets banned; the honest seeder's data
    completes the download, byte for byte."""
    src = random_file(tmp_path / "src" / "target.bin", 24 * MiB, seed=7)
    swarm.start_daemon("honest", "--max-upload-rate", "6M")
    swarm.start_daemon("liar", module="peerit.testing.corrupt_daemon")
    swarm.start_daemon("dl")
    s = share(swarm, "honest", src)
    swarm.ctl_json("liar", "share", str(src), "--p2p", s["metainfo"])
    swarm.wait_complete("liar", s["info_hash"])
    swarm.ctl("dl", "download", s["metainfo"], "--to", str(tmp_path / "out"), "--detach")
    done = swarm.wait_complete("dl", s["info_hash"], timeout=120)
    assert sha256_of(tmp_path / "out" / "target.bin") == sha256_of(src)
    assert done["banned"] >= 1, done
    assert done["hash_failures"] >= 2, done
    log = swarm.daemons["dl"].process.log()
    assert "banning" in log and "sent corrupt data twice" in log


def test_ctl_against_stopped_daemon_is_one_clear_line(tmp_path):
    """No daemon behind the socket: exit code 3 and a single line saying so."""
    result = subprocess.run(ctl_argv("status", "--control", f"unix:{tmp_path}/none.sock"),
                            capture_output=True, text=True, env=environment(), timeout=30)
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no peer-it daemon is listening" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_bad_p2p_given_to_download_is_one_clear_line(swarm, tmp_path):
    swarm.start_daemon("dl")
    bad = tmp_path / "bad.p2p"
    bad.write_bytes(b"this is not a p2p file at all")
    result = swarm.ctl("dl", "download", str(bad), check=False)
    assert result.returncode == 5
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_unknown_id_is_one_clear_line(swarm):
    swarm.start_daemon("dl")
    result = swarm.ctl("dl", "pause", "abcdef", check=False)
    assert result.returncode == 4
    assert result.stderr.strip() == "peerit-ctl: no share or download matches abcdef"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a command as another user")
def test_second_local_user_cannot_use_the_control_socket():
    """Another user is refused by the socket directory's permissions (0700); opening them up
    shows that the permissions, not something else, were what kept them out."""
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="peerit-perm-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        with LocalSwarm(base / "swarm") as local:
            os.chmod(local.workdir, 0o755)
            local.start_tracker()
            handle = local.start_daemon("owner")
            as_nobody = ("setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                         "--clear-groups")
            env = environment({"HOME": "/tmp"})
            result = subprocess.run(
                ctl_argv("list", "--control", handle.control, prefix=as_nobody),
                capture_output=True, text=True, env=env, timeout=60)
            assert result.returncode == 7, result.stderr
            assert "permission denied" in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
            # Positive control: with the directory and socket opened up it would work.
            os.chmod(handle.data_dir, 0o755)
            os.chmod(handle.data_dir / "control.sock", 0o777)
            opened = subprocess.run(
                ctl_argv("list", "--control", handle.control, prefix=as_nobody),
                capture_output=True, text=True, env=env, timeout=60)
            assert opened.returncode == 0, opened.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_download_without_peers_waits_and_never_hangs_the_cli(swarm, tmp_path):
    """Nobody seeds: the daemon keeps waiting and retrying; the CLI returns when told to."""
    src = random_file(tmp_path / "src" / "lonely.bin", 1 * MiB, seed=8)
    swarm.start_daemon("seed")
    swarm.start_daemon("dl")
    s = share(swarm, "seed", src)
    swarm.stop_daemon("seed")
    started = time.monotonic()
    result = swarm.ctl("dl", "download", s["metainfo"], "--to", str(tmp_path / "out"),
                       "--timeout", "3", check=False)
    assert result.returncode == 9, result.stderr
    assert time.monotonic() - started < 20
    assert "the daemon keeps going" in result.stderr
    assert swarm.status("dl", s["info_hash"])["state"] == "waiting for peers"
    # The seeder comes back: the waiting download completes on its own.
    swarm.restart_daemon("seed")
    swarm.wait_complete("dl", s["info_hash"], timeout=90)
    assert sha256_of(tmp_path / "out" / "lonely.bin") == sha256_of(src)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs")
def test_download_into_a_full_filesystem_is_one_clear_error(swarm, tmp_path):
    """A 4 MiB filesystem cannot hold 8 MiB: refused up front with exit code 6."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)],
                   check=True)
    try:
        src = random_file(tmp_path / "src" / "big8.bin", 8 * MiB, seed=9)
        swarm.start_daemon("seed")
        swarm.start_daemon("dl")
        s = share(swarm, "seed", src)
        result = swarm.ctl("dl", "download", s["metainfo"], "--to", str(small), check=False)
        assert result.returncode == 6, result.stderr
        assert "no space left on device" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert swarm.ctl_json("dl", "list") == []  # nothing half-added
        assert list(small.iterdir()) == []  # and no half-made files
    finally:
        swarm.close()  # the daemons hold files on the small filesystem
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_second_daemon_on_the_same_control_socket_exits_with_one_clear_line(swarm, tmp_path):
    """Two daemons cannot share a control socket: the second says so and exits non-zero."""
    first = swarm.start_daemon("first")
    from peerit.testing.processes import Process, twistd_argv
    second = Process(twistd_argv("peerit-daemon", "--data-dir", str(tmp_path / "second"),
                                 "--control", first.control),
                     tmp_path / "second.log")
    try:
        assert second.popen.wait(30) == 1
        log = second.log()
        assert "another peer-it daemon already uses the control socket" in log
        assert "Traceback" not in log
        assert swarm.ctl("first", "status", check=False).returncode == 0  # first unharmed
    finally:
        second.stop()


def test_announces_refused_for_load_are_retried(tmp_path):
    """A tracker that rate-limits hard refuses some announces; the daemon announces them
    again later, so every share becomes findable."""
    with LocalSwarm(tmp_path / "swarm") as local:
        local.start_tracker("--request-burst", "3", "--request-rate", "0.5")
        local.start_daemon("seed")
        local.start_daemon("dl")
        # The .p2p files first, then five Share calls back to back over one control
        # connection: a peerit-ctl process per share could space them out on a loaded
        # machine by more than the tracker's rate, and nothing would be refused.
        shares = []
        for n in range(5):
            src = random_file(tmp_path / "src" / f"f{n}.bin", 64 * 1024, seed=20 + n)
            p2p = local.workdir / f"{src.name}.p2p"
            created = json.loads(subprocess.run(
                ctl_argv("create", str(src), "-o", str(p2p), "--tracker",
                         local.tracker_endpoint, "--json"),
                env=environment(), check=True, capture_output=True, text=True,
                timeout=60).stdout)
            shares.append({"metainfo": str(p2p), "info_hash": created["info_hash"],
                           "src": src})
        share_all = ("import sys; from peerit.client import BlockingClient; "
                     "c = BlockingClient(sys.argv[1]); "
                     "[c.share(p, m) for p, m in zip(sys.argv[2::2], sys.argv[3::2])]")
        subprocess.run([sys.executable, "-c", share_all, local.daemons["seed"].control,
                        *[str(x) for s in shares for x in (s["src"], s["metainfo"])]],
                       env=environment(), check=True, timeout=60)
        log = local.daemons["seed"].process.wait_for_log("retrying in", timeout=30)
        assert "rate_limited" in log
        last = shares[-1]
        local.ctl("dl", "download", last["metainfo"], "--to", str(tmp_path / "out"),
                  "--detach")
        local.wait_complete("dl", last["info_hash"], timeout=90)
