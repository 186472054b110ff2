"""A tracker and daemons as real processes for tests: :mod:`peerit.local_swarm` (the demo
uses it too)."""

from peerit.local_swarm import DaemonHandle, LocalSwarm  # noqa: F401
