"""STUN Binding logic, both sides, without sockets: the daemon's client and the tracker's responder.

:class:`StunClient` sends Binding requests through a ``send(datagram, addr)`` callable and is
fed every STUN datagram the socket receives. It retransmits the RFC way (an initial RTO
doubling on each retry) but within a short bound, since netcheck and the keep-alive would
rather report "no answer" after 3 s than wait the RFC's 39.5 s.

:class:`StunResponder` answers Binding requests for the tracker, from any standard client
(browsers' ICE, libnice, coturn, pystun): a bare 20-byte request gets an answer. STUN over UDP
is an amplification risk (a spoofed request makes us send to a victim), so the responder keeps
every answer small and the traffic it can cause bounded:

- the answer carries only what the client needs: XOR-MAPPED-ADDRESS; FINGERPRINT when the
  request had one; SOFTWARE only when the answer with it is no larger than the request (our
  own padded requests get it). The largest answer to any request is 68 bytes, and no answer is
  more than ``MAX_AMPLIFICATION`` (2.4) times its request: the worst case is a 24-byte request
  with one unknown comprehension-required attribute, whose 420 answer is 56 bytes (7/3);
- each source address gets a burst of 20 answers, then 10 per second (a victim whose address
  is spoofed receives at most that, about 680 bytes/s);
- all answers together spend a budget of bytes per second (``--stun-budget``, 1 MB/s by
  default), however many source addresses an attacker spoofs.

It answers only well-formed Binding requests and reflects nothing the request carried except
the transaction id (and up to four unknown attribute types in a 420).
"""

import os
from dataclasses import dataclass
from typing import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from peerit.errors import MalformedMessage, PeeritError, TimedOut
from peerit.ratelimit import KeyedTokenBuckets, TokenBucket
from peerit.wire import stun

Address = tuple[str, int]

INITIAL_RTO = 0.25  # seconds before the first retransmission; doubled after each one
TRANSACTION_TIMEOUT = 3.0  # total time a transaction may take, retransmissions included
MAX_PENDING = 256  # outstanding transactions per client: a bound, never reached in practice
SOFTWARE_NAME = "peer-it"


class StunErrorResponse(PeeritError):
    """The server answered with a Binding error response (code and reason from ERROR-CODE)."""

    def __init__(self, code: int, reason: str):
        super().__init__(f"STUN error {code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class BindingResult:
    mapped: Address  # our address as the server saw it
    server: Address  # where the request went
    responder: Address  # where the response came from (differs under CHANGE-REQUEST)
    rtt: float  # seconds from the first transmission to the response
    transmissions: int
    software: str | None = None
    other_address: Address | None = None  # RFC 5780 OTHER-ADDRESS, when the server sends it
    response_origin: Address | None = None  # RFC 5780 RESPONSE-ORIGIN


# Requests from our client are padded to this many bytes, more than any answer of ours
# (IPv6 XOR-MAPPED-ADDRESS + SOFTWARE + FINGERPRINT, or an error with its reason): trackers
# older than the rate-limited responder answered only requests at least as long as the answer.
REQUEST_SIZE = 100


class _Transaction:
    def __init__(self, transaction_id: bytes, server: Address, request: bytes, started: float):
        self.transaction_id = transaction_id
        self.server = server
        self.request = request
        self.started = started
        self.transmissions = 0
        self.deferred: defer.Deferred | None = None
        self.retransmit: IDelayedCall | None = None
        self.deadline: IDelayedCall | None = None


class StunClient:
    """Binding transactions over a datagram ``send`` callable; feed it with :meth:`datagram_received`."""

    log = Logger()

    def __init__(self, clock: IReactorTime, send: Callable[[bytes, Address], object],
                 initial_rto: float = INITIAL_RTO, timeout: float = TRANSACTION_TIMEOUT,
                 random_bytes: Callable[[int], bytes] = os.urandom,
                 software: str | None = None, pad_to: int = REQUEST_SIZE):
        self._clock = clock
        self._pad_to = pad_to
        self._send = send
        self._initial_rto = initial_rto
        self._timeout = timeout
        self._random_bytes = random_bytes
        self._software = software
        self._pending: dict[bytes, _Transaction] = {}

    @property
    def pending(self) -> int:
        return len(self._pending)

    def binding(self, server: Address, change_ip: bool = False,
                change_port: bool = False) -> defer.Deferred:
        """Deferred firing with our mapped ``(host, port)`` as ``server`` sees it."""
        return self.binding_details(server, change_ip, change_port).addCallback(
            lambda result: result.mapped)

    def binding_details(self, server: Address, change_ip: bool = False,
                        change_port: bool = False) -> defer.Deferred:
        """Deferred firing with a :class:`BindingResult`; fails with :class:`TimedOut`,
        :class:`StunErrorResponse`, or :class:`MalformedMessage` for a response that has our
        transaction id but no usable address."""
        if len(self._pending) >= MAX_PENDING:
            return defer.fail(TimedOut("too many STUN requests outstanding"))
        transaction_id = self._random_bytes(stun.TRANSACTION_ID_SIZE)
        while transaction_id in self._pending:
            transaction_id = self._random_bytes(stun.TRANSACTION_ID_SIZE)
        attributes = []
        if self._software:
            attributes.append(stun.software(self._software))
        if change_ip or change_port:
            attributes.append(stun.change_request(change_ip, change_port))
        request = stun.build(stun.StunMessage(
            stun.BINDING_REQUEST, transaction_id, tuple(attributes)))
        if len(request) < self._pad_to:
            # As long as any answer: a responder that never amplifies (ours) then replies.
            attributes.append(stun.padding(-(-(self._pad_to - len(request) - 4) // 4) * 4))
            request = stun.build(stun.StunMessage(
                stun.BINDING_REQUEST, transaction_id, tuple(attributes)))
        transaction = _Transaction(transaction_id, server, request, self._clock.seconds())
        transaction.deferred = defer.Deferred(lambda d: self._finish(transaction))
        self._pending[transaction_id] = transaction
        transaction.deadline = self._clock.callLater(
            self._timeout, self._expire, transaction)
        self._transmit(transaction, self._initial_rto)
        return transaction.deferred

    def datagram_received(self, datagram: bytes, addr: Address) -> None:
        """Every STUN datagram the socket receives; responses to our requests complete them."""
        try:
            message = stun.parse(datagram)
        except MalformedMessage as e:
            self.log.debug("dropped a malformed STUN datagram from {addr}: {error}",
                           addr=addr, error=e)
            return
        transaction = self._pending.get(message.transaction_id)
        if transaction is None or message.method != stun.BINDING \
                or message.message_class not in (stun.SUCCESS, stun.ERROR):
            return
        rtt = self._clock.seconds() - transaction.started
        deferred = self._finish(transaction)
        if message.message_class == stun.ERROR:
            try:
                code, reason = stun.read_error_code(message) or (500, "no ERROR-CODE")
            except MalformedMessage as e:
                deferred.errback(e)
                return
            deferred.errback(StunErrorResponse(code, reason))
            return
        try:
            mapped = stun.mapped_address(message)
            if mapped is None:
                raise MalformedMessage("STUN Binding response without a mapped address")
            result = BindingResult(
                mapped=mapped, server=transaction.server, responder=addr, rtt=rtt,
                transmissions=transaction.transmissions,
                software=stun.read_software(message),
                other_address=_optional_address(message, stun.OTHER_ADDRESS),
                response_origin=_optional_address(message, stun.RESPONSE_ORIGIN))
        except MalformedMessage as e:
            deferred.errback(e)
            return
        deferred.callback(result)

    def stop(self) -> None:
        """Cancel every outstanding transaction (their Deferreds fail with CancelledError)."""
        for transaction in list(self._pending.values()):
            transaction.deferred.cancel()

    def _transmit(self, transaction: _Transaction, rto: float) -> None:
        transaction.transmissions += 1
        self._send(transaction.request, transaction.server)
        elapsed = self._clock.seconds() - transaction.started
        if elapsed + rto < self._timeout:
            transaction.retransmit = self._clock.callLater(
                rto, self._transmit, transaction, rto * 2)
        else:
            transaction.retransmit = None

    def _expire(self, transaction: _Transaction) -> None:
        transaction.deadline = None
        deferred = self._finish(transaction)
        host, port = transaction.server
        deferred.errback(TimedOut(
            f"no STUN answer from {host}:{port} after {transaction.transmissions} "
            f"tries in {self._timeout:g}s"))

    def _finish(self, transaction: _Transaction) -> defer.Deferred:
        self._pending.pop(transaction.transaction_id, None)
        for call in (transaction.retransmit, transaction.deadline):
            if call is not None and call.active():
                call.cancel()
        transaction.retransmit = transaction.deadline = None
        return transaction.deferred


def _optional_address(message: stun.StunMessage, attribute_type: int) -> Address | None:
    # Informational attributes: a broken one should not cost us the mapped address.
    try:
        return stun.read_address(message, attribute_type)
    except MalformedMessage:
        return None


# --- server side ------------------------------------------------------------------------

KNOWN_REQUEST_ATTRIBUTES = frozenset({stun.CHANGE_REQUEST, stun.PADDING})
REPLIES_PER_SECOND_PER_SOURCE = 10.0
BURST_PER_SOURCE = 20.0
BYTES_PER_SECOND_TOTAL = 1_000_000.0
MAX_TRACKED_SOURCES = 65536
# Enforced on every answer; the worst answer the rules above can produce is 56/24 = 2.33.
MAX_AMPLIFICATION = 2.4
_BINDING_ERROR_BYTES = stun.BINDING_ERROR.to_bytes(2, "big")


@dataclass(frozen=True)
class Reply:
    datagram: bytes
    from_alternate_port: bool = False  # send it from the other port (CHANGE-REQUEST port)


@dataclass
class ResponderCounts:
    """What a responder did since it started; read by the metrics at scrape time."""
    received: int = 0  # datagrams handed to respond()
    received_bytes: int = 0
    answered: int = 0  # success and error responses sent
    errors: int = 0  # of which error responses (400, 420)
    sent_bytes: int = 0
    ignored: int = 0  # anything that is not a well-formed Binding request
    rate_limited: int = 0  # well-formed requests over their source address's rate
    over_budget: int = 0  # answers dropped because the global byte budget was spent
    too_large: int = 0  # answers over MAX_AMPLIFICATION times the request (never expected)


class StunResponder:
    """Answers STUN Binding requests: ``respond(datagram, source)`` gives a :class:`Reply` or None.

    ``alternate_port`` says whether the caller can send from a second port; when it can, a
    request with CHANGE-REQUEST's port flag is answered from there (RFC 5780), which is how a
    client measures its NAT's filtering. A change of IP address is never possible here and is
    answered with 420, as RFC 5780 asks of a server without a second address.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, alternate_port: bool = False,
                 software: str | None = SOFTWARE_NAME,
                 per_source_rate: float = REPLIES_PER_SECOND_PER_SOURCE,
                 per_source_burst: float = BURST_PER_SOURCE,
                 bytes_per_second: float = BYTES_PER_SECOND_TOTAL):
        self._alternate_port = alternate_port
        self._software = stun.software(software) if software else None
        self._per_source = KeyedTokenBuckets(clock, per_source_rate, per_source_burst,
                                             max_keys=MAX_TRACKED_SOURCES)
        self._budget = TokenBucket(clock, bytes_per_second, bytes_per_second)
        self.counts = ResponderCounts()

    def respond(self, datagram: bytes, source: Address) -> Reply | None:
        counts = self.counts
        counts.received += 1
        counts.received_bytes += len(datagram)
        try:
            request = stun.parse(datagram)
        except MalformedMessage:
            counts.ignored += 1
            return None
        if request.type != stun.BINDING_REQUEST:
            # Indications, responses and other methods never get an answer.
            counts.ignored += 1
            return None
        if not self._per_source.take(source[0]):
            counts.rate_limited += 1
            return None
        reply = self._answer(request, source, len(datagram))
        if len(reply.datagram) > MAX_AMPLIFICATION * len(datagram):
            counts.too_large += 1
            return None
        if not self._budget.take(len(reply.datagram)):
            counts.over_budget += 1
            return None
        counts.answered += 1
        counts.sent_bytes += len(reply.datagram)
        if reply.datagram[:2] == _BINDING_ERROR_BYTES:
            counts.errors += 1
        return reply

    def _answer(self, request: stun.StunMessage, source: Address, request_size: int) -> Reply:
        fingerprint = request.attributes[-1:] != () \
            and request.attributes[-1].type == stun.FINGERPRINT
        unknown = request.unknown_required(KNOWN_REQUEST_ATTRIBUTES)
        if unknown:
            return Reply(self._error(request, 420, "Unknown Attribute", fingerprint, unknown))
        try:
            change_ip, change_port = stun.read_change_request(request)
        except MalformedMessage:
            return Reply(self._error(request, 400, "Bad Request", fingerprint))
        if change_ip or (change_port and not self._alternate_port):
            return Reply(self._error(request, 420, "Unknown Attribute", fingerprint,
                                     (stun.CHANGE_REQUEST,)))
        attributes = (stun.xor_mapped_address(source, request.transaction_id),)
        response = stun.build(stun.StunMessage(stun.BINDING_SUCCESS, request.transaction_id,
                                               attributes), fingerprint=fingerprint)
        if self._software and len(response) + 4 + len(self._software.value) \
                + -len(self._software.value) % 4 <= request_size:
            # Optional, so only where it costs no amplification (our padded requests).
            response = stun.build(stun.StunMessage(
                stun.BINDING_SUCCESS, request.transaction_id,
                attributes + (self._software,)), fingerprint=fingerprint)
        return Reply(response, from_alternate_port=change_port)

    def _error(self, request: stun.StunMessage, code: int, reason: str, fingerprint: bool,
               unknown: tuple[int, ...] = ()) -> bytes:
        attributes = [stun.error_code(code, reason)]
        if unknown:
            # A request could list many unknown types; four say enough and bound the reply.
            attributes.append(stun.unknown_attributes(unknown[:4]))
        return stun.build(stun.StunMessage(stun.BINDING_ERROR, request.transaction_id,
                                           tuple(attributes)), fingerprint=fingerprint)
