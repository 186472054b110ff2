"""A tracker and daemons as real processes on loopback, in one work directory.

Used by the README demo (bin/demo), the integration tests and the benchmarks. Every process
is started here and ended here by PID; ``close()`` (or the context manager) ends them even
after a failure.
"""

import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from peerit.processes import Process, ctl_argv, environment, twistd_argv


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, to compare a downloaded copy with its source."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class DaemonHandle:
    name: str
    data_dir: Path
    control: str
    args: list = field(default_factory=list)
    process: Process | None = None
    module: str | None = None  # a patched launcher (e.g. peerit.testing.corrupt_daemon)


class LocalSwarm:
    def __init__(self, workdir, prefix: tuple = ()):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.prefix = tuple(prefix)  # e.g. ("ip", "netns", "exec", "ns1") for the NAT lab
        self.tracker_process = None
        self.tracker_endpoint = None
        self.daemons: dict[str, DaemonHandle] = {}
        self._others = []

    # -- tracker --------------------------------------------------------------------------
    def start_tracker(self, *args: str, listen: str = "tcp:0:interface=127.0.0.1",
                      timeout: float = 30) -> str:
        data = self.workdir / "tracker"
        endpoint_file = data / "tracker.endpoint"
        if endpoint_file.exists():
            endpoint_file.unlink()
        self.tracker_process = Process(
            twistd_argv("peerit-tracker", "--listen", listen, "--data-dir", str(data), *args,
                        prefix=self.prefix),
            self.workdir / "tracker.log")
        self.tracker_process.wait_for_path(endpoint_file, timeout)
        self.tracker_endpoint = endpoint_file.read_text().strip()
        return self.tracker_endpoint

    def restart_tracker(self, *args: str, timeout: float = 30) -> str:
        """Stop the tracker and start it again on the same port with the same key."""
        port = self.tracker_endpoint.split("#")[0].rsplit(":", 1)[1]
        host = self.tracker_endpoint.split("#")[0].rsplit(":", 1)[0]
        self.tracker_process.stop()
        # A fixed listen port makes "auto" pick the fixed STUN/relay ports: ask for free ones.
        return self.start_tracker("--stun", f"udp:0:interface={host}",
                                  "--relay", f"tcp:0:interface={host}", *args,
                                  listen=f"tcp:{port}:interface={host}", timeout=timeout)

    # -- daemons --------------------------------------------------------------------------
    def start_daemon(self, name: str, *args: str, timeout: float = 30,
                     advertise: str = "127.0.0.1",
                     listen: str = "tcp:0:interface=127.0.0.1",
                     module: str | None = None) -> DaemonHandle:
        handle = self.daemons.get(name)
        if handle is None:
            data_dir = self.workdir / name
            handle = DaemonHandle(name, data_dir, f"unix:{data_dir}/control.sock",
                                  list(args), module=module)
            self.daemons[name] = handle
        argv = ["--data-dir", str(handle.data_dir), "--control", handle.control,
                "--listen", listen, "--advertise", advertise]
        if self.tracker_endpoint:
            argv += ["--tracker", self.tracker_endpoint]
        handle.process = Process(twistd_argv("peerit-daemon", *argv, *handle.args,
                                             prefix=self.prefix, module=handle.module),
                                 self.workdir / f"{name}.log")
        handle.process.wait_for_path(handle.data_dir / "control.sock", timeout)
        # The socket file appears a moment before it accepts; wait for a real answer.
        deadline = time.monotonic() + timeout
        while True:
            result = self.ctl(name, "status", check=False)
            if result.returncode == 0:
                return handle
            if time.monotonic() > deadline or not handle.process.alive():
                raise RuntimeError(f"daemon {name} not answering: {result.stderr}\n"
                                   f"{handle.process.log()[-3000:]}")
            time.sleep(0.1)

    def kill_daemon(self, name: str) -> None:
        self.daemons[name].process.kill()

    def stop_daemon(self, name: str) -> None:
        self.daemons[name].process.stop()

    def restart_daemon(self, name: str, timeout: float = 30) -> DaemonHandle:
        return self.start_daemon(name, timeout=timeout)

    # -- peerit-ctl -----------------------------------------------------------------------
    def ctl(self, name: str, *args: str, check: bool = True, timeout: float = 120,
            env: dict | None = None) -> subprocess.CompletedProcess:
        handle = self.daemons[name]
        result = subprocess.run(
            ctl_argv(*args, "--control", handle.control, prefix=self.prefix),
            capture_output=True, text=True, timeout=timeout, env=environment(env),
            cwd=str(self.workdir))
        if check and result.returncode != 0:
            raise RuntimeError(f"peerit-ctl {' '.join(args)} failed ({result.returncode}): "
                               f"{result.stderr}\n--- daemon log ---\n"
                               f"{handle.process.log()[-3000:] if handle.process else ''}")
        return result

    def ctl_json(self, name: str, *args: str, **kwargs):
        return json.loads(self.ctl(name, *args, "--json", **kwargs).stdout)

    def status(self, name: str, info_hash: str) -> dict:
        return self.ctl_json(name, "status", info_hash)

    def wait_for(self, name: str, info_hash: str, predicate, timeout: float = 120,
                 interval: float = 0.2) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(name, info_hash)
            if predicate(status):
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: condition not met in {timeout}s: {status}")
            time.sleep(interval)

    def wait_complete(self, name: str, info_hash: str, timeout: float = 120) -> dict:
        return self.wait_for(name, info_hash, lambda s: s["state"] == "seeding", timeout)

    # -- teardown -------------------------------------------------------------------------
    def close(self) -> None:
        for handle in self.daemons.values():
            if handle.process is not None:
                handle.process.stop()
        if self.tracker_process is not None:
            self.tracker_process.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
