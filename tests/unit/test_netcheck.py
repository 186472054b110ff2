"""netcheck's conclusions for each RFC 4787 NAT behaviour, against a simulated NAT on a Clock."""

import json

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from peerit.nat import netcheck
from peerit.nat.stun import StunClient, StunResponder
from peerit.wire import stun

INSIDE = ("10.201.0.10", 5000)
PUBLIC_IP = "198.18.0.11"
TRACKER = ("198.18.0.1", 3478)
TRACKER_ALT = ("198.18.0.1", 3479)
EXTERNAL = ("198.18.0.2", 3478)
EXTERNAL_OTHER = ("198.18.0.3", 3479)
HOP = 0.005  # one-way delay of every simulated link


class Rfc5780Server:
    """An external STUN server with a second address, as coturn with two listening IPs."""

    def __init__(self, other_address=EXTERNAL_OTHER, advertise_other=True):
        self.other = other_address
        self.advertise_other = advertise_other

    def __call__(self, data, source, here):
        request = stun.parse(data)
        change_ip, change_port = stun.read_change_request(request)
        attributes = [stun.xor_mapped_address(source, request.transaction_id)]
        if self.advertise_other:
            attributes.append(stun.address_attribute(stun.OTHER_ADDRESS, self.other))
        reply = stun.build(stun.StunMessage(stun.BINDING_SUCCESS, request.transaction_id,
                                            tuple(attributes)))
        return [(reply, self.other if change_ip and change_port else here)]


class SimulatedNat:
    """One inside host behind a NAT with the given mapping and filtering behaviour.

    mapping: "EIM" (one public port for everything), "ADM" (one per remote address),
    "APDM" (one per remote address and port). filtering: "EIF", "ADF", "APDF".
    """

    def __init__(self, clock, mapping, filtering, servers, silent=()):
        self.clock = clock
        self.mapping = mapping
        self.filtering = filtering
        self.servers = servers  # (host, port) -> callable(data, source, here) -> [(data, src)]
        self.silent = set(silent)  # servers whose traffic is lost
        self.ports: dict[tuple, int] = {}
        self.contacted: dict[int, set] = {}
        self.client: StunClient | None = None
        self.sent: list[tuple] = []  # every destination, in order

    def outbound(self, data, destination):
        self.sent.append((destination, stun.read_change_request(stun.parse(data))))
        key = {"EIM": (), "ADM": (destination[0],), "APDM": destination}[self.mapping]
        port = self.ports.setdefault(key, 40000 + len(self.ports))
        self.contacted.setdefault(port, set()).add(destination)
        server = self.servers.get(destination)
        if server is None or destination in self.silent:
            return
        self.clock.callLater(HOP, self._deliver, server, data, (PUBLIC_IP, port), destination)

    def _deliver(self, server, data, source, destination):
        for reply, reply_source in server(data, source, destination):
            self.clock.callLater(HOP, self.inbound, reply, reply_source, source[1])

    def inbound(self, data, source, port):
        contacted = self.contacted.get(port, set())
        allowed = {
            "EIF": bool(contacted),
            "ADF": source[0] in {host for host, _ in contacted},
            "APDF": source in contacted,
        }[self.filtering]
        if allowed:
            self.client.datagram_received(data, source)


def tracker_servers(clock, alternate=True):
    responder = StunResponder(clock, alternate_port=alternate)

    def port(here, other):
        def answer(data, source, _):
            reply = responder.respond(data, source)
            if reply is None:
                return []
            return [(reply.datagram, other if reply.from_alternate_port else here)]
        return answer
    return {TRACKER: port(TRACKER, TRACKER_ALT), TRACKER_ALT: port(TRACKER_ALT, TRACKER)}


def run_until_idle(clock, limit=10000):
    """Advance the clock from one scheduled call to the next until nothing is left."""
    for _ in range(limit):
        calls = clock.getDelayedCalls()
        if not calls:
            return
        clock.advance(max(0.0, min(c.getTime() for c in calls) - clock.seconds()))
    raise AssertionError("the clock never went idle")


class NetcheckTestCase(SynchronousTestCase):
    def check(self, mapping, filtering, external=False, silent=(), alternate_support=True,
              local_hosts=None, **kwargs):
        clock = task.Clock()
        servers = tracker_servers(clock, alternate_support)
        if external:
            external_server = Rfc5780Server(**kwargs)
            servers[EXTERNAL] = external_server
            servers[EXTERNAL_OTHER] = external_server
        self.nat = SimulatedNat(clock, mapping, filtering, servers, silent)
        client = StunClient(clock, self.nat.outbound)
        self.nat.client = client
        d = netcheck.run_netcheck(client, TRACKER, TRACKER_ALT,
                                  EXTERNAL if external else None, tracker_rtt=0.042,
                                  local_port=INSIDE[1], local_hosts=local_hosts,
                                  measured_at=clock.seconds())
        run_until_idle(clock)
        report = self.successResultOf(d)
        self.assertEqual(clock.getDelayedCalls(), [])
        return report


class MappingTests(NetcheckTestCase):
    def test_port_restricted_cone(self):
        """Plain Linux masquerade: same port everywhere, answers only from where we sent."""
        report = self.check("EIM", "APDF")
        self.assertTrue(report.udp_works)
        self.assertEqual((report.public_host, report.public_port), (PUBLIC_IP, 40000))
        self.assertEqual(report.mapping, netcheck.ENDPOINT_INDEPENDENT)
        self.assertEqual(report.filtering, netcheck.ADDRESS_AND_PORT_DEPENDENT)
        self.assertEqual(report.nat_type, "port-restricted cone")

    def test_symmetric(self):
        report = self.check("APDM", "APDF")
        self.assertEqual(report.mapping, netcheck.ADDRESS_AND_PORT_DEPENDENT)
        self.assertEqual(report.nat_type, "symmetric")
        self.assertIn("symmetric NAT", report.describe())

    def test_address_dependent_mapping_needs_a_second_address(self):
        """Two tracker ports on one address look endpoint-independent; a second server refines."""
        self.assertEqual(self.check("ADM", "APDF").mapping, netcheck.ENDPOINT_INDEPENDENT)
        report = self.check("ADM", "APDF", external=True)
        self.assertEqual(report.mapping, netcheck.ADDRESS_DEPENDENT)
        self.assertEqual(report.nat_type, "symmetric")

    def test_external_server_confirms_endpoint_independent_mapping(self):
        report = self.check("EIM", "APDF", external=True)
        self.assertEqual(report.mapping, netcheck.ENDPOINT_INDEPENDENT)
        self.assertEqual([o.outcome for o in report.observations],
                         ["answered", "timed out", "answered", "answered"])

    def test_silent_alternate_port_leaves_mapping_unknown(self):
        report = self.check("EIM", "EIF", silent={TRACKER_ALT})
        self.assertTrue(report.udp_works)
        self.assertEqual(report.mapping, netcheck.UNKNOWN)
        self.assertIn("could not be measured", report.describe())


class FilteringTests(NetcheckTestCase):
    def test_full_cone_with_an_rfc5780_server(self):
        report = self.check("EIM", "EIF", external=True)
        self.assertEqual(report.filtering, netcheck.ENDPOINT_INDEPENDENT)
        self.assertEqual(report.nat_type, "full cone")
        self.assertEqual(report.direct_connections, "peers can reach you directly")

    def test_restricted_cone_with_an_rfc5780_server(self):
        report = self.check("EIM", "ADF", external=True)
        self.assertEqual(report.filtering, netcheck.ADDRESS_DEPENDENT)
        self.assertEqual(report.nat_type, "restricted cone")

    def test_tracker_alone_cannot_tell_full_cone_from_restricted(self):
        for filtering in ("EIF", "ADF"):
            report = self.check("EIM", filtering)
            self.assertEqual(report.filtering, netcheck.NOT_PORT_DEPENDENT)
            self.assertEqual(report.nat_type, "full cone or restricted cone")

    def test_server_without_other_address_gives_no_address_filtering_answer(self):
        report = self.check("EIM", "EIF", external=True, advertise_other=False)
        self.assertEqual(report.filtering, netcheck.NOT_PORT_DEPENDENT)

    def test_filtering_is_tested_before_the_alternate_port_is_contacted(self):
        """Otherwise the NAT would already hold a flow for the alternate port and let it in."""
        self.check("EIM", "APDF", external=True)
        destinations = [(d, flags) for d, flags in self.nat.sent]
        first_alternate = next(i for i, (d, _) in enumerate(destinations) if d == TRACKER_ALT)
        change_port = next(i for i, (_, flags) in enumerate(destinations) if flags[1])
        self.assertLess(change_port, first_alternate)
        self.assertNotIn(EXTERNAL_OTHER, [d for d, _ in destinations])

    def test_no_change_request_support_means_unknown(self):
        """A server that answers CHANGE-REQUEST with 420 tells nothing about filtering."""
        report = self.check("EIM", "APDF", alternate_support=False)
        self.assertEqual(report.filtering, netcheck.UNKNOWN)
        self.assertEqual(report.mapping, netcheck.ENDPOINT_INDEPENDENT)
        self.assertEqual(report.observations[1].outcome, "error")


class ReportTests(NetcheckTestCase):
    def test_udp_blocked(self):
        report = self.check("EIM", "APDF", external=True,
                            silent={TRACKER, TRACKER_ALT, EXTERNAL})
        self.assertFalse(report.udp_works)
        self.assertIsNone(report.public_host)
        self.assertEqual(report.mapping, netcheck.UNKNOWN)
        self.assertEqual(report.nat_type, "UDP blocked")
        self.assertIn("UDP: blocked", report.describe())

    def test_no_nat_when_the_public_address_is_ours(self):
        report = self.check("EIM", "EIF", local_hosts=[PUBLIC_IP, "127.0.0.1"])
        self.assertFalse(report.behind_nat)
        self.assertEqual(report.nat_type, "no NAT")

    def test_as_dict_is_json_and_complete(self):
        report = self.check("EIM", "APDF", local_hosts=[INSIDE[0]])
        data = json.loads(json.dumps(report.as_dict()))
        self.assertEqual(data["public_address"], f"{PUBLIC_IP}:40000")
        self.assertEqual(data["mapping"], "endpoint-independent")
        self.assertEqual(data["filtering"], "address-and-port-dependent")
        self.assertEqual(data["mapping_rfc4787"], "endpoint-independent mapping")
        self.assertTrue(data["mapping_plain"].startswith("your router keeps the same public"))
        self.assertEqual(data["tracker_rtt"], 0.042)
        self.assertAlmostEqual(data["stun_rtt"], 2 * HOP)
        self.assertIs(data["udp_works"], True)
        self.assertIs(data["behind_nat"], True)
        self.assertIs(data["port_preserved"], False)
        self.assertEqual(data["observations"][0]["server"], "198.18.0.1:3478")
        self.assertEqual(data["observations"][1]["purpose"], "filtering")

    def test_describe_gives_rfc_words_and_plain_words(self):
        text = self.check("EIM", "APDF").describe()
        self.assertIn("Public address: 198.18.0.11:40000", text)
        self.assertIn("endpoint-independent mapping (RFC 4787)", text)
        self.assertIn("keeps the same public port for every destination", text)
        self.assertIn("address-and-port-dependent filtering", text)
        self.assertIn("Tracker round trip: 42 ms", text)
