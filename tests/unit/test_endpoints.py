"""Endpoint strings (peerit.endpoints): one UDP parser and one ssl:->tcp: rewriter, both
honouring Twisted's escaped colons in IPv6 addresses."""

from twisted.trial.unittest import SynchronousTestCase

from peerit.endpoints import listen_parts, parse_udp_endpoint, tcp_description
from peerit.errors import UsageError


class UdpEndpointTests(SynchronousTestCase):
    def test_port_and_interface_in_every_spelling(self):
        self.assertEqual(parse_udp_endpoint("udp:0"), (0, ""))
        self.assertEqual(parse_udp_endpoint("4000"), (4000, ""))
        self.assertEqual(parse_udp_endpoint("udp:4000:interface=127.0.0.1"),
                         (4000, "127.0.0.1"))
        self.assertEqual(parse_udp_endpoint("udp:port=3478:interface=198.18.0.1"),
                         (3478, "198.18.0.1"))

    def test_stun_endpoint_forms(self):
        self.assertEqual(parse_udp_endpoint("udp:3478"), (3478, ""))
        self.assertEqual(parse_udp_endpoint("udp:port=3478:interface=\\:\\:1"), (3478, "::1"))

    def test_refuses_other_kinds_and_bad_ports(self):
        for spec in ("tcp:3478", "udp:", "udp:70000", "udp:abc", "udp:3478:backlog=5"):
            with self.assertRaises(UsageError):
                parse_udp_endpoint(spec)

    def test_an_escaped_ipv6_interface_is_unescaped(self):
        self.assertEqual(parse_udp_endpoint("udp:4000:interface=\\:\\:1"), (4000, "::1"))

    def test_bad_endpoints_name_the_option(self):
        for bad in ("tcp:4000", "udp:70000", "udp:", "udp:4000:interface=", "udp:x",
                    "udp:4000:colour=red"):
            with self.assertRaises(UsageError) as caught:
                parse_udp_endpoint(bad, "--udp")
            self.assertIn("--udp", str(caught.exception))


class TcpDescriptionTests(SynchronousTestCase):
    def test_ssl_is_read_as_tcp_under_peerits_tls(self):
        self.assertEqual(tcp_description("ssl:59000:privateKey=k.pem:interface=\\:\\:1"),
                         "tcp:59000:interface=\\:\\:1")
        self.assertEqual(tcp_description("tcp:0"), "tcp:0")

    def test_other_kinds_are_refused(self):
        for bad in ("unix:/tmp/x", "udp:59000", "tcp", ""):
            self.assertRaises(UsageError, tcp_description, bad)

    def test_listen_parts_reads_the_port_and_unescaped_interface(self):
        self.assertEqual(listen_parts("tcp:59000:interface=\\:\\:1"), (59000, "::1"))
        self.assertEqual(listen_parts("tcp:port=7:interface=10.0.0.1"), (7, "10.0.0.1"))
