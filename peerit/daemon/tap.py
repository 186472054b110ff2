"""``twistd peerit-daemon``: options and service construction."""

import os

from twisted.python import usage

from peerit.addresses import TrackerAddress
from peerit.errors import PeeritError


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
        ["max-upload-rate", None, "0",
         "Cap on upload bytes per second over all peers, e.g. 5M; 0 = no cap "
         "[default: 0]"],
    ]

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
        from peerit.ctl.offline import parse_size
        from peerit.daemon.service import default_control_path, default_data_dir
        try:
            self["max-upload-rate"] = parse_size(self["max-upload-rate"])
        except PeeritError as e:
            raise usage.UsageError(f"--max-upload-rate: {e}")
        self["data-dir"] = os.path.abspath(os.path.expanduser(
            self["data-dir"] or default_data_dir()))
        if not self["control"]:
            self["control"] = "unix:" + default_control_path(self["data-dir"])


def makeService(options):
    from twisted.internet import reactor

    from peerit.daemon.service import Daemon
    return Daemon(reactor, options["data-dir"], options["control"], options["listen"],
                  options["trackers"], options["advertise"],
                  max_upload_rate=options["max-upload-rate"])
