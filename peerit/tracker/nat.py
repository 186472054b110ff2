"""The tracker's half of NAT traversal: NAT reports, punch coordination, relay offers.

docs/nat-protocol.md is the contract. A daemon tells the tracker what STUN said about it
(``NatReport``, kept on its session); a daemon that wants a direct UDP path to a swarm peer
sends ``PunchRequest`` and the tracker pushes ``Punch`` to both at once, each with the other's
candidates; a daemon that wants the relay sends ``RelayRequest`` and both get a ``RelayOffer``
with a one-time token from :class:`peerit.tracker.relay.RelayBroker`.

No I/O: :class:`NatCoordinator` registers its handlers on a :class:`Tracker` and answers
through sessions. A refusal is an ``Error`` naming the request (``refused_opcode``,
``info_hash``); the session stays.

Why the limits: a Punch makes the *target* send probes (a birthday punch, hundreds of them) to
the addresses the tracker hands out, so a requester must not be able to aim a stream of punches
at a peer, nor at a third party. Hence every peer (requester or target) takes part in at most
``max_attempts`` punches and relays per ``attempt_window``, on top of the session's request
rate; and a reported public endpoint is handed out only when its address is the one the
tracker sees the session come from (see :func:`public_candidate`).
"""

import ipaddress
import os
from dataclasses import dataclass
from typing import Callable

from twisted.logger import Logger

from peerit.errors import MalformedMessage
from peerit.identity import format_fingerprint
from peerit.tracker.relay import RelayBroker, RelayRefused
from peerit.tracker.session import ACTIVE, Tracker, TrackerSession
from peerit.tracker.signals import PUNCH, RELAY, Delivery
from peerit.tracker.stats import nat_pair
from peerit.wire import tracker as wire

log = Logger(namespace="peerit.tracker.nat")


@dataclass(frozen=True)
class NatLimits:
    # Punches and relays a peer may be part of (either side) per window. A punch is over
    # within its 6 s deadline; the window is longer so that a retry loop cannot exceed it.
    max_attempts: int = 8
    attempt_window: float = 10.0

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.attempt_window <= 0:
            raise ValueError("attempt_window must be positive")


def _usable_public(endpoint: wire.Endpoint) -> bool:
    try:
        address = ipaddress.ip_address(endpoint.host)
    except ValueError:
        return False
    return endpoint.port != 0 and not (address.is_unspecified or address.is_multicast)


def public_candidate(session: TrackerSession) -> wire.PunchCandidate | None:
    """Where to reach the session's peer from outside: its NatReport's public endpoint, or
    its session's source address with its UDP port when it sent no usable report.

    A reported endpoint on another address than the session's source is not handed out:
    the tracker cannot tell a peer whose UDP leaves by another address from one that aims
    other peers' probes at a third party, so it uses what it can vouch for.
    """
    report = session.nat_report
    if report is not None and report.public.host == session.source_host:
        return wire.PunchCandidate(report.public.host, report.public.port, "public")
    udp_port = session.contact.udp_port
    if udp_port:
        return wire.PunchCandidate(session.source_host, udp_port, "public")
    return None


def candidates_of(session: TrackerSession) -> tuple[wire.PunchCandidate, ...]:
    """The peer's punch candidates: its LAN addresses with its UDP port, then the public
    one; an address listed twice keeps its first (LAN) kind."""
    contact = session.contact
    out, seen = [], set()
    if contact.udp_port:
        for host in contact.lan_addresses:
            if (host, contact.udp_port) not in seen:
                seen.add((host, contact.udp_port))
                out.append(wire.PunchCandidate(host, contact.udp_port, "lan"))
    public = public_candidate(session)
    if public is not None and (public.host, public.port) not in seen:
        out.append(public)
    return tuple(out[:wire.MAX_PUNCH_CANDIDATES])


def mapping_of(session: TrackerSession) -> str:
    report = session.nat_report
    return report.mapping if report is not None else "unknown"


class NatCoordinator:
    """Handles NatReport, PunchRequest and RelayRequest for one tracker.

    ``random_bytes(n)`` makes attempt ids and nonces (``os.urandom``; tests inject their own).
    ``relay`` is None when this tracker runs no relay; the relay port offered is the one in
    ``tracker.stun_info``. ``relay_host`` is the address daemons reach this process's relay
    at ("" unknown): offers name it when the two sessions are on different hosts, since each
    daemon would otherwise dial its own tracker's host.
    """

    def __init__(self, tracker: Tracker, relay: RelayBroker | None = None,
                 limits: NatLimits = NatLimits(),
                 random_bytes: Callable[[int], bytes] = os.urandom,
                 remote: Delivery | None = None, relay_host: str = ""):
        self.tracker = tracker
        self.relay = relay
        self.relay_host = relay_host
        self.limits = limits
        self.random_bytes = random_bytes
        # Peers whose sessions are on other tracker processes (a shared store), or None.
        self.remote = remote
        if remote is not None:
            remote.serve = self.serve_remote
        self.punches = 0
        self.relays = 0
        tracker.register_handler(wire.NatReport, self.nat_report_received)
        tracker.register_handler(wire.PunchRequest, self.punch_requested)
        tracker.register_handler(wire.RelayRequest, self.relay_requested)

    # -- handlers ----------------------------------------------------------------------------

    def nat_report_received(self, session: TrackerSession, report: wire.NatReport) -> None:
        if not _usable_public(report.public):
            # Keep nothing rather than a stale report: the peer says it no longer knows.
            session.nat_report = None
            return
        if report.public.host != session.source_host and session.nat_report != report:
            log.info("tracker session {peer}: NAT report of {host}:{port} from {source}; the "
                     "public candidate stays the session's address", peer=_who(session),
                     host=report.public.host, port=report.public.port,
                     source=session.source_host)
        session.nat_report = report

    def punch_requested(self, session: TrackerSession, request: wire.PunchRequest) -> None:
        target = self._pair(session, request)
        if target is None:
            return
        mine = candidates_of(session)
        theirs = candidates_of(target) if target is not _REMOTE else mine
        if not theirs or not mine:
            side = "the target" if not theirs else "you"
            session.refuse(request, "peer_unavailable",
                           f"{side} reported no UDP port or public endpoint")
            return
        attempt_id = self.random_bytes(wire.ATTEMPT_ID_SIZE)
        nonce = self.random_bytes(wire.PUNCH_NONCE_SIZE)
        to_target = wire.Punch(attempt_id, nonce, request.info_hash, session.peer_id, False,
                               mine, mapping_of(session))
        if target is _REMOTE:
            self._deliver(session, request, PUNCH, to_target)
            return
        # The target first: if its session cannot take a push now, the requester hears so
        # instead of punching alone.
        if not target.push(to_target):
            session.refuse(request, "peer_unavailable", "the target is not reachable now")
            return
        self._count(session, target)
        session.send(wire.Punch(attempt_id, nonce, request.info_hash, target.peer_id, True,
                                theirs, mapping_of(target)))
        self.punches += 1
        self.tracker.stats.punches.inc(nat_pair(mapping_of(session), mapping_of(target)))
        log.debug("punch {attempt} {a} -> {b}", attempt=attempt_id.hex()[:8],
                  a=_who(session), b=_who(target))

    def relay_requested(self, session: TrackerSession, request: wire.RelayRequest) -> None:
        stun_info = self.tracker.stun_info
        port = stun_info.relay_port if stun_info is not None else 0
        if self.relay is None or not port:
            session.refuse(request, "relay_unavailable", "this tracker runs no relay")
            return
        target = self._pair(session, request)
        if target is None:
            return
        host = ""
        if target is _REMOTE and not self.remote.same_host(request.peer_id):
            # The target's daemon dials its own tracker's host unless the offer names ours.
            if not self.relay_host:
                session.refuse(request, "relay_unavailable",
                               "that peer's session is on another tracker host and this "
                               "one advertises no relay address (--relay-host)")
                return
            host = self.relay_host
        try:
            token = self.relay.offer(session.peer_id, request.peer_id)
        except RelayRefused as e:
            session.refuse(request, e.code, e.reason)
            return
        if target is _REMOTE:
            # The token is this process's, so both peers meet at this process's relay.
            self._deliver(session, request, RELAY,
                          wire.RelayOffer(token, request.info_hash, session.peer_id, False,
                                          port, host), token=token, port=port, host=host)
            return
        if not target.push(wire.RelayOffer(token, request.info_hash, session.peer_id, False,
                                           port)):
            self.relay.withdraw(token)
            session.refuse(request, "peer_unavailable", "the target is not reachable now")
            return
        self._count(session, target)
        session.send(wire.RelayOffer(token, request.info_hash, target.peer_id, True, port))
        self.relays += 1

    # -- inside ------------------------------------------------------------------------------

    def _pair(self, session: TrackerSession, request) -> TrackerSession | None:
        """The target's session if this request may go ahead; otherwise refuse and None."""
        tracker = self.tracker
        store = tracker.store
        if request.peer_id == session.peer_id:
            session.refuse(request, "peer_unavailable", "that is you")
            return None
        if store.role(request.info_hash, session.peer_id) is None:
            session.refuse(request, "peer_unavailable", "you are not in that swarm")
            return None
        target = tracker.session_of(request.peer_id)
        if target is None and self.remote is not None and self.remote.reaches(request.peer_id):
            target = _REMOTE    # its process checks its side (serve_remote)
        if target is None or store.role(request.info_hash, request.peer_id) is None:
            session.refuse(request, "peer_unavailable", "that peer is not in the swarm now")
            return None
        if self._busy(session):
            session.refuse(request, "too_many_attempts",
                           f"{self.limits.max_attempts} punches/relays in "
                           f"{self.limits.attempt_window:g}s already")
            return None
        if target is not _REMOTE and self._busy(target):
            session.refuse(request, "too_many_attempts",
                           "that peer has too many punches/relays under way")
            return None
        return target

    def _deliver(self, session: TrackerSession, request, kind: bytes, to_target, *,
                 token: bytes = b"", port: int = 0, host: str = "") -> None:
        """Hand the target's message to its process; answer the requester when it says."""
        d = self.remote.deliver(kind, request.info_hash, session.peer_id, request.peer_id,
                                wire.build(to_target))
        d.addCallback(self._delivered, session, request, kind, token, port, host)

    def _delivered(self, result, session, request, kind, token, port, host) -> None:
        if not result[0]:
            if kind == RELAY:
                self.relay.withdraw(token)
            if session.state == ACTIVE:
                session.refuse(request, result[1], result[2])
            return
        self._count(session)
        if kind == PUNCH:
            session.send_body(result[1])
            self.punches += 1
        else:
            session.send(wire.RelayOffer(token, request.info_hash, request.peer_id, True,
                                         port, host))
            self.relays += 1

    def serve_remote(self, kind: bytes, info_hash: bytes, requester: bytes, target_id: bytes,
                     body: bytes):
        """Another process's request for a peer whose session is here: the target's side of
        :meth:`punch_requested` / :meth:`relay_requested`. ``(True, answer body)`` or
        ``(False, code, reason)``."""
        target = self.tracker.session_of(target_id)
        if target is None or self.tracker.store.role(info_hash, target_id) is None:
            return (False, "peer_unavailable", "that peer is not in the swarm now")
        if self._busy(target):
            return (False, "too_many_attempts",
                    "that peer has too many punches/relays under way")
        try:
            message = wire.parse(body)
        except MalformedMessage:
            message = None
        if type(message) is not (wire.Punch if kind == PUNCH else wire.RelayOffer) \
                or message.peer_id != requester or message.info_hash != info_hash:
            return (False, "peer_unavailable", "bad request between tracker processes")
        answer = b""
        if kind == PUNCH:
            theirs = candidates_of(target)
            if not theirs:
                return (False, "peer_unavailable",
                        "the target reported no UDP port or public endpoint")
            answer = wire.build(wire.Punch(message.attempt_id, message.nonce, info_hash,
                                           target_id, True, theirs, mapping_of(target)))
        if not target.push_body(body):
            return (False, "peer_unavailable", "the target is not reachable now")
        self._count(target)
        return (True, answer)

    def _busy(self, session: TrackerSession) -> bool:
        cutoff = self.tracker.clock.seconds() - self.limits.attempt_window
        attempts = session.nat_attempts
        while attempts and attempts[0] <= cutoff:
            attempts.pop(0)     # a short list: at most max_attempts long
        return len(attempts) >= self.limits.max_attempts

    def _count(self, *sessions: TrackerSession) -> None:
        now = self.tracker.clock.seconds()
        for session in sessions:
            session.nat_attempts.append(now)


_REMOTE = object()   # _pair's answer for a target whose session is on another process


def _who(session: TrackerSession) -> str:
    return format_fingerprint(session.peer_id)[:16] if session.peer_id else "?"
