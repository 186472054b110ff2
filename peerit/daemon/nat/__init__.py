"""The daemon's NAT side: its UDP sockets, public address, path dialer and tracker pushes,
composed by :class:`peerit.daemon.nat.manager.NatManager` from ``peerit.nat``'s blocks."""
