"""NAT traversal: the one UDP socket (``udp``), STUN client and responder logic (``stun``),
the NAT behaviour check (``netcheck``), hole punching and the QUIC adapter."""
