"""Short codes across real NATs: `peerit-ctl send` behind one router, `peerit-ctl receive`
behind another, the tracker and its code rendezvous in the lab's public namespace. The
daemons find the rendezvous through their --tracker alone (its host, port 59002), and the
data goes over the punched path."""

import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lab import TRACKER_IP  # noqa: E402
from peerit.endpoints import DEFAULT_MAILBOX_PORT  # noqa: E402
from peerit.testing.files import random_file, sha256_of  # noqa: E402
from peerit.testing.processes import ctl_argv, environment  # noqa: E402
from test_nat_matrix import SEED_LIMIT, LabPeers  # noqa: E402

MiB = 1 << 20


def test_send_and_receive_between_two_nats_over_the_punched_path(make_lab, tmp_path):
    payload = random_file(tmp_path / "src" / "album.bin", 16 * MiB, seed=61)
    with make_lab(r1="port-restricted", r2="address-restricted") as lab:
        peers = LabPeers(lab, tmp_path)
        peers.start_tracker("--mailbox", f"tcp:{DEFAULT_MAILBOX_PORT}:interface={TRACKER_IP}")
        peers.start_daemon("alice", "b1", *SEED_LIMIT)
        peers.start_daemon("bob", "a1")
        alice_control, _ = peers.daemons["alice"]
        bob_control, _ = peers.daemons["bob"]
        log = tmp_path / "send.log"
        with open(log, "wb") as out:
            sender = subprocess.Popen(ctl_argv("send", str(payload), "--control",
                                               alice_control),
                                      stdout=out, stderr=subprocess.STDOUT, env=environment())
        try:
            deadline = time.monotonic() + 60
            while not (found := re.search(r"^code (\S+)$", log.read_text(), re.M)):
                assert sender.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "no code in 60 s"
                time.sleep(0.1)
            receiver = subprocess.Popen(
                ctl_argv("receive", found.group(1), "--to", str(tmp_path / "bob"), "--json",
                         "--control", bob_control),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment())
            out, err = receiver.communicate(timeout=150)
            assert receiver.returncode == 0, err + peers.log("bob")[-3000:]
            assert sender.wait(60) == 0, log.read_text()
        finally:
            for process in (sender,):
                if process.poll() is None:
                    process.terminate()
                    process.wait(10)
        assert sha256_of(tmp_path / "bob" / payload.name) == sha256_of(payload)
        # Every link bob's swarms took (the metadata's, moved on to the data's) was punched.
        paths = re.findall(r"attached over (\w+)", peers.log("bob"))
        assert paths and set(paths) == {"quic"}, (paths, peers.log("bob")[-3000:])
        assert "admitting receiver" in peers.log("alice")
