"""The NAT lab: real Linux netfilter NAT between network namespaces, for tests run as root.

Topology (docs/natlab.md has the picture and the reasons)::

    public namespace: bridge "br0" = the Internet, 198.18.0.0/24 (RFC 2544 benchmark range)
        198.18.0.1  tracker / STUN responder      198.18.0.2, .3  coturn (RFC 5780 pair)
        198.18.0.4  a stranger (filtering tests)  198.18.0.11 r1's WAN, 198.18.0.12 r2's WAN
    r1: NAT router, LAN bridge 10.201.0.1/24 with hosts a1 (10.201.0.10) and a2 (10.201.0.11)
    r2: NAT router, LAN bridge 10.202.0.1/24 with host b1 (10.202.0.10)

Each router's NAT type is one of :data:`NAT_TYPES`, built with nftables. Routers drop
unsolicited traffic on their WAN side, as home routers do. Loss can be injected per router.

Safety: everything lives in namespaces named ``pitlab-<pid>-<random>-<role>``; the root
namespace only gets blackhole routes for the lab prefixes (so nothing there can leak lab
traffic out of the machine), shared by labs running at once and removed by the last one
to tear down. Every process the lab starts is ended by
PID, and teardown runs even when setup fails halfway. Stale namespaces left by a crashed run
(of this lab only: its prefix, and a PID that no longer runs) are deleted at the next start.
"""

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from peerit.testing.processes import Process

PREFIX = "pitlab"
NAT_TYPES = ("full-cone", "address-restricted", "port-restricted", "symmetric")

PUBLIC_PREFIX = "198.18.0.0/24"
TRACKER_IP = "198.18.0.1"
COTURN_IPS = ("198.18.0.2", "198.18.0.3")
STRANGER_IP = "198.18.0.4"
ROUTER_PUBLIC = {"r1": "198.18.0.11", "r2": "198.18.0.12"}
LAN_PREFIX = {"r1": "10.201.0.0/24", "r2": "10.202.0.0/24"}
ROUTER_LAN = {"r1": "10.201.0.1", "r2": "10.202.0.1"}
HOSTS = {  # host -> (router, address)
    "a1": ("r1", "10.201.0.10"),
    "a2": ("r1", "10.201.0.11"),
    "b1": ("r2", "10.202.0.10"),
}
LAB_PREFIXES = (PUBLIC_PREFIX, *LAN_PREFIX.values())
STUN_PORT = 3478
STUN_ALT_PORT = 3479
MAPPING_TIMEOUT = 120  # seconds the emulated full-cone/address-restricted mappings live


class LabUnavailable(Exception):
    """This machine cannot run the lab (not root, a tool missing); tests skip with the reason."""


def check_available() -> None:
    if os.geteuid() != 0:
        raise LabUnavailable("the NAT lab needs root (network namespaces and nftables)")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            raise LabUnavailable(f"the NAT lab needs {tool!r} (iproute2 / nftables)")


def _run(argv: list[str], timeout: float = 20.0, check: bool = True,
         stdin: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): "
                           f"{result.stderr.strip() or result.stdout.strip()}")
    return result


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lab_namespaces():
    """(name, creating PID) of every namespace named as this lab names them."""
    listing = _run(["ip", "netns", "list"], check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if len(parts) >= 4 and parts[0] == PREFIX and parts[1].isdigit():
            yield name, int(parts[1])


def remove_stale_namespaces() -> list[str]:
    """Delete namespaces of this lab whose creating process is gone; returns their names."""
    removed = []
    for name, pid in _lab_namespaces():
        if pid == os.getpid() or _pid_alive(pid):
            continue  # a lab that is (or may be) still running
        _run(["ip", "netns", "del", name], check=False)
        removed.append(name)
    return removed


def other_running_labs(run_id: str) -> list[str]:
    """Namespaces of other labs whose creating process still runs."""
    return [name for name, pid in _lab_namespaces()
            if not name.startswith(run_id + "-") and _pid_alive(pid)]


def router_ruleset(nat_type: str) -> str:
    """The nftables ruleset of a router of this NAT type (WAN "wan", LAN bridge "lan")."""
    if nat_type not in NAT_TYPES:
        raise ValueError(f"unknown NAT type {nat_type!r}; expected one of {NAT_TYPES}")
    # Dropping unsolicited WAN traffic in input/forward keeps its conntrack entry from ever
    # being confirmed, so it cannot steal a port masquerade would pick for an inside host.
    filtering = """
table inet lab_filter {
    chain input {
        type filter hook input priority filter; policy drop;
        iif "lo" accept
        ct state established,related accept
        iifname "lan" accept
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" oifname "wan" accept
        iifname "wan" ct status dnat accept
    }
}
table inet lab_loss {
    chain forward {
        type filter hook forward priority -10; policy accept;
    }
}
"""
    if nat_type == "port-restricted":
        nat = """
table ip lab_nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" masquerade
    }
}
"""
    elif nat_type == "symmetric":
        nat = """
table ip lab_nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" masquerade fully-random
    }
}
"""
    else:
        # Endpoint-independent filtering does not exist in Linux: remember each UDP mapping
        # masquerade made (public port -> inside address and port, read after the NAT hook
        # from the conntrack entry) and DNAT new inbound flows to it. Address-restricted
        # also remembers which remote addresses each public port has sent to.
        restrict = nat_type == "address-restricted"
        allowed_set = f"""
    set contacted {{
        type inet_service . ipv4_addr; flags dynamic, timeout; timeout {MAPPING_TIMEOUT}s;
    }}""" if restrict else ""
        match = "udp dport . ip saddr @contacted" if restrict else "udp dport @mappings"
        remember_contacted = (
            f"\n        oifname \"wan\" ct direction original meta l4proto udp "
            f"update @contacted {{ udp sport . ip daddr timeout {MAPPING_TIMEOUT}s }}"
            if restrict else "")
        nat = f"""
table ip lab_nat {{
    map mappings {{
        type inet_service : ipv4_addr . inet_service; flags dynamic, timeout;
        timeout {MAPPING_TIMEOUT}s;
    }}{allowed_set}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "wan" {match} dnat ip to udp dport map @mappings
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" masquerade
    }}
    chain remember {{
        type filter hook postrouting priority srcnat + 10; policy accept;
        oifname "wan" ct direction original meta l4proto udp update @mappings {{ udp sport timeout {MAPPING_TIMEOUT}s : ct original ip saddr . ct original proto-src }}{remember_contacted}
    }}
}}
"""
    return filtering + nat


class NatLab:
    """The lab as a context manager: ``with NatLab(workdir, r1="symmetric") as lab: ...``."""

    def __init__(self, workdir: Path, r1: str = "port-restricted", r2: str = "port-restricted",
                 loss: dict[str, int] | None = None):
        for nat_type in (r1, r2):
            if nat_type not in NAT_TYPES:
                raise ValueError(f"unknown NAT type {nat_type!r}")
        self.workdir = Path(workdir)
        self.nat_types = {"r1": r1, "r2": r2}
        self.initial_loss = dict(loss or {})
        self.run_id = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}"
        self.namespaces: dict[str, str] = {}
        self._created: list[str] = []
        self._uses_blackholes = False  # set once setup reached the root's routes
        self._processes: list[Process] = []

    # --- life cycle ---------------------------------------------------------------------

    def __enter__(self) -> "NatLab":
        check_available()
        try:
            self.setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.teardown()

    def setup(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        remove_stale_namespaces()
        self._add_blackholes()
        for role in ("pub", "r1", "r2", *HOSTS):
            name = f"{self.run_id}-{role}"
            _run(["ip", "netns", "add", name])
            self._created.append(name)
            self.namespaces[role] = name
            self.ip(role, "link", "set", "lo", "up")
            # IPv4 only: no router solicitations or DAD noise, nothing the tests don't expect.
            self.sysctl(role, "net.ipv6.conf.all.disable_ipv6", "1")
            self.sysctl(role, "net.ipv6.conf.default.disable_ipv6", "1")
        for role in ("pub", "r1", "r2"):
            # Where br_netfilter is loaded (Docker loads it), bridged frames would also go
            # through the namespace's IP hooks: r1's forward policy would then drop LAN-to-LAN
            # traffic. A real switch does not filter; neither do the lab's bridges.
            if self.exec(role, ["test", "-e", "/proc/sys/net/bridge"], check=False) \
                    .returncode == 0:
                self.sysctl(role, "net.bridge.bridge-nf-call-iptables", "0")
        self.ip("pub", "link", "add", "br0", "type", "bridge")
        self.ip("pub", "link", "set", "br0", "up")
        for address in (TRACKER_IP, *COTURN_IPS, STRANGER_IP):
            self.ip("pub", "addr", "add", f"{address}/24", "dev", "br0")
        for router in ("r1", "r2"):
            self._veth(router, "wan", "pub", router)
            self.ip("pub", "link", "set", router, "master", "br0", "up")
            self.ip(router, "addr", "add", f"{ROUTER_PUBLIC[router]}/24", "dev", "wan")
            self.ip(router, "link", "set", "wan", "up")
            self.ip(router, "link", "add", "lan", "type", "bridge")
            self.ip(router, "addr", "add", f"{ROUTER_LAN[router]}/24", "dev", "lan")
            self.ip(router, "link", "set", "lan", "up")
            self.sysctl(router, "net.ipv4.ip_forward", "1")
            self.nft(router, router_ruleset(self.nat_types[router]))
            self.set_loss(router, self.initial_loss.get(router, 0))
        for host, (router, address) in HOSTS.items():
            self._veth(host, "eth0", router, host)
            self.ip(router, "link", "set", host, "master", "lan", "up")
            self.ip(host, "addr", "add", f"{address}/24", "dev", "eth0")
            self.ip(host, "link", "set", "eth0", "up")
            self.ip(host, "route", "add", "default", "via", ROUTER_LAN[router])
        for host, (router, _) in HOSTS.items():
            self.wait_reachable(host, ROUTER_LAN[router])

    def teardown(self) -> None:
        """End our processes by PID, delete our namespaces, remove our blackhole routes.

        Each step runs even if an earlier one fails; the first error is raised at the end.
        """
        errors: list[BaseException] = []
        for process in reversed(self._processes):
            try:
                process.stop(timeout=5)
            except BaseException as e:  # noqa: BLE001 - keep tearing down
                errors.append(e)
        self._processes.clear()
        for name in reversed(self._created):
            try:
                _run(["ip", "netns", "del", name])
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
        self._created.clear()
        # The routes are shared by every lab running at once (a later one finds them there
        # and leaves them be): the last lab out removes them, whoever added them, so a
        # concurrent lab never runs without them.
        if self._uses_blackholes:
            try:
                others = other_running_labs(self.run_id)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
                others = ["(unknown)"]
            if not others:
                for prefix in LAB_PREFIXES:
                    try:
                        if _run(["ip", "route", "show", "exact", prefix]).stdout.startswith(
                                "blackhole"):
                            _run(["ip", "route", "del", "blackhole", prefix])
                    except BaseException as e:  # noqa: BLE001
                        errors.append(e)
        self._uses_blackholes = False
        if errors:
            raise errors[0]

    def _add_blackholes(self) -> None:
        self._uses_blackholes = True
        for prefix in LAB_PREFIXES:
            existing = _run(["ip", "route", "show", "exact", prefix]).stdout.strip()
            if existing:
                if existing.startswith("blackhole"):
                    continue  # another lab run (or a crashed one) holds it: leave it be
                raise RuntimeError(
                    f"the root namespace already routes {prefix} ({existing}); "
                    f"the lab will not run on top of a real network")
            _run(["ip", "route", "add", "blackhole", prefix])

    # --- plumbing -----------------------------------------------------------------------

    def ns(self, role: str) -> str:
        return self.namespaces[role]

    def ip(self, role: str, *args: str) -> subprocess.CompletedProcess:
        return _run(["ip", "-n", self.ns(role), *args])

    def sysctl(self, role: str, key: str, value: str) -> None:
        self.exec(role, ["sysctl", "-q", "-w", f"{key}={value}"])

    def exec(self, role: str, argv: list[str], timeout: float = 20.0,
             check: bool = True) -> subprocess.CompletedProcess:
        """Run a short command inside a namespace and wait for it."""
        return _run(["ip", "netns", "exec", self.ns(role), *argv], timeout=timeout,
                    check=check)

    def nft(self, role: str, ruleset: str) -> None:
        _run(["ip", "netns", "exec", self.ns(role), "nft", "-f", "-"], stdin=ruleset)

    def _veth(self, role_a: str, name_a: str, role_b: str, name_b: str) -> None:
        # Created straight inside the two namespaces: no interface ever exists in the root one.
        self.ip(role_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b,
                "netns", self.ns(role_b))

    def wait_reachable(self, role: str, address: str, timeout: float = 10.0) -> None:
        """Wait until ``address`` answers from ``role``: a UDP datagram to its discard port
        comes back as ICMP port-unreachable (no ping binary needed)."""
        import sys
        probe = ("import socket,sys\n"
                 "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(0.5)\n"
                 f"s.connect(({address!r},9))\n"
                 "for _ in range(4):\n"
                 "    s.send(b'lab')\n"
                 "    try: s.recv(10)\n"
                 "    except ConnectionRefusedError: sys.exit(0)\n"
                 "    except OSError: pass\n"
                 "sys.exit(1)\n")
        deadline = time.monotonic() + timeout
        while self.exec(role, [sys.executable, "-c", probe], check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{role} cannot reach {address} in the lab")
            time.sleep(0.1)

    # --- knobs --------------------------------------------------------------------------

    def set_loss(self, router: str, per_mille: int) -> None:
        """Drop this share (0-1000) of forwarded packets, both directions, at random."""
        if not 0 <= per_mille <= 1000:
            raise ValueError("loss is per mille: 0-1000")
        rules = "flush chain inet lab_loss forward\n"
        if per_mille == 1000:
            rules += "add rule inet lab_loss forward drop\n"  # "< 1000" is out of nft's range
        elif per_mille:
            rules += f"add rule inet lab_loss forward numgen random mod 1000 < {per_mille} drop\n"
        self.nft(router, rules)

    def flush_conntrack(self, router: str) -> None:
        """Forget the router's NAT mappings (needs the conntrack tool)."""
        self.exec(router, ["conntrack", "-F"], check=False)

    def ruleset(self, router: str) -> str:
        return self.exec(router, ["nft", "list", "ruleset"]).stdout

    # --- processes ----------------------------------------------------------------------

    def spawn(self, role: str, argv: list[str], log_path: Path | str,
              env: dict | None = None) -> Process:
        """Start ``argv`` inside a namespace; ended by PID at teardown (``ip netns exec``
        execs the program, so the PID is the program's own)."""
        process = Process(["ip", "netns", "exec", self.ns(role), *argv], Path(log_path), env)
        self._processes.append(process)
        return process

    def python(self, role: str, module: str, *args: str, log_name: str,
               env: dict | None = None) -> Process:
        import sys
        return self.spawn(role, [sys.executable, "-m", module, *args],
                          self.workdir / log_name, env)

    def start_stun_responder(self) -> Process:
        """peer-it's tracker STUN service on TRACKER_IP, ports 3478 and 3479."""
        process = self.python(
            "pub", "peerit.tracker.stun_server",
            "--stun", f"udp:{STUN_PORT}:interface={TRACKER_IP}",
            "--stun-alt-port", str(STUN_ALT_PORT), log_name="stun_server.log")
        deadline = time.monotonic() + 20
        while process.log().count("STUN listening on") < 2:
            if not process.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"STUN responder did not start:\n{process.log()[-3000:]}")
            time.sleep(0.05)
        return process

    def start_coturn(self) -> Process:
        """coturn as a plain STUN server on both COTURN_IPS (ports 3478 and its RFC 5780
        alternate 3479), no TURN, no auth, no TLS, no CLI, no config file, logging to stdout."""
        if shutil.which("turnserver") is None:
            raise LabUnavailable("coturn (turnserver) is not installed")
        argv = ["turnserver", "-n", "--stun-only", "--no-auth",
                "-L", COTURN_IPS[0], "-L", COTURN_IPS[1], "-p", str(STUN_PORT),
                "--alt-listening-port", str(STUN_ALT_PORT),
                "--no-tls", "--no-dtls", "--no-cli", "--log-file", "stdout", "--simple-log",
                "--pidfile", str(self.workdir / "turnserver.pid"),
                "--userdb", str(self.workdir / "turndb")]
        process = self.spawn("pub", argv, self.workdir / "coturn.log")
        self.wait_for_udp_listener("pub", f"{COTURN_IPS[1]}:{STUN_ALT_PORT}", process)
        return process

    def wait_for_udp_listener(self, role: str, address: str, process: Process,
                              timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while address not in self.exec(role, ["ss", "-Hunl"]).stdout:
            if not process.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on udp {address}:\n{process.log()[-3000:]}")
            time.sleep(0.05)
