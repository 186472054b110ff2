"""The Twisted-free AMP codec of peerit.control.boxes against Twisted's own AMP: every
command of the contract encodes to what Twisted parses and parses what Twisted encodes, so the
plain-socket client and the Twisted daemon understand each other."""

from hypothesis import given, settings, strategies as st
from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase

from peerit.control import boxes, commands, contract
from peerit.errors import MalformedMessage

_SCALARS = {
    contract.TEXT: st.text(max_size=40),
    contract.INTEGER: st.integers(min_value=-2**70, max_value=2**70),
    contract.FLOAT: st.floats(allow_nan=False),
    contract.BOOLEAN: st.booleans(),
}


def values_of(fields):
    def kind_strategy(kind):
        if isinstance(kind, contract.ListOf):
            return st.lists(_SCALARS[kind.element], max_size=4)
        if isinstance(kind, contract.Records):
            return st.lists(values_of(kind.fields), max_size=3)
        return _SCALARS[kind]
    return st.fixed_dictionaries({name.decode(): kind_strategy(kind) for name, kind in fields})


def field_lists():
    for spec in contract.COMMANDS:
        command = getattr(commands, spec.name)
        yield spec.arguments, command.arguments
        yield spec.response, command.response


class AmpProtocolStandIn:
    """What Twisted's AmpList wants of a protocol when it encodes nested boxes: nothing."""


def twisted_encode(amp_fields, values) -> bytes:
    box = amp._objectsToStrings(values, amp_fields, amp.Box(), AmpProtocolStandIn())
    return box.serialize()


def twisted_decode(amp_fields, data: bytes) -> dict:
    (box,) = amp.parseString(data)
    return amp._stringsToObjects(box, amp_fields, AmpProtocolStandIn())


class CodecAgainstTwistedTests(SynchronousTestCase):
    @settings(max_examples=25, deadline=None)
    @given(st.data())
    def test_every_field_list_round_trips_through_twisted_both_ways(self, data):
        for ours, theirs in field_lists():
            values = data.draw(values_of(ours))
            encoded = boxes.encode_box(boxes.encode_fields(ours, values))
            self.assertEqual(encoded, twisted_encode(theirs, values))
            self.assertEqual(twisted_decode(theirs, encoded), values)
            (box,) = boxes.BoxDecoder().feed(twisted_encode(theirs, values))
            self.assertEqual(boxes.decode_fields(ours, box), values)

    def test_a_box_fed_one_byte_at_a_time_comes_out_whole_once(self):
        encoded = boxes.encode_box({b"_ask": b"1", b"_command": b"Status", b"id": b"ab"}) * 2
        decoder, out = boxes.BoxDecoder(), []
        for i in range(len(encoded)):
            out += decoder.feed(encoded[i:i + 1])
        self.assertEqual(out, [{b"_ask": b"1", b"_command": b"Status", b"id": b"ab"}] * 2)
        self.assertTrue(decoder.between_boxes())


class RefusalTests(SynchronousTestCase):
    def test_a_key_longer_than_amp_allows_is_refused_before_its_bytes_arrive(self):
        with self.assertRaises(MalformedMessage):
            boxes.BoxDecoder().feed(b"\x01\x00")

    def test_a_box_of_too_many_pairs_is_refused(self):
        pairs = b"".join(b"\x00\x03k%02d\x00\x00" % i for i in range(boxes.MAX_PAIRS + 1))
        with self.assertRaises(MalformedMessage):
            boxes.BoxDecoder().feed(pairs)

    def test_missing_or_malformed_values_are_malformed_messages(self):
        fields = contract.BY_NAME["Status"].response
        with self.assertRaises(MalformedMessage):
            boxes.decode_fields(fields, {})
        box = boxes.encode_fields(fields, {name.decode(): kind.python() for name, kind in fields})
        for name, bad in ((b"size", b"ten"), (b"name", b"\xff"), (b"down_rate", b"fast")):
            with self.assertRaises(MalformedMessage, msg=name):
                boxes.decode_fields(fields, {**box, name: bad})
        with self.assertRaises(MalformedMessage):
            boxes.decode_fields(((b"flag", contract.BOOLEAN),), {b"flag": b"yes"})
        with self.assertRaises(MalformedMessage):
            boxes.decode_fields(((b"names", contract.ListOf(contract.TEXT)),),
                                {b"names": b"\x00\x05ab"})

    def test_an_error_code_names_the_class_it_was_sent_for(self):
        for cls, code in contract.ERRORS:
            self.assertIs(commands.Command.reverseErrors[code], cls)
