"""The tracker wire format: exact bytes, round trips, hostile input, the peer-list fast path."""

import dataclasses

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from peerit.errors import FrameTooLarge, MalformedMessage
from peerit.wire import tracker as wire
from peerit.wire.framing import FrameDecoder, frame

H = bytes(range(32))               # an info-hash
P = bytes(range(32, 64))           # a peer id
PEER = wire.PeerInfo(P, True, 6881, 6882, "203.0.113.9", ("192.168.1.5", "fe80::1"))
A = bytes(range(64, 80))           # a punch attempt id
N = bytes(range(80, 112))          # a punch nonce
T = bytes(range(112, 144))         # a relay token

# Written out by hand from the layout documented in docs/tracker.md, not produced by the code.
GOLDEN = [
    (wire.KeepAlive(), "00"),
    (wire.Hello(6881, 6882, ("192.168.1.5",)),
     "01" "0001" "1ae1" "1ae2" "01" "04c0a80105"),
    (wire.Welcome(wire.Endpoint("203.0.113.9", 40000), 30000, P),
     "02" "04cb007109" "9c40" "00007530" + P.hex()),
    (wire.Announce(H, "completed", 0), "03" + H.hex() + "02" + "00" * 8),
    (wire.Announce(H, "stopped", 1024), "03" + H.hex() + "03" + "0000000000000400"),
    (wire.PeerListRequest(H, 50), "04" + H.hex() + "0032"),
    (wire.PeerList(H, (PEER,)),
     "05" + H.hex() + "0001" + P.hex() + "01" "1ae1" "1ae2" "04cb007109"
     "02" "04c0a80105" "10fe800000000000000000000000000001"),
    (wire.PeerJoined(H, PEER),
     "06" + H.hex() + P.hex() + "01" "1ae1" "1ae2" "04cb007109"
     "02" "04c0a80105" "10fe800000000000000000000000000001"),
    (wire.Ping(7), "07" "0000000000000007"),
    (wire.Pong(7), "08" "0000000000000007"),
    (wire.Error("rate_limited", "slow down", 4, H),
     "09" "0006" "04" + H.hex() + "09" + b"slow down".hex()),
    # NAT traversal (docs/nat-protocol.md)
    (wire.NatReport(wire.Endpoint("203.0.113.9", 40000), "independent", "address-and-port"),
     "0a" "04cb007109" "9c40" "01" "03"),
    (wire.NatReport(wire.Endpoint("2001:db8::1", 1), "dependent", "address"),
     "0a" "1020010db8000000000000000000000001" "0001" "02" "02"),
    (wire.StunInfo(3478, 3479, 59001), "0b" "0d96" "0d97" "e679"),
    (wire.StunInfo(3478), "0b" "0d96" "0000" "0000"),
    (wire.PunchRequest(H, P), "0c" + H.hex() + P.hex()),
    (wire.Punch(A, N, H, P, True,
                (wire.PunchCandidate("192.168.1.5", 6882, "lan"),
                 wire.PunchCandidate("203.0.113.9", 40000, "public")), "dependent"),
     "0d" + A.hex() + N.hex() + H.hex() + P.hex() + "01" "02"
     "04c0a80105" "1ae2" "00" "04cb007109" "9c40" "01" "02"),
    (wire.Punch(A, N, H, P, False, (), "unknown"),
     "0d" + A.hex() + N.hex() + H.hex() + P.hex() + "00" "00" "00"),
    (wire.RelayRequest(H, P), "0e" + H.hex() + P.hex()),
    (wire.RelayOffer(T, H, P, False, 59001), "0f" + T.hex() + H.hex() + P.hex() + "00" "e679"),
    # A relay on another host than the tracker's: its address, with no length, ends the offer.
    (wire.RelayOffer(T, H, P, True, 59002, "192.0.2.7"),
     "0f" + T.hex() + H.hex() + P.hex() + "01" "e67a" "c0000207"),
    (wire.RelayOffer(T, H, P, False, 1, "2001:db8::1"),
     "0f" + T.hex() + H.hex() + P.hex() + "00" "0001" "20010db8000000000000000000000001"),
    (wire.Error("peer_unavailable", "no", 12, H), "09" "000c" "0c" + H.hex() + "02" "6e6f"),
    (wire.Error("too_many_attempts", "", 12, H), "09" "000d" "0c" + H.hex() + "00"),
    (wire.Error("relay_unavailable", "", 14, H), "09" "000e" "0e" + H.hex() + "00"),
]

ip_addresses = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
ports = st.integers(0, 65535)
hashes = st.binary(min_size=32, max_size=32)
peer_infos = st.builds(
    wire.PeerInfo, hashes, st.booleans(), ports, ports, ip_addresses,
    st.lists(ip_addresses, max_size=wire.MAX_LAN_ADDRESSES).map(tuple))
endpoints = st.builds(wire.Endpoint, ip_addresses, ports)
candidates = st.builds(wire.PunchCandidate, ip_addresses, ports,
                       st.sampled_from(wire.CANDIDATE_KINDS))
all_messages = st.one_of(
    st.just(wire.KeepAlive()),
    st.builds(wire.Hello, ports, ports,
              st.lists(ip_addresses, max_size=wire.MAX_LAN_ADDRESSES).map(tuple),
              st.integers(0, 65535)),
    st.builds(wire.Welcome, st.builds(wire.Endpoint, ip_addresses, ports),
              st.integers(0, 2**32 - 1), hashes),
    st.builds(wire.Announce, hashes, st.sampled_from(["update", "started", "completed",
                                                       "stopped"]),
              st.integers(0, 2**64 - 1)),
    st.builds(wire.PeerListRequest, hashes, ports),
    st.builds(wire.PeerList, hashes, st.lists(peer_infos, max_size=5).map(tuple)),
    st.builds(wire.PeerJoined, hashes, peer_infos),
    st.builds(wire.Ping, st.integers(0, 2**64 - 1)),
    st.builds(wire.Pong, st.integers(0, 2**64 - 1)),
    st.builds(wire.Error, st.sampled_from(["malformed", "too_many_swarms", "internal",
                                           "peer_unavailable", "relay_unavailable"]),
              st.text(max_size=40), st.integers(0, 255), hashes),
    st.builds(wire.NatReport, endpoints, st.sampled_from(wire.MAPPINGS),
              st.sampled_from(wire.FILTERINGS)),
    st.builds(wire.StunInfo, ports, ports, ports),
    st.builds(wire.PunchRequest, hashes, hashes),
    st.builds(wire.Punch, st.binary(min_size=16, max_size=16), hashes, hashes, hashes,
              st.booleans(),
              st.lists(candidates, max_size=wire.MAX_PUNCH_CANDIDATES).map(tuple),
              st.sampled_from(wire.MAPPINGS)),
    st.builds(wire.RelayRequest, hashes, hashes),
    st.builds(wire.RelayOffer, hashes, hashes, hashes, st.booleans(), ports,
              st.one_of(st.just(""), ip_addresses)),
)


class GoldenVectorTests(SynchronousTestCase):
    def test_each_message_encodes_to_its_documented_bytes(self):
        for message, hex_bytes in GOLDEN:
            with self.subTest(message=type(message).__name__):
                self.assertEqual(wire.build(message).hex(), hex_bytes)

    def test_each_documented_vector_parses_back(self):
        for message, hex_bytes in GOLDEN:
            with self.subTest(message=type(message).__name__):
                self.assertEqual(wire.parse(bytes.fromhex(hex_bytes)), message)

    def test_opcodes_are_the_documented_ones(self):
        expected = {wire.KeepAlive: 0, wire.Hello: 1, wire.Welcome: 2, wire.Announce: 3,
                    wire.PeerListRequest: 4, wire.PeerList: 5, wire.PeerJoined: 6,
                    wire.Ping: 7, wire.Pong: 8, wire.Error: 9, wire.NatReport: 10,
                    wire.StunInfo: 11, wire.PunchRequest: 12, wire.Punch: 13,
                    wire.RelayRequest: 14, wire.RelayOffer: 15}
        self.assertEqual({t: wire.messages.opcode_of(t) for t in expected}, expected)


class RoundTripTests(SynchronousTestCase):
    @given(all_messages)
    def test_parse_of_build_is_identity(self, message):
        self.assertEqual(wire.parse(wire.build(message)), message)

    @settings(max_examples=40)
    @given(hashes, st.lists(peer_infos, max_size=6))
    def test_peer_list_fast_path_builds_the_same_bytes(self, info_hash, peers):
        """The tracker's cached-bytes peer list equals the generic encoding."""
        fast = wire.peer_list_body(info_hash, [wire.encode_peer_info(p) for p in peers])
        self.assertEqual(fast, wire.build(wire.PeerList(info_hash, tuple(peers))))

    @given(hashes, peer_infos)
    def test_peer_joined_fast_path_builds_the_same_bytes(self, info_hash, peer):
        fast = wire.peer_joined_body(info_hash, wire.encode_peer_info(peer))
        self.assertEqual(fast, wire.build(wire.PeerJoined(info_hash, peer)))

    def test_a_full_peer_list_fits_the_tracker_frame_limit(self):
        biggest = wire.PeerInfo(P, True, 65535, 65535, "2001:db8::1",
                                ("2001:db8::2",) * wire.MAX_LAN_ADDRESSES)
        body = wire.build(wire.PeerList(H, (biggest,) * wire.MAX_PEERS_PER_LIST))
        self.assertLessEqual(len(body), wire.MAX_TRACKER_FRAME_SIZE)

    def test_a_full_hello_fits_the_daemon_frame_limit(self):
        body = wire.build(wire.Hello(1, 2, ("2001:db8::2",) * wire.MAX_LAN_ADDRESSES))
        self.assertLessEqual(len(body), wire.MAX_DAEMON_FRAME_SIZE)


class HostileInputTests(SynchronousTestCase):
    @given(st.binary(max_size=300))
    def test_arbitrary_bytes_raise_only_malformed(self, data):
        try:
            wire.parse(data)
        except MalformedMessage:
            pass

    @given(all_messages, st.data())
    def test_truncated_or_extended_messages_are_malformed(self, message, data):
        body = wire.build(message)
        cut = data.draw(st.integers(0, len(body) - 1))
        # A RelayOffer's trailing host is optional ("" names the offering tracker's host):
        # cut exactly before it, the bytes are that other, valid offer.
        hostless = (dataclasses.replace(message, host="")
                    if isinstance(message, wire.RelayOffer) and message.host else None)
        for bad in (body[:cut], body + b"\x00"):
            if bad == b"":
                continue
            if hostless is not None and bad == wire.build(hostless):
                self.assertEqual(wire.parse(bad), hostless)
                continue
            with self.assertRaises(MalformedMessage):
                wire.parse(bad)

    def test_unknown_announce_event_is_malformed(self):
        with self.assertRaises(MalformedMessage):
            wire.parse(b"\x03" + H + b"\x09" + bytes(8))

    def test_address_of_wrong_length_is_malformed(self):
        with self.assertRaises(MalformedMessage):
            wire.parse(bytes.fromhex("01" "0001" "1ae1" "1ae2" "01" "03c0a801"))

    def test_too_many_lan_addresses_are_malformed_both_ways(self):
        addresses = ("10.0.0.1",) * (wire.MAX_LAN_ADDRESSES + 1)
        with self.assertRaises(MalformedMessage):
            wire.build(wire.Hello(1, 2, addresses))
        raw = (bytes.fromhex("01" "0001" "1ae1" "1ae2") + bytes([len(addresses)])
               + bytes.fromhex("040a000001") * len(addresses))
        with self.assertRaises(MalformedMessage):
            wire.parse(raw)

    def test_unknown_nat_values_are_malformed(self):
        """A mapping, filtering or candidate kind this version does not know."""
        report = bytes.fromhex("0a" "04cb007109" "9c40")
        for bad in (report + b"\x03\x00", report + b"\x00\x04"):
            with self.assertRaises(MalformedMessage):
                wire.parse(bad)
        punch = b"\x0d" + A + N + H + P + b"\x01\x01"
        with self.assertRaises(MalformedMessage):
            wire.parse(punch + bytes.fromhex("040a000001" "0001" "02") + b"\x00")
        self.assertEqual(wire.parse(punch + bytes.fromhex("040a000001" "0001" "01") + b"\x00")
                         .candidates, (wire.PunchCandidate("10.0.0.1", 1, "public"),))

    def test_too_many_punch_candidates_are_malformed_both_ways(self):
        many = (wire.PunchCandidate("10.0.0.1", 1, "lan"),) * (wire.MAX_PUNCH_CANDIDATES + 1)
        with self.assertRaises(MalformedMessage):
            wire.build(wire.Punch(A, N, H, P, True, many))
        raw = (b"\x0d" + A + N + H + P + b"\x01" + bytes([len(many)])
               + bytes.fromhex("040a000001" "0001" "00") * len(many) + b"\x00")
        with self.assertRaises(MalformedMessage):
            wire.parse(raw)

    def test_short_tokens_and_ids_do_not_build(self):
        with self.assertRaises(MalformedMessage):
            wire.build(wire.RelayOffer(T[:31], H, P, True, 1))
        with self.assertRaises(MalformedMessage):
            wire.build(wire.Punch(A[:15], N, H, P, True, ()))

    def test_a_relay_offer_host_of_another_length_or_not_an_address_is_malformed(self):
        """The trailing host is 0, 4 or 16 bytes; anything else, or a name instead of an
        address, is refused both ways."""
        offer = wire.build(wire.RelayOffer(T, H, P, True, 1))
        for extra in (b"\x7f", b"\x7f\x00\x00", b"\x7f\x00\x00\x01\x00", bytes(17)):
            with self.subTest(extra=extra.hex()), self.assertRaises(MalformedMessage):
                wire.parse(offer + extra)
        self.assertEqual(wire.parse(offer + b"\x7f\x00\x00\x02").host, "127.0.0.2")
        with self.assertRaises(MalformedMessage):
            wire.build(wire.RelayOffer(T, H, P, True, 1, "relay.example.org"))

    def test_a_full_punch_fits_the_tracker_frame_limit_and_requests_the_daemon_one(self):
        full = (wire.PunchCandidate("2001:db8::1", 65535, "lan"),) * wire.MAX_PUNCH_CANDIDATES
        self.assertLessEqual(len(wire.build(wire.Punch(A, N, H, P, True, full))),
                             wire.MAX_TRACKER_FRAME_SIZE)
        for request in (wire.PunchRequest(H, P), wire.RelayRequest(H, P),
                        wire.NatReport(wire.Endpoint("2001:db8::1", 1))):
            self.assertLessEqual(len(wire.build(request)), wire.MAX_DAEMON_FRAME_SIZE)

    def test_unknown_opcode_is_malformed(self):
        with self.assertRaises(MalformedMessage):
            wire.parse(b"\xee")

    def test_oversized_frame_is_refused_before_buffering(self):
        decoder = FrameDecoder(wire.MAX_DAEMON_FRAME_SIZE)
        with self.assertRaises(FrameTooLarge):
            decoder.feed(frame(b"\x00" * (wire.MAX_DAEMON_FRAME_SIZE + 1))[:8])


class FastPathTests(SynchronousTestCase):
    @given(st.binary(min_size=41, max_size=41))
    def test_announce_fast_path_agrees_with_the_generic_parser(self, body):
        """Any 42-byte Announce frame parses the same (or fails the same) on both paths."""
        self._agree(b"\x03" + body)

    @given(st.binary(min_size=34, max_size=34))
    def test_peer_list_request_fast_path_agrees_with_the_generic_parser(self, body):
        self._agree(b"\x04" + body)

    def _agree(self, data):
        try:
            generic = wire.messages.parse(data)
        except MalformedMessage:
            generic = None
        if generic is None:
            with self.assertRaises(MalformedMessage):
                wire.parse(data)
        else:
            self.assertEqual(wire.parse(data), generic)
            self.assertIs(type(wire.parse(data).info_hash), bytes)
