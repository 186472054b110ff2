"""Links and short codes end to end: a real tracker with its code rendezvous (--mailbox),
real daemons and peerit-ctl on loopback."""

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from peerit.testing.files import random_file, sha256_of
from peerit.testing.localswarm import LocalSwarm
from peerit.testing.processes import Process, ctl_argv

pytestmark = pytest.mark.integration

MiB = 1 << 20


@pytest.fixture
def swarm(tmp_path):
    with LocalSwarm(tmp_path / "swarm") as s:
        s.start_tracker("--mailbox", "tcp:0:interface=127.0.0.1")
        s.mailbox = (s.workdir / "tracker" / "mailbox.url").read_text().strip()
        yield s


def start(swarm, name, *args, **kwargs):
    return swarm.start_daemon(name, "--mailbox", swarm.mailbox, *args, **kwargs)


def share(swarm, name, path: Path) -> dict:
    return swarm.ctl_json(name, "share", str(path), "-o",
                          str(swarm.workdir / f"{name}-{path.name}.p2p"))


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout}s")
        time.sleep(interval)


def start_send(swarm, name, path: Path) -> tuple[Process, str]:
    """``peerit-ctl send PATH`` in the background; returns it and the code it printed."""
    handle = swarm.daemons[name]
    process = Process(ctl_argv("send", str(path), "--control", handle.control),
                      swarm.workdir / f"send-{name}-{time.monotonic_ns()}.log")
    text = wait_until(lambda: re.search(r"^code (\S+)$", process.log(), re.M)
                      or (not process.alive() and "exited"), 60, "a code")
    if text == "exited":
        raise RuntimeError(f"send exited: {process.log()}")
    return process, text.group(1)


def finished(process: Process, timeout: float) -> int:
    try:
        return process.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        process.stop()
        raise


def test_link_only_download_is_byte_identical_and_a_restart_does_not_refetch(swarm, tmp_path):
    """`download LINK` fetches the metadata from the seeder, then the data, byte for byte;
    restarted with the seeder gone, the downloader still knows the share (its metadata was
    kept) and writes it out as a .p2p equal to the original."""
    src = random_file(tmp_path / "src" / "film.bin", 12 * MiB + 5, seed=41)
    start(swarm, "seed")
    start(swarm, "dl")
    shared = share(swarm, "seed", src)
    link = shared["link"]
    assert link.startswith("peerit:?v=1&ih=" + shared["info_hash"])
    assert swarm.ctl("seed", "link", shared["info_hash"][:12]).stdout.strip() == link
    status = json.loads(swarm.ctl("dl", "download", link, "--to", str(tmp_path / "out"),
                                  "--json", "--timeout", "120").stdout)
    assert status["state"] == "seeding"
    assert sha256_of(tmp_path / "out" / "film.bin") == sha256_of(src)
    swarm.stop_daemon("seed")
    swarm.stop_daemon("dl")
    swarm.restart_daemon("dl")
    status = swarm.status("dl", shared["info_hash"])
    assert status["name"] == "film.bin" and status["state"] == "seeding"
    exported = tmp_path / "exported.p2p"
    swarm.ctl("dl", "export", shared["info_hash"], "-o", str(exported))
    info = swarm.ctl_json("dl", "status", shared["info_hash"])
    assert info["pieces"] == info["pieces_done"]
    original = json.loads(subprocess.run(
        ctl_argv("inspect", shared["metainfo"], "--json"), capture_output=True,
        text=True).stdout)
    copy = json.loads(subprocess.run(ctl_argv("inspect", str(exported), "--json"),
                                     capture_output=True, text=True).stdout)
    assert copy["info_hash"] == original["info_hash"] == shared["info_hash"]
    log = (swarm.workdir / "dl.log").read_text()
    assert log.count("metadata fetched and verified") == 1


def test_peer_serving_tampered_metadata_is_banned_and_an_honest_one_completes(swarm, tmp_path):
    """Alone, a liar's metadata fails the info-hash: it is banned, nothing is started and
    `download LINK` exits 14 with one line; when an honest seeder appears the download
    completes from it."""
    src = random_file(tmp_path / "src" / "disk.img", 6 * MiB, seed=42)
    start(swarm, "honest")
    shared = share(swarm, "honest", src)
    swarm.stop_daemon("honest")
    liar_copy = tmp_path / "liar" / "disk.img"
    liar_copy.parent.mkdir()
    liar_copy.write_bytes(src.read_bytes())
    start(swarm, "liar", module="peerit.testing.lying_metadata_daemon")
    swarm.ctl("liar", "share", str(liar_copy), "--p2p", shared["metainfo"])
    swarm.wait_complete("liar", shared["info_hash"])
    start(swarm, "dl")
    result = swarm.ctl("dl", "download", shared["link"], "--to", str(tmp_path / "out"),
                       check=False)
    assert result.returncode == 14, result.stderr
    # (a status line every 5 s on a non-terminal stderr, then the one error line)
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("peerit-ctl: ") and "does not match" in error
    assert "Traceback" not in result.stderr
    status = swarm.status("dl", shared["info_hash"])
    assert status["state"] == "metadata mismatch" and status["banned"] == 1
    assert not (tmp_path / "out" / "disk.img").exists()
    assert "served metadata that does not match the info-hash" in \
        (swarm.workdir / "dl.log").read_text()
    swarm.restart_daemon("honest")
    status = swarm.wait_complete("dl", shared["info_hash"], timeout=120)
    assert status["banned"] >= 1  # still banned in the data's swarm
    assert sha256_of(tmp_path / "out" / "disk.img") == sha256_of(src)


def test_send_and_receive_with_a_code_and_a_third_daemon_is_refused(swarm, tmp_path):
    """`send` prints a code, `receive CODE` downloads from that sender; `send` returns once
    the receiver holds everything. A third daemon given the link is refused by both and
    gets nothing."""
    src = random_file(tmp_path / "src" / "holiday" / "a.bin", 5 * MiB, seed=43)
    random_file(src.parent / "b" / "c.bin", 300_000, seed=44)
    for name in ("alice", "bob", "eve"):
        start(swarm, name)
    sender, code = start_send(swarm, "alice", src.parent)
    assert re.fullmatch(r"\d+-[a-z]+-[a-z]+", code)
    received = swarm.ctl("bob", "receive", code, "--to", str(tmp_path / "bob"), "--json",
                         "--timeout", "120")
    assert json.loads(received.stdout)["state"] == "seeding"
    assert finished(sender, 60) == 0, sender.log()
    assert "delivered" in sender.log()
    for name in ("a.bin", "b/c.bin"):
        assert sha256_of(tmp_path / "bob" / "holiday" / name) == \
            sha256_of(src.parent / name)
    info_hash = json.loads(received.stdout)["info_hash"]
    link = swarm.ctl("alice", "link", info_hash).stdout.strip()
    swarm.ctl("eve", "download", link, "--to", str(tmp_path / "eve"), "--detach")
    wait_until(lambda: "a private send admits one peer only" in
               (swarm.workdir / "alice.log").read_text(), 60, "alice refusing eve")
    time.sleep(3)  # any metadata eve could get, she would have by now
    status = swarm.status("eve", info_hash)
    assert status["state"].startswith("fetching metadata") and status["done"] == 0
    assert not (tmp_path / "eve" / "holiday").exists()


def test_wrong_code_fails_both_sides_and_an_expired_code_fails_cleanly(swarm, tmp_path):
    """A mistyped code: the receiver and the sender both exit 15 with one line. A code
    nobody used: the sender exits 16 when it expires, and a late receiver 16 too."""
    src = random_file(tmp_path / "src" / "notes.bin", 200_000, seed=45)
    start(swarm, "alice", "--code-lifetime", "4")
    start(swarm, "bob", "--code-wait", "5")
    sender, code = start_send(swarm, "alice", src)
    wrong = code.split("-")[0] + "-wrong-words"
    result = swarm.ctl("bob", "receive", wrong, "--to", str(tmp_path / "bob"), check=False)
    assert result.returncode == 15, result.stderr
    assert result.stderr.count("\n") == 1 and "wrong code" in result.stderr
    assert finished(sender, 30) == 15, sender.log()
    assert "Traceback" not in sender.log()
    sender, code = start_send(swarm, "alice", src)
    assert finished(sender, 30) == 16, sender.log()
    assert "expired" in sender.log()
    result = swarm.ctl("bob", "receive", code, "--to", str(tmp_path / "bob"), check=False)
    assert result.returncode == 16, result.stderr
    assert result.stderr.count("\n") == 1 and "no sender answered" in result.stderr
    assert not (tmp_path / "bob" / "notes.bin").exists()


def test_unreachable_rendezvous_is_one_line_with_its_exit_code(swarm, tmp_path):
    src = random_file(tmp_path / "src" / "x.bin", 1000, seed=46)
    start(swarm, "alice")
    swarm.daemons["alice"].args = ["--mailbox", "ws://127.0.0.1:9/v1"]
    swarm.stop_daemon("alice")
    swarm.restart_daemon("alice")
    result = swarm.ctl("alice", "send", str(src), check=False, timeout=60)
    assert result.returncode == 17, result.stderr
    assert "cannot reach the rendezvous ws://127.0.0.1:9/v1" in result.stderr
