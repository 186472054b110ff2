"""The daemon's one UDP socket: STUN, punch probes and QUIC told apart by their first bytes.

One socket means one NAT mapping: the public address STUN reports is the one peers can punch
to and the one QUIC then runs over. The classes of datagram never overlap (RFC 7983 style):

- STUN: the top two bits are 00 and bytes 4..8 hold the magic cookie 0x2112A442;
- QUIC: every QUIC v1/v2 packet sets the fixed bit 0x40 (first byte 0x40-0x7F or 0xC0-0xFF);
  a peer that negotiated "grease the QUIC bit" (RFC 9287) could clear it, so our QUIC adapter
  must not offer that transport parameter;
- peer-it punch probes: the first byte is 0x80-0xBF (top bits 10, the 0x40 bit clear) and the
  datagram starts with :data:`PROBE_MAGIC` (the rest of the format is ``peerit.wire.probe``).

Anything else is dropped before any parsing. The mux also keeps the NAT mapping alive by
calling a refresh callable (a STUN Binding to the tracker) every 25 s: well under the 30 s
Linux gives an unreplied UDP flow and the 2 minutes RFC 4787 asks routers to keep at least.
"""

import enum
from typing import Callable

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from peerit.nat.udp_batch import DatagramReader, DatagramWriter, set_socket_buffers
from peerit.shims.twisted_udp import install_reader
from peerit.wire.probe import PROBE_MAGIC  # b"\xa5PIT": 0xA5 has top bits 10, 0x40 clear
from peerit.wire.stun import MAGIC_COOKIE_BYTES

__all__ = ["PROBE_MAGIC", "KEEPALIVE_INTERVAL", "DatagramKind", "UdpMux", "classify"]
KEEPALIVE_INTERVAL = 25.0
SOCKET_BUFFER = 4 * 1024 * 1024

Address = tuple[str, int]
Handler = Callable[[bytes, Address], None]


class DatagramKind(enum.Enum):
    STUN = "stun"
    QUIC = "quic"
    PROBE = "probe"


def classify(datagram: bytes) -> DatagramKind | None:
    """Which kind of datagram this is, from its first bytes alone; None for anything else."""
    if not datagram:
        return None
    first = datagram[0]
    if first & 0x40:
        return DatagramKind.QUIC
    if first & 0xC0 == 0:
        if len(datagram) >= 20 and datagram[4:8] == MAGIC_COOKIE_BYTES:
            return DatagramKind.STUN
        return None
    # Top bits 10.
    if datagram[:4] == PROBE_MAGIC:
        return DatagramKind.PROBE
    return None


class UdpMux(DatagramProtocol):
    """Feeds each datagram to the handler registered for its kind; writes what others send.

    ``refresh`` (set here or with :meth:`set_refresh`) is called every ``keepalive_interval``
    seconds of ``clock`` while the socket is open; a Deferred it returns may fail without
    stopping the keep-alive. ``segmentation=False`` turns UDP GSO/GRO off (one datagram per
    syscall, as on kernels without them).
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, refresh: Callable[[], object] | None = None,
                 keepalive_interval: float = KEEPALIVE_INTERVAL, segmentation: bool = True):
        self._clock = clock
        self._segmentation = segmentation
        self._handlers: dict[DatagramKind, Handler] = {}
        self._refresh = refresh
        self._keepalive_interval = keepalive_interval
        self._keepalive: task.LoopingCall | None = None
        self._received = {kind: 0 for kind in DatagramKind}
        self._quic_count = 0  # QUIC datagrams through the batched reader
        self._quic_handler: Handler | None = None
        self._quic_many = None
        self.dropped = 0
        self._writer = None  # DatagramWriter once the socket exists

    def set_handler(self, kind: DatagramKind, handler: Handler | None) -> None:
        if handler is None:
            self._handlers.pop(kind, None)
        else:
            self._handlers[kind] = handler
        if kind is DatagramKind.QUIC:
            self._quic_handler = handler
            # A QuicEndpoint's handler has a counterpart taking a whole read's datagrams
            # from one address (what the batched reader hands over with GRO).
            self._quic_many = getattr(getattr(handler, "__self__", None),
                                      "datagrams_received", None)

    def set_refresh(self, refresh: Callable[[], object] | None) -> None:
        self._refresh = refresh

    @property
    def local_port(self) -> int | None:
        if self.transport is None:
            return None
        return self.transport.getHost().port

    def startProtocol(self) -> None:
        # QUIC sends in bursts; default socket buffers overflow at them (docs/quic.md).
        sock = getattr(self.transport, "socket", None)
        if sock is not None:
            try:
                set_socket_buffers(sock, SOCKET_BUFFER)
            except OSError as e:
                self.log.info("cannot enlarge UDP socket buffers: {error}", error=e)
            # Bulk QUIC: many datagrams per syscall each way where Linux has UDP GRO/GSO,
            # and QUIC datagrams straight to their handler (docs/quic.md, "GSO/GRO").
            # Anything else still goes through datagramReceived's classification.
            install_reader(self.transport, DatagramReader(
                self.transport, self._quic_received, self.datagramReceived,
                coalesce=self._segmentation, receive_many=self._quic_received_many))
            self._writer = DatagramWriter(sock, segmentation=self._segmentation)
        self._keepalive = task.LoopingCall(self._refresh_mapping)
        self._keepalive.clock = self._clock
        self._keepalive.start(self._keepalive_interval, now=False)

    def stopProtocol(self) -> None:
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        self._keepalive = None

    def _quic_received(self, datagram: bytes, addr: Address) -> None:
        # Per bulk datagram: no Enum-keyed lookups here (hashing an Enum member is a Python
        # call; three per datagram showed in the NAT-lab profile).
        handler = self._quic_handler
        if handler is None:
            self.dropped += 1
            return
        self._quic_count += 1
        handler(datagram, addr)  # the reader logs a failing handler and goes on

    def _quic_received_many(self, datagrams: list, addr: Address) -> None:
        many = self._quic_many
        if many is None:
            for datagram in datagrams:
                self._quic_received(datagram, addr)
            return
        self._quic_count += len(datagrams)
        many(datagrams, addr)

    @property
    def received(self) -> dict:
        """Datagrams handed to each kind's handler so far."""
        counts = dict(self._received)
        counts[DatagramKind.QUIC] += self._quic_count
        return counts

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        kind = classify(datagram)
        handler = self._handlers.get(kind) if kind is not None else None
        if handler is None:
            self.dropped += 1
            return
        self._received[kind] += 1
        try:
            handler(datagram, addr)
        except Exception:
            # One bad datagram must not take the socket down for every other user.
            self.log.failure("{kind} handler failed on a datagram from {addr}",
                             kind=kind.value, addr=addr)

    def send(self, datagram: bytes, addr: Address) -> bool:
        """Write one datagram; False (logged) when the socket is closed or the OS refuses."""
        if self.transport is None:
            return False
        try:
            # The socket directly: Twisted's Port.write checks the address three times per
            # datagram, a tenth of a QUIC sender's time (docs/quic.md).
            sock = getattr(self.transport, "socket", None)
            if sock is not None:
                sock.sendto(datagram, addr)
            else:
                self.transport.write(datagram, addr)
        except OSError as e:
            # Unreachable networks and full buffers are ordinary for UDP: the sender's own
            # timeout and retransmissions deal with them.
            self.log.debug("send to {addr} failed: {error}", addr=addr, error=e)
            return False
        return True

    def send_many(self, datagrams: list, addr: Address) -> int:
        """Write a burst of datagrams to one address (segmented where the kernel can);
        returns how many were refused (a closed socket refuses all)."""
        if self.transport is None or self._writer is None:
            return len(datagrams)
        try:
            return self._writer.send_many(datagrams, addr)
        except OSError as e:
            self.log.debug("send to {addr} failed: {error}", addr=addr, error=e)
            return len(datagrams)

    def _refresh_mapping(self) -> None:
        if self._refresh is None:
            return
        try:
            result = self._refresh()
        except Exception:
            self.log.failure("NAT keep-alive failed")
            return
        if hasattr(result, "addErrback"):
            # Not returned to LoopingCall: a failed refresh must not stop the next one, and a
            # slow one must not delay it.
            result.addErrback(lambda failure: self.log.info(
                "NAT keep-alive got no answer: {reason}", reason=failure.getErrorMessage()))
