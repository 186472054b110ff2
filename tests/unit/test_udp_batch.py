"""Batched UDP I/O (peerit.nat.udp_batch.DatagramWriter / DatagramReader) against fake
sockets: which datagrams share one segmented send, what happens when the kernel refuses
segmentation or the buffer is full, and how a coalesced read is cut back into datagrams."""

import errno
import sys

from twisted.trial.unittest import SynchronousTestCase

from peerit.nat.udp_batch import (
    READ_BATCH, SOL_UDP, UDP_GRO, UDP_SEGMENT, DatagramReader, DatagramWriter)

ADDR = ("192.0.2.7", 4433)


class FakeSendSocket:
    def __init__(self, refuse_segmentation=False, full=False):
        self.calls = []
        self.refuse_segmentation = refuse_segmentation
        self.full = full

    def sendto(self, data, addr):
        if self.full:
            raise OSError(errno.ENOBUFS, "full")
        self.calls.append(("sendto", [bytes(data)], None, addr))

    def sendmsg(self, buffers, ancillary, flags, addr):
        if self.refuse_segmentation:
            raise OSError(errno.EIO, "no checksum offload")
        if self.full:
            raise OSError(errno.EAGAIN, "full")
        (level, kind, value), = ancillary
        self.assertion = (level, kind)
        segment = int.from_bytes(value, sys.byteorder)
        self.calls.append(("sendmsg", [bytes(b) for b in buffers], segment, addr))


def sizes(call):
    return [len(b) for b in call[1]]


class DatagramWriterTests(SynchronousTestCase):

    def test_equal_sizes_share_one_send_and_a_shorter_one_may_end_it(self):
        """Full-size datagrams go out in one sendmsg with their size as the segment size; a
        shorter one may close the run, and the next run starts after it."""
        sock = FakeSendSocket()
        writer = DatagramWriter(sock)
        datagrams = [bytes([i]) * 1452 for i in range(5)] + [b"s" * 100] + [b"t" * 1452] * 2
        self.assertEqual(writer.send_many(datagrams, ADDR), 0)
        self.assertEqual([call[0] for call in sock.calls], ["sendmsg", "sendmsg"])
        self.assertEqual(sizes(sock.calls[0]), [1452] * 5 + [100])
        self.assertEqual(sock.calls[0][2], 1452)
        self.assertEqual(sizes(sock.calls[1]), [1452, 1452])
        self.assertEqual(sock.assertion, (SOL_UDP, UDP_SEGMENT))
        self.assertEqual(b"".join(b"".join(call[1]) for call in sock.calls), b"".join(datagrams))
        self.assertEqual((writer.datagrams, writer.syscalls), (8, 2))

    def test_a_larger_datagram_starts_a_new_send(self):
        """Segments after the first may not be larger: a bigger datagram starts a new run, and
        a lone datagram is a plain sendto."""
        sock = FakeSendSocket()
        DatagramWriter(sock).send_many([b"a" * 500, b"b" * 1452, b"c" * 1452, b"d" * 600,
                                        b"e" * 700], ADDR)
        self.assertEqual([(call[0], sizes(call)) for call in sock.calls],
                         [("sendto", [500]), ("sendmsg", [1452, 1452, 600]),
                          ("sendto", [700])])

    def test_a_send_stays_within_64_kib(self):
        """A segmented send is one IP packet before it is cut: at most ~64 KiB of datagrams."""
        sock = FakeSendSocket()
        DatagramWriter(sock).send_many([b"x" * 1452] * 100, ADDR)
        self.assertEqual(sum(len(sizes(call)) for call in sock.calls), 100)
        for call in sock.calls:
            self.assertLessEqual(sum(sizes(call)), 65000)
            self.assertLessEqual(len(sizes(call)), 64)

    def test_refused_segmentation_falls_back_to_one_datagram_per_send_for_good(self):
        """EIO (a device without checksum offload) switches segmentation off; every datagram
        is still sent, in order."""
        sock = FakeSendSocket(refuse_segmentation=True)
        writer = DatagramWriter(sock)
        datagrams = [bytes([i]) * 1452 for i in range(4)]
        self.assertEqual(writer.send_many(datagrams, ADDR), 0)
        self.assertFalse(writer.segmentation)
        self.assertEqual([call[0] for call in sock.calls], ["sendto"] * 4)
        self.assertEqual([call[1][0] for call in sock.calls], datagrams)

    def test_a_full_buffer_counts_the_whole_run_as_refused(self):
        """ENOBUFS/EAGAIN lose the datagrams of that send (QUIC retransmits them); the count
        says how many."""
        sock = FakeSendSocket(full=True)
        self.assertEqual(DatagramWriter(sock).send_many([b"x" * 1452] * 3 + [b"y"], ADDR), 4)

    def test_other_errors_are_raised(self):
        class Broken(FakeSendSocket):
            def sendto(self, data, addr):
                raise OSError(errno.EBADF, "closed")
        with self.assertRaises(OSError):
            DatagramWriter(Broken()).send_many([b"x"], ADDR)


class FakeReadSocket:
    """Returns queued (data, segment size or None, addr) reads, then EAGAIN."""

    def __init__(self, reads, gro=True):
        self.reads = list(reads)
        self.options = {}
        self.gro = gro

    def setsockopt(self, level, option, value):
        if not self.gro:
            raise OSError(errno.ENOPROTOOPT, "no GRO")
        self.options[(level, option)] = value

    def recvmsg_into(self, buffers, ancillary_size):
        if not self.reads:
            raise BlockingIOError(errno.EAGAIN, "empty")
        data, segment, addr = self.reads.pop(0)
        buffers[0][:len(data)] = data
        ancillary = [] if segment is None else [
            (SOL_UDP, UDP_GRO, segment.to_bytes(4, sys.byteorder))]
        return len(data), ancillary, 0, addr

    def recvfrom(self, size):
        if not self.reads:
            raise BlockingIOError(errno.EAGAIN, "empty")
        data, _, addr = self.reads.pop(0)
        return data, addr


class FakePort:
    maxPacketSize = 8192

    def __init__(self, sock):
        self.socket = sock


class DatagramReaderTests(SynchronousTestCase):

    def read(self, reads, gro=True):
        got, others = [], []
        reader = DatagramReader(FakePort(FakeReadSocket(reads, gro)),
                                lambda data, addr: got.append((data, addr)),
                                lambda data, addr: others.append((data, addr)))
        reader()
        return reader, got, others

    def test_a_coalesced_read_is_cut_at_the_segment_size(self):
        """GRO joined three datagrams (the last shorter): the receiver gets the three."""
        datagrams = [b"\x40" + b"a" * 1451, b"\x41" + b"b" * 1451, b"\x42" + b"c" * 99]
        reader, got, _ = self.read([(b"".join(datagrams), 1452, ADDR)])
        self.assertTrue(reader.coalescing)
        self.assertEqual(got, [(d, ADDR) for d in datagrams])
        self.assertEqual((reader.datagrams, reader.syscalls), (3, 2))

    def test_plain_reads_and_non_quic_datagrams(self):
        """A read without the GRO note is one datagram; one without the QUIC bit goes to
        ``other``; IPv6 addresses lose flow info and scope id."""
        v6 = ("2001:db8::1", 4433, 0, 0)
        reader, got, others = self.read([(b"\x40quic", None, ADDR), (b"\x00stun", None, v6)])
        self.assertEqual(got, [(b"\x40quic", ADDR)])
        self.assertEqual(others, [(b"\x00stun", ("2001:db8::1", 4433))])

    def test_without_gro_it_reads_one_datagram_per_call(self):
        reader, got, _ = self.read([(b"\x40one", None, ADDR), (b"\x40two", None, ADDR)],
                                   gro=False)
        self.assertFalse(reader.coalescing)
        self.assertEqual([data for data, _ in got], [b"\x40one", b"\x40two"])

    def test_one_call_reads_a_bounded_number_of_datagrams(self):
        """A socket that never runs dry cannot keep the reactor in one doRead."""
        reads = [(b"\x40" * 1452 * 40, 1452, ADDR)] * 100
        reader, got, _ = self.read(reads)
        self.assertLessEqual(len(got), READ_BATCH + 40)
        self.assertGreaterEqual(len(got), READ_BATCH)

    def test_a_coalesced_read_goes_to_receive_many_in_one_call(self):
        """With ``receive_many``, the datagrams of one GRO read are handed over together,
        in order; single reads and a coalesced read holding a non-QUIC datagram still go
        one by one, each to its own receiver."""
        batches, single, others = [], [], []
        quic = [b"\x40" + bytes([n]) * 1451 for n in range(3)] + [b"\x41" + b"z" * 99]
        mixed = [b"\x40" + b"q" * 99, b"\x00" + b"s" * 99]
        reader = DatagramReader(
            FakePort(FakeReadSocket([(b"".join(quic), 1452, ADDR), (b"\x40one", None, ADDR),
                                     (b"".join(mixed), 100, ADDR)])),
            lambda data, addr: single.append(data), lambda data, addr: others.append(data),
            receive_many=lambda datagrams, addr: batches.append((datagrams, addr)))
        reader()
        self.assertEqual(batches, [(quic, ADDR)])
        self.assertEqual(single, [b"\x40one", mixed[0]])
        self.assertEqual(others, [mixed[1]])
        self.assertEqual(reader.datagrams, 7)

    def test_a_failing_batch_receiver_does_not_stop_the_reading(self):
        got = []

        def receive_many(datagrams, addr):
            if datagrams[0] == b"\x40bad":
                raise ValueError("bad")
            got.extend(datagrams)
        reader = DatagramReader(FakePort(FakeReadSocket(
            [(b"\x40bad" * 2, 4, ADDR), (b"\x40gud" * 2, 4, ADDR)])), None,
            receive_many=receive_many)
        reader()
        self.assertEqual(got, [b"\x40gud"] * 2)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_a_failing_receiver_does_not_stop_the_reading(self):
        """One bad datagram is logged; the others are still delivered."""
        got = []

        def receive(data, addr):
            if data == b"\x40bad":
                raise ValueError("bad")
            got.append(data)
        reader = DatagramReader(FakePort(FakeReadSocket(
            [(b"\x40bad", None, ADDR), (b"\x40good", None, ADDR)])), receive)
        reader()
        self.assertEqual(got, [b"\x40good"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
