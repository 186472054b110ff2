"""The punch probe datagram: exact bytes, round trip, hostile input, authentication."""

import hashlib
import hmac

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from peerit.errors import MalformedMessage
from peerit.wire import probe

ATTEMPT = bytes(range(16))
SENDER = bytes(range(32, 64))
TRANSACTION = bytes(range(100, 112))
NONCE = b"n" * 32

# Written out by hand from the format in peerit/wire/probe.py, not produced by it.
GOLDEN_HEADER = bytes.fromhex(
    "a5504954"          # magic: 0xA5 'P' 'I' 'T'
    "01"                # version 1
    "02"                # kind: pong
    "000102030405060708090a0b0c0d0e0f"  # attempt id
    "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"  # sender
    "6465666768696a6b6c6d6e6f")  # transaction
GOLDEN_MAC = bytes.fromhex("40151698000ddb3679a7718bc3ac1915")

kinds = st.sampled_from(probe.KINDS)
attempt_ids = st.binary(min_size=16, max_size=16)
peer_ids = st.binary(min_size=32, max_size=32)
transactions = st.binary(min_size=12, max_size=12)
nonces = st.binary(min_size=16, max_size=64)


class GoldenVectorTests(SynchronousTestCase):
    def test_encode_matches_the_hand_written_bytes(self):
        """A pong encodes to the documented layout followed by HMAC-SHA256(nonce)[:16]."""
        data = probe.encode("pong", ATTEMPT, SENDER, TRANSACTION, NONCE)
        self.assertEqual(data, GOLDEN_HEADER + GOLDEN_MAC)
        expected_mac = hmac.new(NONCE, GOLDEN_HEADER, hashlib.sha256).digest()[:16]
        self.assertEqual(GOLDEN_MAC, expected_mac)
        self.assertEqual(len(data), probe.PROBE_SIZE)

    def test_parse_golden_vector(self):
        parsed = probe.parse(GOLDEN_HEADER + GOLDEN_MAC)
        self.assertEqual(
            parsed, probe.Probe("pong", ATTEMPT, SENDER, TRANSACTION, GOLDEN_MAC))
        self.assertTrue(probe.verify(parsed, NONCE))

    def test_first_byte_is_outside_stun_and_quic_ranges(self):
        """Top bits 10 (STUN uses 00) and the 0x40 bit clear (QUIC always sets it)."""
        first = probe.encode("ping", ATTEMPT, SENDER, TRANSACTION, NONCE)[0]
        self.assertEqual(first & 0xC0, 0x80)
        self.assertTrue(first.bit_length() == 8 and not first & 0x40)
        self.assertEqual(probe.PROBE_MAGIC[0], first)

    def test_attempt_id_is_read_without_parsing(self):
        data = probe.encode("nominate", ATTEMPT, SENDER, TRANSACTION, NONCE)
        self.assertTrue(probe.looks_like_probe(data))
        self.assertEqual(probe.attempt_id_of(data), ATTEMPT)


class RoundTripTests(SynchronousTestCase):
    @given(kinds, attempt_ids, peer_ids, transactions, nonces)
    def test_parse_of_encode_is_identity_and_verifies(self, kind, attempt, sender, tx, nonce):
        data = probe.encode(kind, attempt, sender, tx, nonce)
        parsed = probe.parse(data)
        self.assertEqual((parsed.kind, parsed.attempt_id, parsed.sender, parsed.transaction),
                         (kind, attempt, sender, tx))
        self.assertTrue(probe.verify(parsed, nonce))
        self.assertEqual(probe.build(parsed), data)


class HostileInputTests(SynchronousTestCase):
    @given(st.binary(max_size=200))
    def test_arbitrary_bytes_raise_only_malformed(self, data):
        try:
            probe.parse(data)
        except MalformedMessage:
            pass

    @given(st.binary(min_size=probe.PROBE_SIZE - 4, max_size=probe.PROBE_SIZE - 4),
           st.integers(0, 255), st.integers(0, 255))
    def test_bytes_behind_the_magic_raise_only_malformed(self, rest, version, kind):
        data = probe.PROBE_MAGIC + bytes([version, kind]) + rest[2:]
        try:
            parsed = probe.parse(data)
        except MalformedMessage:
            return
        self.assertIn(parsed.kind, probe.KINDS)
        self.assertEqual(version, probe.VERSION)

    def test_each_wrong_field_is_reported(self):
        good = probe.encode("ping", ATTEMPT, SENDER, TRANSACTION, NONCE)
        cases = {
            "wrong magic": b"\xa5PIX" + good[4:],
            "unsupported version": good[:4] + b"\x02" + good[5:],
            "unknown kind": good[:5] + b"\x09" + good[6:],
            "expected 82": good[:-1],
        }
        for reason, data in cases.items():
            with self.assertRaises(MalformedMessage) as caught:
                probe.parse(data)
            self.assertIn(reason, str(caught.exception))
        self.assertRaises(MalformedMessage, probe.parse, good + b"\x00")
        self.assertRaises(MalformedMessage, probe.parse, b"")

    def test_encode_refuses_wrong_sizes(self):
        self.assertRaises(MalformedMessage, probe.encode, "ping", ATTEMPT[:15], SENDER,
                          TRANSACTION, NONCE)
        self.assertRaises(MalformedMessage, probe.encode, "hello", ATTEMPT, SENDER,
                          TRANSACTION, NONCE)


class AuthenticationTests(SynchronousTestCase):
    def test_wrong_nonce_is_rejected(self):
        parsed = probe.parse(probe.encode("ping", ATTEMPT, SENDER, TRANSACTION, NONCE))
        self.assertFalse(probe.verify(parsed, b"m" * 32))

    @given(st.integers(0, probe.PROBE_SIZE - 1), st.integers(1, 255))
    def test_any_flipped_bit_fails_parse_or_verify(self, index, flip):
        data = bytearray(probe.encode("nominate_ack", ATTEMPT, SENDER, TRANSACTION, NONCE))
        data[index] ^= flip
        try:
            parsed = probe.parse(bytes(data))
        except MalformedMessage:
            return
        self.assertFalse(probe.verify(parsed, NONCE))

    def test_changing_the_kind_breaks_the_mac(self):
        """A pong cannot be turned into a nominate (or any other kind) by a third party."""
        data = probe.encode("pong", ATTEMPT, SENDER, TRANSACTION, NONCE)
        parsed = probe.parse(data)
        forged = probe.Probe("nominate", parsed.attempt_id, parsed.sender,
                             parsed.transaction, parsed.mac)
        self.assertFalse(probe.verify(forged, NONCE))
