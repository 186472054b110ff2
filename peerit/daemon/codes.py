"""Sends and receives by short code: a private share handed to the one peer that used its
code (docs/links.md, "Short codes").

``send`` shares privately (the registry admits nobody for it yet), offers the link through a
:class:`~peerit.daemon.code_exchange.CodeExchange` and follows the send: the receiver pinned
once the code is used, delivered once that peer holds every piece, or failed (wrong code,
expired, refused), which stops sharing (the files stay). ``receive`` takes a code's link and
starts the download, pinned to the sender, once the sender has pinned us.
"""

from twisted.logger import Logger

from peerit.daemon.code_exchange import DEFAULT_CODE_LIFETIME, RECEIVE_WAIT, CodeExchange
from peerit.daemon.metadata_phase import MetadataPhase
from peerit.errors import PeeritError, UnknownSwarm, UsageError
from peerit.metainfo import Metainfo

log = Logger()


class CodeTransfers:
    """``transfers`` is the registry; ``mailbox_url`` the rendezvous (None: no codes)."""

    def __init__(self, reactor, node, transfers, mailbox_url: str | None,
                 code_lifetime: float = DEFAULT_CODE_LIFETIME,
                 code_wait: float = RECEIVE_WAIT, exchange: CodeExchange | None = None):
        self.reactor = reactor
        self.node = node
        self.transfers = transfers
        self.mailbox_url = mailbox_url
        self.code_lifetime = code_lifetime
        self.code_wait = code_wait
        self._exchange = exchange
        self.sends: dict[bytes, dict] = {}  # info-hash -> where a send stands
        transfers.on_peer_complete = self._peer_complete

    def _code_exchange(self) -> CodeExchange:
        if self._exchange is None:
            if not self.mailbox_url:
                raise UsageError("no rendezvous for codes: start the daemon with --mailbox "
                                 "ws://HOST:PORT/v1 (or a --tracker whose operator runs one)")
            self._exchange = CodeExchange(self.reactor, self.mailbox_url,
                                          code_lifetime=self.code_lifetime,
                                          receive_wait=self.code_wait)
        return self._exchange

    # -- sending ------------------------------------------------------------------------
    async def send(self, data_path: str, metainfo_path: str) -> dict:
        """Share privately and get a code for it: only the peer who uses the code may then
        connect for this share (until it is removed)."""
        exchange = self._code_exchange()
        metainfo = Metainfo.read(metainfo_path)
        info_hash = metainfo.info_hash
        transfers = self.transfers
        if transfers.get(info_hash) is not None and info_hash not in transfers.pinned:
            raise UsageError(f"{info_hash.hex()[:16]} is already shared publicly; remove it "
                             f"first to send it privately")
        if self.sends.get(info_hash, {}).get("state") == "waiting for the receiver":
            raise UsageError(f"{info_hash.hex()[:16]} already has a code waiting")
        transfers.pin(info_hash, b"")  # before the share starts: nobody gets in meanwhile
        try:
            transfer = transfers.add_seed(data_path, metainfo_path, check=False)
            link = transfers.link_of(transfer)
            code, receiver = await exchange.offer(
                link, self.node.peer_id, lambda peer: self._receiver_known(info_hash, peer))
        except BaseException:
            self._end(info_hash)
            raise
        self.sends[info_hash] = {"code": code, "state": "waiting for the receiver",
                                 "receiver": "", "error": "", "error_code": 0,
                                 "delivered": False}
        receiver.addErrback(lambda failure: self._failed(info_hash, failure))
        return {"code": code, "info_hash": info_hash.hex(), "name": metainfo.name,
                "link": str(link)}

    def _receiver_known(self, info_hash: bytes, peer_id: bytes) -> None:
        send = self.sends.get(info_hash)
        if send is None or self.transfers.get(info_hash) is None:
            raise PeeritError("this send was removed meanwhile")
        self.transfers.pin(info_hash, peer_id)
        send.update(state="sending", receiver=peer_id.hex())
        log.info("send {t}: admitting receiver {peer} only", t=info_hash.hex()[:12],
                 peer=peer_id.hex()[:12])

    def _failed(self, info_hash: bytes, failure) -> None:
        send = self.sends.get(info_hash)
        if send is not None:
            send.update(state="failed", error=failure.getErrorMessage(),
                        error_code=getattr(failure.value, "exit_code", 1))
        log.info("send {t}: {error}", t=info_hash.hex()[:12], error=failure.getErrorMessage())
        self._end(info_hash)

    def _end(self, info_hash: bytes) -> None:
        """A send nobody will receive: stop sharing (the files stay) and forget the pin."""
        transfer = self.transfers.get(info_hash)
        if transfer is not None:
            self.transfers.remove(transfer, delete_data=False)
        self.transfers.pin(info_hash, None)

    def _peer_complete(self, info_hash: bytes, peer_id: bytes) -> None:
        send = self.sends.get(info_hash)
        if send is not None and send["receiver"] == peer_id.hex():
            send.update(state="delivered", delivered=True)

    def send_status(self, info_hash_hex: str) -> dict:
        """Where a send stands (also once it failed and its share was removed)."""
        try:
            info_hash = bytes.fromhex(info_hash_hex)
        except ValueError:
            info_hash = b""
        send = self.sends.get(info_hash)
        if send is None:
            raise UnknownSwarm(f"no send of {info_hash_hex[:16]!r} in this daemon")
        transfer = self.transfers.get(info_hash)
        summary = transfer.summary() if transfer is not None else \
            {"size": 0, "uploaded": 0, "peers": 0}
        return {**send, "info_hash": info_hash.hex(), "size": summary["size"],
                "uploaded": summary["uploaded"], "peers": summary["peers"]}

    # -- receiving ----------------------------------------------------------------------
    async def receive(self, code: str, target_dir: str):
        """Take the share a code names; data comes only from the sender the code pinned."""
        exchange = self._code_exchange()

        def prepare(link):
            transfer = self.transfers.add_link(link, target_dir, pin=link.peer_id,
                                               start=False)
            if isinstance(transfer, MetadataPhase) and transfer.swarm is None:
                # The sender's address from the tracker while the sender confirms: the
                # dial goes out the moment it has.
                transfer.look_up_peers()
            return transfer
        _, transfer = await exchange.accept(code, self.node.peer_id, prepare)
        if isinstance(transfer, MetadataPhase) and transfer.swarm is None \
                and not transfer.paused:
            transfer.start()
        return transfer
