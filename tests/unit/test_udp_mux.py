"""The one-socket multiplexer: classification by first bytes, dispatch, sending, keep-alive."""

from hypothesis import given, settings, strategies as st
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from peerit.nat.udp import KEEPALIVE_INTERVAL, PROBE_MAGIC, DatagramKind, UdpMux, classify
from peerit.wire import probe, stun

STUN_REQUEST = stun.build(stun.StunMessage(stun.BINDING_REQUEST, b"x" * 12))
PROBE = probe.encode("ping", b"a" * 16, b"s" * 32, b"t" * 12, b"n" * 32)
QUIC_LONG_HEADER = bytes([0xC3]) + b"\x00\x00\x00\x01" + b"\x00" * 30  # Initial packet
QUIC_SHORT_HEADER = bytes([0x41]) + b"\x00" * 30
PEER = ("198.18.0.12", 4000)


class FakeTransport:
    """A datagram transport that records writes and can be told to refuse them."""

    def __init__(self, error: OSError | None = None):
        self.written: list[tuple[bytes, tuple]] = []
        self.error = error

    def write(self, data, addr):
        if self.error is not None:
            raise self.error
        self.written.append((data, addr))


class ClassifyTests(SynchronousTestCase):
    def test_the_three_kinds(self):
        self.assertEqual(classify(STUN_REQUEST), DatagramKind.STUN)
        self.assertEqual(classify(PROBE), DatagramKind.PROBE)
        self.assertEqual(classify(QUIC_LONG_HEADER), DatagramKind.QUIC)
        self.assertEqual(classify(QUIC_SHORT_HEADER), DatagramKind.QUIC)

    def test_probe_magic_is_the_wire_format_s(self):
        """One magic for the mux and the probe format, with the bits the ranges rely on."""
        self.assertIs(PROBE_MAGIC, probe.PROBE_MAGIC)
        self.assertEqual(PROBE_MAGIC[0] & 0xC0, 0x80)

    def test_other_datagrams_are_dropped(self):
        for data in (b"", b"\x00", b"\x00\x01\x00\x00" + b"\x00" * 16,  # no cookie
                     STUN_REQUEST[:19],  # too short for a STUN header
                     b"\x80" + PROBE_MAGIC[1:] + b"x",  # top bits 10 but wrong magic
                     b"\xbf\xff\xff\xff", PROBE_MAGIC[:3]):
            self.assertIsNone(classify(data), data)

    @settings(deadline=None)
    @given(st.binary(max_size=64))
    def test_kind_follows_the_first_byte_ranges(self, data):
        """QUIC iff 0x40 set; STUN only with top bits 00; probes only with top bits 10."""
        kind = classify(data)
        if not data:
            self.assertIsNone(kind)
            return
        first = data[0]
        if first & 0x40:
            self.assertEqual(kind, DatagramKind.QUIC)
        elif kind == DatagramKind.STUN:
            self.assertEqual(first & 0xC0, 0)
            self.assertEqual(data[4:8], stun.MAGIC_COOKIE_BYTES)
        elif kind == DatagramKind.PROBE:
            self.assertEqual(data[:4], PROBE_MAGIC)

    def test_agrees_with_is_stun(self):
        self.assertTrue(stun.is_stun(STUN_REQUEST))
        self.assertEqual(classify(STUN_REQUEST), DatagramKind.STUN)


class MuxTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.refreshes = []
        self.mux = UdpMux(self.clock, refresh=lambda: self.refreshes.append(self.clock.seconds()))
        self.transport = FakeTransport()
        self.mux.makeConnection(self.transport)

    def test_dispatches_each_kind_to_its_handler(self):
        got = []
        for kind in DatagramKind:
            self.mux.set_handler(kind, lambda data, addr, kind=kind: got.append((kind, data)))
        for data in (STUN_REQUEST, PROBE, QUIC_SHORT_HEADER, b"\x80junk"):
            self.mux.datagramReceived(data, PEER)
        self.assertEqual(got, [(DatagramKind.STUN, STUN_REQUEST), (DatagramKind.PROBE, PROBE),
                               (DatagramKind.QUIC, QUIC_SHORT_HEADER)])
        self.assertEqual(self.mux.dropped, 1)

    def test_kind_without_handler_is_dropped(self):
        self.mux.datagramReceived(QUIC_SHORT_HEADER, PEER)
        self.assertEqual(self.mux.dropped, 1)
        self.mux.set_handler(DatagramKind.QUIC, lambda d, a: None)
        self.mux.set_handler(DatagramKind.QUIC, None)
        self.mux.datagramReceived(QUIC_SHORT_HEADER, PEER)
        self.assertEqual(self.mux.dropped, 2)

    def test_a_failing_handler_does_not_break_the_socket(self):
        got = []

        def broken(data, addr):
            raise ValueError("bug")
        self.mux.set_handler(DatagramKind.PROBE, broken)
        self.mux.set_handler(DatagramKind.STUN, lambda d, a: got.append(d))
        self.mux.datagramReceived(PROBE, PEER)
        self.mux.datagramReceived(STUN_REQUEST, PEER)
        self.assertEqual(got, [STUN_REQUEST])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_send_writes_to_the_transport(self):
        self.assertTrue(self.mux.send(b"data", PEER))
        self.assertEqual(self.transport.written, [(b"data", PEER)])

    def test_send_reports_os_errors_instead_of_raising(self):
        self.transport.error = OSError(101, "Network is unreachable")
        self.assertFalse(self.mux.send(b"data", PEER))

    def test_send_before_the_socket_opens(self):
        self.assertFalse(UdpMux(self.clock).send(b"data", PEER))

    def test_keepalive_every_25_seconds_while_open(self):
        self.clock.advance(KEEPALIVE_INTERVAL - 1)
        self.assertEqual(self.refreshes, [])
        self.clock.advance(1)
        for _ in range(2):
            self.clock.advance(KEEPALIVE_INTERVAL)
        self.assertEqual(self.refreshes, [25.0, 50.0, 75.0])
        self.mux.doStop()
        self.clock.advance(100)
        self.assertEqual(len(self.refreshes), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_failed_refresh_does_not_stop_the_keepalive(self):
        calls = []

        def refresh():
            calls.append(self.clock.seconds())
            return defer.fail(RuntimeError("no answer"))
        self.mux.set_refresh(refresh)
        self.clock.advance(KEEPALIVE_INTERVAL)
        self.clock.advance(KEEPALIVE_INTERVAL)
        self.assertEqual(calls, [25.0, 50.0])

    def test_a_refresh_that_raises_does_not_stop_the_keepalive(self):
        calls = []

        def refresh():
            calls.append(1)
            raise RuntimeError("bug")
        self.mux.set_refresh(refresh)
        self.clock.advance(KEEPALIVE_INTERVAL)
        self.clock.advance(KEEPALIVE_INTERVAL)
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)


class SendManyTests(SynchronousTestCase):
    def test_send_many_on_a_closed_mux_refuses_all(self):
        mux = UdpMux(task.Clock())
        self.assertEqual(mux.send_many([b"\x41a", b"\x41b"], ("127.0.0.1", 9)), 2)
