"""STUN wire format: RFC 5769 vectors, hand-written bytes, round trips and hostile input."""

import zlib

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from peerit.errors import MalformedMessage
from peerit.wire import stun

# RFC 5769 section 2.2: a Binding success response with an IPv4 XOR-MAPPED-ADDRESS, a SOFTWARE
# attribute padded with spaces, MESSAGE-INTEGRITY (unknown here, kept raw) and FINGERPRINT.
RFC5769_IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96")
# RFC 5769 section 2.3: the same with an IPv6 address.
RFC5769_IPV6_RESPONSE = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c")
RFC5769_TRANSACTION = bytes.fromhex("b7e7a701bc34d686fa87dfae")

TRANSACTION = bytes(range(1, 13))


def hand_written_request_with_fingerprint() -> bytes:
    # Written out from RFC 8489, not produced by the module under test.
    covered = (bytes.fromhex("0001" "0008" "2112a442") + TRANSACTION)
    crc = (zlib.crc32(covered) ^ 0x5354554E).to_bytes(4, "big")
    return covered + bytes.fromhex("80280004") + crc


class VectorTests(SynchronousTestCase):
    def test_rfc5769_ipv4_response(self):
        """The RFC's IPv4 sample parses: fingerprint checked, 192.0.2.1:32853 recovered."""
        message = stun.parse(RFC5769_IPV4_RESPONSE)
        self.assertEqual(message.type, stun.BINDING_SUCCESS)
        self.assertEqual(message.transaction_id, RFC5769_TRANSACTION)
        self.assertEqual(stun.mapped_address(message), ("192.0.2.1", 32853))
        self.assertEqual(stun.read_software(message), "test vector")
        self.assertEqual([a.type for a in message.attributes],
                         [stun.SOFTWARE, stun.XOR_MAPPED_ADDRESS, 0x0008, stun.FINGERPRINT])

    def test_rfc5769_ipv6_response(self):
        message = stun.parse(RFC5769_IPV6_RESPONSE)
        self.assertEqual(stun.mapped_address(message),
                         ("2001:db8:1234:5678:11:2233:4455:6677", 32853))

    def test_fingerprint_flip_is_refused(self):
        """One flipped bit anywhere the FINGERPRINT covers makes the message malformed."""
        for index in (1, 8, 25, 45, len(RFC5769_IPV4_RESPONSE) - 9):
            damaged = bytearray(RFC5769_IPV4_RESPONSE)
            damaged[index] ^= 0x01
            with self.assertRaises(MalformedMessage):
                stun.parse(bytes(damaged))

    def test_build_request_matches_hand_written_bytes(self):
        built = stun.build(stun.StunMessage(stun.BINDING_REQUEST, TRANSACTION))
        self.assertEqual(built, hand_written_request_with_fingerprint())

    def test_build_without_fingerprint_is_the_bare_header(self):
        built = stun.build(stun.StunMessage(stun.BINDING_REQUEST, TRANSACTION),
                           fingerprint=False)
        self.assertEqual(built, bytes.fromhex("000100002112a442") + TRANSACTION)

    def test_xor_mapped_address_ipv4_bytes(self):
        """Port XOR 0x2112, address XOR the cookie (RFC 8489 14.2), written out by hand."""
        attribute = stun.xor_mapped_address(("198.18.0.11", 40000), TRANSACTION)
        port = (40000 ^ 0x2112).to_bytes(2, "big")
        address = bytes(a ^ b for a, b in zip(bytes([198, 18, 0, 11]), bytes.fromhex("2112a442")))
        self.assertEqual(attribute.value, b"\x00\x01" + port + address)

    def test_message_type_encoding(self):
        """Class bits sit at 0x0100 and 0x0010: Binding request, success, error."""
        self.assertEqual(stun.message_type(stun.BINDING, stun.REQUEST), 0x0001)
        self.assertEqual(stun.message_type(stun.BINDING, stun.INDICATION), 0x0011)
        self.assertEqual(stun.message_type(stun.BINDING, stun.SUCCESS), 0x0101)
        self.assertEqual(stun.message_type(stun.BINDING, stun.ERROR), 0x0111)
        self.assertEqual(stun.split_type(0x0111), (stun.BINDING, stun.ERROR))

    def test_error_code_layout(self):
        """ERROR-CODE 420: class 4 and number 20 in the low bytes, then the reason."""
        attribute = stun.error_code(420, "Unknown Attribute")
        self.assertEqual(attribute.value, b"\x00\x00\x04\x14Unknown Attribute")
        message = stun.parse(stun.build(stun.StunMessage(
            stun.BINDING_ERROR, TRANSACTION, (attribute,))))
        self.assertEqual(stun.read_error_code(message), (420, "Unknown Attribute"))

    def test_change_request_flags(self):
        self.assertEqual(stun.change_request(change_port=True).value, b"\x00\x00\x00\x02")
        self.assertEqual(stun.change_request(True, True).value, b"\x00\x00\x00\x06")
        message = stun.StunMessage(1, TRANSACTION, (stun.change_request(change_port=True),))
        self.assertEqual(stun.read_change_request(message), (False, True))

    def test_mapped_address_is_read_when_there_is_no_xor_form(self):
        """Old (RFC 3489) servers send only MAPPED-ADDRESS."""
        message = stun.parse(stun.build(stun.StunMessage(stun.BINDING_SUCCESS, TRANSACTION, (
            stun.address_attribute(stun.MAPPED_ADDRESS, ("203.0.113.5", 1234)),))))
        self.assertEqual(stun.mapped_address(message), ("203.0.113.5", 1234))

    def test_xor_form_wins_over_plain(self):
        message = stun.StunMessage(stun.BINDING_SUCCESS, TRANSACTION, (
            stun.address_attribute(stun.MAPPED_ADDRESS, ("10.0.0.1", 1)),
            stun.xor_mapped_address(("198.18.0.11", 2), TRANSACTION)))
        self.assertEqual(stun.mapped_address(message), ("198.18.0.11", 2))

    def test_unknown_attributes_are_kept_and_skipped(self):
        """An unknown attribute with odd length is padded, kept raw, and does not hide others."""
        message = stun.StunMessage(stun.BINDING_SUCCESS, TRANSACTION, (
            stun.Attribute(0x7777, b"abc"),
            stun.xor_mapped_address(("198.18.0.12", 5), TRANSACTION)))
        data = stun.build(message)
        parsed = stun.parse(data)
        self.assertEqual(parsed.get(0x7777), b"abc")
        self.assertEqual(stun.mapped_address(parsed), ("198.18.0.12", 5))
        self.assertEqual(parsed.unknown_required(frozenset()), (0x7777, 0x0020))


class IsStunTests(SynchronousTestCase):
    def test_accepts_a_request(self):
        self.assertTrue(stun.is_stun(hand_written_request_with_fingerprint()))

    def test_refuses_other_first_bits_short_data_and_missing_cookie(self):
        request = hand_written_request_with_fingerprint()
        self.assertFalse(stun.is_stun(b"\x40" + request[1:]))
        self.assertFalse(stun.is_stun(b"\x80" + request[1:]))
        self.assertFalse(stun.is_stun(request[:19]))
        self.assertFalse(stun.is_stun(request[:4] + b"\x21\x12\xa4\x43" + request[8:]))


class HostileInputTests(SynchronousTestCase):
    def test_length_must_match_the_datagram(self):
        request = hand_written_request_with_fingerprint()
        for data in (request + b"\x00" * 4, request[:-4],
                     request[:2] + b"\x00\x0a" + request[4:]):
            with self.assertRaises(MalformedMessage):
                stun.parse(data)

    def test_attribute_longer_than_the_message_is_refused(self):
        """An attribute length pointing past the end never reads or allocates beyond it."""
        body = bytes.fromhex("7777fff0") + b"\x00" * 4
        data = bytes.fromhex("00010008") + stun.MAGIC_COOKIE_BYTES + TRANSACTION + body
        with self.assertRaises(MalformedMessage):
            stun.parse(data)

    def test_fingerprint_must_be_last(self):
        message = stun.StunMessage(stun.BINDING_REQUEST, TRANSACTION)
        good = stun.build(message)
        moved = good[:2] + (len(good) - 20 + 8).to_bytes(2, "big") + good[4:] \
            + bytes.fromhex("7777000400000000")
        with self.assertRaises(MalformedMessage):
            stun.parse(moved)

    def test_bad_address_family(self):
        for family in (0, 3, 255):
            value = bytes([0, family, 0, 1]) + b"\x00" * 4
            with self.assertRaises(MalformedMessage):
                stun.decode_address(value)

    def test_address_length_must_match_family(self):
        with self.assertRaises(MalformedMessage):
            stun.decode_address(b"\x00\x01\x00\x01" + b"\x00" * 16)

    def test_error_code_out_of_range(self):
        message = stun.StunMessage(stun.BINDING_ERROR, TRANSACTION,
                                   (stun.Attribute(stun.ERROR_CODE, b"\x00\x00\x09\x63"),))
        with self.assertRaises(MalformedMessage):
            stun.read_error_code(message)

    @given(st.binary(max_size=200))
    @settings(max_examples=400, deadline=None)
    def test_arbitrary_bytes_raise_only_malformed(self, data):
        try:
            message = stun.parse(data)
        except MalformedMessage:
            return
        for reader in (stun.mapped_address, stun.read_software, stun.read_error_code,
                       stun.read_change_request, stun.read_unknown_attributes):
            try:
                reader(message)
            except MalformedMessage:
                pass

    @given(st.lists(st.tuples(
        st.one_of(st.sampled_from([stun.MAPPED_ADDRESS, stun.XOR_MAPPED_ADDRESS,
                                   stun.ERROR_CODE, stun.SOFTWARE, stun.CHANGE_REQUEST,
                                   stun.UNKNOWN_ATTRIBUTES, stun.OTHER_ADDRESS,
                                   stun.RESPONSE_ORIGIN]),
                  st.integers(0, 0xFFFF)),
        st.binary(max_size=24)), max_size=5),
        st.sampled_from([stun.BINDING_REQUEST, stun.BINDING_SUCCESS, stun.BINDING_ERROR]))
    @settings(max_examples=1000, deadline=None)
    def test_well_framed_attributes_with_arbitrary_values(self, attributes, message_type):
        """Structure-aware fuzz: valid header and TLV framing, known types, random values."""
        body = b"".join(t.to_bytes(2, "big") + len(v).to_bytes(2, "big") + v
                        + bytes(-len(v) % 4) for t, v in attributes)
        data = (message_type.to_bytes(2, "big") + len(body).to_bytes(2, "big")
                + stun.MAGIC_COOKIE_BYTES + TRANSACTION + body)
        try:
            message = stun.parse(data)
        except MalformedMessage:
            return
        for reader in (stun.mapped_address, stun.read_software, stun.read_error_code,
                       stun.read_change_request, stun.read_unknown_attributes,
                       lambda m: stun.read_address(m, stun.OTHER_ADDRESS)):
            try:
                reader(message)
            except MalformedMessage:
                pass


addresses_v4 = st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 65535))
addresses_v6 = st.tuples(st.ip_addresses(v=6).map(str), st.integers(0, 65535))


class RoundTripTests(SynchronousTestCase):
    @settings(deadline=None)  # timing under a loaded CI machine is not what is tested
    @given(tid=st.binary(min_size=12, max_size=12),
           address=st.one_of(addresses_v4, addresses_v6),
           name=st.text(max_size=40),
           extra=st.lists(st.tuples(st.integers(0x8030, 0xFFFF), st.binary(max_size=30)),
                          max_size=4),
           fingerprint=st.booleans())
    def test_parse_build_round_trip(self, tid, address, name, extra, fingerprint):
        attributes = [stun.xor_mapped_address(address, tid), stun.software(name)]
        attributes += [stun.Attribute(t, v) for t, v in extra if t != stun.FINGERPRINT]
        message = stun.StunMessage(stun.BINDING_SUCCESS, tid, tuple(attributes))
        parsed = stun.parse(stun.build(message, fingerprint=fingerprint))
        expected = message.attributes
        if fingerprint:
            expected += (parsed.attributes[-1],)
            self.assertEqual(parsed.attributes[-1].type, stun.FINGERPRINT)
        self.assertEqual(parsed.attributes, expected)
        self.assertEqual(stun.mapped_address(parsed), address)
        self.assertEqual(stun.read_software(parsed), name)
        self.assertTrue(stun.is_stun(stun.build(message)))
