"""An in-memory stand-in for the daemon's ``Operations``, for the web face's unit tests.

Same method names, same return shapes, same error classes as ``peerit.daemon.operations``;
it records the calls that change something so tests can check what reached the daemon.
"""

from twisted.internet import defer

from peerit.daemon.operations import check_share_path
from peerit.errors import MetainfoError, UnknownSwarm, UsageError


def summary(info_hash: str, name: str, **fields) -> dict:
    base = {"info_hash": info_hash, "name": name, "role": "download", "state": "downloading",
            "path": f"/data/{name}", "size": 1 << 20, "done": 0, "pieces": 4,
            "pieces_done": 0, "down_rate": 0.0, "up_rate": 0.0, "downloaded": 0,
            "uploaded": 0, "peers": 0, "known_peers": 0, "eta": -1.0, "hash_failures": 0,
            "banned": 0, "error": ""}
    base.update(fields)
    return base


class FakeOperations:
    def __init__(self):
        self.transfers: dict[str, dict] = {}
        self.calls: list[tuple] = []
        self.shares: dict[str, defer.Deferred] = {}  # path -> pending share (hashing)

    def add(self, info_hash: str, name: str, **fields) -> dict:
        self.transfers[info_hash] = summary(info_hash, name, **fields)
        return self.transfers[info_hash]

    def info(self) -> dict:
        return {"version": "test", "peer_id": "ab" * 32, "data_dir": "/data",
                "listen_port": 1234, "udp_port": 1235, "trackers": [],
                "trackers_connected": [], "public_address": "", "nat_type": "",
                "down_rate": 0.0, "up_rate": 0.0, "transfers": len(self.transfers)}

    def _find(self, ident: str) -> dict:
        matches = [t for h, t in self.transfers.items() if h.startswith(ident.lower())]
        if not ident or not matches:
            raise UnknownSwarm(f"no share or download matches {ident}")
        if len(matches) > 1:
            raise UsageError(f"{ident} matches {len(matches)} transfers; give more digits")
        return matches[0]

    def status(self, ident: str) -> dict:
        return self._find(ident)

    def list_all(self) -> list[dict]:
        return sorted(self.transfers.values(), key=lambda t: t["name"])

    def peers(self, ident: str, limit: int = 100) -> dict:
        self._find(ident)
        return {"peers": [], "total": 0}

    def detail(self, ident: str) -> dict:
        t = self._find(ident)
        return {"transfer": t, "peers": [], "files": [{"path": t["name"], "size": t["size"]}],
                "file_count": 1, "piece_length": 1 << 18, "piece_map": "2100",
                "rate_history": []}

    def metainfo(self, ident: str) -> tuple[str, bytes]:
        t = self._find(ident)
        return t["name"] + ".p2p", b"P2P-bytes-of-" + t["name"].encode()

    def pause(self, ident: str) -> dict:
        t = self._find(ident)
        self.calls.append(("pause", t["info_hash"]))
        t["state"] = "paused"
        return {"info_hash": t["info_hash"]}

    def resume(self, ident: str) -> dict:
        t = self._find(ident)
        self.calls.append(("resume", t["info_hash"]))
        t["state"] = "downloading"
        return {"info_hash": t["info_hash"]}

    def remove(self, ident: str, delete_data: bool) -> dict:
        t = self._find(ident)
        self.calls.append(("remove", t["info_hash"], delete_data))
        del self.transfers[t["info_hash"]]
        return {"info_hash": t["info_hash"]}

    def download_metainfo(self, data: bytes, target_dir: str = "") -> dict:
        if not data.startswith(b"P2P"):
            raise MetainfoError("not a .p2p file (bad magic)")
        self.calls.append(("download", data, target_dir))
        t = self.add("cd" * 32, "uploaded.bin")
        return {"info_hash": t["info_hash"], "name": t["name"], "path": t["path"]}

    async def share_path(self, path: str) -> dict:
        path = check_share_path(path)
        self.calls.append(("share", path))
        d = self.shares[path] = defer.Deferred()
        return await d
