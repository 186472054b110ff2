"""A JSON-lines record of what one swarm decides and exchanges, for ``bench/timeline.py``.

Off unless the ``PEERIT_SWARM_TRACE`` environment variable names a directory: then every
swarm of the daemon writes ``DIR/<our peer id>-<info-hash>.jsonl``, one object per event,
``{"t": clock seconds, "e": event, ...}`` (see ``Swarm._note`` for the events). A
diagnostic for benchmarks on loopback: it records peer ids, pieces and timings, never data.
Writes are buffered and flushed at most every ``FLUSH_EVERY`` seconds, on completion and at
stop, so tracing costs a swarm little more than building the lines.
"""

import json
import os
from pathlib import Path

TRACE_VARIABLE = "PEERIT_SWARM_TRACE"
FLUSH_EVERY = 0.5  # seconds
BUFFER = 1 << 16


class SwarmTrace:
    """An observer for ``Swarm``: ``trace(event, **fields)`` appends one line."""

    def __init__(self, path, clock, me: str, info_hash: str):
        self.clock = clock
        self._file = open(path, "a", buffering=BUFFER, encoding="utf-8")
        self._flushed = clock.seconds()
        self("trace", me=me, info_hash=info_hash)

    def __call__(self, event: str, **fields) -> None:
        if self._file is None:
            return
        now = self.clock.seconds()
        self._file.write(json.dumps({"t": round(now, 6), "e": event, **fields},
                                    separators=(",", ":")) + "\n")
        if now - self._flushed >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
            self._flushed = self.clock.seconds()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def from_environment(info_hash: bytes, my_peer_id: bytes, clock,
                     environ=os.environ) -> SwarmTrace | None:
    """A trace when ``PEERIT_SWARM_TRACE`` names a directory (created if missing)."""
    directory = environ.get(TRACE_VARIABLE)
    if not directory:
        return None
    Path(directory).mkdir(parents=True, exist_ok=True)
    me, swarm = my_peer_id.hex()[:12], info_hash.hex()[:12]
    return SwarmTrace(Path(directory) / f"{me}-{swarm}.jsonl", clock, me, swarm)
