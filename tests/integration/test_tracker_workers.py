"""Several tracker processes sharing one swarm table in Redis, with real daemons: sessions on
different workers, a worker killed, Redis restarted. Each test starts its own redis-server on
a free loopback port (no persistence) and stops it by PID."""

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from peerit.addresses import TrackerAddress
from peerit.identity import Identity
from peerit.metainfo import Metainfo
from peerit.testing.localswarm import LocalSwarm
from peerit.testing.processes import Process, environment, twistd_argv
from peerit.testing.redis import RedisServer, redis_server_path

from test_daemon import MiB, random_file, sha256_of, share

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(redis_server_path() is None, reason="redis-server is not installed "
                       "(bin/setup --test installs it)"),
]

TRACKER_OPTIONS = ("--workers", "2", "--stun", "udp:0:interface=127.0.0.1",
                   "--relay", "tcp:0:interface=127.0.0.1", "--idle-timeout", "30")
DAEMON_UDP = ("--udp", "udp:0:interface=127.0.0.1")


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def swarm(tmp_path, redis):
    with LocalSwarm(tmp_path / "swarm") as s:
        s.start_tracker("--store", redis.url, *TRACKER_OPTIONS)
        yield s


def peer_id_of(swarm, name) -> bytes:
    return Identity.load_or_create(str(swarm.daemons[name].data_dir)).peer_id


def worker_of(redis, swarm, name, timeout: float = 20.0) -> bytes:
    """Which worker holds the daemon's session: the owner Redis records for its peer id."""
    key = b"peerit:p:" + peer_id_of(swarm, name)
    deadline = time.monotonic() + timeout
    while True:
        owner = redis.command("HGET", key, "o")
        if owner:
            return owner.rpartition(b"/")[2].split(b"-")[0]     # HOST/workerN-RANDOM
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} has no session in Redis after {timeout}s")
        time.sleep(0.1)


def start_on_another_worker(redis, swarm, name, other: bytes, *args, attempts: int = 12):
    """Start daemon ``name`` until the kernel's hash puts its session on a worker other than
    ``other`` (each start connects from a new source port)."""
    for _ in range(attempts):
        swarm.start_daemon(name, *args)
        worker = worker_of(redis, swarm, name)
        if worker != other:
            return worker
        swarm.stop_daemon(name)
        # Its entry goes with the session: wait, so the next start is not read as this one.
        key = b"peerit:p:" + peer_id_of(swarm, name)
        deadline = time.monotonic() + 10
        while redis.command("EXISTS", key) and time.monotonic() < deadline:
            time.sleep(0.05)
    raise AssertionError(f"{name} landed on {other!r} {attempts} times in a row")


def download(swarm, name, shared, out):
    swarm.ctl(name, "download", shared["metainfo"], "--to", str(out), "--detach")
    swarm.wait_complete(name, shared["info_hash"], timeout=120)


@pytest.mark.parametrize("path", ["tcp", "quic", "relay"])
def test_daemons_on_different_workers_find_each_other_and_transfer(swarm, redis, tmp_path,
                                                                   path):
    """A seeder on one worker and a downloader on the other: the downloader learns of the
    seeder from the shared table and gets the file over the path it is allowed: TCP, a punch
    coordinated between the two workers, or a relay token issued by one worker."""
    src = random_file(tmp_path / "src" / f"{path}.bin", 8 * MiB, seed=21)
    # Rate-limited so that the link is still up when we look at its path.
    swarm.start_daemon("seed", *DAEMON_UDP, "--max-upload-rate", "1M")
    seed_worker = worker_of(redis, swarm, "seed")
    dl_worker = start_on_another_worker(redis, swarm, "dl", seed_worker, *DAEMON_UDP,
                                        "--paths", path)
    assert {seed_worker, dl_worker} == {b"worker0", b"worker1"}
    shared = share(swarm, "seed", src)
    swarm.ctl("dl", "download", shared["metainfo"], "--to", str(tmp_path / "out"), "--detach")
    swarm.wait_for("dl", shared["info_hash"], lambda s: s["peers"] > 0, timeout=60)
    links = swarm.ctl_json("dl", "peers", shared["info_hash"])["peers"]
    assert [link["path"] for link in links] == [path], links
    swarm.wait_complete("dl", shared["info_hash"], timeout=120)
    assert sha256_of(tmp_path / "out" / src.name) == sha256_of(src)


def test_worker_killed_mid_swarm_its_daemons_come_back_on_the_others(swarm, redis,
                                                                     tmp_path):
    """SIGKILL the worker holding the seeder's session: the seeder reconnects to the same
    address (another worker, or the killed one restarted), its entry comes back, and a new
    downloader still gets the file."""
    src = random_file(tmp_path / "src" / "k.bin", 2 * MiB, seed=22)
    swarm.start_daemon("seed")
    shared = share(swarm, "seed", src)
    swarm.start_daemon("dl1")
    download(swarm, "dl1", shared, tmp_path / "out1")
    worker = worker_of(redis, swarm, "seed")
    index = int(worker.removeprefix(b"worker"))
    data_dir = swarm.workdir / "tracker"
    pid = int((data_dir / f"worker-{index}.ready").read_text().split()[0])
    owner_before = redis.command("HGET", b"peerit:p:" + peer_id_of(swarm, "seed"), "o")
    os.kill(pid, signal.SIGKILL)
    entry = b"peerit:s:" + bytes.fromhex(shared["info_hash"])
    seed_id = peer_id_of(swarm, "seed")
    deadline = time.monotonic() + 60
    while True:
        owner = redis.command("HGET", b"peerit:p:" + seed_id, "o")
        if owner and owner != owner_before and redis.command("HGET", entry, seed_id):
            break
        assert time.monotonic() < deadline, "the seeder's entry did not come back"
        time.sleep(0.2)
    swarm.stop_daemon("dl1")
    swarm.start_daemon("dl2")
    download(swarm, "dl2", shared, tmp_path / "out2")
    assert sha256_of(tmp_path / "out2" / src.name) == sha256_of(src)
    assert f"tracker worker {index} (pid {pid}) ended (exit None, signal 9)" in \
        swarm.tracker_process.log()


def test_redis_restarted_empty_mid_swarm_table_is_whole_again(swarm, redis, tmp_path):
    """Redis stops (sessions stay up) and comes back empty on the same port: the workers
    write their peers back at once, and a new downloader gets the file."""
    src = random_file(tmp_path / "src" / "r.bin", 2 * MiB, seed=23)
    swarm.start_daemon("seed")
    shared = share(swarm, "seed", src)
    seed_id = peer_id_of(swarm, "seed")
    entry = b"peerit:s:" + bytes.fromhex(shared["info_hash"])
    worker_of(redis, swarm, "seed")
    redis.stop()
    time.sleep(1.0)
    redis.start()
    deadline = time.monotonic() + 20
    while not redis.command("HGET", entry, seed_id):
        assert time.monotonic() < deadline, "the seeder's entry was not written back"
        time.sleep(0.1)
    swarm.start_daemon("dl")
    download(swarm, "dl", shared, tmp_path / "out")
    assert sha256_of(tmp_path / "out" / src.name) == sha256_of(src)
    log = swarm.tracker_process.log()
    assert "unavailable" in log and "is back" in log, log[-3000:]


def start_tracker_on(swarm, name: str, address: str, store: str) -> tuple[Process, str]:
    """Another tracker process on ``address`` with the first one's key (as a second host
    of one deployment would have), its own STUN and relay on that address."""
    data = swarm.workdir / name
    shutil.copytree(swarm.workdir / "tracker", data,
                    ignore=shutil.ignore_patterns("tracker.endpoint*"))
    process = Process(twistd_argv(
        "peerit-tracker", "--listen", f"tcp:0:interface={address}", "--data-dir", str(data),
        "--store", store, "--stun", f"udp:0:interface={address}",
        "--relay", f"tcp:0:interface={address}", "--idle-timeout", "30"),
        swarm.workdir / f"{name}.log")
    process.wait_for_path(data / "tracker.endpoint", 30)
    return process, (data / "tracker.endpoint").read_text().strip()


def test_relay_between_sessions_on_two_hosts_meets_at_the_issuing_process(redis, tmp_path):
    """Two tracker processes on two addresses (two "hosts": each relay is reachable only on
    its own) over one Redis, a seeder pinned to one and a downloader allowed only the relay
    pinned to the other: the downloader's process issues the token and both offers name its
    address, so the seeder dials a relay that is not on its own tracker's host, and the file
    arrives byte-identical."""
    src = random_file(tmp_path / "src" / "hosts.bin", 4 * MiB, seed=24)
    with LocalSwarm(tmp_path / "swarm") as swarm:
        swarm.start_tracker("--store", redis.url, "--stun", "udp:0:interface=127.0.0.1",
                            "--relay", "tcp:0:interface=127.0.0.1", "--idle-timeout", "30")
        first = swarm.tracker_endpoint
        second_process, second = start_tracker_on(swarm, "tracker2", "127.0.0.2", redis.url)
        try:
            assert first.split("#")[1] == second.split("#")[1], "one key, one fingerprint"
            assert first.startswith("127.0.0.1:") and second.startswith("127.0.0.2:")
            swarm.start_daemon("seed", *DAEMON_UDP, "--max-upload-rate", "1M")
            shared = share(swarm, "seed", src)
            swarm.tracker_endpoint = second
            swarm.start_daemon("dl", *DAEMON_UDP, "--paths", "relay")
            owners = {name: redis.command("HGET", b"peerit:p:" + peer_id_of(swarm, name), "o")
                      for name in ("seed", "dl")}
            assert b"@127.0.0.1/" in owners["seed"] and b"@127.0.0.2/" in owners["dl"], owners
            # The downloader's .p2p names the tracker it is pinned to (trackers are outside
            # the info-hash): one session each, on two hosts.
            metainfo = Metainfo.read(shared["metainfo"])
            theirs = str(tmp_path / "dl.p2p")
            dataclasses.replace(metainfo, trackers=(TrackerAddress.parse(second),)).write(theirs)
            swarm.ctl("dl", "download", theirs, "--to", str(tmp_path / "out"), "--detach")
            swarm.wait_for("dl", shared["info_hash"], lambda s: s["peers"] > 0, timeout=60)
            links = swarm.ctl_json("dl", "peers", shared["info_hash"])["peers"]
            assert [link["path"] for link in links] == ["relay"], links
            swarm.wait_complete("dl", shared["info_hash"], timeout=120)
            assert sha256_of(tmp_path / "out" / src.name) == sha256_of(src)
            # The relay that carried it is the issuing (downloader's) process's.
            assert "relay session" in second_process.log(), second_process.log()[-3000:]
            assert "relay session" not in swarm.tracker_process.log()
        finally:
            second_process.stop()


def test_redis_unreachable_at_start_is_one_clear_line(tmp_path):
    """No Redis at the given address: the tracker exits 1 with one line, no traceback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run(
        twistd_argv("peerit-tracker", "--listen", "tcp:0:interface=127.0.0.1", "--data-dir",
                    str(tmp_path / "data"), "--store", f"redis://127.0.0.1:{port}/0",
                    "--workers", "2"),
        capture_output=True, text=True, env=environment(), timeout=60)
    assert result.returncode == 1, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"peerit-tracker: cannot reach Redis at redis://127.0.0.1:{port}/0: "
                     f"[Errno 111] Connection refused"], result.stderr
    assert "Traceback" not in result.stdout
