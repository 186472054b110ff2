"""Test data on disk: reproducible pseudo-random files and digests to compare copies."""

import hashlib
from pathlib import Path

from peerit.local_swarm import sha256_of

MiB = 1 << 20


def random_file(path: Path, size: int, seed: int = 0) -> Path:
    """``size`` pseudo-random bytes (fast: SHA-256 chained blocks), reproducible by seed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    block = hashlib.sha256(str(seed).encode()).digest() * (MiB // 32)
    with open(path, "wb") as f:
        written = counter = 0
        while written < size:
            chunk = hashlib.sha256(block[:64] + counter.to_bytes(8, "big")).digest() + \
                block[32:]
            chunk = chunk[:size - written]
            f.write(chunk)
            written += len(chunk)
            counter += 1
    return path


def tree_digest(root: Path) -> dict:
    """Relative path -> SHA-256 of every file under ``root``."""
    root = Path(root)
    return {str(p.relative_to(root)): sha256_of(p) for p in sorted(root.rglob("*"))
            if p.is_file()}
