"""``twistd peerit-daemon``: options and service construction.

The daemon's faces (the web page; ``peerit.daemon.faces``) add their options to these and
join the composed daemon; the daemon does not import them.
"""

import gc
import os

from twisted.python import usage

from peerit.addresses import (
    TrackerAddress, check_mailbox_url, default_mailbox_url, parse_host_port)
from peerit.control.paths import default_control_path, default_data_dir
from peerit.daemon.faces import daemon_faces
from peerit.daemon.metrics import DaemonCollector
from peerit.daemon.nat.manager import parse_paths
from peerit.daemon.service import Daemon
from peerit.endpoints import (
    DEFAULT_STUN_PORT, listen_parts, metrics_description, parse_udp_endpoint)
from peerit.errors import PeeritError
from peerit.logs import LOG_FORMATS, log_observer
from peerit.metrics.endpoint import MetricsService, is_loopback_interface
from peerit.metrics.exposition import registry_with
from peerit.units import parse_size


FACES = daemon_faces()

#: the collector's first-generation threshold in the daemon (Python's default: 700)
GC_YOUNG_THRESHOLD = 50_000


def tune_garbage_collector() -> None:
    """Collect young objects every ``GC_YOUNG_THRESHOLD`` allocations instead of every 700,
    and leave what start-up made (modules, classes) out of every collection. A bulk transfer
    allocates a few container objects per packet (loss recovery keeps a record per QUIC
    packet until it is acknowledged), so with the defaults the collector ran every ~150
    packets and scanned thousands of live records each time: ~35 % of the cost of sending a
    packet. Cyclic garbage waits a little longer (at most that many objects); everything
    else is still freed at once by reference counting."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 10)


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a peer-it daemon: it keeps a session with its trackers, shares files in place, "
        "downloads from many peers at once, verifies every piece and uploads to others. "
        "Drive it with peerit-ctl. Several daemons on one machine are told apart by their "
        "--data-dir and --control socket.")
    optParameters = [
        ["data-dir", "d", None,
         "Identity key, resume state and default download folder "
         "[default: ~/.local/share/peerit]"],
        ["control", "c", None,
         "Control socket for peerit-ctl, as unix:PATH [default: "
         "unix:$XDG_RUNTIME_DIR/peerit/control.sock, else DATA_DIR/control.sock]"],
        ["listen", "l", "tcp:0",
         "Endpoint for peer links (TLS is always on), e.g. tcp:6881 or "
         "tcp:0:interface=127.0.0.1 [default: any free TCP port]"],
        ["udp", None, "udp:0",
         "UDP socket for STUN, hole punching and QUIC, as udp:PORT[:interface=ADDR] "
         "[default: any free port]"],
        ["stun-server", None, None,
         "Extra STUN server HOST:PORT for netcheck, besides the tracker's STUN ports"],
        ["paths", None, "tcp,quic,relay",
         "Paths this daemon dials peers over, a comma list of tcp, quic (hole-punched) and "
         "relay (through the tracker); inbound links of any kind are always accepted "
         "[default: tcp,quic,relay]"],
        ["quic-datagram-size", None, "1200",
         "Largest QUIC datagram (1200 fits every path; 1452 suits 1500-byte MTU paths) "
         "[default: 1200]"],
        ["mailbox", None, None,
         "Rendezvous for short codes (peerit-ctl send/receive), as ws://HOST:PORT/v1: a "
         "magic-wormhole mailbox, such as a tracker's --mailbox [default: port 59002 on "
         "the first --tracker's host]"],
        ["code-lifetime", None, "600",
         "Seconds a code from peerit-ctl send stays usable [default: 600]"],
        ["code-wait", None, "30",
         "Seconds peerit-ctl receive waits for a sender to answer its code before "
         "reporting it expired or unknown [default: 30]"],
        ["max-upload-rate", None, "0",
         "Cap on upload bytes per second over all peers, e.g. 5M (5,000,000) or 4Mi "
         "(4 MiB); k, M, G = powers of 1000, Ki, Mi, Gi = of 1024; 0 = no cap [default: 0]"],
        ["metrics", None, None,
         "Serve Prometheus metrics at http://127.0.0.1:PORT/metrics: tcp:PORT (loopback "
         "interfaces only; clients other than loopback are refused) [default: off]"],
        ["log-format", None, "text",
         "Log lines as text, or json: one JSON object per line with level, namespace, "
         "time, message and the event's fields (docs/observability.md)"],
    ] + [row for face in FACES for row in face.optParameters]
    optFlags = [row for face in FACES for row in face.optFlags]

    def __init__(self):
        super().__init__()
        self["trackers"] = []
        self["advertise"] = []

    def opt_tracker(self, value):
        """Tracker as HOST:PORT#FINGERPRINT (repeatable; trackers in a .p2p are used too)."""
        try:
            address = TrackerAddress.parse(value)
        except PeeritError as e:
            raise usage.UsageError(str(e))
        if address.fingerprint is None:
            raise usage.UsageError(
                f"tracker {value!r} needs its fingerprint: HOST:PORT#FINGERPRINT "
                "(the tracker logs it at start)")
        self["trackers"].append(address)

    def opt_advertise(self, value):
        """Address to tell peers we are reachable on (repeatable) [default: this host's
        non-loopback addresses]."""
        self["advertise"].append(value)

    def postOptions(self):
        if self["log-format"] not in LOG_FORMATS:
            raise usage.UsageError(f"bad --log-format {self['log-format']!r}: text or json")
        if self["metrics"]:
            try:
                self["metrics"] = metrics_description(self["metrics"])
            except PeeritError as e:
                raise usage.UsageError(str(e))
            if not is_loopback_interface(listen_parts(self["metrics"])[1]):
                raise usage.UsageError(
                    "--metrics: the daemon serves metrics on a loopback interface only "
                    "(tcp:PORT or tcp:PORT:interface=127.0.0.1)")
        try:
            self["max-upload-rate"] = parse_size(self["max-upload-rate"])
        except PeeritError as e:
            raise usage.UsageError(f"--max-upload-rate: {e}")
        try:
            parse_udp_endpoint(self["udp"], "--udp")
            self["paths"] = parse_paths(self["paths"])
            if self["stun-server"]:
                self["stun-server"] = parse_host_port(self["stun-server"], DEFAULT_STUN_PORT)
        except PeeritError as e:
            raise usage.UsageError(str(e))
        try:
            self["quic-datagram-size"] = int(self["quic-datagram-size"])
            if not 1200 <= self["quic-datagram-size"] <= 65527:
                raise ValueError
        except ValueError:
            raise usage.UsageError("--quic-datagram-size must be 1200..65527")
        try:
            if self["mailbox"]:
                self["mailbox"] = check_mailbox_url(self["mailbox"])
            elif self["trackers"]:
                self["mailbox"] = default_mailbox_url(self["trackers"][0])
        except PeeritError as e:
            raise usage.UsageError(str(e))
        try:
            for name in ("code-lifetime", "code-wait"):
                self[name] = float(self[name])
                if not 0 < self[name] <= 86400:
                    raise ValueError(name)
        except ValueError as e:
            raise usage.UsageError(f"--{e.args[0] if e.args else 'code-lifetime'} must be a "
                                   f"number of seconds, above 0 and at most 86400")
        self["data-dir"] = os.path.abspath(os.path.expanduser(
            self["data-dir"] or default_data_dir()))
        if not self["control"]:
            self["control"] = "unix:" + default_control_path(self["data-dir"])
        for face in FACES:
            face.check(self)


def makeService(options, reactor=None) -> Daemon:
    """The daemon's child services (see ``peerit.daemon.service``) on ``reactor``, with
    its faces; with ``--metrics``, one more child serving them."""
    if reactor is None:  # the twistd process itself (tests pass their own reactor)
        from twisted.internet import reactor
        tune_garbage_collector()
    daemon = Daemon(reactor, options["data-dir"], options["control"], options["listen"],
                    options["trackers"], options["advertise"],
                    max_upload_rate=options["max-upload-rate"], udp=options["udp"],
                    stun_server=options["stun-server"], paths=options["paths"],
                    quic_datagram_size=options["quic-datagram-size"],
                    log_observer=log_observer(options), mailbox=options["mailbox"],
                    code_lifetime=options["code-lifetime"], code_wait=options["code-wait"])
    for face in FACES:
        face.attach(daemon, options, reactor)
    if options["metrics"]:
        collector = DaemonCollector(daemon.stats, daemon.transfers, daemon.trackers)
        # A face like the page: up before the control socket that tells scripts "ready".
        daemon.add_face(MetricsService(reactor, options["metrics"], registry_with(collector)))
    return daemon
