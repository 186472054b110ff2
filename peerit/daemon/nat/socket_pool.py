"""The daemon's UDP sockets: the main one, and the extra ones of the birthday technique.

Each socket is a small :class:`~peerit.nat.udp.UdpMux` with its own
:class:`~peerit.nat.quic.QuicEndpoint`, and is what a punch attempt sees as a socket
(:class:`~peerit.nat.punch.ISocketHandle`). The hard side of a punch opens extra sockets
(at most :data:`MAX_EXTRA_SOCKETS` at once, over every attempt); the attempt closes all but
the winner, and the winner is closed once no QUIC link or armed accept uses it any more
(checked every :data:`SWEEP_INTERVAL`).
"""

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime

from peerit.errors import PeeritError
from peerit.nat import punch
from peerit.nat.quic import QuicEndpoint, QuicSettings
from peerit.nat.udp import DatagramKind, UdpMux

Address = tuple[str, int]

MAX_EXTRA_SOCKETS = 512  # birthday sockets open at once, over every attempt
SWEEP_INTERVAL = 5.0


class UdpSocket:
    """One UDP socket of ours: a mux, its QUIC endpoint, and the punch's view of it
    (:class:`~peerit.nat.punch.ISocketHandle`). The main socket and every birthday socket."""

    def __init__(self, pool: "SocketPool", main: bool):
        self.pool = pool
        self.main = main
        self.mux = UdpMux(pool.clock)
        self.endpoint = QuicEndpoint(pool.identity, self.mux.send, pool.clock,
                                     pool.quic_settings, send_many=self.mux.send_many)
        self.port = None
        self.closed = False
        self.busy = 0  # QUIC connects / armed accepts in progress on this socket
        self.kept = False  # a birthday socket that became a punched path
        self.mux.set_handler(DatagramKind.PROBE, self._probe_received)
        self.mux.set_handler(DatagramKind.QUIC, self.endpoint.datagram_received)

    def listening(self, port) -> None:
        self.port = port
        self.endpoint.host = port.getHost()

    @property
    def local_port(self) -> int | None:
        return self.mux.local_port

    def _probe_received(self, data: bytes, addr) -> None:
        self.pool.coordinator.datagram_received(self, data, addr)

    # ISocketHandle
    def send(self, data: bytes, addr: Address) -> None:
        self.mux.send(data, addr)

    def close(self) -> None:
        """Birthday sockets only: the punch closes the extra sockets it does not keep. The
        main socket lives as long as the pool (:meth:`SocketPool.close_all`)."""
        if not self.main:
            self.shutdown()

    def shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.endpoint.close()
        if self.port is not None:
            self.port.stopListening()
        self.pool.extra.discard(self)

    def __repr__(self):
        return f"<UdpSocket {'main' if self.main else 'extra'} port {self.local_port}>"


class SocketPool:
    """Opens, counts and closes the daemon's UDP sockets. ``listen_udp(port, protocol,
    interface)`` is ``reactor.listenUDP``; probes arriving on any socket go to
    ``coordinator`` (the punch attempts')."""

    def __init__(self, clock: IReactorTime, identity, quic_settings: QuicSettings,
                 coordinator: punch.PunchCoordinator, listen_udp, interface: str = ""):
        self.clock = clock
        self.identity = identity
        self.quic_settings = quic_settings
        self.coordinator = coordinator
        self._listen_udp = listen_udp
        self._interface = interface
        self.main: UdpSocket | None = None
        self.extra: set[UdpSocket] = set()
        self._sweep: task.LoopingCall | None = None

    def open_main(self, port: int) -> UdpSocket:
        """The daemon's one long-lived socket (raises ``PeeritError`` if it cannot open)."""
        main = UdpSocket(self, main=True)
        try:
            listening = self._listen_udp(port, main.mux, interface=self._interface)
        except Exception as e:
            raise PeeritError(f"cannot open UDP port {port}: {e}") from None
        main.listening(listening)
        self.main = main
        return main

    def open_extra(self) -> UdpSocket:
        """A birthday socket, within :data:`MAX_EXTRA_SOCKETS`."""
        if len(self.extra) >= MAX_EXTRA_SOCKETS:
            raise OSError(f"{MAX_EXTRA_SOCKETS} extra UDP sockets already open")
        return self.open()

    def open(self) -> UdpSocket:
        """A fresh socket on any port (a birthday socket, or a netcheck's probe socket)."""
        sock = UdpSocket(self, main=False)
        port = self._listen_udp(0, sock.mux, interface=self._interface)
        sock.listening(port)
        self.extra.add(sock)
        return sock

    def watch(self, sock: UdpSocket) -> None:
        """A birthday socket that won a punch is ours to close once no QUIC link or armed
        accept uses it (the attempt closed the others)."""
        if sock.main or sock.closed:
            return
        sock.kept = True
        if sock.busy == 0 and not sock.endpoint.links():
            sock.shutdown()
            return
        if self._sweep is None:
            self._sweep = task.LoopingCall(self._sweep_extra)
            self._sweep.clock = self.clock
            self._sweep.start(SWEEP_INTERVAL, now=False)

    def _sweep_extra(self) -> None:
        for sock in list(self.extra):
            if sock.kept and not sock.busy and not sock.endpoint.links():
                sock.shutdown()
        if not any(sock.kept for sock in self.extra) and self._sweep is not None:
            self._sweep.stop()
            self._sweep = None

    def stop_sweep(self) -> None:
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()
        self._sweep = None

    def close_all(self) -> None:
        for sock in list(self.extra):
            sock.shutdown()
        if self.main is not None:
            self.main.shutdown()
