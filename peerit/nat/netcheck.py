"""What the NAT in front of this daemon does, measured with STUN (RFC 4787 / RFC 5780 ideas).

:func:`run_netcheck` drives a :class:`peerit.nat.stun.StunClient` (no sockets here) against
the tracker's two STUN ports and, optionally, an external STUN server, and returns a
:class:`NetcheckReport`:

- **UDP works** when any Binding request is answered.
- **Mapping**: the public address the primary and alternate tracker ports see. Different
  ports for two destinations that differ only in port mean an address-and-port-dependent
  ("symmetric") mapping; the same port means endpoint-independent, which an external server
  on another address confirms or refines to address-dependent.
- **Filtering**: a request to the primary port asking for the answer from the alternate port
  (CHANGE-REQUEST, port flag). If it arrives, the NAT let in a packet from a port we never
  sent to: filtering is endpoint-independent or address-dependent. If it does not while plain
  requests are answered, filtering is address-and-port-dependent. An external server with a
  second address (RFC 5780, as coturn with two listening addresses) can tell the two apart by
  answering from its other address. Anything else is ``unknown``.

Order matters: the filtering test runs before anything is sent to the alternate port (or the
external server's other address), since once we have sent there the NAT holds a flow for it
and lets its answers in. For the same reason a second netcheck within the NAT's UDP timeout
(30 s on Linux) may read a port-restricted NAT as looser: the report says when it was measured.
"""

from dataclasses import asdict, dataclass, field

from twisted.internet import defer

from peerit.addresses import format_host_port
from peerit.errors import MalformedMessage, TimedOut
from peerit.nat.stun import BindingResult, StunClient, StunErrorResponse

Address = tuple[str, int]

ENDPOINT_INDEPENDENT = "endpoint-independent"
ADDRESS_DEPENDENT = "address-dependent"
ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
ENDPOINT_DEPENDENT = "endpoint-dependent"  # mapping varies, but not measured which way
NOT_PORT_DEPENDENT = "endpoint-independent-or-address-dependent"
UNKNOWN = "unknown"

_MAPPING_PLAIN = {
    ENDPOINT_INDEPENDENT: (
        "your router keeps the same public port for every destination: direct connections "
        "will work with most peers"),
    ADDRESS_DEPENDENT: (
        "symmetric NAT: your router picks a new public port for each address you talk to, so "
        "peers cannot know it in advance; direct connections work only with peers behind an "
        "easy NAT, otherwise traffic goes through the tracker's relay"),
    ADDRESS_AND_PORT_DEPENDENT: (
        "symmetric NAT: your router picks a new public port for each destination, so peers "
        "cannot know it in advance; direct connections work only with peers behind an easy "
        "NAT, otherwise traffic goes through the tracker's relay"),
    ENDPOINT_DEPENDENT: (
        "symmetric NAT: your router picks a new public port for each destination; direct "
        "connections work only with peers behind an easy NAT, otherwise traffic is relayed"),
    UNKNOWN: "could not be measured (the second STUN port did not answer)",
}

_FILTERING_PLAIN = {
    ENDPOINT_INDEPENDENT: (
        "once you have sent from your public port, anyone can reach you on it: peers can "
        "connect to you directly"),
    ADDRESS_DEPENDENT: (
        "only hosts you have sent to can reach you: peers get through when both sides send "
        "at the same time (hole punching, which peer-it does)"),
    NOT_PORT_DEPENDENT: (
        "an answer from a port you had not contacted got through: your router does not "
        "filter by port, and hole punching works"),
    ADDRESS_AND_PORT_DEPENDENT: (
        "only the exact address and port you sent to can answer: peers get through when "
        "both sides send at the same time (hole punching, which peer-it does)"),
    UNKNOWN: "could not be measured",
}

_RFC4787_FILTERING = {
    ENDPOINT_INDEPENDENT: "endpoint-independent filtering",
    ADDRESS_DEPENDENT: "address-dependent filtering",
    NOT_PORT_DEPENDENT: "endpoint-independent or address-dependent filtering",
    ADDRESS_AND_PORT_DEPENDENT: "address-and-port-dependent filtering",
    UNKNOWN: "filtering unknown",
}


@dataclass(frozen=True)
class Observation:
    """One Binding transaction netcheck made and what came of it."""
    purpose: str  # "primary", "filtering", "alternate", "external", "external-filtering"
    server: Address
    change_ip: bool
    change_port: bool
    outcome: str  # "answered", "timed out", "error", "malformed"
    mapped: Address | None = None
    responder: Address | None = None
    rtt: float | None = None
    detail: str | None = None
    other_address: Address | None = None  # RFC 5780 OTHER-ADDRESS the server advertised


@dataclass(frozen=True)
class NetcheckReport:
    udp_works: bool
    public_host: str | None
    public_port: int | None
    mapping: str
    filtering: str
    tracker_rtt: float | None  # seconds, as measured by the tracker session (passed in)
    stun_rtt: float | None  # seconds, first answer from the tracker's STUN port
    local_port: int | None = None
    behind_nat: bool | None = None  # None when the local addresses were not given
    measured_at: float | None = None  # the clock's seconds() when the check started
    observations: tuple[Observation, ...] = field(default=())

    @property
    def port_preserved(self) -> bool | None:
        if self.local_port is None or self.public_port is None:
            return None
        return self.local_port == self.public_port

    @property
    def nat_type(self) -> str:
        """The classic (RFC 3489) name, for people who know NATs by those."""
        if not self.udp_works:
            return "UDP blocked"
        if self.behind_nat is False:
            return "no NAT"
        if self.mapping in (ADDRESS_DEPENDENT, ADDRESS_AND_PORT_DEPENDENT, ENDPOINT_DEPENDENT):
            return "symmetric"
        if self.mapping != ENDPOINT_INDEPENDENT:
            return UNKNOWN
        return {
            ENDPOINT_INDEPENDENT: "full cone",
            ADDRESS_DEPENDENT: "restricted cone",
            NOT_PORT_DEPENDENT: "full cone or restricted cone",
            ADDRESS_AND_PORT_DEPENDENT: "port-restricted cone",
        }.get(self.filtering, "cone (filtering unknown)")

    @property
    def direct_connections(self) -> str:
        """One line: what this means for reaching peers."""
        if not self.udp_works:
            return "UDP is blocked: peers are reached over TCP or through the tracker's relay"
        if self.behind_nat is False or self.nat_type == "full cone":
            return "peers can reach you directly"
        if self.mapping == ENDPOINT_INDEPENDENT:
            return "direct connections work with most peers (hole punching)"
        if self.mapping == UNKNOWN:
            return "unknown: the NAT's mapping could not be measured"
        return ("direct connections only with peers behind easy NATs; "
                "the rest go through the tracker's relay")

    def as_dict(self) -> dict:
        data = asdict(self)
        data["observations"] = [
            {**asdict(o),
             "server": _format(o.server), "mapped": _format(o.mapped),
             "responder": _format(o.responder), "other_address": _format(o.other_address)}
            for o in self.observations]
        data["public_address"] = (
            _format((self.public_host, self.public_port)) if self.public_host else None)
        data["port_preserved"] = self.port_preserved
        data["nat_type"] = self.nat_type
        data["mapping_rfc4787"] = f"{self.mapping} mapping"
        data["filtering_rfc4787"] = _RFC4787_FILTERING.get(self.filtering, self.filtering)
        data["mapping_plain"] = _MAPPING_PLAIN.get(self.mapping, "")
        data["filtering_plain"] = _FILTERING_PLAIN.get(self.filtering, "")
        data["direct_connections"] = self.direct_connections
        return data

    def describe(self) -> str:
        """Several lines for people: RFC 4787 terms, then what they mean."""
        lines = []
        if not self.udp_works:
            lines.append("UDP: blocked (no STUN server answered)")
            lines.append(f"  {self.direct_connections}")
        else:
            lines.append("UDP: works")
            public = _format((self.public_host, self.public_port))
            kept = {True: " (same port as the local socket)",
                    False: f" (local port {self.local_port})", None: ""}[self.port_preserved]
            lines.append(f"Public address: {public}{kept}")
            if self.behind_nat is False:
                lines.append("NAT: none (the public address is one of this host's)")
            lines.append(f"Mapping: {self.mapping} mapping (RFC 4787)")
            lines.append(f"  {_MAPPING_PLAIN.get(self.mapping, '')}")
            lines.append(f"Filtering: {_RFC4787_FILTERING.get(self.filtering, self.filtering)}"
                         " (RFC 4787)")
            lines.append(f"  {_FILTERING_PLAIN.get(self.filtering, '')}")
            lines.append(f"NAT type (classic name): {self.nat_type}")
            lines.append(f"Direct connections: {self.direct_connections}")
        if self.stun_rtt is not None:
            lines.append(f"STUN round trip: {self.stun_rtt * 1000:.0f} ms")
        if self.tracker_rtt is not None:
            lines.append(f"Tracker round trip: {self.tracker_rtt * 1000:.0f} ms")
        return "\n".join(lines)


def _format(address: Address | None) -> str | None:
    return None if address is None or address[0] is None else format_host_port(*address)


async def _query(client: StunClient, purpose: str, server: Address,
                 observations: list[Observation], change_ip: bool = False,
                 change_port: bool = False) -> BindingResult | None:
    try:
        result = await client.binding_details(server, change_ip=change_ip,
                                              change_port=change_port)
    except TimedOut as e:
        observations.append(Observation(purpose, server, change_ip, change_port,
                                         "timed out", detail=str(e)))
        return None
    except StunErrorResponse as e:
        observations.append(Observation(purpose, server, change_ip, change_port, "error",
                                        detail=str(e)))
        return None
    except MalformedMessage as e:
        observations.append(Observation(purpose, server, change_ip, change_port, "malformed",
                                        detail=str(e)))
        return None
    software = f"software: {result.software}" if result.software else None
    observations.append(Observation(purpose, server, change_ip, change_port, "answered",
                                    result.mapped, result.responder, result.rtt, software,
                                    result.other_address))
    return result


async def _netcheck(client: StunClient, tracker: Address, tracker_alternate: Address | None,
                    external: Address | None, tracker_rtt: float | None,
                    local_port: int | None, local_hosts: frozenset[str] | None,
                    measured_at: float | None) -> NetcheckReport:
    observations: list[Observation] = []

    primary = await _query(client, "primary", tracker, observations)

    filtering = UNKNOWN
    if primary is not None and tracker_alternate is not None:
        # Before anything goes to the alternate port (see the module docstring).
        changed = await _query(client, "filtering", tracker, observations, change_port=True)
        if changed is not None and changed.responder[1] != tracker[1]:
            filtering = NOT_PORT_DEPENDENT
        elif changed is None and observations[-1].outcome == "timed out":
            filtering = ADDRESS_AND_PORT_DEPENDENT
        # An error (no CHANGE-REQUEST support) or an answer from the same port proves nothing.

    alternate = None
    if tracker_alternate is not None:
        alternate = await _query(client, "alternate", tracker_alternate, observations)

    outside = None
    if external is not None:
        outside = await _query(client, "external", external, observations)
        other = outside.other_address if outside is not None else None
        if other is not None and other[0] != external[0] and filtering != \
                ADDRESS_AND_PORT_DEPENDENT:
            # RFC 5780 test II: an answer from an address we never sent to.
            changed = await _query(client, "external-filtering", external, observations,
                                   change_ip=True, change_port=True)
            if changed is not None and changed.responder[0] != external[0]:
                filtering = ENDPOINT_INDEPENDENT
            elif changed is None and observations[-1].outcome == "timed out" \
                    and filtering == NOT_PORT_DEPENDENT:
                filtering = ADDRESS_DEPENDENT

    mapping = UNKNOWN
    if primary is not None and alternate is not None:
        if primary.mapped != alternate.mapped:
            mapping = ADDRESS_AND_PORT_DEPENDENT
        elif outside is None or outside.mapped == primary.mapped:
            mapping = ENDPOINT_INDEPENDENT
        else:
            mapping = ADDRESS_DEPENDENT
    elif primary is not None and outside is not None:
        mapping = ENDPOINT_INDEPENDENT if primary.mapped == outside.mapped \
            else ENDPOINT_DEPENDENT

    first = primary or alternate or outside
    public = first.mapped if first is not None else (None, None)
    behind_nat = None
    if local_hosts is not None and first is not None:
        behind_nat = public[0] not in local_hosts
    return NetcheckReport(
        udp_works=first is not None,
        public_host=public[0], public_port=public[1],
        mapping=mapping if first is not None else UNKNOWN,
        filtering=filtering,
        tracker_rtt=tracker_rtt,
        stun_rtt=primary.rtt if primary is not None else None,
        local_port=local_port,
        behind_nat=behind_nat,
        measured_at=measured_at,
        observations=tuple(observations))


def run_netcheck(client: StunClient, tracker: Address, tracker_alternate: Address | None,
                 external: Address | None = None, tracker_rtt: float | None = None,
                 local_port: int | None = None, local_hosts=None,
                 measured_at: float | None = None) -> defer.Deferred:
    """Deferred firing with a :class:`NetcheckReport`; never fails for lack of answers.

    ``tracker`` and ``tracker_alternate`` are the tracker's STUN addresses (same host, two
    ports); ``external`` any standard STUN server (``--stun-server``). ``local_port`` is the
    UDP socket's port and ``local_hosts`` this host's addresses, used only to say whether the
    port was kept and whether there is a NAT at all. Requests run one after another: the
    filtering test depends on what was sent before it. Worst case (every server silent):
    one client timeout per server queried, about 9 s with the default 3 s timeout.
    """
    hosts = frozenset(local_hosts) if local_hosts is not None else None
    return defer.Deferred.fromCoroutine(_netcheck(
        client, tracker, tracker_alternate, external, tracker_rtt, local_port, hosts,
        measured_at))
