from twisted.application.service import ServiceMaker

peeritDaemon = ServiceMaker(
    "peer-it daemon", "peerit.daemon.tap",
    "A peer-it peer: shares, downloads and verifies files, driven by peerit-ctl.",
    "peerit-daemon")
