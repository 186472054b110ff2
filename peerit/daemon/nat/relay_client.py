"""The daemon's side of the tracker's relay: a peer link spliced through the tracker, still TLS.

The relay (docs/nat-protocol.md) is plain TCP on the tracker's host, or on the host its
``RelayOffer`` names (:func:`relay_address`). Each of the two peers
connects, sends :data:`RELAY_PREAMBLE` and the one-time token from its ``RelayOffer``, and the
relay splices the two connections once both are there. The peers' own TLS then runs end to end
inside the splice, so the relay sees only ciphertext and cannot pose as either peer: the
initiator is the TLS client pinning the other's peer id, the other side the TLS server that
requires a client certificate (the peer id is read from it, as on a direct inbound link). The
peer protocol above is unchanged; its link reports ``path="relay"``.

Nothing waits forever: the TCP connect is bounded by ``connect_tcp``'s timeout, and once the
connection is up the ``PeerLink``'s own handshake timeout bounds the wait for the other side
(the relay itself gives up on a lone peer after 30 s).
"""

from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory

from peerit.daemon.connector import link_attempt
from peerit.identity import Identity
from peerit.tls import DirectTLSFactory, IdentityServerTLS, PinnedClientTLS
from peerit.wire.relay import RELAY_HELLO_MAGIC as RELAY_PREAMBLE, relay_hello  # noqa: F401
from peerit.wire.tracker import RELAY_TOKEN_SIZE as TOKEN_SIZE  # noqa: F401 (for fakes)

# connect_tcp(host, port, factory) -> Deferred[protocol]; cancelling it aborts the connect.
ConnectTCP = Callable[[str, int, Factory], Deferred]


def relay_address(offer, tracker_host: str) -> tuple[str, int]:
    """Where to meet for ``offer``: the host it names, else the host of the tracker it came
    from (a single-host tracker names none). Whoever answers there sees only the peers' TLS,
    which pins the other peer's id: a wrong host can fail the link, not pose as the peer."""
    return (offer.host or tracker_host, offer.port)


class _RelayPreamble(Protocol):
    """Writes the relay hello on connect, then is a transparent pipe to ``inner`` (the TLS
    protocol, whose transport is the TCP connection itself)."""

    def __init__(self, hello: bytes, inner: Protocol):
        self._hello = hello
        self.inner = inner

    def makeConnection(self, transport):
        self.transport = transport
        self.connected = 1
        transport.write(self._hello)
        self.inner.makeConnection(transport)

    def dataReceived(self, data):
        self.inner.dataReceived(data)

    def connectionLost(self, reason):
        self.connected = 0
        self.inner.connectionLost(reason)


class _RelayFactory(Factory):
    """Builds the TLS-wrapped protocol behind a relay hello."""

    noisy = False

    def __init__(self, hello: bytes, tls_factory: TLSMemoryBIOFactory):
        self._hello = hello
        self._tls_factory = tls_factory

    def buildProtocol(self, addr):
        inner = self._tls_factory.buildProtocol(addr)
        if inner is None:
            return None
        return _RelayPreamble(self._hello, inner)


def relay_factory(identity: Identity, token: bytes, wrapped: Factory, *,
                  initiator: bool, their_peer_id: bytes, clock=None) -> Factory:
    """The client factory for one relay connection: hello, then TLS in the right role around
    ``wrapped`` (whose protocol is the peer link)."""
    if initiator:
        creator = PinnedClientTLS(identity, their_peer_id)
    else:
        creator = IdentityServerTLS(identity)
    return _RelayFactory(relay_hello(token),
                         DirectTLSFactory(creator, initiator, wrapped, clock=clock))


def dial_through_relay(connect_tcp: ConnectTCP, host: str, port: int, token: bytes,
                       identity: Identity, their_peer_id: bytes, make_link,
                       clock=None) -> Deferred:
    """Initiator: a Deferred firing with the ready (handshaken) peer link over the relay.

    ``make_link(on_ready, on_failed)`` builds the dialing ``PeerLink`` (``path="relay"``).
    Fails with ``NoPath`` when the connect fails or the link closes before it is ready;
    cancelling it aborts whatever stage it is at.
    """
    def connect(factory):
        return connect_tcp(host, port, relay_factory(
            identity, token, factory, initiator=True, their_peer_id=their_peer_id,
            clock=clock))
    return link_attempt(connect, make_link)


def accept_through_relay(connect_tcp: ConnectTCP, host: str, port: int, token: bytes,
                         identity: Identity, inbound_link: Callable[[], Protocol],
                         clock=None) -> Deferred:
    """Acceptor: connect and serve TLS; ``inbound_link()`` builds the accepting ``PeerLink``,
    which authorizes the peer and joins its swarm by itself once the handshake is done.

    The Deferred fires with that link once the TCP connection is up (or fails as the connect
    does); the link's own handshake timeout bounds the rest.
    """
    links = []

    def build():
        link = inbound_link()
        links.append(link)
        return link

    factory = Factory()
    factory.buildProtocol = lambda addr: build()
    d = connect_tcp(host, port, relay_factory(identity, token, factory, initiator=False,
                                              their_peer_id=b"", clock=clock))
    return d.addCallback(lambda _: links[0] if links else None)
