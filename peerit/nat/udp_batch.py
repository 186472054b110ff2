"""Linux UDP batching I/O for a Twisted UDP port: many datagrams per syscall each way.

:class:`DatagramWriter` sends a burst of equal-size datagrams in one ``sendmsg`` with UDP GSO
(``UDP_SEGMENT``); :class:`DatagramReader` reads what is waiting, coalesced by UDP GRO where
the kernel has it, and hands QUIC datagrams (the 0x40 bit) to one receiver and the rest to
another. Both fall back to a datagram per syscall where the kernel or device refuses. The
reader becomes the port's ``doRead`` through :mod:`peerit.shims.twisted_udp`. Used by
:class:`peerit.nat.udp.UdpMux`; see docs/quic.md ("GSO/GRO").
"""

import errno
import socket
import sys

from twisted.logger import Logger

log = Logger()

#: datagrams read per readable event at most, so one busy socket cannot starve the reactor
#: (Twisted's udp.Port reads 256 KiB, ~180 full-size QUIC datagrams)
READ_BATCH = 256
#: errors of a send that QUIC treats as a lost datagram (full buffer, ICMP unreachable)
SEND_LOSSES = frozenset((errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED))
# Linux UDP generic segmentation / receive offload (linux/udp.h)
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
#: a segmented send is one IP packet before segmentation: at most 64 KiB, 64 segments
SEGMENTED_BYTES = 65000
SEGMENTED_COUNT = 64
#: errors that mean "no segmentation here" (device without checksum offload, old kernel)
NO_SEGMENTATION = frozenset((errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP))


class DatagramWriter:
    """Writes bursts of datagrams to one address with as few syscalls as the kernel allows.

    With Linux UDP GSO (``UDP_SEGMENT``), a run of equal-size datagrams (the last may be
    shorter) goes out in one ``sendmsg``: the kernel cuts it into the same datagrams. Per
    datagram that is a fifth of a ``sendto``'s CPU on this machine. Where the kernel or the
    device refuses segmentation, it is switched off for good and each datagram is sent alone.
    """

    def __init__(self, sock, segmentation: bool = True):
        self.sock = sock
        self.segmentation = segmentation and hasattr(sock, "sendmsg")
        #: datagrams written and syscalls used (diagnostics: the batching achieved)
        self.datagrams = self.syscalls = 0

    def send_many(self, datagrams: list, addr) -> int:
        """Send ``datagrams`` to ``addr`` in order; returns how many the OS refused (a full
        buffer: QUIC repairs them as losses). Other errors are raised."""
        sock = self.sock
        refused = 0
        index, count = 0, len(datagrams)
        while index < count:
            size = len(datagrams[index])
            end = index + 1
            if self.segmentation:
                limit = min(count, index + min(SEGMENTED_COUNT, SEGMENTED_BYTES // size))
                while end < limit and len(datagrams[end]) == size:
                    end += 1
                if end < limit and len(datagrams[end]) < size:
                    end += 1  # a shorter last segment is allowed
            self.syscalls += 1
            try:
                if end - index == 1:
                    sock.sendto(datagrams[index], addr)
                else:
                    sock.sendmsg(datagrams[index:end],
                                 [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, sys.byteorder))],
                                 0, addr)
            except OSError as e:
                if end - index > 1 and e.errno in NO_SEGMENTATION:
                    log.info("UDP segmentation refused ({error}); sending datagrams one by one",
                             error=e)
                    self.segmentation = False
                    continue
                if e.errno not in SEND_LOSSES:
                    raise
                refused += end - index
            index = end
        self.datagrams += count
        return refused


class DatagramReader:
    """A ``doRead`` for a Twisted UDP port: what ``udp.Port.doRead`` does, with fewer
    Python calls per datagram and, where Linux has UDP GRO, many datagrams per syscall.

    Reads what is waiting (at most ``READ_BATCH`` datagrams per call) and hands each one
    with the QUIC bit to ``receive(data, addr)``, any other to ``other(data, addr)`` (or
    drops it). With GRO on (``coalesce``), the kernel may join datagrams of one flow into one
    read and says where to cut (the segment size); the cuts give back the datagrams as sent.
    Given ``receive_many(datagrams, addr)``, the QUIC datagrams of such a read go to it in
    one call, in order: a few Python calls per read instead of per datagram.
    """

    def __init__(self, port, receive, other=None, coalesce: bool = True, receive_many=None):
        self.port = port
        self.receive = receive
        self.other = other
        self.receive_many = receive_many
        self.coalescing = False
        if coalesce:
            try:
                port.socket.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.coalescing = True
            except OSError:
                pass
        self._buffer = bytearray(65536)
        self._view = memoryview(self._buffer)
        self._ancillary_size = socket.CMSG_SPACE(4)
        #: datagrams read and syscalls used (diagnostics: the coalescing achieved)
        self.datagrams = self.syscalls = 0

    def __call__(self) -> None:
        sock = self.port.socket
        receive, other = self.receive, self.other
        if not self.coalescing:
            recvfrom = sock.recvfrom
            size = self.port.maxPacketSize
            for _ in range(READ_BATCH):
                self.syscalls += 1
                try:
                    data, addr = recvfrom(size)
                except (BlockingIOError, InterruptedError, ConnectionRefusedError):
                    return  # nothing left; or an ICMP error for something we sent
                self.datagrams += 1
                self._dispatch(data, addr[:2], receive, other)
            return
        recvmsg_into = sock.recvmsg_into
        buffers = [self._buffer]
        view = self._view
        ancillary_size = self._ancillary_size
        read = 0
        while read < READ_BATCH:
            self.syscalls += 1
            try:
                size, ancillary, _, addr = recvmsg_into(buffers, ancillary_size)
            except (BlockingIOError, InterruptedError, ConnectionRefusedError):
                self.datagrams += read
                return
            addr = addr[:2]  # IPv6: drop flow info and scope id, as Twisted does
            segment = size
            for level, kind, value in ancillary:
                if level == SOL_UDP and kind == UDP_GRO:
                    segment = int.from_bytes(value[:4], sys.byteorder) or size
            if segment >= size:
                read += 1
                self._dispatch(bytes(view[:size]), addr, receive, other)
                continue
            if self.receive_many is None:
                for start in range(0, size, segment):
                    read += 1
                    self._dispatch(bytes(view[start:min(start + segment, size)]), addr,
                                   receive, other)
                continue
            datagrams = [bytes(view[start:min(start + segment, size)])
                         for start in range(0, size, segment)]
            read += len(datagrams)
            if not all(data and data[0] & 0x40 for data in datagrams):
                for data in datagrams:  # not all QUIC: one by one, each to its receiver
                    self._dispatch(data, addr, receive, other)
                continue
            try:
                self.receive_many(datagrams, addr)
            except Exception:
                log.failure("datagrams from {addr} failed", addr=addr)
        self.datagrams += read

    @staticmethod
    def _dispatch(data: bytes, addr, receive, other) -> None:
        try:
            if data and data[0] & 0x40:
                receive(data, addr)
            elif other is not None:
                other(data, addr)
        except Exception:
            log.failure("datagram from {addr} failed", addr=addr)


def set_socket_buffers(sock, size: int) -> tuple[int, int]:
    """Ask for ``size``-byte receive and send buffers; returns what the kernel granted."""
    for option, forced in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, size)  # SO_{RCV,SND}BUFFORCE (Linux)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
    return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
