"""``twistd peerit-tracker``: options and the service they make."""

import os

from twisted.application import service
from twisted.python import usage

from peerit.identity import Identity
from peerit.tracker.service import TrackerService, tcp_description
from peerit.tracker.session import Limits, Tracker
from peerit.tracker.store import MemorySwarmStore

_DEFAULTS = Limits()


def default_data_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/peerit-tracker"
    return os.path.join(os.path.expanduser("~"), ".local", "state", "peerit-tracker")


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise ValueError("must be positive")
    return value


_positive_int.coerceDoc = "A whole number, at least 1."
_positive_float.coerceDoc = "A number of seconds (or per second), above 0."


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("Run a peer-it tracker: daemons keep one TLS session with it to announce the "
                "swarms they share and to learn about each other. Daemons pin the tracker's "
                "fingerprint, logged at start and written with the address to "
                "DATA_DIR/tracker.endpoint as HOST:PORT#FINGERPRINT.")
    optParameters = [
        ["listen", "l", "tcp:59000",
         "Endpoint to listen on: tcp:PORT[:interface=ADDR] (ssl:... means the same; TLS is "
         "always on, with the tracker's own key)."],
        ["data-dir", "d", None,
         "Directory for the tracker's key, certificate and tracker.endpoint "
         "[default: /var/lib/peerit-tracker as root, else ~/.local/state/peerit-tracker]."],
        ["max-frame-size", None, _DEFAULTS.max_frame_size,
         "Largest frame accepted from a daemon, in bytes.", _positive_int],
        ["handshake-timeout", None, _DEFAULTS.handshake_timeout,
         "Seconds from connecting to Hello.", _positive_float],
        ["idle-timeout", None, _DEFAULTS.idle_timeout,
         "Seconds of silence after which a session and its entries are dropped (daemons "
         "are told to keep alive every third of it).", _positive_float],
        ["max-swarms", None, _DEFAULTS.max_swarms_per_session,
         "Swarms one session may be in.", _positive_int],
        ["request-rate", None, _DEFAULTS.request_rate,
         "Sustained requests per second per session.", _positive_float],
        ["request-burst", None, _DEFAULTS.request_burst,
         "Requests a session may make at once (token bucket size).", _positive_int],
        ["max-sessions-per-address", None, _DEFAULTS.max_sessions_per_address,
         "Concurrent sessions from one source address.", _positive_int],
        ["max-sessions", None, _DEFAULTS.max_sessions,
         "Concurrent sessions in all.", _positive_int],
        ["max-peers", None, _DEFAULTS.max_peers_per_list,
         "Most peers in one peer list (at most 200).", _positive_int],
        ["push-fanout", None, _DEFAULTS.push_fanout,
         "Most swarm members told about each newcomer.", _positive_int],
    ]

    def postOptions(self):
        try:
            tcp_description(self["listen"])
        except Exception as e:
            raise usage.UsageError(str(e)) from None
        if self["data-dir"] is None:
            self["data-dir"] = default_data_dir()
        try:
            self.limits = Limits(
                max_frame_size=self["max-frame-size"],
                handshake_timeout=self["handshake-timeout"],
                idle_timeout=self["idle-timeout"],
                max_swarms_per_session=self["max-swarms"],
                request_rate=self["request-rate"],
                request_burst=self["request-burst"],
                max_sessions_per_address=self["max-sessions-per-address"],
                max_sessions=self["max-sessions"],
                max_peers_per_list=self["max-peers"],
                push_fanout=self["push-fanout"],
            )
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options, reactor=None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor
    identity = Identity.load_or_create(options["data-dir"], common_name="peer-it tracker")
    tracker = Tracker(reactor, MemorySwarmStore(), options.limits)
    top = service.MultiService()
    TrackerService(reactor, tracker, identity, options["listen"],
                   options["data-dir"]).setServiceParent(top)
    return top
