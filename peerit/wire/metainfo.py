"""The .p2p metainfo format: what a share is (its info section) and where to find peers.

Layout, all integers big-endian::

    magic "\\x89P2P\\r\\n\\x1a\\n", format version (uint16)
    info section                       <- its SHA-256 is the share's info-hash
        name, piece length, total size, layout (single file | directory),
        files (relative POSIX path + size, sorted by path bytes),
        piece count, SHA-256 of every piece (one blob of 32 * count bytes)
    trackers (host, port, optional 32-byte fingerprint)
    creation time (uint64 seconds), comment (UTF-8)

Only the info section is hashed, so the same content always has the same info-hash whoever
creates the file and whatever trackers or comment it lists. Every value has exactly one
encoding (sorted unique paths, enum and flag bytes restricted to their defined values,
strict UTF-8), so a parsed info section re-encodes to the very bytes that were hashed.

``parse`` turns any bytes into a validated container or raises :class:`MetainfoError` with one
reason; ``build`` checks the same rules before encoding. No Twisted here.
"""

import hashlib
import struct

from construct import (
    Bytes, Const, ConstructError, Container, Enum, If, Int8ub, Int16ub, Int32ub, Int64ub,
    OneOf, PascalString, RawCopy, Rebuild, StreamError, Struct,
    Subconstruct, Terminated, TerminatedError, ValidationError, len_, this)

from peerit.errors import MetainfoError

# PNG's trick: a byte with the high bit set catches 7-bit channels, CR LF catches newline
# translation, ^Z stops DOS 'type'; a .p2p mangled in transit fails here, not later.
MAGIC = b"\x89P2P\r\n\x1a\n"
FORMAT_VERSION = 1
HASH_SIZE = 32
FINGERPRINT_SIZE = 32

MIN_PIECE_LENGTH = 16 * 1024
MAX_PIECE_LENGTH = 64 * 1024 * 1024
MAX_PIECES = 1 << 20            # 32 MiB of piece hashes at most
MAX_FILES = 1 << 20
MAX_TRACKERS = 64
MAX_METAINFO_SIZE = 64 * 1024 * 1024
MAX_COMPONENT_BYTES = 255       # NAME_MAX of common file systems
MAX_PATH_BYTES = 4096           # PATH_MAX on Linux
MAX_COMMENT_BYTES = 0xFFFF
MAX_TOTAL_SIZE = MAX_PIECES * MAX_PIECE_LENGTH


class LimitExceeded(ValidationError):
    """A declared count or length above what the format allows, caught as soon as it is read."""

    def __init__(self, reason: str, path=None):
        super().__init__(reason, path=path)
        self.reason = reason


class AtMost(Subconstruct):
    """An unsigned count checked against a maximum before anything is sized from it."""

    def __init__(self, subcon, maximum: int, what: str):
        super().__init__(subcon)
        self.maximum = maximum
        self.what = what

    def _check(self, value, path):
        if value > self.maximum:
            raise LimitExceeded(f"{self.what} {value} exceeds the limit of {self.maximum}",
                                path=path)
        return value

    def _parse(self, stream, context, path):
        return self._check(self.subcon._parsereport(stream, context, path), path)

    def _build(self, obj, stream, context, path):
        self._check(obj, path)
        return self.subcon._build(obj, stream, context, path)


Text16 = PascalString(Int16ub, "utf8")

FILE_ENTRY = Struct(
    "path" / Text16,
    "size" / Int64ub,
)

LAYOUT = Enum(Int8ub, single=0, directory=1)

INFO = Struct(
    "name" / Text16,
    "piece_length" / Int32ub,
    "total_size" / Int64ub,
    "layout" / LAYOUT,
    "file_count" / Rebuild(AtMost(Int32ub, MAX_FILES, "file count"), len_(this.files)),
    "files" / FILE_ENTRY[this.file_count],
    "piece_count" / Rebuild(AtMost(Int32ub, MAX_PIECES, "piece count"),
                            len_(this.piece_hashes) // HASH_SIZE),
    "piece_hashes" / Bytes(this.piece_count * HASH_SIZE),
)

TRACKER = Struct(
    "host" / PascalString(Int8ub, "utf8"),
    "port" / Int16ub,
    "pinned" / Rebuild(OneOf(Int8ub, (0, 1)), lambda ctx: int(ctx.fingerprint is not None)),
    "fingerprint" / If(this.pinned == 1, Bytes(FINGERPRINT_SIZE)),
)



def _metainfo(info):
    return Struct(
        "magic" / Const(MAGIC),
        "version" / Const(FORMAT_VERSION, Int16ub),
        "info" / RawCopy(info),
        "tracker_count" / Rebuild(AtMost(Int8ub, MAX_TRACKERS, "tracker count"),
                                  len_(this.trackers)),
        "trackers" / TRACKER[this.tracker_count],
        "created" / Int64ub,
        "comment" / Text16,
        Terminated,
    )


METAINFO = _metainfo(INFO)

# A long file list parses and builds 4x faster compiled. Compiled reads do not check their
# length, but every variable-length field of the info section is followed by a fixed-size
# integer (in the section or just after it) whose read fails at the end of the data, so a
# truncated file still fails; the interpreted METAINFO then re-parses it to name the reason.
_INFO_COMPILED = INFO.compile()
_METAINFO_FAST = _metainfo(_INFO_COMPILED)


# -- parsing -------------------------------------------------------------------------------

def parse(data: bytes) -> Container:
    """Bytes of a .p2p file to a container whose ``info`` holds ``data`` (the hashed bytes)
    and ``value``; every rule of the format checked, every failure a :class:`MetainfoError`."""
    if len(data) > MAX_METAINFO_SIZE:
        raise MetainfoError(
            f"{len(data)} bytes is larger than the {MAX_METAINFO_SIZE} byte limit for .p2p files")
    if not data:
        raise MetainfoError("empty file")
    try:
        parsed = _METAINFO_FAST.parse(data)
    except (ConstructError, ValueError, OverflowError, TypeError, struct.error):
        raise MetainfoError(_reason_for_refusal(data)) from None
    check_info(parsed.info.value)
    check_trackers(parsed.trackers)
    return parsed


def _reason_for_refusal(data: bytes) -> str:
    """Why ``data`` does not parse, found with the slower, checked, interpreted declaration."""
    try:
        METAINFO.parse(data)
    except ConstructError as e:
        return _reason(e, data)
    except (ValueError, OverflowError, TypeError, struct.error) as e:
        return f"undecodable field: {e}"
    return "malformed data"


def _reason(error: ConstructError, data: bytes) -> str:
    where = (error.path or "").replace("(parsing) -> ", "").replace(" -> ", ".")
    if isinstance(error, LimitExceeded):
        return error.reason
    if where == "magic":
        return "not a .p2p file (wrong magic bytes)"
    if where == "version":
        if len(data) < len(MAGIC) + 2:
            return "truncated (data ends inside the version)"
        found = Int16ub.parse(data[len(MAGIC):len(MAGIC) + 2])
        return (f"unsupported .p2p format version {found} "
                f"(this program reads version {FORMAT_VERSION})")
    if isinstance(error, StreamError):
        return f"truncated (data ends inside {where or 'the header'})"
    if isinstance(error, TerminatedError):
        return "trailing bytes after the end of the metainfo"
    if "pinned" in where:
        return "tracker fingerprint flag is neither 0 nor 1"
    if "cannot use encoding" in str(error):
        return "a name, path, host or comment is not valid UTF-8"
    return f"malformed {where or 'data'}"


# -- the rules every info section and tracker list obeys ------------------------------------

def check_component(component: str, what: str = "name") -> None:
    """One path component: what a share's name must be and what paths are made of."""
    if not component:
        raise MetainfoError(f"empty {what}")
    if component in (".", ".."):
        raise MetainfoError(f"{what} {component!r} is not allowed")
    if "/" in component:
        raise MetainfoError(f"{what} {component!r} is not a single path component")
    if "\0" in component:
        raise MetainfoError(f"{what} {component!r} contains a NUL character")
    if "\\" in component:
        raise MetainfoError(f"{what} {component!r} contains a backslash")
    try:
        size = len(component.encode("utf-8"))
    except UnicodeEncodeError:
        raise MetainfoError(f"{what} {component!r} is not valid UTF-8") from None
    if size > MAX_COMPONENT_BYTES:
        raise MetainfoError(f"{what} {component[:40]!r}... is {size} bytes long "
                            f"(limit {MAX_COMPONENT_BYTES})")


def check_relative_path(path: str) -> None:
    if not path:
        raise MetainfoError("empty file path")
    if path.startswith("/"):
        raise MetainfoError(f"absolute file path {path!r}")
    if _utf8_size(path) > MAX_PATH_BYTES:
        raise MetainfoError(f"file path {path[:40]!r}... is longer than {MAX_PATH_BYTES} bytes")
    for component in path.split("/"):
        if not component:
            raise MetainfoError(f"file path {path!r} has an empty component")
        check_component(component, f"component of file path {path!r}:")


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def check_piece_length(piece_length: int) -> None:
    if not _power_of_two(piece_length):
        raise MetainfoError(f"piece length {piece_length} is not a power of two")
    if not MIN_PIECE_LENGTH <= piece_length <= MAX_PIECE_LENGTH:
        raise MetainfoError(f"piece length {piece_length} outside "
                            f"{MIN_PIECE_LENGTH}..{MAX_PIECE_LENGTH}")


def piece_count_for(total_size: int, piece_length: int) -> int:
    return -(-total_size // piece_length)


def check_info(info) -> None:
    """Every semantic rule of an info section (a parsed container or a dict to build)."""
    name = info["name"]
    check_component(name)
    check_piece_length(info["piece_length"])
    total_size = info["total_size"]
    if total_size > MAX_TOTAL_SIZE:
        raise MetainfoError(f"total size {total_size} exceeds the limit of {MAX_TOTAL_SIZE}")
    layout = info["layout"]
    files = info["files"]
    if len(files) > MAX_FILES:
        raise MetainfoError(f"file count {len(files)} exceeds the limit of {MAX_FILES}")
    if layout == "single":
        if len(files) != 1:
            raise MetainfoError(f"single-file share lists {len(files)} files")
        if files[0]["path"] != name:
            raise MetainfoError(f"single-file share's file {files[0]['path']!r} "
                                f"is not named like the share {name!r}")
    elif layout == "directory":
        _check_tree([f["path"] for f in files])
    else:
        raise MetainfoError(f"unknown layout {int(layout)}")
    if any(f["size"] < 0 for f in files):
        raise MetainfoError("negative file size")
    listed = sum(f["size"] for f in files)
    if listed != total_size:
        raise MetainfoError(f"file sizes add up to {listed}, total size says {total_size}")
    hashes = info["piece_hashes"]
    if len(hashes) % HASH_SIZE:
        raise MetainfoError(f"piece hashes of {len(hashes)} bytes: not a multiple of "
                            f"{HASH_SIZE}")
    expected = piece_count_for(total_size, info["piece_length"])
    if len(hashes) // HASH_SIZE != expected:
        raise MetainfoError(
            f"{len(hashes) // HASH_SIZE} piece hashes, but {total_size} bytes in pieces of "
            f"{info['piece_length']} make {expected}")


def _check_tree(paths: list[str]) -> None:
    """Paths valid one by one, in canonical (byte) order, unique, no file inside a file."""
    previous = None
    directories = set()
    for path in paths:
        try:
            key = path.encode("utf-8")
        except UnicodeEncodeError:
            key = None
        if key is None or not _plainly_valid(path, key):
            check_relative_path(path)  # names the reason
            raise MetainfoError(f"invalid file path {path!r}")
        if previous is not None:
            if key == previous:
                raise MetainfoError(f"duplicate file path {path!r}")
            if key < previous:
                raise MetainfoError(
                    f"file paths not in canonical order: {path!r} after "
                    f"{previous.decode()!r}")
        previous = key
        slash = path.find("/")
        while slash != -1:
            directories.add(path[:slash])
            slash = path.find("/", slash + 1)
    # Sorting by bytes does not put "a" next to "a/b" ("a.txt" sorts between), hence a set.
    if directories:
        for path in paths:
            if path in directories:
                raise MetainfoError(f"{path!r} is both a file and a directory")


def _plainly_valid(path: str, encoded: bytes) -> bool:
    """check_relative_path's verdict in a few string scans: file lists can be a million long."""
    if (not path or path[0] == "/" or path[-1] == "/" or "//" in path or "\0" in path
            or "\\" in path or len(encoded) > MAX_PATH_BYTES):
        return False
    wrapped = f"/{path}/"
    if "/./" in wrapped or "/../" in wrapped:
        return False
    return len(encoded) <= MAX_COMPONENT_BYTES or all(
        len(component) <= MAX_COMPONENT_BYTES for component in encoded.split(b"/"))


def check_trackers(trackers) -> None:
    if len(trackers) > MAX_TRACKERS:
        raise MetainfoError(f"tracker count {len(trackers)} exceeds the limit of "
                            f"{MAX_TRACKERS}")
    for tracker in trackers:
        host = tracker["host"]
        if not host or any(c.isspace() or not c.isprintable() or c in "#/" for c in host):
            raise MetainfoError(f"bad tracker host {host!r}")
        if not 0 < tracker["port"] < 65536:
            raise MetainfoError(f"bad tracker port {tracker['port']} for {host!r}")
        fingerprint = tracker["fingerprint"]
        if fingerprint is not None and len(fingerprint) != FINGERPRINT_SIZE:
            raise MetainfoError(f"tracker fingerprint of {len(fingerprint)} bytes, "
                                f"expected {FINGERPRINT_SIZE}")


def check_comment(comment: str) -> None:
    size = _utf8_size(comment)
    if size > MAX_COMMENT_BYTES:
        raise MetainfoError(f"comment of {size} bytes exceeds the limit of "
                            f"{MAX_COMMENT_BYTES}")


# -- building ------------------------------------------------------------------------------

def info_dict(name: str, piece_length: int, total_size: int, is_directory: bool,
              files, piece_hashes: bytes) -> dict:
    """The info section as ``build_info`` takes it; ``files`` are (path, size) pairs."""
    return {
        "name": name, "piece_length": piece_length, "total_size": total_size,
        "layout": "directory" if is_directory else "single",
        "files": [{"path": path, "size": size} for path, size in files],
        "piece_hashes": piece_hashes,
    }


def build_info(info: dict) -> bytes:
    """The canonical encoding of an info section: what the info-hash is taken over."""
    check_info(info)
    return _encode(_INFO_COMPILED, info)


def info_hash(info_bytes: bytes) -> bytes:
    return hashlib.sha256(info_bytes).digest()


def build(info: dict, trackers, created: int, comment: str) -> bytes:
    """A whole .p2p file; ``trackers`` are dicts with host, port and fingerprint (or None)."""
    check_info(info)
    trackers = list(trackers)
    check_trackers(trackers)
    check_comment(comment)
    if not 0 <= created < 1 << 64:
        raise MetainfoError(f"creation time {created} out of range")
    data = _encode(_METAINFO_FAST, {
        "info": {"value": info}, "trackers": trackers, "created": created,
        "comment": comment})
    if len(data) > MAX_METAINFO_SIZE:
        raise MetainfoError(f"metainfo of {len(data)} bytes exceeds the limit of "
                            f"{MAX_METAINFO_SIZE}")
    return data


def encoded_size(name: str, paths, piece_count: int, trackers=(), comment: str = "") -> int:
    """Exact size of the .p2p such a share would make, known before any piece is hashed."""
    skeleton = {"info": {"value": info_dict("", MIN_PIECE_LENGTH, 0, True, [], b"")},
                "trackers": [], "created": 0, "comment": ""}
    size = len(METAINFO.build(skeleton)) + _utf8_size(name) + _utf8_size(comment)
    per_file = len(FILE_ENTRY.build({"path": "", "size": 0}))
    size += sum(per_file + _utf8_size(path) for path in paths)
    size += piece_count * HASH_SIZE
    size += sum(len(_encode(TRACKER, tracker)) for tracker in trackers)
    return size


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _encode(format, value) -> bytes:
    try:
        return format.build(value)
    except ConstructError as e:
        raise MetainfoError(f"cannot encode metainfo: {_last_line(e)}") from None
    except (ValueError, OverflowError, TypeError, struct.error) as e:
        raise MetainfoError(f"cannot encode metainfo: {e}") from None


def _last_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__



def parse_info(data: bytes) -> Container:
    """An info section alone (fetched from peers and already checked against its info-hash)
    to a validated container; every failure a :class:`MetainfoError`."""
    if not data:
        raise MetainfoError("empty info section")
    try:
        value = (INFO + Terminated).parse(data)
    except ConstructError as e:
        raise MetainfoError(_reason(e, data)) from None
    except (ValueError, OverflowError, TypeError, struct.error) as e:
        raise MetainfoError(f"undecodable field: {e}") from None
    check_info(value)
    return value
