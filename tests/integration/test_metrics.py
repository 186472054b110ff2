"""Prometheus metrics and JSON logs of the real tracker and daemons, checked against a transfer."""

import json
import subprocess

import pytest

from peerit.testing.files import random_file, sha256_of
from peerit.testing.localswarm import LocalSwarm
from peerit.testing.metrics import metrics_url, scrape, total
from peerit.testing.processes import environment, twistd_argv

pytestmark = pytest.mark.integration

MiB = 1 << 20
JSON_FIELDS = ("time", "level", "namespace", "message", "format")


@pytest.fixture
def swarm(tmp_path):
    with LocalSwarm(tmp_path / "swarm") as s:
        yield s


def test_scraped_figures_match_a_transfer(swarm, tmp_path):
    """After a 1->1 transfer: the downloader's bytes received equal the file size and its
    pieces verified the piece count; the tracker counted the announces; the peers by path
    add up to what peerit-ctl peers lists."""
    src = random_file(tmp_path / "src" / "data.bin", 12 * MiB + 333, seed=17)
    swarm.start_tracker("--metrics", "tcp:0")
    tracker_url = metrics_url(swarm.tracker_process.wait_for_log("serving Prometheus"))
    swarm.start_daemon("seed", "--metrics", "tcp:0", "--max-upload-rate", "2M")
    swarm.start_daemon("dl", "--metrics", "tcp:0")
    urls = {name: metrics_url(swarm.daemons[name].process.wait_for_log("serving Prometheus"))
            for name in ("seed", "dl")}
    share = swarm.ctl_json("seed", "share", str(src), "-o", str(tmp_path / "data.p2p"))
    swarm.ctl("dl", "download", share["metainfo"], "--to", str(tmp_path / "out"), "--detach")
    # Mid-transfer (the seed's upload cap makes it last ~6 s): peers by path as listed.
    swarm.wait_for("dl", share["info_hash"], lambda st: st["pieces_done"] > 0, timeout=60)
    for name in ("seed", "dl"):
        listed = swarm.ctl_json(name, "peers", share["info_hash"])["peers"]
        peers = scrape(urls[name])
        assert total(peers, "peerit_daemon_peers") == len(listed) == 1, name
        assert total(peers, "peerit_daemon_peers", path="lan") == 1  # loopback TCP
        assert listed[0]["path"] == "tcp"
    done = swarm.wait_complete("dl", share["info_hash"])
    assert sha256_of(tmp_path / "out" / "data.bin") == sha256_of(src)

    dl, seed, tracker = scrape(urls["dl"]), scrape(urls["seed"]), scrape(tracker_url)
    assert total(dl, "peerit_daemon_received_bytes_total") == src.stat().st_size
    assert total(dl, "peerit_daemon_received_bytes_total", path="lan") == src.stat().st_size
    assert total(dl, "peerit_daemon_pieces_verified_total") == done["pieces"]
    assert total(dl, "peerit_daemon_pieces_failed_total") == 0
    assert total(seed, "peerit_daemon_sent_bytes_total") == src.stat().st_size
    assert total(dl, "peerit_daemon_first_byte_seconds_count") == 1
    assert total(dl, "peerit_daemon_connections_total") \
        + total(seed, "peerit_daemon_connections_total") >= 1
    assert total(dl, "peerit_daemon_tracker_sessions", state="up") == 1
    assert total(dl, "peerit_daemon_transfers", state="seeding") == 1

    # Two shares announced (the seed's and the downloader's), plus its completion.
    assert total(tracker, "peerit_tracker_requests_total", kind="announce",
                 result="ok") >= 2
    assert total(tracker, "peerit_tracker_sessions", state="active") == 2
    assert total(tracker, "peerit_tracker_swarms") == 1
    assert total(tracker, "peerit_tracker_swarm_members", role="seeder") == 2
    assert total(tracker, "peerit_tracker_request_duration_seconds_count") >= 2
    assert total(tracker, "peerit_tracker_stun_requests_total", result="success") >= 1
    assert not any("info_hash" in dict(labels) or "peer" in dict(labels)
                   for samples in (dl, seed, tracker) for _, labels in samples)


def test_every_json_log_line_parses_with_the_documented_fields(swarm, tmp_path):
    """--log-format json on both programs: each line of a real run is one JSON object with
    time, level, namespace, message and format, and events keep their own keys."""
    src = random_file(tmp_path / "src" / "small.bin", 3 * MiB, seed=18)
    swarm.start_tracker("--log-format", "json")
    for name in ("seed", "dl"):
        swarm.start_daemon(name, "--log-format", "json")
    share = swarm.ctl_json("seed", "share", str(src), "-o", str(tmp_path / "small.p2p"))
    swarm.ctl("dl", "download", share["metainfo"], "--to", str(tmp_path / "out"), "--detach")
    swarm.wait_complete("dl", share["info_hash"])
    swarm.close()
    keys = set()
    for log_name in ("tracker.log", "seed.log", "dl.log"):
        lines = (swarm.workdir / log_name).read_text().splitlines()
        assert len(lines) > 5, log_name
        for line in lines:
            record = json.loads(line)
            assert isinstance(record, dict), line
            for field in JSON_FIELDS:
                assert field in record, (log_name, line)
            assert isinstance(record["time"], float)
            assert record["level"] in ("debug", "info", "warn", "error", "critical")
            assert isinstance(record["message"], str) and record["message"], line
            keys.update(record)
    # Events' own fields survive as keys: the tracker session's peer, a swarm's id...
    assert {"peer", "swarm", "fingerprint"} <= keys, sorted(keys)


def test_metrics_option_errors_are_one_line(tmp_path):
    """A daemon refuses a non-loopback --metrics interface; a bad endpoint is one line."""
    for plugin, args, text in (
            ("peerit-daemon", ["--metrics", "tcp:0:interface=0.0.0.0"], "loopback"),
            ("peerit-tracker", ["--metrics", "udp:9"], "bad --metrics"),
            ("peerit-tracker", ["--log-format", "xml"], "bad --log-format")):
        result = subprocess.run(
            twistd_argv(plugin, "--data-dir", str(tmp_path / plugin), *args),
            capture_output=True, text=True, env=environment(), timeout=60)
        assert result.returncode != 0
        assert text in result.stdout + result.stderr, result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr
