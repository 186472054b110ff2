"""A small stand-alone STUN tool over the daemon's own UDP code, for the NAT lab and debugging.

Each command opens one socket with :class:`peerit.nat.udp.UdpMux`, does one job, prints
JSON lines on stdout and exits; every wait is bounded.

- ``netcheck --tracker HOST:PORT --alt-port PORT [--external HOST:PORT]``: the full
  :func:`peerit.nat.netcheck.run_netcheck`, printed as one JSON object (``as_dict``).
- ``binding SERVER [--contact HOST:PORT] [--listen SECONDS]``: a datagram to each contact
  (opening NAT flows), then one Binding request; prints
  ``{"mapped": "HOST:PORT"}``; then, with ``--listen``, prints every peer-it probe datagram
  that arrives (``{"received": ..., "from": ...}``) until the time is up.
- ``send TARGET [--count N] [--payload TEXT] [--interval S] [--from NAME=HOST:PORT]``:
  N probe-marked datagrams, 50 ms apart unless told otherwise, from each ``--from`` socket
  (its NAME as payload) or from ``--bind``/``--port``.

Used as ``python -m peerit.nat.netcheck_probe COMMAND ...`` inside a lab namespace.
"""

import argparse
import json
import sys

from twisted.internet import defer, task

from peerit.addresses import format_host_port, parse_host_port
from peerit.errors import PeeritError
from peerit.nat.netcheck import run_netcheck
from peerit.nat.stun import StunClient
from peerit.nat.udp import PROBE_MAGIC, DatagramKind, UdpMux


def _print(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def _open(reactor, args) -> tuple[UdpMux, StunClient]:
    mux = UdpMux(reactor)
    reactor.listenUDP(args.port, mux, interface=args.bind)
    client = StunClient(reactor, mux.send, software="peer-it netcheck_probe")
    mux.set_handler(DatagramKind.STUN, client.datagram_received)
    return mux, client


async def _netcheck(reactor, args) -> None:
    mux, client = _open(reactor, args)
    tracker = parse_host_port(args.tracker)
    alternate = (tracker[0], args.alt_port) if args.alt_port else None
    external = parse_host_port(args.external) if args.external else None
    report = await run_netcheck(client, tracker, alternate, external,
                                local_port=mux.local_port, measured_at=reactor.seconds())
    _print(report.as_dict())
    if args.describe:
        sys.stderr.write(report.describe() + "\n")


async def _binding(reactor, args) -> None:
    mux, client = _open(reactor, args)

    def received(data: bytes, addr) -> None:
        _print({"received": data[len(PROBE_MAGIC):].decode("utf-8", "replace"),
                "from": format_host_port(*addr[:2])})

    mux.set_handler(DatagramKind.PROBE, received)
    for contact in args.contact:
        # Opens a NAT flow toward that endpoint before the Binding (filtering tests).
        mux.send(PROBE_MAGIC + b"contact", parse_host_port(contact))
    mapped = await client.binding(parse_host_port(args.server))
    _print({"mapped": format_host_port(*mapped), "local_port": mux.local_port})
    if args.listen:
        await task.deferLater(reactor, args.listen, lambda: None)
    _print({"done": True})


async def _send(reactor, args) -> None:
    target = parse_host_port(args.target)
    if args.sources:
        # One process, several sockets: each source sends its own name as the payload.
        sources = []
        for spec in args.sources:
            name, _, where = spec.partition("=")
            host, port = parse_host_port(where)
            mux = UdpMux(reactor)
            reactor.listenUDP(port, mux, interface=host)
            sources.append((name, mux))
    else:
        sources = [(args.payload, _open(reactor, args)[0])]
    for _ in range(args.count):
        for payload, mux in sources:
            mux.send(PROBE_MAGIC + payload.encode("utf-8"), target)
        await task.deferLater(reactor, args.interval, lambda: None)
    for payload, mux in sources:
        _print({"sent": args.count, "payload": payload, "to": format_host_port(*target),
                "local_port": mux.local_port})


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv``, run one command and exit (0, or 1 after printing an error record)."""
    parser = argparse.ArgumentParser(prog="netcheck_probe", description=__doc__.split("\n")[0])
    parser.add_argument("--bind", default="0.0.0.0", help="local address of the socket")
    parser.add_argument("--port", type=int, default=0, help="local port (0: any)")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("netcheck")
    check.add_argument("--tracker", required=True, help="tracker STUN HOST:PORT")
    check.add_argument("--alt-port", type=int, default=0, help="tracker's second STUN port")
    check.add_argument("--external", help="a standard STUN server HOST:PORT")
    check.add_argument("--describe", action="store_true", help="also describe it on stderr")
    binding = commands.add_parser("binding")
    binding.add_argument("server")
    binding.add_argument("--listen", type=float, default=0.0)
    binding.add_argument("--contact", action="append", default=[],
                         help="send one datagram to this HOST:PORT first (repeatable)")
    send = commands.add_parser("send")
    send.add_argument("target")
    send.add_argument("--count", type=int, default=5)
    send.add_argument("--payload", default="hello")
    send.add_argument("--interval", type=float, default=0.05, help="seconds between datagrams")
    send.add_argument("--from", dest="sources", action="append", default=[],
                      metavar="NAME=HOST:PORT",
                      help="send from this address too, with NAME as the payload (repeatable)")
    args = parser.parse_args(argv)
    if args.command == "binding" and not 0 <= args.listen <= 120:
        parser.error("--listen must be 0-120 seconds")
    if args.command == "send" and not 0 < args.count <= 1000:
        parser.error("--count must be 1-1000")
    if args.command == "send" and not 0.001 <= args.interval <= 10:
        parser.error("--interval must be 0.001-10 seconds")
    job = {"netcheck": _netcheck, "binding": _binding, "send": _send}[args.command]

    async def run(reactor):
        try:
            await job(reactor, args)
        except PeeritError as e:
            _print({"error": str(e), "kind": type(e).__name__})
            raise SystemExit(1)

    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
