"""``twistd peerit-tracker``: options and the service they make."""

import ipaddress
import os
import sys

from twisted.application import service
from twisted.python import usage

from peerit.endpoints import (
    DEFAULT_MAILBOX_PORT, DEFAULT_RELAY_PORT, DEFAULT_STUN_PORT, listen_parts,
    metrics_description, parse_udp_endpoint, tcp_description)
from peerit.errors import UsageError
from peerit import units
from peerit.identity import Identity
from peerit.logs import LOG_FORMATS, program_service
from peerit.metrics.endpoint import MetricsService, parse_networks
from peerit.metrics.exposition import registry_with
from peerit.tracker.metrics import TrackerCollector
from peerit.tracker.nat import NatCoordinator, NatLimits
from peerit.tracker.redis_store import RedisStoreService, RedisSwarmStore, new_owner
from peerit.tracker.relay import RelayBroker, RelayLimits
from peerit.tracker.resp import RedisError, RedisUnavailable, check_reachable, parse_redis_url
from peerit.tracker.service import NatPortsService, TrackerService
from peerit.tracker.session import Limits, Tracker
from peerit.tracker.signals import Delivery
from peerit.tracker.store import MemorySwarmStore
from peerit.tracker.workers import (
    ParentWatch, WorkerPool, listen_tcp_shared, listen_udp_shared, worker_argv)

_DEFAULTS = Limits()
_RELAY = RelayLimits()
_NAT = NatLimits()


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


def parse_rate(text: str) -> float:
    """Bytes per second (see :mod:`peerit.units`), which must be positive."""
    try:
        value = units.parse_rate(text)
    except UsageError as e:
        raise ValueError(str(e)) from None
    if not value > 0:
        raise ValueError("rate must be positive")
    return value


def nat_endpoints(listen: str, stun: str, alt: str, relay: str):
    """``(stun, stun_alt_port, relay)`` for :class:`NatPortsService` from the options.

    ``auto`` (the default) means the standard port (3478, 3479, 59001) on the ``--listen``
    interface, or any free port when ``--listen`` asks for one (``tcp:0``: tests, several
    trackers on one host). ``none`` (``--stun-alt-port 0``) turns a service off.
    """
    port, interface = listen_parts(tcp_description(listen))
    escaped = interface.replace(":", "\\:")
    suffix = f":interface={escaped}" if interface else ""
    free = port == 0
    stun_spec = None
    if stun != "none":
        stun_spec = stun if stun != "auto" else \
            f"udp:{0 if free else DEFAULT_STUN_PORT}{suffix}"
        stun_port, _ = parse_udp_endpoint(stun_spec)
    if alt == "auto":
        alt_port = None if stun_spec is None or stun_port == 0 else stun_port + 1
    else:
        if not alt.isdigit() or int(alt) > 65535:
            raise UsageError(f"bad --stun-alt-port {alt!r}: a port, 0 for none, or auto")
        alt_port = int(alt)
        if stun_spec is not None and alt_port and alt_port == stun_port:
            raise UsageError("--stun-alt-port must differ from the --stun port")
    relay_spec = None
    if relay != "none":
        relay_spec = tcp_description(relay) if relay != "auto" else \
            f"tcp:{0 if free else DEFAULT_RELAY_PORT}{suffix}"
    return stun_spec, alt_port, relay_spec


def mailbox_endpoint(listen: str, mailbox: str) -> str | None:
    """The ``tcp:`` endpoint of the code rendezvous, or None (``none``, the default).
    ``auto``: port DEFAULT_MAILBOX_PORT on the --listen interface (a free one with tcp:0)."""
    if mailbox == "none":
        return None
    if mailbox != "auto":
        return tcp_description(mailbox)
    port, interface = listen_parts(tcp_description(listen))
    escaped = interface.replace(":", "\\:")
    suffix = f":interface={escaped}" if interface else ""
    return f"tcp:{0 if port == 0 else DEFAULT_MAILBOX_PORT}{suffix}"


def relay_host(given: str | None, relay: str | None) -> str:
    """The address daemons reach this process's relay at: ``--relay-host``, else the relay's
    interface when it is a concrete address, else "" (daemons dial their tracker's host)."""
    if relay is None:
        return ""
    if given is not None:
        try:
            address = ipaddress.ip_address(given)
        except ValueError:
            raise UsageError(f"bad --relay-host {given!r}: an IPv4 or IPv6 address") from None
        if address.is_unspecified or address.is_multicast:
            raise UsageError(f"bad --relay-host {given!r}: the address daemons connect to, "
                             "not a wildcard or multicast one")
        return str(address)
    _, interface = listen_parts(relay)
    try:
        address = ipaddress.ip_address(interface)
    except ValueError:
        return ""
    return "" if address.is_unspecified else str(address)


def read_password_file(path: str) -> bytes:
    """The first line of ``path`` (a file only its owner can read, as systemd's
    LoadCredential= or a secret mount gives it)."""
    try:
        with open(path, "rb") as f:
            line = f.readline(4097)
    except OSError as e:
        raise UsageError(f"--redis-password-file {path}: {e.strerror}") from None
    password = line.rstrip(b"\r\n")
    if not password or len(password) > 4096:
        raise UsageError(f"--redis-password-file {path}: the first line must be the password")
    return password


def worker_endpoint(description: str | None, index: int) -> str | None:
    """Worker ``index``'s own TCP endpoint: the given port + index, or a free port for port 0.
    Each worker runs its own relay (a token is redeemed where it was issued) and serves its
    own metrics (each worker is one Prometheus target: nothing counted twice)."""
    if description is None:
        return None
    port, interface = listen_parts(description)
    escaped = interface.replace(":", "\\:")
    return f"tcp:{port + index if port else 0}" + (f":interface={escaped}" if interface else "")


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
        ["stun", None, "auto",
         "UDP endpoint of the STUN responder (udp:PORT[:interface=ADDR]), or none. auto: "
         f"port {DEFAULT_STUN_PORT} on the --listen interface (a free port with tcp:0)."],
        ["stun-alt-port", None, "auto",
         "Second STUN port on the same address (NAT behaviour tests), 0 for none. auto: the "
         "STUN port + 1 (a free port with udp:0)."],
        ["stun-budget", None, "1M",
         "Bytes per second all STUN answers may take together (k, M, Ki, Mi...): bounds "
         "what spoofed requests can make the tracker send, however many sources they use."],
        ["relay", None, "auto",
         "TCP endpoint of the relay (tcp:PORT[:interface=ADDR]), or none. auto: port "
         f"{DEFAULT_RELAY_PORT} on the --listen interface (a free port with tcp:0)."],
        ["relay-host", None, None,
         "Address daemons reach this process's relay at, named in relay offers when the "
         "two peers' sessions are on tracker processes on different hosts (--store). "
         "[default: the --relay interface when it is an address, else none: such relays "
         "are refused]"],
        ["relay-rate", None, "10M",
         "Bandwidth cap of each direction of each relayed session, bytes/s "
         f"({units.UNITS_HELP})."],
        ["relay-sessions", None, _RELAY.max_sessions,
         "Relayed sessions at once (offered tokens included).", _positive_int],
        ["relay-per-peer", None, _RELAY.per_peer,
         "Relayed sessions one peer may be part of at once.", _positive_int],
        ["relay-idle-timeout", None, _RELAY.idle_timeout,
         "Seconds of silence both ways after which a relayed session is closed.",
         _positive_float],
        ["mailbox", None, "none",
         "TCP endpoint of the rendezvous for short codes (peerit-ctl send/receive; a "
         "magic-wormhole mailbox: it relays PAKE messages and learns nothing), auto, or "
         f"none. auto: port {DEFAULT_MAILBOX_PORT} on the --listen interface (a free port "
         "with tcp:0); its URL is written to DATA_DIR/mailbox.url."],
        ["nat-attempts", None, _NAT.max_attempts,
         f"Punches and relays a peer may be part of per {_NAT.attempt_window:g}s.",
         _positive_int],
        ["store", None, "memory",
         "Where the swarm table lives: memory (this process), or Redis shared by every "
         "tracker process given the same URL: redis://HOST[:PORT][/DB], "
         "rediss://HOST[:PORT][/DB][?ca=DIR] (TLS) or unix://PATH[?db=N]."],
        ["redis-password-file", None, None,
         "File whose first line is the Redis password (never on the command line)."],
        ["workers", None, 1,
         "Tracker processes sharing the listening and STUN ports (SO_REUSEPORT), each with "
         "its own relay port (the --relay port + its index); more than 1 needs --store "
         "redis://...", _positive_int],
        ["worker", None, None,
         "Run as worker I of a --workers parent (set by the parent, not by hand).", int],
        ["metrics", None, None,
         "Serve Prometheus metrics at http://ADDR:PORT/metrics: tcp:PORT[:interface=ADDR] "
         "(interface 127.0.0.1 unless given) [default: off]. Only loopback clients are "
         "served unless --metrics-allow names others."],
        ["log-format", None, "text",
         "Log lines as text, or json: one JSON object per line with level, namespace, "
         "time, message and the event's fields (docs/observability.md)."],
    ]

    def __init__(self):
        super().__init__()
        self["metrics-allow"] = []

    def opt_metrics_allow(self, value):
        """Address or network (10.0.0.0/24) besides loopback allowed to read --metrics
        (repeatable), e.g. the Prometheus server's."""
        self["metrics-allow"].append(value)

    def postOptions(self):
        try:
            tcp_description(self["listen"])
        except Exception as e:
            raise usage.UsageError(str(e)) from None
        if self["log-format"] not in LOG_FORMATS:
            raise usage.UsageError(f"bad --log-format {self['log-format']!r}: text or json")
        try:
            self.metrics_endpoint = metrics_description(self["metrics"]) \
                if self["metrics"] else None
            self.metrics_allow = parse_networks(self["metrics-allow"])
        except UsageError as e:
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
        try:
            self.nat_endpoints = nat_endpoints(self["listen"], self["stun"],
                                               self["stun-alt-port"], self["relay"])
            self.relay_host = relay_host(self["relay-host"], self.nat_endpoints[2])
            self.relay_limits = RelayLimits(
                rate=parse_rate(self["relay-rate"]), max_sessions=self["relay-sessions"],
                per_peer=self["relay-per-peer"], idle_timeout=self["relay-idle-timeout"])
            self.nat_limits = NatLimits(max_attempts=self["nat-attempts"])
            self.stun_budget = parse_rate(self["stun-budget"])
            self.mailbox_endpoint = mailbox_endpoint(self["listen"], self["mailbox"])
        except (ValueError, UsageError) as e:
            raise usage.UsageError(str(e)) from None
        self.redis_url = self.redis_password = None
        try:
            if self["store"] != "memory":
                self.redis_url = parse_redis_url(self["store"])
            if self["redis-password-file"] is not None:
                self.redis_password = read_password_file(self["redis-password-file"])
        except (ValueError, UsageError) as e:
            raise usage.UsageError(str(e)) from None
        if self["workers"] > 1 and self.redis_url is None:
            raise usage.UsageError("--workers above 1 needs a shared table: --store "
                                   "redis://HOST:PORT/DB (or rediss://, unix://)")
        self.listen_port, self.listen_host = listen_parts(tcp_description(self["listen"]))


def _check_redis(options) -> None:
    """A tracker told to use Redis does not start without it: one line, exit status 1."""
    try:
        check_reachable(options.redis_url, options.redis_password)
    except (RedisUnavailable, RedisError) as e:
        sys.exit(f"peerit-tracker: {e}")


def makeService(options, reactor=None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor
    identity = Identity.load_or_create(options["data-dir"], common_name="peer-it tracker")
    top = program_service(options)
    if options.mailbox_endpoint and options["worker"] is None:
        # One rendezvous for the whole tracker: in the parent of a worker pool (the workers
        # are handed --mailbox with the other options and leave it alone). First: it is
        # listening once tracker.endpoint says the tracker is. Imported only when asked
        # for: the mailbox server brings autobahn along.
        from peerit.tracker.mailbox import MailboxService
        MailboxService(reactor, options.mailbox_endpoint,
                       options["data-dir"]).setServiceParent(top)
    if options.redis_url is not None:
        _check_redis(options)
    stun, stun_alt_port, relay = options.nat_endpoints
    if options["workers"] > 1 and options["worker"] is None:
        stun_ports = None
        if stun is not None:
            stun_port, interface = parse_udp_endpoint(stun)
            stun_ports = (interface, stun_port, stun_alt_port)
        WorkerPool(reactor, options["workers"], options.listen_host, options.listen_port,
                   stun_ports,
                   lambda index, port, stun: worker_argv(
                       options, index, port, stun, worker_endpoint(relay, index),
                       worker_endpoint(options.metrics_endpoint, index)),
                   options["data-dir"], identity).setServiceParent(top)
        return top
    worker = options["worker"]
    remote = None
    if options.redis_url is not None:
        label = "tracker" if worker is None else f"worker{worker}"
        store = RedisSwarmStore(reactor, options.redis_url,
                                new_owner(label, relay_host=options.relay_host),
                                options.redis_password,
                                refresh_interval=options.limits.idle_timeout / 6)
        tracker = Tracker(reactor, store, options.limits)
        remote = Delivery(reactor, store)
        # First: the view starts filling before the first session arrives.
        RedisStoreService(store, tracker).setServiceParent(top)
    else:
        tracker = Tracker(reactor, MemorySwarmStore(), options.limits)
    broker = RelayBroker(reactor, options.relay_limits) if relay else None
    coordinator = NatCoordinator(tracker, broker, options.nat_limits, remote=remote,
                                 relay_host=options.relay_host)
    shared = worker is not None
    if shared:
        ParentWatch(reactor).setServiceParent(top)
    # Before the tracker's port: its ports are bound (and tracker.stun_info set) before the
    # tracker says it is ready, so the first session already learns them.
    nat_ports = NatPortsService(reactor, tracker, stun, stun_alt_port, relay, broker,
                                listen_udp=listen_udp_shared if shared else None,
                                stun_budget=options.stun_budget)
    nat_ports.setServiceParent(top)
    if options.metrics_endpoint is not None:
        collector = TrackerCollector(tracker, coordinator, broker,
                                     stun=lambda: nat_ports.stun_responder)
        MetricsService(reactor, options.metrics_endpoint, registry_with(collector),
                       options.metrics_allow).setServiceParent(top)
    TrackerService(reactor, tracker, identity, options["listen"], options["data-dir"],
                   other_connections=options.relay_limits.connection_cap if relay else 0,
                   listen=_shared_listener(options) if shared else None,
                   worker=worker).setServiceParent(top)
    return top


def _shared_listener(options):
    def listen(reactor, description, factory):
        return listen_tcp_shared(reactor, options.listen_host, options.listen_port, factory)
    return listen
