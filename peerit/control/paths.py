"""Where the daemon's control socket and data live by default: one rule for the daemon, which
listens there, and for ``peerit-ctl`` and :mod:`peerit.client`, which connect there."""

import os

from peerit.errors import UsageError


def default_data_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".local", "share", "peerit")


def default_control_path(data_dir: str | None = None) -> str:
    """Where the control socket lives unless told otherwise (peerit-ctl uses the same rule)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and data_dir in (None, default_data_dir()):
        return os.path.join(runtime, "peerit", "control.sock")
    return os.path.join(data_dir or default_data_dir(), "control.sock")


def control_path_of(spec: str) -> str:
    """The socket path in ``unix:PATH`` (or a bare path)."""
    if spec.startswith("unix:"):
        spec = spec[len("unix:"):]
        if spec.startswith("address="):
            spec = spec[len("address="):]
        spec = spec.split(":", 1)[0]
    if not spec:
        raise UsageError("empty control socket path")
    return os.path.abspath(os.path.expanduser(spec))
