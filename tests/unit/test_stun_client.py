"""STUN client transactions and the tracker's responder, on a task.Clock with no sockets."""

from hypothesis import given, settings, strategies as st
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from peerit.errors import MalformedMessage, TimedOut
from peerit.nat.stun import Reply, StunClient, StunErrorResponse, StunResponder
from peerit.wire import stun

SERVER = ("198.18.0.1", 3478)
CLIENT = ("198.18.0.11", 40000)


class Wire:
    """Records what the client sends, and when; answers nothing unless told to."""

    def __init__(self, clock):
        self.clock = clock
        self.sent: list[tuple[float, bytes, tuple]] = []

    def __call__(self, data, addr):
        self.sent.append((self.clock.seconds(), data, addr))


def counter_ids():
    state = {"n": 0}

    def random_bytes(size):
        state["n"] += 1
        return state["n"].to_bytes(size, "big")
    return random_bytes


class ClientTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.wire = Wire(self.clock)
        self.client = StunClient(self.clock, self.wire, random_bytes=counter_ids())

    def answer(self, index=-1, mapped=CLIENT, source=SERVER, extra=()):
        request = stun.parse(self.wire.sent[index][1])
        response = stun.build(stun.StunMessage(
            stun.BINDING_SUCCESS, request.transaction_id,
            (stun.xor_mapped_address(mapped, request.transaction_id), *extra)))
        self.client.datagram_received(response, source)


class RetransmissionTests(ClientTestCase):
    def test_retransmits_doubling_from_250ms_then_times_out_at_3s(self):
        """Sends at 0, 0.25, 0.75 and 1.75 s, the same bytes each time; TimedOut at 3 s."""
        d = self.client.binding(SERVER)
        self.clock.pump([0.05] * 59)
        self.assertNoResult(d)
        self.clock.advance(0.06)
        failure = self.failureResultOf(d, TimedOut)
        self.assertIn("198.18.0.1:3478", failure.getErrorMessage())
        times = [round(t, 2) for t, _, _ in self.wire.sent]
        self.assertEqual(times, [0.0, 0.25, 0.75, 1.75])
        self.assertEqual(len({data for _, data, _ in self.wire.sent}), 1)
        self.assertEqual(self.client.pending, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answer_stops_retransmission(self):
        d = self.client.binding(SERVER)
        self.clock.advance(0.3)
        self.answer()
        self.assertEqual(self.successResultOf(d), CLIENT)
        self.clock.advance(10)
        self.assertEqual(len(self.wire.sent), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_request_is_a_binding_request_with_fingerprint(self):
        self.client.binding(SERVER, change_port=True)
        request = stun.parse(self.wire.sent[0][1])
        self.assertEqual(request.type, stun.BINDING_REQUEST)
        self.assertEqual(request.attributes[-1].type, stun.FINGERPRINT)
        self.assertEqual(stun.read_change_request(request), (False, True))
        self.assertEqual(self.wire.sent[0][2], SERVER)


class MatchingTests(ClientTestCase):
    def test_responses_are_matched_by_transaction_id(self):
        """Two transactions answered in reverse order each get their own address."""
        first = self.client.binding(SERVER)
        second = self.client.binding(("198.18.0.1", 3479))
        self.answer(index=1, mapped=("198.18.0.11", 2), source=("198.18.0.1", 3479))
        self.answer(index=0, mapped=("198.18.0.11", 1))
        self.assertEqual(self.successResultOf(first), ("198.18.0.11", 1))
        self.assertEqual(self.successResultOf(second), ("198.18.0.11", 2))

    def test_unknown_transaction_and_garbage_are_ignored(self):
        d = self.client.binding(SERVER)
        stranger = stun.build(stun.StunMessage(
            stun.BINDING_SUCCESS, b"\xff" * 12, (stun.xor_mapped_address(CLIENT, b"\xff" * 12),)))
        self.client.datagram_received(stranger, SERVER)
        self.client.datagram_received(b"\x00\x01garbage", SERVER)
        self.assertNoResult(d)
        self.answer()
        self.assertEqual(self.successResultOf(d), CLIENT)

    def test_a_request_with_our_transaction_id_does_not_complete_it(self):
        d = self.client.binding(SERVER)
        request = self.wire.sent[0][1]
        self.client.datagram_received(request, SERVER)
        self.assertNoResult(d)

    def test_details_report_responder_rtt_and_rfc5780_addresses(self):
        d = self.client.binding_details(SERVER, change_port=True)
        self.clock.advance(0.02)
        self.answer(source=("198.18.0.1", 3479), extra=(
            stun.address_attribute(stun.OTHER_ADDRESS, ("198.18.0.3", 3479)),
            stun.software("coturn")))
        result = self.successResultOf(d)
        self.assertEqual(result.responder, ("198.18.0.1", 3479))
        self.assertEqual(result.server, SERVER)
        self.assertAlmostEqual(result.rtt, 0.02)
        self.assertEqual(result.other_address, ("198.18.0.3", 3479))
        self.assertEqual(result.software, "coturn")
        self.assertEqual(result.transmissions, 1)

    def test_error_response_fails_with_its_code(self):
        d = self.client.binding(SERVER, change_ip=True)
        request = stun.parse(self.wire.sent[0][1])
        self.client.datagram_received(stun.build(stun.StunMessage(
            stun.BINDING_ERROR, request.transaction_id,
            (stun.error_code(420, "Unknown Attribute"),))), SERVER)
        failure = self.failureResultOf(d, StunErrorResponse)
        self.assertEqual(failure.value.code, 420)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_success_without_address_is_malformed(self):
        d = self.client.binding(SERVER)
        request = stun.parse(self.wire.sent[0][1])
        self.client.datagram_received(stun.build(stun.StunMessage(
            stun.BINDING_SUCCESS, request.transaction_id)), SERVER)
        self.failureResultOf(d, MalformedMessage)

    def test_cancel_and_stop_clear_timers(self):
        first = self.client.binding(SERVER)
        self.client.binding(SERVER).addErrback(lambda f: f.trap(defer.CancelledError))
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        self.client.stop()
        self.assertEqual(self.client.pending, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ResponderTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.responder = StunResponder(self.clock, alternate_port=True)

    def request(self, *attributes, tid=b"t" * 12, message_type=stun.BINDING_REQUEST):
        # Padded as our client pads: the responder never answers with more than it got.
        return stun.build(stun.StunMessage(message_type, tid, attributes + (stun.padding(64),)))

    def test_answers_with_the_source_address_software_and_fingerprint(self):
        reply = self.responder.respond(self.request(), CLIENT)
        response = stun.parse(reply.datagram)
        self.assertEqual(response.type, stun.BINDING_SUCCESS)
        self.assertEqual(response.transaction_id, b"t" * 12)
        self.assertEqual(stun.mapped_address(response), CLIENT)
        self.assertEqual([a.type for a in response.attributes],
                         [stun.XOR_MAPPED_ADDRESS, stun.SOFTWARE, stun.FINGERPRINT])
        self.assertFalse(reply.from_alternate_port)

    def test_no_reply_is_larger_than_its_request(self):
        """A bare 20-byte request would get 52 bytes (64 over IPv6): it gets nothing. Padded
        to our client's REQUEST_SIZE, it is answered, and never with more bytes."""
        bare = stun.build(stun.StunMessage(stun.BINDING_REQUEST, b"t" * 12), fingerprint=False)
        self.assertEqual(len(bare), 20)
        self.assertIsNone(self.responder.respond(bare, CLIENT))
        self.assertIsNone(self.responder.respond(bare, ("2001:db8::1", 9)))
        self.assertEqual(self.responder.too_short, 2)
        from peerit.nat.stun import REQUEST_SIZE, StunClient
        sent = []
        StunClient(task.Clock(), lambda data, addr: sent.append(data)).binding(SERVER)
        self.assertGreaterEqual(len(sent[0]), REQUEST_SIZE)
        for source in (CLIENT, ("2001:db8::1", 9)):
            reply = self.responder.respond(sent[0], source)
            self.assertLessEqual(len(reply.datagram), len(sent[0]))

    def test_change_port_is_answered_from_the_alternate_port(self):
        reply = self.responder.respond(self.request(stun.change_request(change_port=True)),
                                       CLIENT)
        self.assertTrue(reply.from_alternate_port)
        self.assertEqual(stun.parse(reply.datagram).type, stun.BINDING_SUCCESS)

    def test_change_ip_or_port_without_alternate_is_420(self):
        single = StunResponder(self.clock, alternate_port=False)
        for responder, flags in ((self.responder, (True, False)), (single, (False, True))):
            reply = responder.respond(self.request(stun.change_request(*flags)), CLIENT)
            response = stun.parse(reply.datagram)
            self.assertEqual(response.type, stun.BINDING_ERROR)
            self.assertEqual(stun.read_error_code(response)[0], 420)
            self.assertEqual(stun.read_unknown_attributes(response), (stun.CHANGE_REQUEST,))
            self.assertFalse(reply.from_alternate_port)

    def test_unknown_required_attribute_gets_420(self):
        reply = self.responder.respond(self.request(stun.Attribute(0x0042, b"x")), CLIENT)
        response = stun.parse(reply.datagram)
        self.assertEqual(stun.read_error_code(response)[0], 420)
        self.assertEqual(stun.read_unknown_attributes(response), (0x0042,))

    def test_unknown_optional_attribute_is_ignored(self):
        reply = self.responder.respond(self.request(stun.Attribute(0x8F00, b"x")), CLIENT)
        self.assertEqual(stun.parse(reply.datagram).type, stun.BINDING_SUCCESS)

    def test_only_binding_requests_are_answered(self):
        for data in (self.request(message_type=stun.BINDING_SUCCESS),
                     self.request(message_type=0x0011),  # Binding indication
                     self.request(message_type=0x0003),  # TURN Allocate
                     b"\x00\x01\x00\x00" + stun.MAGIC_COOKIE_BYTES + b"short",
                     b"\xc0" * 40, b""):
            self.assertIsNone(self.responder.respond(data, CLIENT))
        self.assertEqual(self.responder.answered, 0)
        self.assertEqual(self.responder.ignored, 6)

    def test_rate_limited_per_source_address(self):
        """A burst of 20 per source address, then 10 per second; other sources unaffected."""
        answered = sum(self.responder.respond(self.request(), ("192.0.2.9", p)) is not None
                       for p in range(100))
        self.assertEqual(answered, 20)
        self.assertIsNotNone(self.responder.respond(self.request(), CLIENT))
        self.clock.advance(1.0)
        answered = sum(self.responder.respond(self.request(), ("192.0.2.9", 1)) is not None
                       for _ in range(100))
        self.assertEqual(answered, 10)
        self.assertEqual(self.responder.refused, 170)

    def test_total_rate_limit(self):
        responder = StunResponder(self.clock, total_rate=50)
        answered = sum(responder.respond(self.request(), (f"192.0.2.{i}", 1)) is not None
                       for i in range(1, 200))
        self.assertEqual(answered, 50)

    def test_client_and_responder_agree(self):
        """The client, fed the responder's answer, gets back the address the responder saw."""
        clock = task.Clock()
        replies = []
        client = StunClient(clock, lambda data, addr: replies.append(
            self.responder.respond(data, CLIENT)))
        d = client.binding(SERVER)
        client.datagram_received(replies[0].datagram, SERVER)
        self.assertEqual(self.successResultOf(d), CLIENT)


class HostileResponderInputTests(SynchronousTestCase):
    @settings(max_examples=500, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=16)), max_size=4))
    def test_any_well_framed_request_gets_a_reply_or_none_never_an_exception(self, attributes):
        responder = StunResponder(task.Clock(), alternate_port=True, per_source_burst=1e9)
        message = stun.StunMessage(stun.BINDING_REQUEST, b"q" * 12, tuple(
            stun.Attribute(t, v) for t, v in attributes if t != stun.FINGERPRINT))
        request = stun.build(message)
        reply = responder.respond(request, CLIENT)
        if reply is not None:
            response = stun.parse(reply.datagram)
            self.assertIn(response.type, (stun.BINDING_SUCCESS, stun.BINDING_ERROR))
            self.assertLessEqual(len(reply.datagram), len(request))

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=120))
    def test_arbitrary_datagrams_never_raise(self, data):
        responder = StunResponder(task.Clock(), alternate_port=True)
        self.assertIn(type(responder.respond(data, CLIENT)), (type(None), Reply))
