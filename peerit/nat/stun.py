"""STUN Binding logic, both sides, without sockets: the daemon's client and the tracker's responder.

:class:`StunClient` sends Binding requests through a ``send(datagram, addr)`` callable and is
fed every STUN datagram the socket receives. It retransmits the RFC way (an initial RTO
doubling on each retry) but within a short bound, since netcheck and the keep-alive would
rather report "no answer" after 3 s than wait the RFC's 39.5 s.

:class:`StunResponder` answers Binding requests for the tracker. STUN over UDP is an
amplification risk (a spoofed 20-byte request would get a 52-byte answer sent to the victim),
so the responder never sends a reply larger than the request that caused it: unpadded short
requests get nothing, and our :class:`StunClient` pads every request to ``REQUEST_SIZE``
bytes with an RFC 5780 PADDING attribute (as QUIC pads its Initial packets). It also answers
only well-formed Binding requests, keeps its answers to the attributes a client needs
(XOR-MAPPED-ADDRESS, SOFTWARE, FINGERPRINT), limits replies per source address (a burst of
20, then 10/s) and in total (5000/s), and reflects nothing the request carried except the
transaction id (and up to four unknown attribute types in a 420).
"""

import os
from dataclasses import dataclass
from typing import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from peerit.errors import MalformedMessage, PeeritError, TimedOut
from peerit.ratelimit import KeyedTokenBuckets
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
# (IPv6 XOR-MAPPED-ADDRESS + SOFTWARE + FINGERPRINT, or an error with its reason).
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
REPLIES_PER_SECOND_TOTAL = 5000.0
MAX_TRACKED_SOURCES = 65536


@dataclass(frozen=True)
class Reply:
    datagram: bytes
    from_alternate_port: bool = False  # send it from the other port (CHANGE-REQUEST port)


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
                 total_rate: float = REPLIES_PER_SECOND_TOTAL):
        self._alternate_port = alternate_port
        self._software = stun.software(software) if software else None
        self._per_source = KeyedTokenBuckets(clock, per_source_rate, per_source_burst,
                                             max_keys=MAX_TRACKED_SOURCES)
        self._total = KeyedTokenBuckets(clock, total_rate, total_rate, max_keys=1)
        self.answered = 0
        self.refused = 0  # well-formed requests over the rate limit
        self.ignored = 0  # anything that is not a well-formed Binding request
        self.too_short = 0  # requests shorter than their answer (unpadded): not answered

    def respond(self, datagram: bytes, source: Address) -> Reply | None:
        try:
            request = stun.parse(datagram)
        except MalformedMessage:
            self.ignored += 1
            return None
        if request.type != stun.BINDING_REQUEST:
            # Indications, responses and other methods never get an answer.
            self.ignored += 1
            return None
        if not (self._per_source.allow(source[0]) and self._total.allow(None)):
            self.refused += 1
            return None
        self.answered += 1
        unknown = request.unknown_required(KNOWN_REQUEST_ATTRIBUTES)
        if unknown:
            return self._bounded(self._error(request, 420, "Unknown Attribute", unknown),
                                 datagram)
        try:
            change_ip, change_port = stun.read_change_request(request)
        except MalformedMessage:
            return self._bounded(self._error(request, 400, "Bad Request"), datagram)
        if change_ip or (change_port and not self._alternate_port):
            return self._bounded(self._error(request, 420, "Unknown Attribute",
                                             (stun.CHANGE_REQUEST,)), datagram)
        attributes = [stun.xor_mapped_address(source, request.transaction_id)]
        if self._software:
            attributes.append(self._software)
        response = stun.StunMessage(stun.BINDING_SUCCESS, request.transaction_id,
                                    tuple(attributes))
        return self._bounded(stun.build(response), datagram, change_port)

    def _bounded(self, reply: bytes, request: bytes, from_alternate_port: bool = False):
        """No reply larger than its request: a spoofed source gains nothing by using us as
        an amplifier. Our clients pad their requests (RFC 5780 PADDING) to REQUEST_SIZE."""
        if len(reply) > len(request):
            self.too_short += 1
            return None
        return Reply(reply, from_alternate_port=from_alternate_port)

    def _error(self, request: stun.StunMessage, code: int, reason: str,
               unknown: tuple[int, ...] = ()) -> bytes:
        attributes = [stun.error_code(code, reason)]
        if unknown:
            # A request could list many unknown types; four say enough and bound the reply.
            attributes.append(stun.unknown_attributes(unknown[:4]))
        return stun.build(stun.StunMessage(stun.BINDING_ERROR, request.transaction_id,
                                           tuple(attributes)))
