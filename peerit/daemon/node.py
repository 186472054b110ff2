"""The daemon's own ground: its data folder, its identity (whose hash is our peer id), the
resume state, and the addresses it tells others about.

A child service of the daemon; the first to start and the last to stop, since every other
part reads the identity or writes the resume state.
"""

import fcntl
import os
import socket
import struct

from twisted.application import service

from peerit.daemon.state import StateDB
from peerit.identity import Identity


class Node(service.Service):
    name = "node"

    def __init__(self, data_dir: str, advertise: list[str] = ()):
        self.data_dir = os.path.abspath(os.path.expanduser(data_dir))
        self.advertise = list(advertise)
        self.identity: Identity | None = None
        self.peer_id: bytes | None = None
        self.state: StateDB | None = None  # the resume state

    def startService(self):
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        self.identity = Identity.load_or_create(self.data_dir)
        self.peer_id = self.identity.peer_id
        self.state = StateDB(os.path.join(self.data_dir, "state.sqlite3"))
        super().startService()

    def stopService(self):
        if self.state is not None:
            self.state.close()
        return super().stopService()

    def addresses(self) -> list[str]:
        """Where peers may reach us: ``--advertise``, else this host's own addresses."""
        return self.advertise or local_addresses()


def local_addresses() -> list[str]:
    """This host's non-loopback IPv4 addresses, for peers on the same LAN."""
    addresses = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(sock.fileno(), 0x8915,  # SIOCGIFADDR
                                     struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            address = socket.inet_ntoa(packed[20:24])
            if not address.startswith("127."):
                addresses.append(address)
    finally:
        sock.close()
    return addresses[:8]
