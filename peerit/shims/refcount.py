"""CPython's reference counts: whether a pooled buffer is held by anyone but the pool.

``peerit.wire.framing.BodyPool`` reuses a large frame buffer only when nothing else refers to
it (a hasher or writer thread, a held block, a memoryview). It asks
``sys.getrefcount(buffer) == POOL_ALONE`` while looping over its list; :data:`POOL_ALONE` is
measured here once, in that same shape, since what a reference count includes differs
between interpreter versions. Where there is no ``sys.getrefcount``, or the measurement does
not tell a held buffer from a free one, :data:`REFCOUNTS` is False and the pool never reuses
(every body gets a fresh buffer).
"""

import sys


def _measure() -> tuple[bool, int]:
    getrefcount = getattr(sys, "getrefcount", None)
    if getrefcount is None or sys.implementation.name != "cpython":
        return False, 0
    pool = [bytearray(16)]
    for buffer in pool:
        alone = getrefcount(buffer)
    del buffer
    held = pool[0]
    for buffer in pool:
        shared = getrefcount(buffer)
    del buffer, held
    return shared == alone + 1, alone


#: a free buffer can be told from a held one; POOL_ALONE is a free one's count in the pool loop
REFCOUNTS, POOL_ALONE = _measure()
