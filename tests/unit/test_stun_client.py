"""STUN client transactions and the tracker's responder, on a task.Clock with no sockets."""

from hypothesis import given, settings, strategies as st
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from peerit.errors import MalformedMessage, TimedOut
from peerit.nat.stun import (
    MAX_AMPLIFICATION, REQUEST_SIZE, Reply, StunClient, StunErrorResponse, StunResponder)
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
        # Padded as our client pads (any size is answered; this is what peer-it sends).
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

    def test_bare_20_byte_request_golden_bytes(self):
        """A plain RFC 8489 Binding request (20 bytes, no attributes, as coturn's and browsers'
        clients send) gets the minimal answer: XOR-MAPPED-ADDRESS only, 32 bytes."""
        request = bytes.fromhex("000100002112a442000102030405060708090a0b")
        reply = self.responder.respond(request, ("192.0.2.1", 32853))
        self.assertEqual(reply.datagram.hex(),
                         "0101000c2112a442000102030405060708090a0b"
                         "002000080001a147e112a643")
        self.assertFalse(reply.from_alternate_port)

    def test_fingerprint_in_the_answer_only_when_the_request_had_one(self):
        for fingerprint in (False, True):
            request = stun.build(stun.StunMessage(stun.BINDING_REQUEST, b"t" * 12),
                                 fingerprint=fingerprint)
            response = stun.parse(self.responder.respond(request, CLIENT).datagram)
            types = [a.type for a in response.attributes]
            self.assertEqual(types, [stun.XOR_MAPPED_ADDRESS]
                             + ([stun.FINGERPRINT] if fingerprint else []))
            self.assertEqual(stun.mapped_address(response), CLIENT)

    def test_standard_request_sizes_are_answered(self):
        """20, 28, 32 and 40 bytes (a 4-, 8- or 16-byte optional attribute, e.g. SOFTWARE),
        over IPv4 and IPv6, all get a success carrying the source address."""
        for value_size in (None, 4, 8, 16):
            attributes = () if value_size is None else (
                stun.Attribute(stun.SOFTWARE, b"s" * (value_size - 4)),)
            request = stun.build(stun.StunMessage(stun.BINDING_REQUEST, b"t" * 12,
                                                  attributes), fingerprint=False)
            for source in (CLIENT, ("2001:db8::1", 9)):
                response = stun.parse(self.responder.respond(request, source).datagram)
                self.assertEqual(response.type, stun.BINDING_SUCCESS)
                self.assertEqual(stun.mapped_address(response), source)

    def test_software_only_where_it_costs_no_amplification(self):
        """Our client's padded request gets SOFTWARE; a short request does not."""
        sent = []
        StunClient(task.Clock(), lambda data, addr: sent.append(data)).binding(SERVER)
        self.assertGreaterEqual(len(sent[0]), REQUEST_SIZE)
        for source in (CLIENT, ("2001:db8::1", 9)):
            reply = self.responder.respond(sent[0], source)
            self.assertLessEqual(len(reply.datagram), len(sent[0]))
            self.assertEqual(stun.read_software(stun.parse(reply.datagram)), "peer-it")
        short = stun.build(stun.StunMessage(stun.BINDING_REQUEST, b"t" * 12))
        self.assertIsNone(stun.read_software(
            stun.parse(self.responder.respond(short, CLIENT).datagram)))

    def test_worst_case_amplification(self):
        """The documented worst case: a 24-byte request with one unknown required attribute
        gets a 56-byte 420 (7/3); a 20-byte request from IPv6 gets 44 bytes (2.2)."""
        request = stun.build(stun.StunMessage(stun.BINDING_REQUEST, b"t" * 12,
                                              (stun.Attribute(0x0042, b""),)),
                             fingerprint=False)
        reply = self.responder.respond(request, CLIENT)
        self.assertEqual((len(request), len(reply.datagram)), (24, 56))
        self.assertEqual(stun.read_error_code(stun.parse(reply.datagram))[0], 420)
        bare = stun.build(stun.StunMessage(stun.BINDING_REQUEST, b"t" * 12), fingerprint=False)
        self.assertEqual(len(self.responder.respond(bare, ("2001:db8::1", 9)).datagram), 44)
        self.assertLessEqual(56 / 24, MAX_AMPLIFICATION)

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
        self.assertEqual(self.responder.counts.answered, 0)
        self.assertEqual(self.responder.counts.ignored, 6)

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
        self.assertEqual(self.responder.counts.rate_limited, 170)

    def test_global_byte_budget(self):
        """However many source addresses, the answers spend at most the budget per second
        (after a one-second burst)."""
        responder = StunResponder(self.clock, bytes_per_second=3200)
        bare = stun.build(stun.StunMessage(stun.BINDING_REQUEST, b"t" * 12), fingerprint=False)
        answered = sum(responder.respond(bare, (f"192.0.2.{i}", 1)) is not None
                       for i in range(1, 200))
        self.assertEqual(answered, 100)  # 3200 bytes / 32 bytes each
        self.assertEqual(responder.counts.over_budget, 99)
        self.clock.advance(0.5)
        answered = sum(responder.respond(bare, (f"198.51.100.{i}", 1)) is not None
                       for i in range(1, 200))
        self.assertEqual(answered, 50)
        self.assertEqual(responder.counts.sent_bytes, 150 * 32)
        self.assertEqual(responder.counts.received_bytes, (199 + 199) * 20)

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
    def test_any_well_framed_request_gets_a_bounded_answer(self, attributes):
        responder = StunResponder(task.Clock(), alternate_port=True, per_source_burst=1e9)
        message = stun.StunMessage(stun.BINDING_REQUEST, b"q" * 12, tuple(
            stun.Attribute(t, v) for t, v in attributes if t != stun.FINGERPRINT))
        request = stun.build(message, fingerprint=bool(len(attributes) % 2))
        for source in (CLIENT, ("2001:db8::1", 9)):
            reply = responder.respond(request, source)
            response = stun.parse(reply.datagram)
            self.assertEqual(response.transaction_id, b"q" * 12)
            self.assertIn(response.type, (stun.BINDING_SUCCESS, stun.BINDING_ERROR))
            self.assertLessEqual(len(reply.datagram), MAX_AMPLIFICATION * len(request))
            self.assertLessEqual(len(reply.datagram), 68)
        self.assertEqual(responder.counts.too_large, 0)

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=120))
    def test_arbitrary_datagrams_never_raise(self, data):
        responder = StunResponder(task.Clock(), alternate_port=True)
        self.assertIn(type(responder.respond(data, CLIENT)), (type(None), Reply))
