"""A real peer-it daemon on a file system without ``fallocate`` (as on some network and
older copy-on-write file systems): files are created sparse, so a full disk shows up in the
middle of a download instead of when it starts. Run like twistd:
``python -m tests.reliability.no_fallocate_daemon -n --pidfile= peerit-daemon ...``."""

import errno
import os


def _unsupported(fd, offset, length):
    raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))


os.posix_fallocate = _unsupported

if __name__ == "__main__":
    from twisted.scripts.twistd import run
    run()
