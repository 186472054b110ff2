"""peerit: links: golden strings, round trips, and one clear error per kind of bad link."""

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from peerit import links
from peerit.addresses import TrackerAddress
from peerit.errors import BadLink, PeeritError, UnpinnedTracker, UnsupportedLink, UsageError

IH = bytes(range(32))
FP = bytes(range(32, 64))
PEER = bytes(range(64, 96))
TRACKER = TrackerAddress("127.0.0.1", 59000, FP)

GOLDEN = [
    (links.Link(IH, (TRACKER,)),
     "peerit:?v=1&ih=" + IH.hex() + "&tr=127.0.0.1:59000%23" + FP.hex()),
    (links.Link(IH, (TRACKER, TrackerAddress("::1", 7, FP)), "My files ü&=", 12345, PEER),
     "peerit:?v=1&ih=" + IH.hex() + "&tr=127.0.0.1:59000%23" + FP.hex()
     + "&tr=[::1]:7%23" + FP.hex() + "&dn=My%20files%20%C3%BC%26%3D&sz=12345&pe=" + PEER.hex()),
]

hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9.-]{0,30}", fullmatch=True),
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
trackers = st.builds(TrackerAddress, hosts, st.integers(1, 65535),
                     st.binary(min_size=32, max_size=32))
names = st.text(max_size=60).filter(lambda s: len(s.encode("utf-8", "surrogatepass")) <= 255
                                    and all(not 0xD800 <= ord(c) <= 0xDFFF for c in s))
link_values = st.builds(
    links.Link, st.binary(min_size=32, max_size=32),
    st.lists(trackers, min_size=1, max_size=4, unique=True).map(tuple), names,
    st.one_of(st.none(), st.integers(0, 2**63)),
    st.one_of(st.none(), st.binary(min_size=32, max_size=32)))


class GoldenTests(SynchronousTestCase):
    def test_links_build_to_their_documented_strings_and_back(self):
        """Each golden link builds to exactly its string and parses back to itself."""
        for link, text in GOLDEN:
            self.assertEqual(str(link), text)
            self.assertEqual(links.parse(text), link)

    def test_a_raw_hash_sign_and_surrounding_space_are_accepted(self):
        """Pasted by hand, '#' is often left unescaped: it can only mean the fingerprint."""
        text = " peerit:?v=1&ih=" + IH.hex() + "&tr=127.0.0.1:59000#" + FP.hex() + "\n"
        self.assertEqual(links.parse(text), GOLDEN[0][0])

    def test_unknown_parameters_are_ignored(self):
        """Later optional fields must not break this version's readers."""
        self.assertEqual(links.parse(GOLDEN[0][1] + "&zz=later"), GOLDEN[0][0])


class PropertyTests(SynchronousTestCase):
    @given(link_values)
    def test_parse_of_build_is_identity(self, link):
        self.assertEqual(links.parse(str(link)), link)

    @given(st.text(max_size=300))
    def test_arbitrary_text_raises_only_bad_link(self, text):
        try:
            links.parse(text)
        except BadLink:
            pass

    @given(st.text(max_size=200))
    def test_arbitrary_query_after_the_scheme_raises_only_bad_link(self, text):
        try:
            links.parse("peerit:?" + text)
        except BadLink:
            pass


class BadLinkTests(SynchronousTestCase):
    def refused(self, text, error, fragment):
        with self.assertRaises(error) as caught:
            links.parse(text)
        self.assertIn(fragment, str(caught.exception))
        self.assertNotIn("\n", str(caught.exception))
        return caught.exception

    def test_unknown_scheme(self):
        e = self.refused("magnet:?xt=urn:btih:abc", UnsupportedLink, "not a peerit: link")
        self.assertEqual(e.exit_code, 11)

    def test_unknown_version(self):
        e = self.refused(GOLDEN[0][1].replace("v=1", "v=2"), UnsupportedLink, "version '2'")
        self.assertEqual(e.exit_code, 11)

    def test_tracker_without_fingerprint(self):
        e = self.refused(f"peerit:?v=1&ih={IH.hex()}&tr=127.0.0.1:59000", UnpinnedTracker,
                         "no fingerprint")
        self.assertEqual(e.exit_code, 12)

    def test_malformed_links_name_what_is_wrong(self):
        base = f"peerit:?v=1&ih={IH.hex()}&tr=127.0.0.1:59000%23{FP.hex()}"
        cases = [
            ("peerit:v=1", "expected 'peerit:?v=1"),
            (f"peerit:?ih={IH.hex()}", "no version"),
            ("peerit:?v=1&tr=h:1%23" + FP.hex(), "no info-hash"),
            (f"peerit:?v=1&ih={IH.hex()[:-2]}&tr=h:1%23{FP.hex()}", "64 hex digits"),
            (f"peerit:?v=1&ih={IH.hex()}", "no tracker"),
            (base + "&sz=-1", "not a number"),
            (base + "&sz=12x", "not a number"),
            (base + "&v=1", "v given twice"),
            (base + "&pe=zz", "peer id"),
            (base + "&dn=%ff", "not UTF-8"),
            (base + "&tr=h:99999%23" + FP.hex(), "bad port"),
            (base + "&dn", "has no value"),
            (base + "&dn=" + "a" * 256, "at most 255 bytes"),
            (base + "&x=" + "a" * 9000, "longer than"),
        ]
        for text, fragment in cases:
            e = self.refused(text, BadLink, fragment)
            self.assertEqual(e.exit_code, 10, text)

    def test_every_link_error_is_a_one_line_usage_error(self):
        """peerit-ctl prints them as one line; AMP carries them as BAD_REQUEST subclasses."""
        for cls in (BadLink, UnsupportedLink, UnpinnedTracker):
            self.assertTrue(issubclass(cls, UsageError))
            self.assertTrue(issubclass(cls, PeeritError))
        self.assertEqual(len({BadLink.exit_code, UnsupportedLink.exit_code,
                              UnpinnedTracker.exit_code}), 3)


class FromMetainfoTests(SynchronousTestCase):
    def test_link_of_a_share_keeps_only_pinned_trackers_and_shows_name_and_size(self):
        class Share:
            info_hash, name, total_size = IH, "photos", 99
            trackers = (TrackerAddress("h", 1, None), TRACKER)
        link = links.from_metainfo(Share, PEER, extra_trackers=(TRACKER,))
        self.assertEqual(link, links.Link(IH, (TRACKER,), "photos", 99, PEER))

    def test_a_share_with_no_pinned_tracker_has_no_link(self):
        class Share:
            info_hash, name, total_size = IH, "x", 1
            trackers = (TrackerAddress("h", 1, None),)
        with self.assertRaises(UnpinnedTracker):
            links.from_metainfo(Share)

    def test_display_name_replaces_control_characters(self):
        link = links.Link(IH, (TRACKER,), "a\x1b[2Jb")
        self.assertEqual(link.display_name, "a\ufffd[2Jb")
