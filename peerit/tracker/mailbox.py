"""The rendezvous for short codes: magic-wormhole's mailbox server as a tracker child service.

``twistd peerit-tracker --mailbox auto`` (or an endpoint) runs it beside the tracker. It only
relays PAKE messages between the two daemons of a code exchange: it never learns the code's
key nor the link passed through it (see peerit/daemon/code_exchange.py). Its URL is written to
``DATA_DIR/mailbox.url`` once it listens, for operators to publish (and tests to read).
"""

import os

from twisted.application import service
from twisted.application.internet import TimerService
from twisted.logger import Logger
from wormhole_mailbox_server.database import create_or_upgrade_channel_db
from wormhole_mailbox_server.server import make_server
from wormhole_mailbox_server.web import make_web_server

from peerit.addresses import format_host_port
from peerit.tracker.service import _listen_now, advertised_host, write_atomic

log = Logger()

URL_FILE = "mailbox.url"
CHANNEL_EXPIRATION = 11 * 60.0  # the server's own defaults: channels idle this long go
PRUNE_INTERVAL = 5 * 60.0


def fast_commits(db) -> None:
    """Commits that do not wait for the disk. The server commits every message it relays,
    and a code exchange is a dozen messages in a row, each waiting on the one before: with
    SQLite's default (a rollback journal synced twice per commit) each costs a disk flush,
    milliseconds on a busy disk. A write-ahead log synced only at checkpoints keeps the file
    consistent after a crash of the tracker; an operating-system crash may lose the last
    moments' channels, which only means a code given just then has to be given again."""
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")


class MailboxService(service.MultiService):
    def __init__(self, reactor, description: str, data_dir: str):
        super().__init__()
        self.reactor = reactor
        self.description = description
        self.data_dir = data_dir
        self.url_path = os.path.join(data_dir, URL_FILE)
        self.port = None
        self.url = None
        self.db = db = create_or_upgrade_channel_db(os.path.join(data_dir, "mailbox.sqlite"))
        fast_commits(db)
        # No nameplate listing: codes are typed whole, and a list would tell anyone
        # connecting which codes are waiting.
        self.server = make_server(db, allow_list=False, blur_usage=3600)
        self.server.setServiceParent(self)
        TimerService(PRUNE_INTERVAL, self._prune).setServiceParent(self)

    def _prune(self) -> None:
        now = self.reactor.seconds()
        try:
            self.server.prune_all_apps(now, now - CHANNEL_EXPIRATION)
        except Exception:
            log.failure("mailbox prune failed")

    def startService(self):
        super().startService()
        site = make_web_server(self.server, log_requests=False)
        self.port = _listen_now(self.reactor, self.description, site)
        bound = self.port.getHost()
        self.url = f"ws://{format_host_port(advertised_host(bound.host), bound.port)}/v1"
        write_atomic(self.url_path, self.url + "\n")
        log.info("code rendezvous (magic-wormhole mailbox) listening at {url}", url=self.url)

    def stopService(self):
        try:
            os.unlink(self.url_path)
        except FileNotFoundError:
            pass
        port, self.port = self.port, None
        d = super().stopService()
        if port is not None:
            d2 = port.stopListening()
            if d2 is not None:
                return d2.addBoth(lambda _: d)
        return d
