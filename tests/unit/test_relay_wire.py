"""The relay hello (peerit.wire.relay): one declaration for the daemon that sends it and the
tracker's relay that reads it."""

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from peerit.errors import MalformedMessage
from peerit.wire.relay import (
    RELAY_HELLO_MAGIC, RELAY_HELLO_SIZE, could_be_relay_hello, parse_relay_hello, relay_hello)
from peerit.wire.tracker import RELAY_TOKEN_SIZE

TOKEN = bytes(range(RELAY_TOKEN_SIZE))


class RelayHelloTests(SynchronousTestCase):
    def test_golden_bytes(self):
        self.assertEqual(relay_hello(TOKEN), b"PEERIT-RELAY\x01" + TOKEN)
        self.assertEqual(RELAY_HELLO_SIZE, 13 + 32)

    def test_a_token_of_the_wrong_size_is_refused(self):
        self.assertRaises(ValueError, relay_hello, b"short")
        self.assertRaises(ValueError, relay_hello, TOKEN + b"x")

    @given(st.binary(min_size=RELAY_TOKEN_SIZE, max_size=RELAY_TOKEN_SIZE),
           st.binary(max_size=64))
    def test_parse_gives_back_the_token_and_ignores_what_follows(self, token, rest):
        self.assertEqual(parse_relay_hello(relay_hello(token) + rest), token)

    @given(st.binary(max_size=2 * RELAY_HELLO_SIZE))
    def test_arbitrary_bytes_raise_only_malformed_message(self, data):
        try:
            parse_relay_hello(data)
        except MalformedMessage:
            pass

    def test_a_prefix_can_still_be_a_hello_until_its_first_wrong_byte(self):
        hello = relay_hello(TOKEN)
        for n in range(len(hello) + 1):
            self.assertTrue(could_be_relay_hello(hello[:n]))
        self.assertFalse(could_be_relay_hello(RELAY_HELLO_MAGIC[:5] + b"X"))
        self.assertFalse(could_be_relay_hello(b"GET / HTTP/1.1\r\n"))
