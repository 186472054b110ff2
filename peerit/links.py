"""``peerit:`` links: a share named by its info-hash and where to find its peers, in one line.

Version 1 (docs/links.md)::

    peerit:?v=1&ih=<64 hex digits>&tr=<HOST:PORT%23FINGERPRINT>[&tr=...][&dn=<name>][&sz=<bytes>][&pe=<peer id>]

``ih`` is the info-hash and ``tr`` (one or more) a tracker with its pinned fingerprint: together
they are all a daemon needs to fetch the metadata from the swarm and verify it. ``dn`` and ``sz``
are the display name and total size, shown to the user before the metadata arrives and never
trusted for anything else; ``pe`` is the peer id of a peer known to seed (a hint; a code
exchange also pins it). Values are percent-encoded UTF-8. Unknown parameters are ignored so
that later optional fields stay readable by this version; a change that old readers must not
misread takes a new ``v``.
"""

import urllib.parse
from dataclasses import dataclass

from peerit.addresses import TrackerAddress
from peerit.errors import BadLink, PeeritError, UnpinnedTracker, UnsupportedLink
from peerit.fingerprints import PEER_ID_SIZE

SCHEME = "peerit"
VERSION = 1
MAX_LINK_LENGTH = 8192  # checked before anything is split or decoded
MAX_TRACKERS = 16
MAX_NAME_BYTES = 255
_SINGLE = ("v", "ih", "dn", "sz", "pe")


@dataclass(frozen=True)
class Link:
    info_hash: bytes
    trackers: tuple[TrackerAddress, ...]
    name: str = ""  # for the eye only
    size: int | None = None  # for the eye only
    peer_id: bytes | None = None  # a seeder's peer id, as a hint

    def __post_init__(self):
        if len(self.info_hash) != 32:
            raise BadLink("an info-hash is 32 bytes")
        if not self.trackers:
            raise BadLink("a link names at least one tracker")
        if len(self.trackers) > MAX_TRACKERS:
            raise BadLink(f"a link names at most {MAX_TRACKERS} trackers")
        for tracker in self.trackers:
            if tracker.fingerprint is None:
                raise UnpinnedTracker(f"tracker {tracker} in a link needs its fingerprint "
                                      f"(HOST:PORT#FINGERPRINT)")
        if self.peer_id is not None and len(self.peer_id) != PEER_ID_SIZE:
            raise BadLink("a peer id is 32 bytes")
        if self.size is not None and self.size < 0:
            raise BadLink("a size is not negative")
        if len(self.name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise BadLink(f"a display name is at most {MAX_NAME_BYTES} bytes")

    def __str__(self) -> str:
        fields = [("v", str(VERSION)), ("ih", self.info_hash.hex())]
        fields += [("tr", str(t)) for t in self.trackers]
        if self.name:
            fields.append(("dn", self.name))
        if self.size is not None:
            fields.append(("sz", str(self.size)))
        if self.peer_id is not None:
            fields.append(("pe", self.peer_id.hex()))
        query = "&".join(f"{key}={urllib.parse.quote(value, safe=':[]')}"
                         for key, value in fields)
        return f"{SCHEME}:?{query}"

    @property
    def display_name(self) -> str:
        """The name with control characters replaced: it came from whoever wrote the link."""
        return "".join(c if c.isprintable() else "\ufffd" for c in self.name)


def looks_like_link(text: str) -> bool:
    """Whether a command-line argument is meant as a link rather than a file name."""
    return text[:len(SCHEME) + 1].lower() == f"{SCHEME}:"


def parse(text: str) -> Link:
    """A link as a user pastes it; every failure a :class:`BadLink` (or subclass), one line."""
    if len(text) > MAX_LINK_LENGTH:
        raise BadLink(f"link of {len(text)} characters is longer than the "
                      f"{MAX_LINK_LENGTH} allowed")
    text = text.strip()
    scheme, sep, rest = text.partition(":")
    if not sep or scheme.lower() != SCHEME:
        shown = scheme[:20] if sep else text[:20]
        raise UnsupportedLink(f"not a peerit: link (it starts {shown!r})")
    if not rest.startswith("?"):
        raise BadLink("malformed link: expected 'peerit:?v=1&ih=...'")
    fields: dict[str, list[str]] = {}
    for part in rest[1:].split("&"):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq:
            raise BadLink(f"malformed link: parameter {key[:20]!r} has no value")
        try:
            value = urllib.parse.unquote(value, errors="strict")
        except UnicodeDecodeError:
            raise BadLink(f"malformed link: {key[:20]!r} is not UTF-8") from None
        fields.setdefault(key, []).append(value)
    for key in _SINGLE:
        if len(fields.get(key, ())) > 1:
            raise BadLink(f"malformed link: {key} given twice")
    version = _one(fields, "v")
    if version is None:
        raise BadLink("malformed link: no version (v=)")
    if version != str(VERSION):
        raise UnsupportedLink(f"link version {version[:10]!r} is not supported (this program "
                              f"reads version {VERSION})")
    info_hash = _hex(_one(fields, "ih"), "info-hash (ih=)")
    if info_hash is None:
        raise BadLink("malformed link: no info-hash (ih=)")
    trackers = []
    for value in fields.get("tr", ()):
        try:
            tracker = TrackerAddress.parse(value)
        except PeeritError as e:
            raise BadLink(f"malformed link: {e}") from None
        if tracker.fingerprint is None:
            raise UnpinnedTracker(f"tracker {value[:80]!r} in the link has no fingerprint "
                                  f"(HOST:PORT#FINGERPRINT)")
        trackers.append(tracker)
    if not trackers:
        raise BadLink("malformed link: no tracker (tr=HOST:PORT#FINGERPRINT)")
    size = _one(fields, "sz")
    if size is not None:
        if not size.isdigit() or not size.isascii() or len(size) > 20:
            raise BadLink(f"malformed link: size {size[:20]!r} is not a number of bytes")
        size = int(size)
    return Link(info_hash, tuple(trackers), _one(fields, "dn") or "", size,
                _hex(_one(fields, "pe"), "peer id (pe=)"))


def _one(fields: dict, key: str) -> str | None:
    values = fields.get(key)
    return values[0] if values else None


def _hex(value: str | None, what: str) -> bytes | None:
    if value is None:
        return None
    try:
        raw = bytes.fromhex(value) if value.isascii() else b""
    except ValueError:
        raw = b""
    if len(raw) != 32 or len(value) != 64:
        raise BadLink(f"malformed link: {what} must be 64 hex digits")
    return raw


def from_metainfo(metainfo, peer_id: bytes | None = None, extra_trackers=()) -> Link:
    """The link of a share: its pinned trackers (the .p2p's, then the daemon's own)."""
    trackers = []
    for tracker in (*metainfo.trackers, *extra_trackers):
        if tracker.fingerprint is not None and tracker not in trackers:
            trackers.append(tracker)
    if not trackers:
        raise UnpinnedTracker("no tracker with a fingerprint to put in the link (the .p2p "
                              "lists none and the daemon has no --tracker)")
    return Link(metainfo.info_hash, tuple(trackers[:MAX_TRACKERS]), metainfo.name,
                metainfo.total_size, peer_id)

