"""The tracker's STUN service: two UDP ports answering Binding requests with one responder.

The second port lets a client measure its NAT: a different mapped port from each means an
endpoint-dependent ("symmetric") mapping, and an answer sent from the second port to a
request made to the first (CHANGE-REQUEST, port flag) shows whether the NAT filters by port.
The logic, rate limits included, is :class:`peerit.nat.stun.StunResponder`; this is the
socket glue and the ``udp:PORT[:interface=ADDR]`` option parsing.

Run alone (the NAT lab does): ``python -m peerit.tracker.stun_server --stun udp:3478 --stun-alt-port 3479``.
"""

import sys

from twisted.application import internet, service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python import usage

from peerit.endpoints import DEFAULT_STUN_ALT_PORT, DEFAULT_STUN_PORT, parse_udp_endpoint
from peerit.errors import UsageError
from peerit.nat.stun import StunResponder



class StunServerProtocol(DatagramProtocol):
    """One listening port. ``partner`` is the other port's protocol, used for CHANGE-REQUEST."""

    log = Logger()

    def __init__(self, responder: StunResponder):
        self.responder = responder
        self.partner: "StunServerProtocol | None" = None

    def startProtocol(self) -> None:
        host = self.transport.getHost()
        self.log.info("STUN listening on udp {host}:{port}", host=host.host, port=host.port)

    def datagramReceived(self, datagram: bytes, addr) -> None:
        reply = self.responder.respond(datagram, addr[:2])
        if reply is None:
            return
        out = self
        if reply.from_alternate_port:
            out = self.partner
            if out is None or out.transport is None:
                return
        try:
            out.transport.write(reply.datagram, addr)
        except OSError as e:
            self.log.debug("STUN reply to {addr} failed: {error}", addr=addr, error=e)


def stun_protocols(clock: IReactorTime, with_alternate: bool) -> list[StunServerProtocol]:
    """The primary port's protocol and, when asked, the alternate's, sharing one responder
    (so one rate limit covers both ports)."""
    responder = StunResponder(clock, alternate_port=with_alternate)
    primary = StunServerProtocol(responder)
    if not with_alternate:
        return [primary]
    alternate = StunServerProtocol(responder)
    primary.partner, alternate.partner = alternate, primary
    return [primary, alternate]


def stun_services(endpoint_spec_primary: str, secondary_port: int | None,
                  clock: IReactorTime | None = None) -> list[service.IService]:
    """UDP services for the tracker: the primary endpoint and, unless ``secondary_port`` is
    None or 0, the same interface on ``secondary_port``."""
    if clock is None:
        from twisted.internet import reactor as clock
    port, interface = parse_udp_endpoint(endpoint_spec_primary, "STUN endpoint")
    protocols = stun_protocols(clock, bool(secondary_port))
    services = [internet.UDPServer(port, protocols[0], interface=interface)]
    if secondary_port:
        if secondary_port == port:
            raise UsageError("--stun-alt-port must differ from the --stun port")
        services.append(internet.UDPServer(secondary_port, protocols[1], interface=interface))
    return services


class Options(usage.Options):
    optParameters = [
        ["stun", None, f"udp:{DEFAULT_STUN_PORT}", "UDP endpoint answering STUN Binding requests"],
        ["stun-alt-port", None, str(DEFAULT_STUN_ALT_PORT),
         "second port on the same address (0 for none), for NAT behaviour tests"],
    ]


def main(argv: list[str] | None = None) -> None:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    options = Options()
    try:
        options.parseOptions(argv if argv is not None else sys.argv[1:])
        top = service.MultiService()
        for child in stun_services(options["stun"], int(options["stun-alt-port"]), reactor):
            child.setServiceParent(top)
    except (usage.UsageError, UsageError, ValueError) as e:
        sys.exit(f"stun_server: {e}")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
