"""The daemon's tracker sessions: a ``TrackerClient`` wired to the daemon's state."""

from peerit.daemon.tracker_client import TrackerClient
from peerit.wire import tracker as wire


def make_tracker_client(daemon, address) -> TrackerClient:
    return TrackerClient(
        daemon.reactor, daemon.identity, address,
        hello=lambda: wire.Hello(**daemon.hello_fields()),
        announces=lambda: [wire.Announce(*a) for a in daemon.announcements(address)],
        on_push=lambda message: daemon.tracker_push(message, address))
