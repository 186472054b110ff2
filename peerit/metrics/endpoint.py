"""``--metrics tcp:PORT[:interface=ADDR]``: an HTTP child service serving ``/metrics``.

The page is rendered in the reactor thread (not ``prometheus_client.twisted.MetricsResource``,
which runs the WSGI app in the thread pool): the collectors read the tracker's and daemon's
live state, which only the reactor thread may touch. Connections from anything but loopback
are closed at accept unless their address is in an allowed network (``--metrics-allow``), so
binding to a public interface by mistake does not publish a node's figures.
"""

import ipaddress

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from twisted.application import service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from peerit.errors import UsageError

log = Logger(namespace="peerit.metrics")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def is_loopback_interface(interface: str) -> bool:
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def parse_networks(specs: list[str]) -> tuple[Network, ...]:
    """``--metrics-allow`` values: addresses or networks (``10.0.0.5``, ``10.0.0.0/24``)."""
    networks = []
    for spec in specs:
        try:
            networks.append(ipaddress.ip_network(spec, strict=False))
        except ValueError:
            raise UsageError(f"bad --metrics-allow {spec!r}: expected an address or a "
                             f"network such as 10.0.0.0/24") from None
    return tuple(networks)


def client_allowed(host: str, allowed: tuple[Network, ...] = ()) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False  # a UNIX socket or something else we cannot place: refuse
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or any(address in network for network in allowed)


class MetricsPage(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry):
        super().__init__()
        self.registry = registry

    def render_GET(self, request):
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)


class MetricsSite(Site):
    """``/metrics`` only; connections from outside ``allowed`` (and loopback) refused."""

    def __init__(self, registry: CollectorRegistry, allowed: tuple[Network, ...] = ()):
        root = Resource()
        root.putChild(b"metrics", MetricsPage(registry))
        super().__init__(root)
        self.allowed = allowed
        self.refused = 0

    def buildProtocol(self, addr):
        if not client_allowed(getattr(addr, "host", ""), self.allowed):
            self.refused += 1
            log.warn("metrics: refused a connection from {host} (not loopback or an "
                     "allowed network)", host=getattr(addr, "host", "?"))
            return None
        return super().buildProtocol(addr)

    def log(self, request):
        pass  # one access line per scrape every few seconds is noise


class MetricsService(service.Service):
    """Listens on ``description`` (from :func:`peerit.endpoints.metrics_description`) and
    serves ``registry``."""

    name = "peerit-metrics"

    def __init__(self, reactor, description: str, registry: CollectorRegistry,
                 allowed: tuple[Network, ...] = ()):
        self.reactor = reactor
        self.description = description
        self.site = MetricsSite(registry, allowed)
        self.port = None

    def privilegedStartService(self):
        super().privilegedStartService()
        self._listen()

    def startService(self):
        super().startService()
        if self.port is None:
            self._listen()
        bound = self.port.getHost()
        log.info("serving Prometheus metrics on http://{host}:{port}/metrics",
                 host=bound.host, port=bound.port)

    def _listen(self):
        results = []
        serverFromString(self.reactor, self.description).listen(self.site).addBoth(
            results.append)
        if not results:
            raise RuntimeError(f"listening on {self.description} did not complete at once")
        if not hasattr(results[0], "getHost"):
            results[0].raiseException()
        self.port = results[0]

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
