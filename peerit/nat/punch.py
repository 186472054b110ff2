"""Hole punching: find a direct UDP path to a peer through both NATs, or say there is none.

The tracker tells both peers, over their TLS sessions, to punch towards each other: each gets
the other's candidates (LAN addresses, public address), NAT mapping behaviour, an attempt id
and a shared nonce. Each side then runs one :class:`PunchAttempt`:

1. It pings every candidate at once from its main socket, and again every ``interval``.
   A datagram sent out opens the sender's NAT towards that address, so when both sides do
   this the pings cross and get through (a one-sided punch fails at a port-restricted NAT).
2. A valid pong (right MAC, attempt, peer, and the transaction of a ping sent from *that*
   socket to *that* address) confirms the pair in both directions. A valid ping from an
   address not yet known (the peer's NAT mapping as seen from here) adds that address as a
   "reflexive" candidate and is answered by a ping of our own at once (a triggered check).
3. The controlling side nominates the first confirmed pair (waiting ``lan_grace`` for a LAN
   pair still unconfirmed, so LAN wins a near tie) and repeats the nomination every interval
   until the controlled side acknowledges it. The controlled side accepts a nomination only
   on a pair it has confirmed itself, so a replayed nomination cannot steer it to a stranger.
   ``on_success(Path)`` fires exactly once on each side: on acceptance (controlled) or on the
   acknowledgement (controlling).
4. Nothing by the deadline: ``on_failure(reason)`` and the caller goes to the relay.

Endpoint-dependent ("symmetric") mapping on one side only: the birthday technique. The hard
(symmetric) side opens ``birthday_sockets`` extra sockets and pings the peer's public address
from each, so its NAT holds that many mappings towards the peer; the easy side pings random
ports of the hard side's public address (no repeats, ``birthday_probe_rate`` per second) until
one lands on a mapping. With 256 mappings out of 64512 ports and 200 probes/s, half the
attempts connect within ~1 s and 98% within 5 s (Tailscale's figures; see docs/punch.md).
Both sides symmetric: hopeless in practice, so the attempt fails at once.

No I/O here: sockets and the clock are injected, datagrams come in through
:meth:`PunchAttempt.datagram_received` (or :class:`PunchCoordinator`, which routes them by
attempt id), and every send is capped by a token bucket.
"""

import enum
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface

from peerit.errors import MalformedMessage
from peerit.ratelimit import TokenBucket
from peerit.wire import probe as wire

log = Logger()

Address = tuple[str, int]

INDEPENDENT, DEPENDENT, UNKNOWN = "independent", "dependent", "unknown"
MAPPINGS = (INDEPENDENT, DEPENDENT, UNKNOWN)
CONTROLLING, CONTROLLED = "controlling", "controlled"
CANDIDATE_KINDS = ("lan", "public")
# Path kinds, most preferred first: LAN avoids the NAT (and missing hairpinning) entirely;
# "reflexive" is an address learned from a valid ping; "birthday" one found by the technique.
PATH_KINDS = ("lan", "public", "reflexive", "birthday")

DEFAULT_INTERVAL = 0.05
DIRECT_DEADLINE = 3.0  # cone<->cone connects within a few round trips or not at all
BIRTHDAY_DEADLINE = 6.0  # ~99% of birthday attempts land within 6 s at the rates below
BIRTHDAY_SOCKETS = 256
BIRTHDAY_PROBE_RATE = 200.0  # easy side, random ports/s: 50% by ~0.9 s, 98% by 5 s
BIRTHDAY_OPEN_RATE = 1024.0  # hard side, first pass: all 256 mappings open in 0.25 s
BIRTHDAY_REFRESH = 2.0  # hard side, then each extra socket pings again every 2 s
MAX_PROBES_PER_SECOND = 1500.0  # token bucket over every probe an attempt sends
PROBE_BURST = 150
LAN_GRACE = 0.02
LINGER = 5.0  # controlled side: how long it still acknowledges repeated nominations
MAX_LEARNED = 32  # reflexive candidates learned from incoming pings
MAX_PENDING = 4096  # outstanding ping transactions remembered
MAX_PENDING_NOMINATIONS = 8
PORT_RANGE = (1024, 65535)


# netcheck's RFC 4787 names for a mapping, reduced to what the punch needs to know.
_MAPPING_NAMES = {
    "endpoint-independent": INDEPENDENT,
    "address-dependent": DEPENDENT,
    "address-and-port-dependent": DEPENDENT,
    "endpoint-dependent": DEPENDENT,
    **{m: m for m in MAPPINGS},
}


def mapping_behaviour(name: str | None) -> str:
    """``independent``, ``dependent`` or ``unknown`` from our own names or netcheck's."""
    return _MAPPING_NAMES.get(name or UNKNOWN, UNKNOWN)


def role_for(my_peer_id: bytes, their_peer_id: bytes) -> str:
    """The convention both sides can compute alone: the lower peer id controls."""
    return CONTROLLING if my_peer_id < their_peer_id else CONTROLLED


def plan_for(my_mapping: str, their_mapping: str) -> str:
    """"direct", "hard" (I run the many sockets), "easy" (I probe random ports) or "relay".

    Unknown behaviour counts as independent: probing costs little and the deadline bounds it.
    """
    mine = mapping_behaviour(my_mapping) == DEPENDENT
    theirs = mapping_behaviour(their_mapping) == DEPENDENT
    if mine and theirs:
        return "relay"
    if mine:
        return "hard"
    if theirs:
        return "easy"
    return "direct"


class ISocketHandle(Interface):
    """One UDP socket as the punch logic sees it; the adapter (or a fake) implements it.

    The object itself is the socket's identity: a :class:`Path` names the one to use.
    """

    def send(data: bytes, addr: Address) -> None:
        """Send one datagram. Must not raise for network errors (a punch expects loss)."""

    def close() -> None:
        """Release the socket; idempotent."""


@dataclass(frozen=True)
class Candidate:
    """An address the tracker says the peer may be reached at."""
    host: str
    port: int
    kind: str  # "lan" or "public"

    def __post_init__(self):
        if self.kind not in CANDIDATE_KINDS:
            raise ValueError(f"candidate kind must be one of {CANDIDATE_KINDS}")

    @property
    def address(self) -> Address:
        return (self.host, self.port)


@dataclass(frozen=True)
class Path:
    """The winner: send from ``local_socket`` to ``remote_addr``. ``rtt`` is the round trip
    of the ping that confirmed it, measured by this side."""
    local_socket: object
    remote_addr: Address
    rtt: float
    kind: str


@dataclass
class PunchStats:
    pings_sent: int = 0
    pongs_sent: int = 0
    nominations_sent: int = 0
    acks_sent: int = 0
    birthday_probes_sent: int = 0  # easy side: pings to random ports (also in pings_sent)
    sockets_opened: int = 0
    rate_limited: int = 0
    malformed: int = 0
    bad_mac: int = 0
    foreign: int = 0  # another attempt's or another peer's probe
    unmatched: int = 0  # pong/ack with no matching transaction, socket and address
    learned: int = 0
    learned_refused: int = 0
    ignored: int = 0  # valid probes that the current state has no use for
    role_conflicts: int = 0


class State(enum.Enum):
    IDLE = "idle"
    PROBING = "probing"  # pinging candidates, no pair chosen
    CHOOSING = "choosing"  # controlling: a non-LAN pair confirmed, brief wait for a LAN one
    NOMINATING = "nominating"  # controlling: pair chosen, nominating until acknowledged
    SUCCEEDED = "succeeded"  # path reported; controlled side still acks repeat nominations
    CLOSED = "closed"  # succeeded and done
    FAILED = "failed"
    CANCELLED = "cancelled"


# The only transitions there are; _move refuses any other.
TRANSITIONS = {
    State.IDLE: {State.PROBING, State.FAILED, State.CANCELLED},
    State.PROBING: {State.CHOOSING, State.NOMINATING,  # controlling
                    State.SUCCEEDED,  # controlled, on a nomination of a confirmed pair
                    State.FAILED, State.CANCELLED},
    State.CHOOSING: {State.NOMINATING, State.FAILED, State.CANCELLED},
    State.NOMINATING: {State.SUCCEEDED, State.FAILED, State.CANCELLED},
    State.SUCCEEDED: {State.CLOSED},
    State.CLOSED: set(),
    State.FAILED: set(),
    State.CANCELLED: set(),
}
PROBING_STATES = frozenset({State.PROBING, State.CHOOSING})
ACTIVE_STATES = frozenset({State.PROBING, State.CHOOSING, State.NOMINATING})
FINISHED_STATES = frozenset({State.CLOSED, State.FAILED, State.CANCELLED})


class _Check:
    """A (socket, address) pair we keep pinging until it is confirmed."""
    __slots__ = ("socket", "addr", "kind", "last_ping")

    def __init__(self, socket, addr: Address, kind: str):
        self.socket = socket
        self.addr = addr
        self.kind = kind
        self.last_ping = -math.inf


class _Sent:
    __slots__ = ("socket", "addr", "kind", "at")

    def __init__(self, socket, addr, kind, at):
        self.socket = socket
        self.addr = addr
        self.kind = kind
        self.at = at


class PunchAttempt:
    """One side of one hole-punch attempt (see the module docstring for the algorithm).

    ``their_candidates`` are :class:`Candidate` or ``(host, port, kind)`` tuples. ``deadline``
    defaults to :data:`DIRECT_DEADLINE`, or :data:`BIRTHDAY_DEADLINE` when one side is
    symmetric. ``open_socket()`` is needed only on the hard side of a birthday attempt.
    Call :meth:`start`; feed every probe datagram for this attempt to
    :meth:`datagram_received` (or register it with a :class:`PunchCoordinator`).
    """

    def __init__(self, clock: IReactorTime, rng, *, attempt_id: bytes, nonce: bytes,
                 my_peer_id: bytes, their_peer_id: bytes, role: str,
                 their_candidates: Sequence, main_socket,
                 on_success: Callable[[Path], object],
                 on_failure: Callable[[str], object],
                 my_mapping: str = UNKNOWN, their_mapping: str = UNKNOWN,
                 open_socket: Callable[[], object] | None = None,
                 deadline: float | None = None, interval: float = DEFAULT_INTERVAL,
                 birthday_sockets: int = BIRTHDAY_SOCKETS,
                 birthday_probe_rate: float = BIRTHDAY_PROBE_RATE,
                 max_probes_per_second: float = MAX_PROBES_PER_SECOND,
                 lan_grace: float = LAN_GRACE, linger: float = LINGER):
        if len(attempt_id) != wire.ATTEMPT_ID_SIZE:
            raise ValueError(f"attempt id must be {wire.ATTEMPT_ID_SIZE} bytes")
        if len(nonce) < 16:
            raise ValueError("nonce must be at least 16 bytes")
        if len(my_peer_id) != wire.PEER_ID_SIZE or len(their_peer_id) != wire.PEER_ID_SIZE:
            raise ValueError(f"peer ids must be {wire.PEER_ID_SIZE} bytes")
        if my_peer_id == their_peer_id:
            raise ValueError("cannot punch to myself")
        if role not in (CONTROLLING, CONTROLLED):
            raise ValueError(f"role must be {CONTROLLING!r} or {CONTROLLED!r}")
        if my_mapping not in _MAPPING_NAMES or their_mapping not in _MAPPING_NAMES:
            raise ValueError(f"unknown mapping behaviour; use one of {MAPPINGS}")
        my_mapping, their_mapping = (mapping_behaviour(my_mapping),
                                     mapping_behaviour(their_mapping))
        if interval <= 0 or max_probes_per_second <= 0:
            raise ValueError("interval and probe rate must be positive")
        self._clock = clock
        self._rng = rng
        self.attempt_id = bytes(attempt_id)
        self._nonce = bytes(nonce)
        self.my_peer_id = bytes(my_peer_id)
        self.their_peer_id = bytes(their_peer_id)
        self.role = role
        self.plan = plan_for(my_mapping, their_mapping)
        self._main = main_socket
        self._open_socket = open_socket
        self._on_success = on_success
        self._on_failure = on_failure
        if deadline is None:
            deadline = DIRECT_DEADLINE if self.plan == "direct" else BIRTHDAY_DEADLINE
        self.deadline = deadline
        self.interval = interval
        self._lan_grace = lan_grace
        self._linger = linger
        self._budget = TokenBucket(clock, max_probes_per_second, PROBE_BURST)
        self.stats = PunchStats()
        self.state = State.IDLE
        self.path: Path | None = None
        self.started_at: float | None = None

        candidates = [c if isinstance(c, Candidate) else Candidate(*c)
                      for c in their_candidates]
        self._checks: dict[tuple, _Check] = {}
        for c in candidates:
            self._checks.setdefault((main_socket, c.address), _Check(main_socket, c.address,
                                                                     c.kind))
        self._publics = [c.address for c in candidates if c.kind == "public"]
        self._sent: OrderedDict[bytes, _Sent] = OrderedDict()
        self._confirmed: dict[tuple, tuple[str, float, int]] = {}
        self._nominations: OrderedDict[tuple, bytes] = OrderedDict()  # controlled, pending
        self._chosen: tuple | None = None
        self._nomination_tx: bytes | None = None

        # Birthday technique.
        self._birthday_target = max(0, birthday_sockets) if self._publics else 0
        self._birthday_rate = birthday_probe_rate
        self._extra_sockets: list = []  # hard side
        self._birthday_checks: list[_Check] = []
        self._birthday_by_key: dict[tuple, _Check] = {}
        self._birthday_cursor = 0
        self._birthday_credit = 0.0
        self._probed_ports: set[int] = set()  # easy side
        self._last_tick: float | None = None

        self._tick_call = None
        self._deadline_call = None
        self._grace_call = None
        self._linger_call = None

    # -- public API ------------------------------------------------------------------------

    def start(self) -> None:
        if self.state is not State.IDLE:
            raise RuntimeError(f"punch attempt already {self.state.value}")
        self.started_at = self._clock.seconds()
        if self.plan == "relay":
            self._fail("both sides symmetric: relay")
            return
        self._move(State.PROBING)
        self._deadline_call = self._clock.callLater(self.deadline, self._deadline_passed)
        if self.plan == "easy":
            self._birthday_credit = self._birthday_rate * self.interval
        elif self.plan == "hard":
            self._birthday_credit = BIRTHDAY_OPEN_RATE * self.interval
        log.debug("punch {attempt} started: {role}, plan {plan}, {n} candidates",
                  attempt=self.attempt_id.hex(), role=self.role, plan=self.plan,
                  n=len(self._checks))
        self._tick()

    def cancel(self) -> None:
        """Stop every timer and send nothing more; closes the sockets this attempt opened
        (except the one a success handed to the caller). No callback fires."""
        if self.state in FINISHED_STATES:
            return
        self._stop_timers()
        if self.state is State.SUCCEEDED:
            self._move(State.CLOSED)
            return
        self._close_extra_sockets(keep=None)
        self._move(State.CANCELLED)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def extra_sockets(self) -> tuple:
        """Sockets opened for the birthday technique and still owned by this attempt."""
        return tuple(self._extra_sockets)

    def datagram_received(self, socket, data: bytes, addr: Address) -> None:
        try:
            probe = wire.parse(data)
        except MalformedMessage:
            self.stats.malformed += 1
            return
        self.probe_received(socket, probe, addr)

    def probe_received(self, socket, probe: wire.Probe, addr: Address) -> None:
        """A parsed probe that arrived on ``socket`` from ``addr``. Anything not from the
        peer of this attempt, or not authenticated by the nonce, is dropped and counted."""
        if probe.attempt_id != self.attempt_id or probe.sender != self.their_peer_id:
            self.stats.foreign += 1
            return
        if not wire.verify(probe, self._nonce):
            self.stats.bad_mac += 1
            return
        addr = (addr[0], addr[1])
        kind = probe.kind
        if kind == "ping":
            self._ping_received(socket, addr, probe.transaction)
        elif kind == "pong":
            self._pong_received(socket, addr, probe.transaction)
        elif kind == "nominate":
            self._nomination_received(socket, addr, probe.transaction)
        else:
            self._ack_received(socket, addr, probe.transaction)

    # -- the machine -----------------------------------------------------------------------

    def _move(self, to: State) -> None:
        if to not in TRANSITIONS[self.state]:
            raise AssertionError(f"punch: no transition {self.state.value} -> {to.value}")
        self.state = to

    def _tick(self) -> None:
        self._tick_call = None
        now = self._clock.seconds()
        elapsed = 0.0 if self._last_tick is None else now - self._last_tick
        self._last_tick = now
        if self.state in PROBING_STATES:
            for check in list(self._checks.values()):
                if (check.socket, check.addr) not in self._confirmed:
                    self._ping(check)
            if self.plan == "easy":
                self._birthday_credit += elapsed * self._birthday_rate
                self._probe_random_ports()
            elif self.plan == "hard":
                opening = len(self._extra_sockets) < self._birthday_target
                rate = (BIRTHDAY_OPEN_RATE if opening else
                        len(self._birthday_checks) / BIRTHDAY_REFRESH)
                self._birthday_credit += elapsed * rate
                self._ping_from_extra_sockets()
        elif self.state is State.NOMINATING:
            self._send_nomination()
        else:
            return
        self._tick_call = self._clock.callLater(self.interval, self._tick)

    def _probe_random_ports(self) -> None:
        host = self._publics[0][0] if self._publics else None
        low, high = PORT_RANGE
        while host is not None and self._birthday_credit >= 1:
            if len(self._probed_ports) > high - low:
                return
            self._birthday_credit -= 1
            port = self._rng.randint(low, high)
            while port in self._probed_ports:
                port = self._rng.randint(low, high)
            self._probed_ports.add(port)
            if self._ping_address(self._main, (host, port), "birthday"):
                self.stats.birthday_probes_sent += 1

    def _ping_from_extra_sockets(self) -> None:
        while self._birthday_credit >= 1:
            self._birthday_credit -= 1
            if len(self._extra_sockets) < self._birthday_target:
                if not self._open_extra_socket():
                    self._birthday_target = len(self._extra_sockets)
                    continue
                checks = self._birthday_checks[-len(self._publics):]
            elif self._birthday_checks:
                self._birthday_cursor %= len(self._birthday_checks)
                checks = [self._birthday_checks[self._birthday_cursor]]
                self._birthday_cursor += 1
            else:
                return
            for check in checks:
                if (check.socket, check.addr) not in self._confirmed:
                    self._ping(check)

    def _open_extra_socket(self) -> bool:
        if self._open_socket is None:
            return False
        try:
            sock = self._open_socket()
        except OSError as e:
            log.warn("punch {attempt}: cannot open more sockets ({error}); "
                     "continuing with {n}", attempt=self.attempt_id.hex(), error=e,
                     n=len(self._extra_sockets))
            return False
        self.stats.sockets_opened += 1
        self._extra_sockets.append(sock)
        for addr in self._publics:
            check = _Check(sock, addr, "birthday")
            self._birthday_checks.append(check)
            self._birthday_by_key[(sock, addr)] = check
        return True

    def _ping(self, check: _Check) -> None:
        if self._ping_address(check.socket, check.addr, check.kind):
            check.last_ping = self._clock.seconds()

    def _ping_address(self, socket, addr: Address, kind: str) -> bool:
        transaction = self._rng.randbytes(wire.TRANSACTION_SIZE)
        if not self._send(socket, addr, "ping", transaction):
            return False
        self.stats.pings_sent += 1
        self._sent[transaction] = _Sent(socket, addr, kind, self._clock.seconds())
        if len(self._sent) > MAX_PENDING:
            self._sent.popitem(last=False)
        return True

    def _send(self, socket, addr: Address, kind: str, transaction: bytes) -> bool:
        if not self._budget.take():
            self.stats.rate_limited += 1
            return False
        socket.send(wire.encode(kind, self.attempt_id, self.my_peer_id, transaction,
                                self._nonce), addr)
        return True

    def _ping_received(self, socket, addr: Address, transaction: bytes) -> None:
        if self.state not in ACTIVE_STATES:
            self.stats.ignored += 1
            return
        if self._send(socket, addr, "pong", transaction):
            self.stats.pongs_sent += 1
        if self.state in PROBING_STATES:
            self._triggered_check(socket, addr)

    def _triggered_check(self, socket, addr: Address) -> None:
        """Ping back at once along the pair a valid ping arrived on: it is likely open now,
        and the next scheduled ping may be a whole interval (or, for an extra socket, seconds)
        away. Learns the pair if new, within a cap."""
        key = (socket, addr)
        if key in self._confirmed:
            return
        check = self._checks.get(key) or self._birthday_by_key.get(key)
        if check is None:
            if self.stats.learned >= MAX_LEARNED:
                self.stats.learned_refused += 1
                return
            probed = (socket is self._main and self._publics
                      and addr[0] == self._publics[0][0] and addr[1] in self._probed_ports)
            check = _Check(socket, addr, "birthday" if probed else "reflexive")
            self._checks[key] = check
            self.stats.learned += 1
        if self._clock.seconds() - check.last_ping >= self.interval / 2:
            self._ping(check)

    def _pong_received(self, socket, addr: Address, transaction: bytes) -> None:
        sent = self._sent.get(transaction)
        if sent is None or sent.socket is not socket or sent.addr != addr:
            self.stats.unmatched += 1
            return
        del self._sent[transaction]
        if self.state not in PROBING_STATES:
            self.stats.ignored += 1
            return
        self._confirm(socket, addr, sent.kind, self._clock.seconds() - sent.at)

    def _confirm(self, socket, addr: Address, kind: str, rtt: float) -> None:
        key = (socket, addr)
        if key in self._confirmed:
            return
        self._confirmed[key] = (kind, rtt, len(self._confirmed))
        log.debug("punch {attempt}: {kind} pair to {addr} confirmed, rtt {rtt:.3f}s",
                  attempt=self.attempt_id.hex(), kind=kind, addr=addr, rtt=rtt)
        if self.role == CONTROLLED:
            transaction = self._nominations.pop(key, None)
            if transaction is not None:
                self._accept_nomination(key, transaction)
            return
        if self.state is State.PROBING:
            if kind == "lan" or not self._lan_unconfirmed():
                self._nominate()
            else:
                self._move(State.CHOOSING)
                self._grace_call = self._clock.callLater(self._lan_grace, self._grace_over)
        elif self.state is State.CHOOSING and kind == "lan":
            self._grace_call.cancel()
            self._grace_call = None
            self._nominate()

    def _lan_unconfirmed(self) -> bool:
        return any(c.kind == "lan" and key not in self._confirmed
                   for key, c in self._checks.items())

    def _grace_over(self) -> None:
        self._grace_call = None
        self._nominate()

    def _nominate(self) -> None:
        def preference(item):
            kind, rtt, order = item[1]
            return (PATH_KINDS.index(kind), order)
        self._chosen = min(self._confirmed.items(), key=preference)[0]
        self._nomination_tx = self._rng.randbytes(wire.TRANSACTION_SIZE)
        self._move(State.NOMINATING)
        self._send_nomination()

    def _send_nomination(self) -> None:
        socket, addr = self._chosen
        if self._send(socket, addr, "nominate", self._nomination_tx):
            self.stats.nominations_sent += 1

    def _nomination_received(self, socket, addr: Address, transaction: bytes) -> None:
        key = (socket, addr)
        if self.role == CONTROLLING:
            self.stats.role_conflicts += 1
            return
        if self.state is State.SUCCEEDED:
            if key == self._chosen:
                self._send_ack(key, transaction)  # our earlier ack was lost
            else:
                self.stats.ignored += 1
            return
        if self.state is not State.PROBING:
            self.stats.ignored += 1
            return
        if key in self._confirmed:
            self._accept_nomination(key, transaction)
            return
        # Not confirmed by us yet: a nomination alone proves nothing (it may be replayed).
        self._nominations[key] = transaction
        self._nominations.move_to_end(key)
        while len(self._nominations) > MAX_PENDING_NOMINATIONS:
            self._nominations.popitem(last=False)
        self._triggered_check(socket, addr)

    def _accept_nomination(self, key: tuple, transaction: bytes) -> None:
        self._chosen = key
        self._send_ack(key, transaction)
        self._succeed()

    def _send_ack(self, key: tuple, transaction: bytes) -> None:
        if self._send(key[0], key[1], "nominate_ack", transaction):
            self.stats.acks_sent += 1

    def _linger_over(self) -> None:
        self._linger_call = None
        self._move(State.CLOSED)

    def _ack_received(self, socket, addr: Address, transaction: bytes) -> None:
        if self.state is not State.NOMINATING:
            self.stats.ignored += 1
            return
        if transaction != self._nomination_tx or (socket, addr) != self._chosen:
            self.stats.unmatched += 1
            return
        self._succeed()

    def _succeed(self) -> None:
        socket, addr = self._chosen
        kind, rtt, _ = self._confirmed[self._chosen]
        self.path = Path(socket, addr, rtt, kind)
        self._stop_timers()
        self._close_extra_sockets(keep=socket)
        self._move(State.SUCCEEDED)
        # Settled before the callback, which may well cancel() us.
        if self.role == CONTROLLED and self._linger > 0:
            # The controlling side keeps nominating until it hears our ack; keep answering.
            self._linger_call = self._clock.callLater(self._linger, self._linger_over)
        else:
            self._move(State.CLOSED)
        log.info("punch {attempt}: direct {kind} path {local} -> {addr} after {elapsed:.3f}s",
                 attempt=self.attempt_id.hex(), kind=kind, local=socket, addr=addr,
                 elapsed=self._clock.seconds() - self.started_at)
        self._on_success(self.path)

    def _deadline_passed(self) -> None:
        self._deadline_call = None
        self._fail(f"no direct path within {self.deadline:g}s")

    def _fail(self, reason: str) -> None:
        self._stop_timers()
        self._close_extra_sockets(keep=None)
        self._move(State.FAILED)
        log.info("punch {attempt} failed: {reason}", attempt=self.attempt_id.hex(),
                 reason=reason)
        self._on_failure(reason)

    def _stop_timers(self) -> None:
        for name in ("_tick_call", "_deadline_call", "_grace_call", "_linger_call"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)

    def _close_extra_sockets(self, keep) -> None:
        for sock in self._extra_sockets:
            if sock is not keep:
                sock.close()
        self._extra_sockets = []
        self._birthday_checks = []
        self._birthday_by_key = {}


class TooManyAttempts(RuntimeError):
    pass


class PunchCoordinator:
    """The live punch attempts by attempt id, and the router of probe datagrams to them.

    Feed it every datagram the UDP multiplexer classifies as a probe, on any socket (the main
    one or an attempt's extra sockets). Finished attempts are forgotten lazily.
    """

    def __init__(self, max_attempts: int = 64):
        self.max_attempts = max_attempts
        self._attempts: dict[bytes, PunchAttempt] = {}
        self.malformed = 0
        self.unknown_attempt = 0

    def __len__(self) -> int:
        self._prune()
        return len(self._attempts)

    def get(self, attempt_id: bytes) -> PunchAttempt | None:
        attempt = self._attempts.get(attempt_id)
        if attempt is not None and attempt.finished:
            del self._attempts[attempt_id]
            return None
        return attempt

    def start(self, attempt: PunchAttempt) -> None:
        """Register ``attempt`` (so its probes find it) and start it."""
        self._prune()
        if attempt.attempt_id in self._attempts:
            raise ValueError(f"punch attempt {attempt.attempt_id.hex()} already running")
        if len(self._attempts) >= self.max_attempts:
            raise TooManyAttempts(f"{self.max_attempts} punch attempts already running")
        self._attempts[attempt.attempt_id] = attempt
        attempt.start()

    def cancel_all(self) -> None:
        for attempt in list(self._attempts.values()):
            attempt.cancel()
        self._attempts.clear()

    def datagram_received(self, socket, data: bytes, addr: Address) -> None:
        if not wire.looks_like_probe(data):
            self.malformed += 1
            return
        attempt = self.get(wire.attempt_id_of(data))
        if attempt is None:
            self.unknown_attempt += 1
            return
        attempt.datagram_received(socket, data, addr)

    def _prune(self) -> None:
        for attempt_id in [k for k, a in self._attempts.items() if a.finished]:
            del self._attempts[attempt_id]
