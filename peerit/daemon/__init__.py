"""The peer-it daemon: shares, downloads, verifies and uploads; driven over AMP by peerit-ctl."""
