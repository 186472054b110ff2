"""The .p2p byte format: golden vectors, round trips, and refusal of damaged or hostile files."""

import hashlib
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from peerit.addresses import TrackerAddress
from peerit.errors import MalformedMessage, MetainfoError
from peerit.metainfo import FileEntry, Metainfo
from peerit.share_builder import create_metainfo
from peerit.wire import metainfo as wire

GOLDEN = Path(__file__).parent / "golden"

# The single-file vector, field by field: the format's documentation in bytes.
SINGLE_FILE_BYTES = b"".join([
    b"\x89P2P\r\n\x1a\n",                    # magic
    b"\x00\x01",                             # format version 1
    # -- info section (info-hash = SHA-256 of these bytes) --
    b"\x00\x05a.txt",                        # name
    b"\x00\x00\x40\x00",                     # piece length 16384
    b"\x00\x00\x00\x00\x00\x00\x00\x05",     # total size 5
    b"\x00",                                 # layout: single file
    b"\x00\x00\x00\x01",                     # 1 file
    b"\x00\x05a.txt", b"\x00" * 7 + b"\x05",  # path, size
    b"\x00\x00\x00\x01",                     # 1 piece
    hashlib.sha256(b"hello").digest(),       # its hash
    # -- outside the info section --
    b"\x01",                                 # 1 tracker
    b"\x09127.0.0.1", b"\xe6\x78",           # host, port 59000
    b"\x01", b"\x11" * 32,                   # pinned, fingerprint
    b"\x00\x00\x00\x00\x65\x00\x00\x00",     # created
    b"\x00\x02hi",                           # comment
])
SINGLE_INFO = slice(10, 10 + 7 + 4 + 8 + 1 + 4 + 7 + 8 + 4 + 32)
SINGLE_FILE_INFO_HASH = "17313a4d0f626192644937deb16bbc8571a11a37ccc396f2c80e6fe7ee94c6b5"
DIRECTORY_INFO_HASH = "9caf536098e459d4340b3b7fa1754e31815087185c6a033161e0412385eea85e"


def single_file_metainfo() -> Metainfo:
    return Metainfo(
        name="a.txt", piece_length=16384, total_size=5, is_directory=False,
        files=(FileEntry("a.txt", 5),), piece_hashes=hashlib.sha256(b"hello").digest(),
        trackers=(TrackerAddress("127.0.0.1", 59000, b"\x11" * 32),),
        created=0x65000000, comment="hi")


def write_directory_fixture(root: Path) -> Path:
    """A fixed tree: nested folders, an empty file, a file crossing piece boundaries."""
    share = root / "photos"
    (share / "2023" / "summer").mkdir(parents=True)
    (share / "2023" / "summer" / "beach.jpg").write_bytes(bytes(range(256)) * 100)
    (share / "2023" / "empty.txt").write_bytes(b"")
    (share / "README").write_bytes(b"peer-it golden vector\n" * 1000)
    return share


class GoldenVectorTests(SynchronousTestCase):
    def test_single_file_bytes(self):
        """A fixed single-file metainfo encodes to exactly the documented bytes."""
        self.assertEqual(single_file_metainfo().to_bytes(), SINGLE_FILE_BYTES)

    def test_single_file_info_hash(self):
        """The info-hash is SHA-256 of the info section alone, and has a fixed value."""
        metainfo = Metainfo.from_bytes(SINGLE_FILE_BYTES)
        self.assertEqual(metainfo.info_hash,
                         hashlib.sha256(SINGLE_FILE_BYTES[SINGLE_INFO]).digest())
        self.assertEqual(metainfo.info_hash_hex, SINGLE_FILE_INFO_HASH)
        self.assertEqual(single_file_metainfo().info_hash_hex, SINGLE_FILE_INFO_HASH)

    def test_single_file_parses(self):
        self.assertEqual(Metainfo.from_bytes(SINGLE_FILE_BYTES), single_file_metainfo())

    def test_directory_vector(self):
        """A directory share created from fixed files matches the golden file byte for byte."""
        with tempfile.TemporaryDirectory() as root:
            share = write_directory_fixture(Path(root))
            metainfo = create_metainfo(
                str(share), piece_length=16384, comment="golden",
                trackers=(TrackerAddress("tracker.example", 59000),), now=lambda: 1700000000.5)
        golden = (GOLDEN / "directory.p2p").read_bytes()
        self.assertEqual(metainfo.to_bytes(), golden)
        self.assertEqual(metainfo.info_hash_hex, DIRECTORY_INFO_HASH)
        self.assertEqual(Metainfo.from_bytes(golden).info_hash_hex, DIRECTORY_INFO_HASH)
        self.assertEqual([f.path for f in metainfo.files],
                         ["2023/empty.txt", "2023/summer/beach.jpg", "README"])


# -- hypothesis strategies for valid metainfo -------------------------------------------------

components = st.text(
    alphabet=st.characters(blacklist_characters="/\\\0", blacklist_categories=("Cs",)),
    min_size=1, max_size=8).filter(lambda c: c not in (".", ".."))


def _without_conflicts(paths: list[str]) -> list[str]:
    directories = {"/".join(p.split("/")[:n]) for p in paths for n in range(1, p.count("/") + 1)}
    kept = sorted({p for p in paths if p not in directories}, key=lambda p: p.encode())
    return kept


@st.composite
def metainfos(draw):
    name = draw(components)
    piece_length = 1 << draw(st.integers(14, 26))
    if draw(st.booleans()):
        paths = _without_conflicts(draw(st.lists(
            st.lists(components, min_size=1, max_size=3).map("/".join), max_size=6)))
        files = tuple(FileEntry(p, draw(st.integers(0, 70000))) for p in paths)
        is_directory = True
    else:
        files = (FileEntry(name, draw(st.integers(0, 70000))),)
        is_directory = False
    total = sum(f.size for f in files)
    count = wire.piece_count_for(total, piece_length)
    hashes = draw(st.binary(min_size=32 * count, max_size=32 * count))
    trackers = tuple(draw(st.lists(st.builds(
        TrackerAddress,
        st.from_regex(r"[a-z0-9][a-z0-9.:-]{0,20}", fullmatch=True),
        st.integers(1, 65535),
        st.none() | st.binary(min_size=32, max_size=32)), max_size=3)))
    return Metainfo(name, piece_length, total, is_directory, files, hashes, trackers,
                    draw(st.integers(0, 2**64 - 1)), draw(st.text(max_size=40)))


def mutate(data: bytes, draw) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "overwrite"]))
    if kind == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if kind == "extend":
        return data + draw(st.binary(min_size=1, max_size=40))
    at = draw(st.integers(0, len(data) - 1))
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1:]
    patch = draw(st.binary(min_size=1, max_size=8))
    return data[:at] + patch + data[at + len(patch):]


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(metainfos())
    def test_round_trip(self, metainfo):
        """parse(build(x)) == x, and the info-hash survives the trip."""
        data = metainfo.to_bytes()
        parsed = Metainfo.from_bytes(data)
        self.assertEqual(parsed, metainfo)
        self.assertEqual(parsed.info_hash, metainfo.info_hash)

    @settings(max_examples=100, deadline=None)
    @given(metainfos(), st.text(max_size=10), st.integers(0, 2**32))
    def test_info_hash_ignores_outside_fields(self, metainfo, comment, created):
        """Trackers, creation time and comment do not change the info-hash."""
        other = Metainfo(metainfo.name, metainfo.piece_length, metainfo.total_size,
                         metainfo.is_directory, metainfo.files, metainfo.piece_hashes,
                         (), created, comment)
        self.assertEqual(other.info_hash, metainfo.info_hash)

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=300))
    def test_arbitrary_bytes(self, data):
        """Random bytes raise MetainfoError (never another exception)."""
        with self.assertRaises(MetainfoError):
            wire.parse(data)

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=200))
    def test_arbitrary_bytes_after_magic(self, tail):
        """Random bodies behind a valid header raise only MetainfoError."""
        try:
            wire.parse(wire.MAGIC + b"\x00\x01" + tail)
        except MetainfoError:
            pass

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(metainfos(), st.data())
    def test_mutated_files(self, metainfo, data):
        """A damaged file either is refused with MetainfoError, or parses to a value whose
        encoding is exactly those bytes: there is one encoding per value (canonical), so equal
        content can never hide behind a different info-hash. The compiled parser and the
        interpreted declaration agree."""
        damaged = mutate(metainfo.to_bytes(), data.draw)
        try:
            parsed = Metainfo.from_bytes(damaged)
        except MalformedMessage as e:
            self.assertIsInstance(e, MetainfoError)
            return
        self.assertEqual(parsed.to_bytes(), damaged)
        interpreted = wire.METAINFO.parse(damaged)
        self.assertEqual(interpreted.info.data, wire.parse(damaged).info.data)


class PathCheckTests(SynchronousTestCase):
    @settings(max_examples=1000, deadline=None)
    @given(st.text(alphabet=st.sampled_from(["/", ".", "\\", "\0", "x", "é", "\ud800"]),
                   max_size=12) | st.builds(lambda n, m: "x" * n + "/" + "é" * m,
                                            st.integers(250, 260), st.integers(120, 130)))
    def test_fast_path_check_agrees(self, path):
        """The fast scan used on long file lists accepts exactly the paths the detailed,
        reason-giving check accepts."""
        try:
            wire.check_relative_path(path)
            detailed = True
        except MetainfoError:
            detailed = False
        try:
            encoded = path.encode()
        except UnicodeEncodeError:
            self.assertFalse(detailed)
            return
        self.assertEqual(wire._plainly_valid(path, encoded), detailed)


# -- hostile and damaged files, each refused with its reason ----------------------------------

def info(**changes) -> dict:
    """A valid directory info section, with ``changes`` applied."""
    fields = {
        "name": "share", "piece_length": 16384, "total_size": 30, "layout": "directory",
        "files": [{"path": "a/b", "size": 10}, {"path": "c", "size": 20}],
        "piece_hashes": bytes(32),
    }
    fields.update(changes)
    return fields


def encode(info_fields: dict, trackers=(), created=0, comment="") -> bytes:
    """Bytes in the .p2p layout without the semantic checks, to forge hostile files."""
    return wire.METAINFO.build({"info": {"value": info_fields}, "trackers": list(trackers),
                                "created": created, "comment": comment})


def files(*paths, size=0) -> dict:
    """An info section listing ``paths`` in the given order (sizes add up)."""
    entries = [{"path": p, "size": size} for p in paths]
    entries[0]["size"] = 30 - size * (len(paths) - 1)
    return info(files=entries)


# Offsets in encode(info()): magic 8, version 2, name 2+5, piece length 4, total 8, layout 1.
FILE_COUNT_AT = 8 + 2 + 7 + 4 + 8 + 1


class RefusalTests(SynchronousTestCase):
    def assertRefused(self, data: bytes, reason: str):
        with self.assertRaises(MetainfoError) as caught:
            wire.parse(data)
        self.assertIn(reason, str(caught.exception))
        with self.assertRaises(MetainfoError):
            Metainfo.from_bytes(data)

    def test_valid_baseline(self):
        """The forged files below differ from this valid one in one way each."""
        self.assertEqual(wire.parse(encode(info())).info.value.name, "share")

    def test_empty(self):
        self.assertRefused(b"", "empty file")

    def test_wrong_magic(self):
        self.assertRefused(b"d8:announce" + encode(info())[11:], "wrong magic")

    def test_wrong_version(self):
        data = encode(info())
        self.assertRefused(data[:8] + b"\x00\x02" + data[10:], "format version 2")

    def test_truncated(self):
        data = encode(info())
        for cut in (9, 12, 30, len(data) - 1):
            self.assertRefused(data[:cut], "truncated")

    def test_trailing_bytes(self):
        self.assertRefused(encode(info()) + b"\x00", "trailing bytes")

    def test_sizes_do_not_add_up(self):
        self.assertRefused(encode(info(total_size=31)), "add up to 30")

    def test_piece_count_mismatch(self):
        self.assertRefused(encode(info(piece_hashes=bytes(64))), "2 piece hashes")
        self.assertRefused(encode(info(piece_hashes=b"")), "0 piece hashes")

    def test_piece_length_not_power_of_two(self):
        self.assertRefused(encode(info(piece_length=20000)), "not a power of two")

    def test_piece_length_out_of_range(self):
        self.assertRefused(encode(info(piece_length=8192)), "outside")
        self.assertRefused(encode(info(piece_length=1 << 27)), "outside")

    def test_absolute_path(self):
        self.assertRefused(encode(files("/etc/passwd")), "absolute")

    def test_dot_dot_component(self):
        self.assertRefused(encode(files("a/../../b")), "'..' is not allowed")
        self.assertRefused(encode(files("..")), "'..' is not allowed")

    def test_dot_component(self):
        self.assertRefused(encode(files("a/./b")), "'.' is not allowed")

    def test_empty_path_or_component(self):
        self.assertRefused(encode(files("")), "empty file path")
        self.assertRefused(encode(files("a//b")), "empty component")
        self.assertRefused(encode(files("a/")), "empty component")

    def test_nul_and_backslash(self):
        self.assertRefused(encode(files("a\0b")), "NUL")
        self.assertRefused(encode(files("a\\..\\b")), "backslash")

    def test_duplicate_paths(self):
        self.assertRefused(encode(files("a", "a", size=5)), "duplicate file path 'a'")

    def test_unsorted_paths(self):
        """Canonical order is by path bytes; anything else would give equal content two
        info-hashes."""
        self.assertRefused(encode(files("b", "a", size=5)), "canonical order")
        # "a.txt" sorts before "a/b" as bytes ('.' < '/'); the reverse is not canonical.
        self.assertRefused(encode(files("a/b", "a.txt", size=5)), "canonical order")

    def test_file_is_also_a_directory(self):
        self.assertRefused(encode(files("a", "a.txt", "a/b", size=5)),
                           "'a' is both a file and a directory")

    def test_long_path_and_component(self):
        self.assertRefused(encode(files("x" * 256)), "bytes long")
        self.assertRefused(encode(files("/".join(["x" * 200] * 21))), "longer than 4096")

    def test_bad_names(self):
        self.assertRefused(encode(info(name="a/b")), "not a single path component")
        self.assertRefused(encode(info(name="")), "empty name")
        self.assertRefused(encode(info(name="..")), "'..' is not allowed")
        self.assertRefused(encode(info(name="a\\b")), "backslash")

    def test_single_file_layout_rules(self):
        self.assertRefused(encode(info(layout="single")), "lists 2 files")
        self.assertRefused(
            encode(info(layout="single", files=[{"path": "other", "size": 30}])),
            "not named like the share")

    def test_unknown_layout(self):
        data = bytearray(encode(info()))
        data[FILE_COUNT_AT - 1] = 7
        self.assertRefused(bytes(data), "unknown layout 7")

    def test_huge_file_count(self):
        """A declared count is checked when read, before any list is grown from it."""
        data = bytearray(encode(info()))
        data[FILE_COUNT_AT:FILE_COUNT_AT + 4] = b"\xff\xff\xff\xff"
        self.assertRefused(bytes(data), "file count 4294967295 exceeds")

    def test_huge_piece_count(self):
        data = encode(info())
        at = data.index(bytes(32)) - 4
        self.assertRefused(data[:at] + b"\x00\x20\x00\x00" + data[at + 4:],
                           "piece count 2097152 exceeds")

    def test_too_many_trackers(self):
        data = bytearray(encode(info(), [{"host": "h", "port": 1, "fingerprint": None}]))
        at = 10 + len(wire.INFO.build(info()))
        self.assertEqual(data[at], 1)
        data[at] = 200
        self.assertRefused(bytes(data), "tracker count 200 exceeds")

    def test_bad_trackers(self):
        self.assertRefused(encode(info(), [{"host": "", "port": 1, "fingerprint": None}]),
                           "bad tracker host")
        self.assertRefused(encode(info(), [{"host": "h", "port": 0, "fingerprint": None}]),
                           "bad tracker port")

    def test_fingerprint_flag(self):
        data = bytearray(encode(info(), [{"host": "h", "port": 1, "fingerprint": None}]))
        at = data.index(b"\x01h\x00\x01") + 4
        data[at] = 2
        self.assertRefused(bytes(data), "fingerprint flag")

    def test_invalid_utf8(self):
        data = encode(info(name="sharé"))
        at = data.index("é".encode())
        self.assertRefused(data[:at] + b"\xff\xfe" + data[at + 2:], "not valid UTF-8")

    def test_oversized_file(self):
        """Larger than the format's limit: refused on the length alone."""
        self.assertRefused(bytes(wire.MAX_METAINFO_SIZE + 1), "byte limit")

    def test_build_refuses_invalid(self):
        """Building checks the same rules, so an invalid .p2p is never written."""
        good = single_file_metainfo()
        bad = Metainfo("a/b", good.piece_length, good.total_size, False, good.files,
                       good.piece_hashes)
        with self.assertRaises(MetainfoError):
            bad.to_bytes()
        with self.assertRaises(MetainfoError):
            Metainfo("x", 16384, 5, False, (FileEntry("x", 5),), b"").to_bytes()


def regenerate_golden() -> None:  # pragma: no cover - run by hand after a format change
    with tempfile.TemporaryDirectory() as root:
        share = write_directory_fixture(Path(root))
        metainfo = create_metainfo(
            str(share), piece_length=16384, comment="golden",
            trackers=(TrackerAddress("tracker.example", 59000),), now=lambda: 1700000000.5)
    os.makedirs(GOLDEN, exist_ok=True)
    (GOLDEN / "directory.p2p").write_bytes(metainfo.to_bytes())
    print(metainfo.info_hash_hex)


if __name__ == "__main__":  # pragma: no cover
    regenerate_golden()
