"""peerit-ctl: the command line. Offline commands work alone; the rest drive a daemon."""
