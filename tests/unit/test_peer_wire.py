"""The peer wire format: golden bytes, round trips, hostile input, and the block fast path."""

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from peerit.errors import FrameTooLarge, MalformedMessage
from peerit.wire import framing, peer

ID_A = bytes(range(32))
ID_B = bytes(range(32, 64))

GOLDEN = [
    (peer.KeepAlive(), "00"),
    (peer.Handshake(1, ID_A, ID_B),
     "01" + b"PEERIT".hex() + "0001" + ID_A.hex() + ID_B.hex()),
    (peer.Bitfield(b"\xf0\x01"), "02f001"),
    (peer.Have(258), "0300000102"),
    (peer.Request(1, 16384, 16384), "04" + "00000001" + "00004000" + "00004000"),
    (peer.Block(7, 32, b"abc"), "05" + "00000007" + "00000020" + "616263"),
    (peer.Cancel(1, 2, 3), "06" + "00000001" + "00000002" + "00000003"),
    (peer.Choke(), "07"),
    (peer.Unchoke(), "08"),
    (peer.Interested(), "09"),
    (peer.NotInterested(), "0a"),
    (peer.Reject(4, 5, 6), "0b" + "00000004" + "00000005" + "00000006"),
    (peer.MetadataRequest(1), "0c" + "00000001"),
    (peer.MetadataSize(40000), "0d" + "00009c40"),
    (peer.MetadataPiece(2, b"ab"), "0e" + "00000002" + "6162"),
    (peer.MetadataReject(3), "0f" + "00000003"),
]

u32 = st.integers(0, 2**32 - 1)
messages = st.one_of(
    st.builds(peer.KeepAlive), st.builds(peer.Choke), st.builds(peer.Unchoke),
    st.builds(peer.Interested), st.builds(peer.NotInterested),
    st.builds(peer.Handshake, st.integers(0, 65535), st.binary(min_size=32, max_size=32),
              st.binary(min_size=32, max_size=32)),
    st.builds(peer.Bitfield, st.binary(max_size=64)),
    st.builds(peer.Have, u32),
    st.builds(peer.Request, u32, u32, u32),
    st.builds(peer.Cancel, u32, u32, u32),
    st.builds(peer.Reject, u32, u32, u32),
    st.builds(peer.Block, u32, u32, st.binary(max_size=256)),
    st.builds(peer.MetadataRequest, u32), st.builds(peer.MetadataSize, u32),
    st.builds(peer.MetadataPiece, u32, st.binary(max_size=256)),
    st.builds(peer.MetadataReject, u32),
)


class GoldenTests(SynchronousTestCase):
    def test_every_message_has_its_golden_bytes(self):
        """Each message type encodes to exactly the documented bytes and back."""
        self.assertEqual({type(m) for m, _ in GOLDEN}, set(peer.messages.message_types))
        for message, hex_bytes in GOLDEN:
            self.assertEqual(peer.build(message).hex(), hex_bytes, message)
            parsed = peer.parse(bytes.fromhex(hex_bytes))
            if isinstance(message, peer.Block):
                parsed = peer.Block(parsed.piece, parsed.offset, bytes(parsed.data))
            self.assertEqual(parsed, message)

    def test_block_fast_path_keeps_payload_as_memoryview(self):
        """A block's payload is not copied through construct: it is a view of the frame."""
        frame = peer.build(peer.Block(1, 2, b"x" * 1000))
        parsed = peer.parse(frame)
        self.assertIsInstance(parsed.data, memoryview)
        self.assertEqual(parsed.data.obj, frame)

    def test_block_header_plus_payload_equals_built_block(self):
        self.assertEqual(peer.block_header(9, 99) + b"data",
                         peer.build(peer.Block(9, 99, b"data")))


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(messages)
    def test_parse_of_build_is_identity(self, message):
        parsed = peer.parse(peer.build(message))
        if isinstance(message, peer.Block):
            parsed = peer.Block(parsed.piece, parsed.offset, bytes(parsed.data))
        self.assertEqual(parsed, message)

    @settings(max_examples=1000, deadline=None)
    @given(st.binary(max_size=200))
    def test_arbitrary_bytes_raise_only_malformed(self, data):
        try:
            peer.parse(data)
        except MalformedMessage:
            pass

    @settings(max_examples=500, deadline=None)
    @given(messages, st.data())
    def test_mutated_messages_raise_only_malformed(self, message, data):
        raw = bytearray(peer.build(message))
        index = data.draw(st.integers(0, len(raw)))
        action = data.draw(st.sampled_from(["flip", "cut", "extend"]))
        if action == "flip" and raw:
            raw[index % len(raw)] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del raw[index:]
        else:
            raw += data.draw(st.binary(min_size=1, max_size=8))
        try:
            peer.parse(bytes(raw))
        except MalformedMessage:
            pass


class FramingTests(SynchronousTestCase):
    def test_frames_split_anywhere_are_reassembled(self):
        bodies = [peer.build(m) for m, _ in GOLDEN]
        stream = b"".join(framing.frame(b) for b in bodies)
        for step in (1, 3, 7, 64):
            decoder = framing.FrameDecoder(1024)
            got = []
            for i in range(0, len(stream), step):
                got += decoder.feed(stream[i:i + step])
            self.assertEqual(got, bodies)
            self.assertEqual(decoder.buffered, 0)

    def test_oversized_length_refused_before_buffering(self):
        """The length prefix alone is enough to refuse: nothing of the body is kept."""
        decoder = framing.FrameDecoder(100)
        with self.assertRaises(FrameTooLarge):
            decoder.feed(framing.frame_header(101) + b"x")
        self.assertLessEqual(decoder.buffered, 5)

    def test_huge_length_is_not_allocated(self):
        decoder = framing.FrameDecoder(peer.MAX_FRAME_SIZE)
        with self.assertRaises(FrameTooLarge):
            decoder.feed(b"\xff\xff\xff\xff")


class TruncationTests(SynchronousTestCase):
    def test_every_truncation_of_every_message_is_refused(self):
        """Compiled construct accepts short reads of fixed-size fields; we must not."""
        for message, hex_bytes in GOLDEN:
            raw = bytes.fromhex(hex_bytes)
            if isinstance(message, (peer.Bitfield, peer.Block, peer.MetadataPiece)):
                continue  # their payload runs to the end of the frame: any length is valid
            for cut in range(1, len(raw)):
                with self.assertRaises(MalformedMessage, msg=(message, cut)):
                    peer.parse(raw[:cut])


class LargeFrameTests(SynchronousTestCase):
    def test_large_and_small_frames_interleaved_in_any_chunking(self):
        """Big bodies are assembled in place; the frames around them are unaffected."""
        import random
        rng = random.Random(5)
        bodies = [bytes([i]) * n for i, n in enumerate([10, 200_000, 3, 70_000, 65_536, 1])]
        stream = b"".join(framing.frame(b) for b in bodies)
        for chunk in (1, 1000, 16384, 65536, len(stream)):
            decoder = framing.FrameDecoder(1 << 20)
            got = []
            pos = 0
            while pos < len(stream):
                size = rng.randint(1, chunk)
                got += decoder.feed(stream[pos:pos + size])
                pos += size
            self.assertEqual([bytes(b) for b in got], bodies)
            self.assertEqual(decoder.buffered, 0)


class BuildTests(SynchronousTestCase):
    def test_values_that_do_not_fit_are_refused_not_mangled(self):
        for message in (peer.Have(-1), peer.Have(2**32), peer.Handshake(1, b"x", ID_B),
                        peer.Request(0, 0, 2**40)):
            with self.assertRaises(MalformedMessage):
                peer.build(message)


class BodyPoolTests(SynchronousTestCase):
    """Large frame bodies reuse buffers nobody refers to any more, and only those."""

    def test_a_buffer_comes_back_only_when_nothing_refers_to_it(self):
        from peerit.wire.framing import BodyPool, FrameDecoder, frame
        pool = BodyPool(keep=4)
        first = pool.get(1000)
        view = memoryview(first)[10:]  # e.g. a Block's payload on its way to the disk
        del first
        second = pool.get(1000)
        self.assertIsNot(second, view.obj)  # still referenced: never handed out twice
        held = view.obj
        view.release()
        del view, second
        third = pool.get(1000)
        self.assertEqual(pool.reused, 1)
        self.assertIsNot(third, held)  # ``held`` still refers to the first one
        del held, third
        self.assertEqual(len({id(pool.get(1000)) for _ in range(3)}), 1)

    def test_decoded_frames_stay_intact_while_later_frames_reuse_buffers(self):
        from peerit.wire.framing import BodyPool, FrameDecoder, frame
        pool = BodyPool(keep=2)
        decoder = FrameDecoder(1 << 20, pool)
        bodies = [bytes([n]) * 100_000 for n in range(6)]

        def feed_in_two(body):  # a body that arrives in parts is collected in a pooled buffer
            data = frame(body)
            return decoder.feed(data[:50_000]) + decoder.feed(data[50_000:])
        kept = []
        for body in bodies:
            kept += feed_in_two(body)
        self.assertEqual([bytes(b) for b in kept], bodies)  # all still referenced: no reuse
        self.assertEqual(pool.reused, 0)
        kept.clear()
        again = []
        for body in bodies:
            again += [bytes(b) for b in feed_in_two(body)]  # copied out, released at once
        self.assertEqual(again, bodies)
        self.assertGreater(pool.reused, 0)
