"""Suite 2, tracker loss: the tracker is SIGKILLed and restarted mid-swarm.

Transfers between peers that are already connected go on while it is away, and once it is
back every daemon is in its table again within 30 s. The outages grow (the short form has
one of 8 s; the long form 8 s, 30 s and 150 s) because a client's reconnect backoff grows
with the length of the outage.
"""

import time

from reliability_kit import MiB, differing_bytes, pick, random_file, share

from peerit.addresses import TrackerAddress
from peerit.identity import Identity
from peerit.testing.badpeers import BlockingTlsClient, read_frame
from peerit.wire import tracker as wire
from peerit.wire.framing import frame

BACK_WITHIN = 30.0


def peers_in_table(client: BlockingTlsClient, tracker: TrackerAddress,
                   info_hash: bytes) -> set[bytes]:
    """The peer ids the tracker lists for ``info_hash`` (one short session of our own)."""
    try:
        sock = client.connect(tracker.host, tracker.port, timeout=3)
    except OSError:
        return set()
    try:
        sock.sendall(frame(wire.build(wire.Hello(tcp_port=1, udp_port=0, addresses=()))))
        while True:
            body = read_frame(sock, wire.MAX_TRACKER_FRAME_SIZE, timeout=3)
            if body is None:
                return set()
            if isinstance(wire.parse(body), wire.Welcome):
                break
        sock.sendall(frame(wire.build(wire.PeerListRequest(info_hash, 200))))
        while True:
            body = read_frame(sock, wire.MAX_TRACKER_FRAME_SIZE, timeout=3)
            if body is None:
                return set()
            message = wire.parse(body)
            if isinstance(message, wire.PeerList):
                return {p.peer_id for p in message.peers}
    except OSError:
        return set()
    finally:
        sock.close()


def test_tracker_killed_and_restarted_mid_swarm(swarm, tmp_path, figures):
    outages = pick([8], [8, 30, 150])
    size = pick(16, 96) * MiB
    src = random_file(tmp_path / "src" / "swarm.bin", size, seed=21)
    names = ["seed", "d1", "d2"]
    swarm.start_daemon("seed", "--max-upload-rate", pick("3M", "400K"))
    swarm.start_daemon("d1")
    swarm.start_daemon("d2")
    s = share(swarm, "seed", src)
    info_hash = bytes.fromhex(s["info_hash"])
    ids = {Identity.load_or_create(str(swarm.daemons[n].data_dir)).peer_id for n in names}
    for name in ("d1", "d2"):
        swarm.ctl(name, "download", s["metainfo"], "--to", str(tmp_path / name), "--detach")
    for name in ("d1", "d2"):
        # On a slow machine a downloader can finish (and drop its links: seeders do not
        # keep links to seeders) between two samples; finished counts as under way.
        swarm.wait_for(name, s["info_hash"], lambda st: st["pieces_done"] >= 2 and (
                       st["peers"] >= 1 or st["state"] == "seeding"), timeout=60)
    observer = BlockingTlsClient(Identity.generate(), str(tmp_path / "observer"))
    tracker = TrackerAddress.parse(swarm.tracker_endpoint)
    assert ids <= peers_in_table(observer, tracker, info_hash)

    progress_while_down, back_after = [], []
    for outage in outages:
        before = {n: swarm.status(n, s["info_hash"])["pieces_done"] for n in ("d1", "d2")}
        swarm.tracker_process.kill()
        time.sleep(outage)
        during = {n: swarm.status(n, s["info_hash"]) for n in ("d1", "d2")}
        progress_while_down.append(sum(during[n]["pieces_done"] - before[n]
                                       for n in ("d1", "d2")))
        complete_while_down = all(d["state"] == "seeding" for d in during.values())
        assert progress_while_down[-1] > 0 or complete_while_down, (before, during)
        host, port = tracker.host, tracker.port
        swarm.start_tracker(listen=f"tcp:{port}:interface={host}")
        restarted = time.monotonic()
        while True:
            listed = peers_in_table(observer, tracker, info_hash)
            if ids <= listed:
                break
            assert time.monotonic() - restarted < BACK_WITHIN + 60, \
                f"missing from the table after {time.monotonic() - restarted:.0f}s"
            time.sleep(0.25)
        back_after.append(round(time.monotonic() - restarted, 2))
        if all(swarm.status(n, s["info_hash"])["state"] == "seeding" for n in ("d1", "d2")):
            break
    for name in ("d1", "d2"):
        swarm.wait_complete(name, s["info_hash"], timeout=240)
        assert differing_bytes(tmp_path / name / "swarm.bin", src) == 0
    figures.update({"outages_s": outages[:len(back_after)], "daemons": len(names),
                    "pieces_gained_while_tracker_down": progress_while_down,
                    "all_back_in_table_after_s": back_after, "corrupt_bytes": 0})
    assert max(back_after) <= BACK_WITHIN, back_after
