"""The tracker's logic: sessions with daemons, bound to proven peer ids, over the swarm table.

No I/O here. The TLS adapter (``peerit.tracker.protocol``) hands each connection a
:class:`TrackerSession` and feeds it events (connected, handshake done with a peer id, bytes,
lost); the session writes frames through the adapter's :class:`SessionLink`. Time comes from
the injected clock, so every timeout is tested with ``task.Clock``.

A session moves through explicit states::

    HANDSHAKING --TLS proves a key--> GREETING --Hello--> ACTIVE --(error|lost|timeout)--> CLOSED

Nothing a session says is accepted before the TLS handshake proved its peer id, and every
entry it creates is keyed by that id: no message carries a peer id of its own, so one session
can never announce, update or remove another peer's entries.

Requests are dispatched by message type through :attr:`Tracker.handlers`; a new request type
is one :meth:`Tracker.register_handler` call (``peerit.tracker.nat`` adds NAT reports, punch
and relay requests that way). Any code holding the :class:`Tracker` can push to a connected
peer with :meth:`Tracker.send_to`.
"""

import ipaddress
import random
from dataclasses import dataclass
from typing import Callable, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from peerit.errors import MalformedMessage, FrameTooLarge
from peerit.identity import format_fingerprint
from peerit.ratelimit import TokenBucket
from peerit.tracker.store import Contact, ISwarmStore
from peerit.wire import tracker as wire
from peerit.wire.framing import FrameDecoder, frame, frame_header

log = Logger(namespace="peerit.tracker")

HANDSHAKING = "handshaking"
GREETING = "greeting"
ACTIVE = "active"
CLOSED = "closed"

_KNOWN_OPCODES = frozenset(wire.messages.opcode_of(t) for t in wire.messages.message_types)


@dataclass(frozen=True)
class Limits:
    """What one tracker allows; every field is a ``twistd peerit-tracker`` option."""
    max_frame_size: int = wire.MAX_DAEMON_FRAME_SIZE
    handshake_timeout: float = 10.0     # TCP accept -> Hello received
    idle_timeout: float = 90.0          # silence after which a session is dropped
    max_swarms_per_session: int = 4096  # a daemon seeding thousands of files is normal
    request_rate: float = 20.0          # sustained requests per second per session
    request_burst: int = 4200           # enough to replay every swarm after a reconnect
    max_sessions_per_address: int = 64
    max_sessions: int = 20000
    max_peers_per_list: int = wire.MAX_PEERS_PER_LIST
    push_fanout: int = 32               # members told about a newcomer, at most

    @property
    def keepalive_interval(self) -> float:
        """How often a daemon must speak: three chances before the idle timeout."""
        return self.idle_timeout / 3

    def __post_init__(self):
        if self.max_frame_size < 256:
            raise ValueError("max frame size below 256 bytes cannot carry a Hello")
        if self.max_peers_per_list > wire.MAX_PEERS_PER_LIST:
            raise ValueError(f"at most {wire.MAX_PEERS_PER_LIST} peers per list")
        for name in ("handshake_timeout", "idle_timeout", "request_rate"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("max_swarms_per_session", "request_burst", "max_sessions_per_address",
                     "max_sessions", "max_peers_per_list"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


class SessionLink(Protocol):
    """What a session needs from its connection (the TLS adapter, or a fake in tests)."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None:
        """Flush what was written, then close (the adapter bounds how long that may take)."""

    def abort(self) -> None:
        """Close now, discarding anything unsent."""


class SessionClosed(Exception):
    """Raised inside a handler to end the session; carries the error to send first."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


Handler = Callable[["TrackerSession", object], None]


def _plain_address(host: str) -> str:
    """An IPv4-mapped IPv6 source address as the IPv4 address it is."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 6 and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _usable_lan_address(text: str) -> bool:
    address = ipaddress.ip_address(text)
    return not (address.is_unspecified or address.is_multicast)


class Tracker:
    """Every session of one tracker process, the swarm table, and the request handlers."""

    def __init__(self, clock: IReactorTime, store: ISwarmStore, limits: Limits = Limits(),
                 rng: random.Random | None = None):
        self.clock = clock
        self.store = store
        self.limits = limits
        self.rng = rng or random.Random()
        self.handlers: dict[type, Handler] = {}
        # Where this tracker's STUN responder and relay listen; sent after every Welcome once
        # set (the service sets it when its ports are bound).
        self.stun_info: wire.StunInfo | None = None
        self._sessions: dict[bytes, "TrackerSession"] = {}  # ACTIVE sessions by peer id
        self._per_address: dict[str, int] = {}
        self._open = 0
        self.requests_handled = 0
        self.register_handler(wire.Announce, _on_announce)
        self.register_handler(wire.PeerListRequest, _on_peer_list_request)
        self.register_handler(wire.KeepAlive, _on_keepalive)
        self.register_handler(wire.Ping, _on_ping)
        self.register_handler(wire.Pong, _on_pong)
        self.register_handler(wire.Error, _on_error)
        for server_only in (wire.Welcome, wire.PeerList, wire.PeerJoined, wire.StunInfo,
                            wire.Punch, wire.RelayOffer):
            self.register_handler(server_only, _tracker_only)

    def register_handler(self, message_type: type, handler: Handler) -> None:
        """``handler(session, message)`` runs for each such message from an ACTIVE session.

        It may raise :class:`SessionClosed` to end the session with an error.
        """
        self.handlers[message_type] = handler

    # -- sessions ---------------------------------------------------------------------------

    def open_session(self, link: SessionLink, source_host: str,
                     source_port: int) -> "TrackerSession | None":
        """A new TCP connection; None if a limit refuses it (the caller drops it at once)."""
        source_host = _plain_address(source_host)
        if self._open >= self.limits.max_sessions:
            log.warn("refused connection from {source}: {count} sessions open (limit)",
                     source=source_host, count=self._open)
            return None
        count = self._per_address.get(source_host, 0)
        if count >= self.limits.max_sessions_per_address:
            log.warn("refused connection from {source}: {count} sessions from that address "
                     "(limit)", source=source_host, count=count)
            return None
        self._per_address[source_host] = count + 1
        self._open += 1
        return TrackerSession(self, link, source_host, source_port)

    @property
    def session_count(self) -> int:
        """Connections open, in any state."""
        return self._open

    def session_of(self, peer_id: bytes) -> "TrackerSession | None":
        return self._sessions.get(peer_id)

    def connected_peers(self) -> list[bytes]:
        return list(self._sessions)

    def send_to(self, peer_id: bytes, message) -> bool:
        """Push ``message`` to the peer's session; False if it is not connected (or stalled)."""
        session = self._sessions.get(peer_id)
        if session is None:
            return False
        return session.push(message)

    def peer_joined(self, info_hash: bytes, peer_id: bytes) -> None:
        """An entry another tracker process added: members whose sessions are here are told
        as for a local one (each process samples the whole swarm and pushes to its own)."""
        _tell_members(self, info_hash, peer_id)

    def close_all(self, code: str = "shutting_down", reason: str = "tracker stopping") -> None:
        for session in list(self._sessions.values()):
            session.fail(code, reason)

    def sweep(self) -> list[bytes]:
        """Drop peers whose entries have not been refreshed within the idle timeout.

        Sessions expire themselves; this catches entries whose session is gone without
        telling (possible once the table is shared between trackers).
        """
        stale = self.store.expire(self.clock.seconds() - self.limits.idle_timeout)
        for peer_id in stale:
            session = self._sessions.get(peer_id)
            if session is not None:
                session.fail("timed_out", "silent longer than the idle timeout")
        return stale

    def _activate(self, session: "TrackerSession", contact: Contact) -> None:
        old = self._sessions.get(session.peer_id)
        if old is not None:
            # A daemon that reconnects before its old connection timed out: the newer
            # session (proven by the same key) wins and replays its announces.
            old.fail("superseded", "a newer session for this peer id opened")
        self._sessions[session.peer_id] = session
        self.store.put_contact(contact, self.clock.seconds())

    def _closed(self, session: "TrackerSession") -> None:
        self._open -= 1
        count = self._per_address[session.source_host] - 1
        if count:
            self._per_address[session.source_host] = count
        else:
            del self._per_address[session.source_host]
        if session.peer_id is not None and self._sessions.get(session.peer_id) is session:
            del self._sessions[session.peer_id]
            self.store.remove_peer(session.peer_id)


class TrackerSession:
    """One daemon's TLS session with the tracker."""

    def __init__(self, tracker: Tracker, link: SessionLink, source_host: str,
                 source_port: int):
        self.tracker = tracker
        self.link = link
        self.source_host = source_host
        self.source_port = source_port
        self.state = HANDSHAKING
        self.peer_id: bytes | None = None
        self.hello: wire.Hello | None = None
        self.contact: Contact | None = None         # once ACTIVE
        # NAT traversal state (peerit.tracker.nat): the latest NatReport, and when the punch
        # and relay attempts this peer is part of began.
        self.nat_report: wire.NatReport | None = None
        self.nat_attempts: list[float] = []
        limits = tracker.limits
        self._limits = limits
        self._clock = tracker.clock
        self._decoder = FrameDecoder(limits.max_frame_size)
        now = self._clock.seconds()
        self._last_heard = now
        self._requests = TokenBucket(self._clock, limits.request_rate, limits.request_burst)
        self._refusals = 0
        self._paused_since: float | None = None
        self._timer = self._clock.callLater(limits.handshake_timeout, self._handshake_expired)

    def __repr__(self):
        who = format_fingerprint(self.peer_id)[:16] if self.peer_id else "?"
        return f"<TrackerSession {who} from {self.source_host}:{self.source_port} {self.state}>"

    # -- events from the adapter -------------------------------------------------------------

    def handshake_completed(self, peer_id: bytes | None) -> None:
        if self.state != HANDSHAKING:
            return
        if peer_id is None:
            self.fail("protocol_violation", "no client certificate")
            return
        self.peer_id = peer_id
        self.state = GREETING

    def data_received(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        if self.state == HANDSHAKING:
            # TLS delivers application data only after the handshake; defensive.
            self.fail("protocol_violation", "data before the TLS handshake completed")
            return
        self._last_heard = self._clock.seconds()
        try:
            bodies = self._decoder.feed(data)
        except FrameTooLarge as e:
            self.fail("malformed", str(e))
            return
        for body in bodies:
            if self.state == CLOSED:
                return
            self._frame_received(body)
        if self.state == ACTIVE:
            self.tracker.store.touch(self.peer_id, self._last_heard)

    def connection_lost(self) -> None:
        if self.state == CLOSED:
            return
        if self.state == ACTIVE:
            log.info("tracker session {peer} from {source} ended",
                     peer=self._who(), source=self.source_host)
        self._finish()

    def producer_paused(self) -> None:
        """The connection's send buffer is full (the adapter also stops reading): pushes are
        skipped, and a reader stalled for the idle timeout is dropped."""
        if self._paused_since is None:
            self._paused_since = self._clock.seconds()

    def producer_resumed(self) -> None:
        self._paused_since = None

    # -- sending -----------------------------------------------------------------------------

    def send(self, message) -> bool:
        """Answer with a message now; False only if the session is no longer ACTIVE.

        Answers are never dropped: a reader that stops reading stops getting served once its
        requests are not read either, and is dropped after the idle timeout.
        """
        return self.send_body(wire.build(message))

    def send_body(self, body: bytes) -> bool:
        if self.state != ACTIVE:
            return False
        self.link.write(frame_header(len(body)) + body)
        return True

    def push(self, message) -> bool:
        """Send a message the peer did not ask for; skipped (False) while its reader stalls."""
        return self.push_body(wire.build(message))

    def push_body(self, body: bytes) -> bool:
        if self._paused_since is not None:
            return False
        return self.send_body(body)

    def fail(self, code: str, reason: str, refused_opcode: int = 0,
             info_hash: bytes = wire.NO_INFO_HASH) -> None:
        """Send an Error and close this session; everyone else carries on."""
        if self.state == CLOSED:
            return
        log.warn("tracker session {peer} from {source}:{port} closed: {code}: {reason}",
                 peer=self._who(), source=self.source_host, port=self.source_port,
                 code=code, reason=reason)
        if self.state != HANDSHAKING:
            self._write_error(code, reason, refused_opcode, info_hash)
        self._finish()
        self.link.close()

    def refuse(self, request, code: str, reason: str) -> None:
        """Answer one request with an Error; the session stays open."""
        self._write_error(code, reason, wire.messages.opcode_of(type(request)),
                          getattr(request, "info_hash", wire.NO_INFO_HASH))

    def _write_error(self, code, reason, refused_opcode, info_hash) -> None:
        reason = reason.encode("utf8")[:wire.MAX_REASON_BYTES].decode("utf8", "ignore")
        self.link.write(frame(wire.build(wire.Error(code, reason, refused_opcode, info_hash))))

    # -- inside ------------------------------------------------------------------------------

    def _who(self) -> str:
        return format_fingerprint(self.peer_id)[:16] if self.peer_id else "unproven"

    def _frame_received(self, body: bytes) -> None:
        if body and body[0] not in _KNOWN_OPCODES:
            self.fail("unknown_message", f"unknown message type {body[0]}")
            return
        try:
            message = wire.parse(body)
        except MalformedMessage as e:
            self.fail("malformed", str(e))
            return
        if self.state == GREETING:
            if type(message) is not wire.Hello:
                self.fail("protocol_violation",
                          f"{type(message).__name__} before Hello")
                return
            self._greet(message)
            return
        handler = self.tracker.handlers.get(type(message))
        if handler is None:
            if type(message) is wire.Hello:
                self.fail("protocol_violation", "second Hello")
            else:
                self.fail("unknown_message", f"no handler for {type(message).__name__}")
            return
        if type(message) is not wire.KeepAlive and not self._take_token():
            self._refusals += 1
            if self._refusals > self._limits.request_burst:
                self.fail("rate_limited", "kept sending over the request rate")
            else:
                self.refuse(message, "rate_limited",
                            f"over {self._limits.request_rate:g} requests/s")
            return
        self._refusals = 0
        self.tracker.requests_handled += 1
        try:
            handler(self, message)
        except SessionClosed as e:
            self.fail(e.code, e.reason)

    def _take_token(self) -> bool:
        # The instant these frames were received (set by data_received): one clock read per
        # read, not one per frame.
        return self._requests.take(1.0, self._last_heard)

    def _greet(self, hello: wire.Hello) -> None:
        if hello.version != wire.PROTOCOL_VERSION:
            self.fail("unsupported_version",
                      f"protocol version {hello.version}; this tracker speaks "
                      f"{wire.PROTOCOL_VERSION}")
            return
        self.hello = hello
        lan = tuple(a for a in hello.addresses if _usable_lan_address(a))
        contact = Contact(self.peer_id, hello.tcp_port, hello.udp_port, self.source_host, lan)
        self.contact = contact
        self.state = ACTIVE
        self.tracker._activate(self, contact)
        self._timer.cancel()
        self._timer = self._clock.callLater(self._limits.idle_timeout, self._idle_check)
        self.send(wire.Welcome(wire.Endpoint(self.source_host, self.source_port),
                               int(self._limits.keepalive_interval * 1000), self.peer_id))
        if self.tracker.stun_info is not None:
            self.send(self.tracker.stun_info)
        log.info("tracker session {peer} from {source}:{port} open (tcp {tcp_port}, "
                 "udp {udp_port})", peer=self._who(), source=self.source_host,
                 port=self.source_port, tcp_port=hello.tcp_port, udp_port=hello.udp_port)

    def _handshake_expired(self) -> None:
        self._timer = None
        self.fail("timed_out", "no Hello within the handshake timeout")

    def _idle_check(self) -> None:
        # One timer per session, re-armed lazily: cheaper than resetting it on every frame.
        self._timer = None
        now = self._clock.seconds()
        timeout = self._limits.idle_timeout
        if self._paused_since is not None and now - self._paused_since >= timeout:
            self.fail("timed_out", "not reading what the tracker sends")
            return
        silent = now - self._last_heard
        if silent >= timeout:
            self.fail("timed_out", f"silent for {silent:.1f}s")
            return
        due = timeout - silent
        if self._paused_since is not None:
            due = min(due, timeout - (now - self._paused_since))
        self._timer = self._clock.callLater(due, self._idle_check)

    def _finish(self) -> None:
        self.state = CLOSED
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.tracker._closed(self)


# -- request handlers --------------------------------------------------------------------------

def _on_announce(session: TrackerSession, announce: wire.Announce) -> None:
    tracker = session.tracker
    store = tracker.store
    peer_id = session.peer_id
    info_hash = announce.info_hash
    if announce.event == "stopped":
        store.remove(info_hash, peer_id)
        return
    seeder = announce.event == "completed" or announce.left == 0
    # The count first: it is one lookup, and below the cap (nearly always) the role of
    # this swarm does not matter.
    if (store.swarm_count(peer_id) >= tracker.limits.max_swarms_per_session
            and store.role(info_hash, peer_id) is None):
        session.refuse(announce, "too_many_swarms",
                       f"already in {tracker.limits.max_swarms_per_session} swarms")
        return
    # The instant of the read that brought it (data_received reads the clock once per read).
    if store.announce(info_hash, peer_id, seeder, session._last_heard):
        _tell_members(tracker, info_hash, peer_id)


def _tell_members(tracker: Tracker, info_hash: bytes, newcomer: bytes) -> None:
    members = tracker.store.members(info_hash, tracker.limits.push_fanout, newcomer)
    if not members:
        return
    body = wire.peer_joined_body(info_hash, tracker.store.encoded_peer_info(info_hash, newcomer))
    sessions = tracker._sessions
    for peer_id in members:
        session = sessions.get(peer_id)
        if session is not None:
            session.push_body(body)


def _on_peer_list_request(session: TrackerSession, request: wire.PeerListRequest) -> None:
    store = session.tracker.store
    count = min(request.max_peers, session.tracker.limits.max_peers_per_list)
    asker_seeds = store.role(request.info_hash, session.peer_id) is True
    peers = store.sample(request.info_hash, count, session.peer_id,
                         prefer_seeders=not asker_seeds)
    session.send_body(wire.peer_list_body(request.info_hash, peers))


def _on_keepalive(session: TrackerSession, message) -> None:
    # Echoed so the daemon can tell a live tracker from a dead connection.
    session.send_body(_KEEPALIVE_BODY)


def _on_ping(session: TrackerSession, ping: wire.Ping) -> None:
    session.send(wire.Pong(ping.nonce))


def _on_pong(session: TrackerSession, pong: wire.Pong) -> None:
    pass  # the tracker does not ping yet; an answer is harmless


def _on_error(session: TrackerSession, error: wire.Error) -> None:
    log.info("tracker session {peer} reports {code}: {reason}",
             peer=session._who(), code=error.code, reason=error.reason)


def _tracker_only(session: TrackerSession, message) -> None:
    raise SessionClosed("protocol_violation",
                        f"{type(message).__name__} is sent by the tracker only")


_KEEPALIVE_BODY = wire.build(wire.KeepAlive())
