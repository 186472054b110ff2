"""STUN and netcheck behind real Linux NAT, one lab per NAT type; and proof the types are real.

Each router type must show its RFC 4787 behaviour to our netcheck (mapping and filtering),
coturn must answer our client with the router's public address, and a filtering check with
plain datagrams from several public endpoints shows the lab's NAT types are what they claim.
"""

import json
import sys

import pytest

from lab import (
    COTURN_IPS, NAT_TYPES, ROUTER_PUBLIC, STRANGER_IP, STUN_ALT_PORT, STUN_PORT, TRACKER_IP)

PROBE = [sys.executable, "-m", "peerit.nat.netcheck_probe"]
TRACKER = f"{TRACKER_IP}:{STUN_PORT}"
COTURN = f"{COTURN_IPS[0]}:{STUN_PORT}"

EXPECTED = {  # nat type -> (mapping, filtering) as netcheck reports them with coturn's help
    "full-cone": ("endpoint-independent", "endpoint-independent"),
    "address-restricted": ("endpoint-independent", "address-dependent"),
    "port-restricted": ("endpoint-independent", "address-and-port-dependent"),
    "symmetric": ("address-and-port-dependent", "address-and-port-dependent"),
}

# Which public endpoints get a datagram through to the inside host's STUN-mapped port, after
# it sent one datagram to CONTACTED and one Binding request to the tracker.
CONTACTED = (STRANGER_IP, 6000)
SENDERS = {
    "contacted": CONTACTED,  # the exact endpoint the host sent to
    "contacted-ip-other-port": (STRANGER_IP, 6001),
    "tracker-ip-other-port": (TRACKER_IP, 6003),  # the STUN server's address, not its port
    "stranger": (COTURN_IPS[1], 6002),  # an address the host never sent to
}
GETS_THROUGH = {
    "full-cone": set(SENDERS),
    "address-restricted": {"contacted", "contacted-ip-other-port", "tracker-ip-other-port"},
    "port-restricted": {"contacted"},
    # The mapped port belongs to the flow toward the tracker; CONTACTED got another one.
    "symmetric": set(),
}


@pytest.fixture(scope="module", params=NAT_TYPES)
def lab(request, make_lab):
    with make_lab(r1=request.param) as lab:
        lab.nat_type = request.param
        lab.start_stun_responder()
        lab.start_coturn()
        yield lab


def records(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_netcheck_reports_the_router_type(lab):
    """Mapping and filtering as RFC 4787 names them, and the router's public address."""
    result = lab.exec("a1", [*PROBE, "netcheck", "--tracker", TRACKER,
                             "--alt-port", str(STUN_ALT_PORT), "--external", COTURN],
                      timeout=60)
    report = json.loads(result.stdout)
    mapping, filtering = EXPECTED[lab.nat_type]
    assert report["udp_works"] is True
    assert report["public_host"] == ROUTER_PUBLIC["r1"]
    assert (report["mapping"], report["filtering"]) == (mapping, filtering), report
    seen_by = {o["purpose"]: o for o in report["observations"]}
    assert seen_by["external"]["outcome"] == "answered"
    assert seen_by["external"]["mapped"].startswith(ROUTER_PUBLIC["r1"] + ":")
    assert seen_by["external"]["detail"].startswith("software: Coturn")


def test_coturn_answers_our_client_with_the_router_address(lab):
    """Interop: our StunClient parses coturn's response; both LAN hosts share r1's address."""
    for host in ("a1", "a2"):
        result = lab.exec(host, [*PROBE, "binding", COTURN], timeout=30)
        mapped = records(result.stdout)[0]["mapped"]
        assert mapped.split(":")[0] == ROUTER_PUBLIC["r1"], result.stdout


def test_turnutils_stunclient_gets_the_router_address_from_our_responder(lab):
    """Interop the other way: coturn's client (bare 20-byte Binding requests) behind the NAT
    gets an answer from our STUN responder, with r1's public address."""
    result = lab.exec("a1", ["turnutils_stunclient", "-p", str(STUN_PORT), TRACKER_IP],
                      timeout=30)
    assert f"UDP reflexive addr: {ROUTER_PUBLIC['r1']}:" in result.stdout, result.stdout


def test_filtering_is_what_the_type_claims(lab):
    """Datagrams from four public endpoints to the mapped port: only the expected ones pass."""
    listener = lab.python(
        "a1", "peerit.nat.netcheck_probe", "binding", TRACKER,
        "--contact", f"{CONTACTED[0]}:{CONTACTED[1]}", "--listen", "4",
        log_name=f"filtering-{lab.nat_type}.log")
    log = listener.wait_for_log('"mapped"', timeout=20)
    mapped = next(r["mapped"] for r in records(log) if "mapped" in r)
    assert mapped.startswith(ROUTER_PUBLIC["r1"] + ":")
    sources = [f"--from={name}={host}:{port}" for name, (host, port) in SENDERS.items()]
    lab.exec("pub", [*PROBE, "send", mapped, "--count", "3", *sources], timeout=30)
    listener.wait_for_log('"done"', timeout=20)
    received = {r["received"]: r["from"] for r in records(listener.log()) if "received" in r}
    assert set(received) == GETS_THROUGH[lab.nat_type], received
    for name, source in received.items():
        assert source == "{}:{}".format(*SENDERS[name])


@pytest.mark.parametrize("lab", ["port-restricted"], indirect=True)
def test_loss_injection_drops_forwarded_traffic(lab):
    """100% loss on r1 makes STUN time out; removing it restores the path."""
    lab.set_loss("r1", 1000)
    try:
        blocked = lab.exec("a1", [*PROBE, "binding", TRACKER], timeout=30, check=False)
    finally:
        lab.set_loss("r1", 0)
    assert blocked.returncode == 1
    assert records(blocked.stdout)[0]["kind"] == "TimedOut"
    restored = lab.exec("a1", [*PROBE, "binding", TRACKER], timeout=30)
    assert records(restored.stdout)[0]["mapped"].startswith(ROUTER_PUBLIC["r1"] + ":")


@pytest.mark.parametrize("lab", ["port-restricted"], indirect=True)
def test_partial_loss_drops_about_that_share(lab):
    """50% loss (numgen random) lets roughly half of 200 inbound datagrams through.

    The bounds are wide (30-170): outside them only if the rule is not random or not there;
    by chance, less likely than 1e-20."""
    listener = lab.python(
        "a1", "peerit.nat.netcheck_probe", "binding", TRACKER,
        "--contact", f"{CONTACTED[0]}:{CONTACTED[1]}", "--listen", "4",
        log_name="partial-loss.log")
    mapped = next(r["mapped"] for r in records(listener.wait_for_log('"mapped"', timeout=20))
                  if "mapped" in r)
    lab.set_loss("r1", 500)
    try:
        lab.exec("pub", [*PROBE, "--bind", CONTACTED[0], "--port", str(CONTACTED[1]), "send",
                         mapped, "--count", "200", "--interval", "0.005"], timeout=30)
    finally:
        lab.set_loss("r1", 0)
    listener.wait_for_log('"done"', timeout=20)
    received = sum(1 for r in records(listener.log()) if "received" in r)
    assert 30 <= received <= 170, received


@pytest.mark.parametrize("lab", ["port-restricted", "full-cone"], indirect=True)
def test_router_does_not_hairpin(lab):
    """a2 cannot reach a1 through r1's public address (no hairpin NAT, as on many home
    routers), while the LAN path works: peers behind one NAT must use LAN candidates."""
    listener = lab.python(
        "a1", "peerit.nat.netcheck_probe", "--port", "7000", "binding", TRACKER,
        "--listen", "12", log_name=f"hairpin-{lab.nat_type}.log")  # slack for loaded CI
    mapped = next(r["mapped"] for r in records(listener.wait_for_log('"mapped"', timeout=20))
                  if "mapped" in r)
    lab.exec("a2", [*PROBE, "send", mapped, "--count", "3", "--payload", "hairpin"],
             timeout=30)
    lab.exec("a2", [*PROBE, "send", "10.201.0.10:7000", "--count", "3", "--payload", "lan"],
             timeout=30)
    listener.wait_for_log('"done"', timeout=40)
    received = {r["received"] for r in records(listener.log()) if "received" in r}
    assert received == {"lan"}
