from twisted.application.service import ServiceMaker

peeritTracker = ServiceMaker(
    "peer-it tracker", "peerit.tracker.tap",
    "Rendezvous for peer-it swarms: peer lists, STUN, hole punching, relay.",
    "peerit-tracker")
