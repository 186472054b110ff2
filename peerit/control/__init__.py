"""The control channel between peerit-ctl and its daemon (AMP over a UNIX socket)."""
