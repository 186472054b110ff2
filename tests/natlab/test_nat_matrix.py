"""Peers behind real netfilter NATs: the tracker (STUN, punch coordination, relay) in the lab's
public namespace, daemons behind the routers, real downloads.

- The whole 4x4 matrix of NAT types: a 16 MiB download from b1 (behind r2) to a1 (behind r1)
  succeeds and verifies for every pair, over punched QUIC for every pair except
  symmetric<->symmetric, which goes through the relay. Path and time to first byte are
  recorded (printed, and written to ``nat_matrix.json`` in the lab's work directory).
- Two peers behind the same router connect over their LAN addresses.
- Two swarms between the same two peers behind two NATs both use the punched path.
- 5% loss each way on both routers: the download still completes.
- ``peerit-ctl netcheck`` reports the mapping (and, with coturn as ``--stun-server``, the
  filtering) each router type really has.

Every wait is bounded; each case builds its own lab (about a second) and tears it down.
"""

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # when run as the follow helper

from lab import HOSTS, NAT_TYPES, ROUTER_PUBLIC, TRACKER_IP
from peerit.testing.processes import ctl_argv, environment, twistd_argv
from peerit.testing.redis import RedisServer, redis_server_path

from peerit.testing.files import random_file, sha256_of  # noqa: F401


MiB = 1 << 20
TRACKER_PORT, RELAY_PORT = 59000, 59001
STUN_PORT, STUN_ALT_PORT = 3478, 3479
QUIC_DATAGRAM = "1452"  # the lab's links have a 1500-byte MTU
RESULTS: dict = {}
# 16 MiB then take 2 s or more: long enough to see the links (they close once both sides
# are complete) without slowing the suite much.
SEED_LIMIT = ("--max-upload-rate", "8M")


class LabPeers:
    """A tracker in the lab's public namespace and daemons on its hosts, driven with
    peerit-ctl over their control sockets (files, so reachable from the root namespace)."""

    def __init__(self, lab, workdir: Path):
        self.lab = lab
        self.workdir = Path(workdir)
        self.tracker = None
        self.daemons: dict = {}

    def start_tracker(self, *extra: str, timeout: float = 30) -> str:
        data = self.workdir / "tracker"
        data.mkdir(parents=True, exist_ok=True)
        argv = twistd_argv(
            "peerit-tracker", "--listen", f"tcp:{TRACKER_PORT}:interface={TRACKER_IP}",
            "--data-dir", str(data),
            "--stun", f"udp:{STUN_PORT}:interface={TRACKER_IP}",
            "--stun-alt-port", str(STUN_ALT_PORT),
            "--relay", f"tcp:{RELAY_PORT}:interface={TRACKER_IP}", *extra)
        process = self.lab.spawn("pub", argv, self.workdir / "tracker.log")
        process.wait_for_path(data / "tracker.endpoint", timeout)
        self.tracker = (data / "tracker.endpoint").read_text().strip()
        return self.tracker

    def start_daemon(self, name: str, host: str, *extra: str, timeout: float = 30,
                     twistd_options: tuple = ()):
        """``twistd_options`` go before the plugin name (e.g. twistd's ``--profile``)."""
        data = self.workdir / name
        control = f"unix:{data}/control.sock"
        argv = twistd_argv(
            "peerit-daemon", "--data-dir", str(data), "--control", control,
            "--tracker", self.tracker, "--udp", "udp:0",
            "--quic-datagram-size", QUIC_DATAGRAM, *extra)
        plugin = argv.index("peerit-daemon")
        argv[plugin:plugin] = list(twistd_options)
        process = self.lab.spawn(host, argv, self.workdir / f"{name}.log")
        self.daemons[name] = (control, process)
        process.wait_for_path(data / "control.sock", timeout)
        deadline = time.monotonic() + timeout
        while self.ctl(name, "status", check=False).returncode != 0:
            if time.monotonic() > deadline or not process.alive():
                raise RuntimeError(f"daemon {name} not answering:\n{process.log()[-3000:]}")
            time.sleep(0.1)
        return process

    def ctl(self, name: str, *args: str, check: bool = True, timeout: float = 60):
        import subprocess
        control, process = self.daemons[name]
        result = subprocess.run(ctl_argv(*args, "--control", control), capture_output=True,
                                text=True, timeout=timeout, env=environment())
        if check and result.returncode != 0:
            raise RuntimeError(f"peerit-ctl {' '.join(args)}: {result.stderr}\n"
                               f"--- {name} log ---\n{process.log()[-4000:]}")
        return result

    def ctl_json(self, name: str, *args: str, **kwargs):
        return json.loads(self.ctl(name, *args, "--json", **kwargs).stdout)

    def log(self, name: str) -> str:
        return self.daemons[name][1].log()

    def share(self, name: str, path: Path) -> dict:
        return self.ctl_json(name, "share", str(path), "-o",
                             str(self.workdir / f"{path.name}.p2p"))

    def download(self, name: str, shared: dict, target: Path, timeout: float = 120,
                 seeder: str = "seed") -> dict:
        """Start a download and follow it from a helper process holding both control
        connections (see :func:`follow`): time to first byte, both sides' peer lists as soon
        as the link is up (links close once both sides are complete), final status."""
        import subprocess
        argv = [sys.executable, __file__, "follow", self.daemons[name][0],
                self.daemons[seeder][0], shared["metainfo"], str(target), str(timeout)]
        try:
            result = subprocess.run(argv, capture_output=True, text=True,
                                    timeout=timeout + 30, env=environment())
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{name}: no result in {timeout}s\n{self.log(name)[-4000:]}")
        if result.returncode != 0:
            raise RuntimeError(f"{name}: {result.stderr[-3000:]}\n{self.log(name)[-4000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])


def follow(dl_control: str, seed_control: str, metainfo: str, target: str,
           timeout: float) -> dict:
    """Download ``metainfo`` on one daemon and follow it over persistent control
    connections: first byte (from the command, polled every 10 ms), the peer lists of
    both daemons once the downloader has a peer, the final status."""
    from peerit.client import BlockingClient, as_json
    dl, seed = BlockingClient(dl_control), BlockingClient(seed_control)
    try:
        started = time.monotonic()
        info_hash = dl.download(metainfo, target).info_hash
        first_byte = peers = seed_peers = None
        while True:
            status = as_json(dl.status(info_hash))
            now = time.monotonic()
            if peers is None and status["peers"] > 0:
                peers = as_json(dl.peers(info_hash).peers)
                seed_peers = as_json(seed.peers(info_hash).peers)
            if first_byte is None and status["downloaded"] > 0:
                first_byte = now - started
            if status["state"] == "seeding":
                break
            if now - started > timeout:
                raise TimeoutError(f"not complete in {timeout}s: {status}")
            time.sleep(0.01 if first_byte is None else 0.1)
        return {"status": status, "peers": peers or [], "seed_peers": seed_peers or [],
                "first_byte": first_byte, "seconds": time.monotonic() - started}
    finally:
        dl.close()
        seed.close()






@pytest.fixture(scope="module")
def payload(tmp_path_factory):
    return random_file(tmp_path_factory.mktemp("payload") / "payload.bin", 16 * MiB, seed=7)


def expected_path(r1: str, r2: str) -> str:
    return "relay" if r1 == r2 == "symmetric" else "quic"


@pytest.mark.parametrize("r2", NAT_TYPES)
@pytest.mark.parametrize("r1", NAT_TYPES)
def test_download_across_nat_pair(make_lab, payload, tmp_path, r1, r2):
    """a1 (behind r1) downloads 16 MiB from b1 (behind r2): intact, over punched QUIC, or
    the relay when both NATs are symmetric."""
    with make_lab(r1=r1, r2=r2) as lab:
        peers = LabPeers(lab, tmp_path)
        peers.start_tracker()
        peers.start_daemon("seed", "b1", *SEED_LIMIT)
        peers.start_daemon("dl", "a1")
        shared = peers.share("seed", payload)
        result = peers.download("dl", shared, tmp_path / "out")
        assert sha256_of(tmp_path / "out" / payload.name) == sha256_of(payload)
        paths = [p["path"] for p in result["peers"]]
        RESULTS[f"{r1} <-> {r2}"] = {
            "path": paths, "first_byte": result["first_byte"],
            "connect_seconds": [p["connect_seconds"] for p in result["peers"]],
            "seconds": result["seconds"]}
        print(f"\n{r1:>18} <-> {r2:<18} path {','.join(paths) or '-':6} "
              f"first byte {result['first_byte']:.2f}s "
              f"connect {[round(p['connect_seconds'], 2) for p in result['peers']]} "
              f"total {result['seconds']:.1f}s")
        (lab.workdir / "nat_matrix.json").write_text(json.dumps(RESULTS, indent=1))
        expected = expected_path(r1, r2)
        if paths == ["relay"] and expected == "quic" and "port-restricted" in (r1, r2) \
                and "symmetric" in (r1, r2):
            # The birthday technique misses about 1% of the time against a port-restricted
            # NAT (docs/punch.md: no random probe hit any of the 256 mappings in 6 s); the
            # relay then takes over by design. Accepted only with the proof in the log.
            assert "failed: no direct path within 6s" in peers.log("dl"), peers.log("dl")
        else:
            assert paths == [expected], (paths, peers.log("dl")[-4000:])
        # The seeder's end of the link is the punched/relayed one too, not a TCP dial.
        seed_peers = result["seed_peers"]
        assert [p["path"] for p in seed_peers] == paths
        if paths == ["quic"]:
            # A punched path runs between the routers' public addresses.
            assert seed_peers[0]["address"].split(":")[0] == ROUTER_PUBLIC["r1"]


def test_same_router_peers_use_lan_addresses(make_lab, payload, tmp_path):
    """a1 and a2 behind one router (no hairpinning): they connect over their LAN addresses,
    by TCP, and over punched QUIC when TCP dialing is off (the punch prefers LAN pairs)."""
    with make_lab(r1="port-restricted", r2="port-restricted") as lab:
        peers = LabPeers(lab, tmp_path)
        peers.start_tracker()
        peers.start_daemon("seed", "a2", *SEED_LIMIT)
        peers.start_daemon("dl", "a1")
        peers.start_daemon("dlq", "a1", "--paths", "quic")
        shared = peers.share("seed", payload)
        lan_of_a2 = HOSTS["a2"][1]
        for name in ("dl", "dlq"):
            result = peers.download(name, shared, tmp_path / name)
            assert sha256_of(tmp_path / name / payload.name) == sha256_of(payload)
            [peer] = result["peers"]
            assert peer["address"].split(":")[0] == lan_of_a2, peer
            assert peer["path"] == ("tcp" if name == "dl" else "quic"), peer
            # Out of the swarm again, so the next downloader sees a2 alone.
            peers.ctl(name, "remove", shared["info_hash"])


def test_two_swarms_between_two_peers_behind_nats_share_the_punched_path(
        make_lab, tmp_path):
    """a1 (behind r1) downloads two shares from b1 (behind r2), both port-restricted, at
    once: both swarms' links are punched QUIC between the routers' public addresses (one
    connection each on the one punched path), neither goes through the relay, and both
    files arrive intact."""
    with make_lab(r1="port-restricted", r2="port-restricted") as lab:
        peers = LabPeers(lab, tmp_path)
        peers.start_tracker()
        # 16 MiB in all at 2 MB/s: both links stay up long enough to be listed, however slow
        # each peerit-ctl call is on a loaded machine.
        peers.start_daemon("seed", "b1", "--max-upload-rate", "2M")
        peers.start_daemon("dl", "a1")
        shares = []
        for i in range(2):
            src = random_file(tmp_path / "src" / f"swarm{i}.bin", 8 * MiB, seed=60 + i)
            shares.append((src, peers.share("seed", src)))
        for _, shared in shares:
            peers.ctl("dl", "download", shared["metainfo"], "--to", str(tmp_path / "out"),
                      "--detach")
        seen: dict = {}
        deadline = time.monotonic() + 90
        while len(seen) < len(shares):
            assert time.monotonic() < deadline, (seen, peers.log("dl")[-4000:])
            for _, shared in shares:
                info_hash = shared["info_hash"]
                if info_hash not in seen:
                    listed = peers.ctl_json("dl", "peers", info_hash)["peers"]
                    if listed:
                        seen[info_hash] = (listed, peers.ctl_json(
                            "seed", "peers", info_hash)["peers"])
            time.sleep(0.1)
        for listed, seed_listed in seen.values():
            assert [p["path"] for p in listed] == ["quic"], (seen, peers.log("dl")[-4000:])
            assert [p["path"] for p in seed_listed] == ["quic"], seen
            assert seed_listed[0]["address"].split(":")[0] == ROUTER_PUBLIC["r1"], seen
        for src, shared in shares:
            deadline = time.monotonic() + 120
            while peers.ctl_json("dl", "status", shared["info_hash"])["state"] != "seeding":
                assert time.monotonic() < deadline, peers.log("dl")[-4000:]
                time.sleep(0.2)
            assert sha256_of(tmp_path / "out" / src.name) == sha256_of(src)
            short = shared["info_hash"][:12]
            assert any(f"swarm {short}: peer" in line and line.endswith("attached over quic")
                       for line in peers.log("dl").splitlines()), short
        assert "attached over relay" not in peers.log("dl")
        assert "attached over relay" not in peers.log("seed")


def test_download_completes_with_loss_on_both_routers(make_lab, payload, tmp_path):
    """5% loss each way on both routers: the punch, the QUIC handshake and 16 MiB of
    transfer all get through."""
    with make_lab(r1="port-restricted", r2="port-restricted",
                  loss={"r1": 50, "r2": 50}) as lab:
        peers = LabPeers(lab, tmp_path)
        peers.start_tracker()
        peers.start_daemon("seed", "b1")
        peers.start_daemon("dl", "a1")
        shared = peers.share("seed", payload)
        result = peers.download("dl", shared, tmp_path / "out", timeout=180)
        assert sha256_of(tmp_path / "out" / payload.name) == sha256_of(payload)
        assert [p["path"] for p in result["peers"]] in (["quic"], ["relay"])


@pytest.mark.skipif(redis_server_path() is None, reason="redis-server is not installed")
def test_punch_between_sessions_on_two_tracker_workers(make_lab, payload, tmp_path):
    """The tracker as two workers over Redis (on a UNIX socket, reached from the lab's public
    namespace); a1 behind r1 and b1 behind r2 with their sessions on different workers: the
    punch coordinated between the two workers completes, 16 MiB arrive over punched QUIC."""
    redis = RedisServer(tmp_path / "redis", unix=True).start()
    try:
        with make_lab(r1="port-restricted", r2="port-restricted") as lab:
            peers = LabPeers(lab, tmp_path)
            peers.start_tracker("--workers", "2", "--store", redis.url)
            peers.start_daemon("seed", "b1", *SEED_LIMIT)
            seed_worker = session_worker(redis, tmp_path / "seed")
            for _ in range(12):
                peers.start_daemon("dl", "a1", "--paths", "quic")
                if session_worker(redis, tmp_path / "dl") != seed_worker:
                    break
                peers.daemons.pop("dl")[1].stop()
                wait_gone(redis, tmp_path / "dl")
            else:
                raise AssertionError("the downloader landed on the seeder's worker 12 times")
            shared = peers.share("seed", payload)
            result = peers.download("dl", shared, tmp_path / "out")
            assert sha256_of(tmp_path / "out" / payload.name) == sha256_of(payload)
            assert [p["path"] for p in result["peers"]] == ["quic"], peers.log("dl")[-4000:]
            assert [p["path"] for p in result["seed_peers"]] == ["quic"]
    finally:
        redis.stop()


def _peer_key(data_dir: Path) -> bytes:
    from peerit.identity import Identity
    return b"peerit:p:" + Identity.load_or_create(str(data_dir)).peer_id


def session_worker(redis, data_dir: Path, timeout: float = 20.0) -> bytes:
    """The worker holding a daemon's session: the owner Redis records for its peer id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owner = redis.command("HGET", _peer_key(data_dir), "o")
        if owner:
            return owner.rpartition(b"/")[2].split(b"-")[0]
        time.sleep(0.1)
    raise TimeoutError(f"no session of {data_dir.name} in Redis after {timeout}s")


def wait_gone(redis, data_dir: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while redis.command("EXISTS", _peer_key(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.05)


NETCHECK_EXPECTED = {  # type -> (mapping, filtering) with coturn's RFC 5780 help
    "full-cone": ("endpoint-independent", "endpoint-independent"),
    "address-restricted": ("endpoint-independent", "address-dependent"),
    "port-restricted": ("endpoint-independent", "address-and-port-dependent"),
    "symmetric": ("address-and-port-dependent", "address-and-port-dependent"),
}


@pytest.mark.parametrize("nat_type", NAT_TYPES)
def test_netcheck_reports_the_routers_behaviour(make_lab, tmp_path, nat_type):
    """``peerit-ctl netcheck`` behind each router type (tracker STUN + coturn)."""
    with make_lab(r1=nat_type) as lab:
        lab.start_coturn()
        peers = LabPeers(lab, tmp_path)
        peers.start_tracker()
        peers.start_daemon("d", "a1", "--stun-server", "198.18.0.2:3478")
        report = peers.ctl_json("d", "netcheck", timeout=60)
        mapping, filtering = NETCHECK_EXPECTED[nat_type]
        assert report["udp_works"] is True, report
        assert report["public_address"].split(":")[0] == ROUTER_PUBLIC["r1"], report
        assert report["mapping"] == mapping, report
        assert report["filtering"] == filtering, report
        text = peers.ctl("d", "netcheck").stdout
        assert f"Mapping: {mapping} mapping" in text, text


if __name__ == "__main__" and sys.argv[1:2] == ["follow"]:
    dl_control, seed_control, metainfo, target, limit = sys.argv[2:7]
    print(json.dumps(follow(dl_control, seed_control, metainfo, target, float(limit))))
    sys.stdout.flush()
    import os
    os._exit(0)  # the answer is out: skip interpreter teardown
