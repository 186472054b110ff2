"""What every benchmark runner shares: child processes with their peak RSS and CPU, free
loopback ports, test files, and one JSON result per sample.

A sample is one timed run of one tool. Each runs in fresh processes so that a process's
peak RSS (``ru_maxrss`` from ``wait4``, or VmHWM from /proc while it runs) belongs to that
run alone. Every child is started here, remembered by PID and ended by PID.
"""

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

MiB = 1 << 20


RSS_FILE_VARIABLE = "PEERIT_BENCH_RSS_FILE"
# Where a sample leaves its downloaded files when the suite says so (see remove_download).
SET_ASIDE_VARIABLE = "PEERIT_BENCH_SET_ASIDE"


def remove_download(path) -> None:
    """Remove a sample's downloaded file or tree, or with ``PEERIT_BENCH_SET_ASIDE=DIR``
    move it into DIR, which the suite removes after the benchmark's last round.

    Why: on ext4 without a journal (this project's benchmark machines) a new inode is never
    one freed in the last 1-5 minutes (ext4's ``recently_deleted``), and the allocator scans
    past each of them: after one sample deleted a 1,000-file tree, the next sample's file
    creation took twice as long, and longer with every round (peer-it 0.28 -> 0.64 s,
    magic-wormhole 0.96 -> 1.49 s in one run). That measures the harness, not the tools.
    """
    path = Path(path)
    aside = os.environ.get(SET_ASIDE_VARIABLE)
    if aside and path.exists():
        os.makedirs(aside, exist_ok=True)
        path.rename(Path(aside) / f"{time.monotonic_ns()}-{os.getpid()}-{path.name}")
    elif path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def package_versions(dists) -> list[str]:
    """``python X.Y.Z`` and ``DIST VERSION`` (or ``DIST absent``) for each distribution."""
    import platform
    from importlib import metadata
    out = [f"python {platform.python_version()}"]
    for dist in dists:
        try:
            out.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(f"{dist} absent")
    return out


def install_sigterm_exit() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks and context managers end our
    children when the suite gives up on a sample; and report this process's peak RSS at
    exit if a :class:`Child` asked for it."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)
    # Our own children must not inherit the request and overwrite our figure.
    rss_file = os.environ.pop(RSS_FILE_VARIABLE, None)
    if rss_file:
        atexit.register(lambda: Path(rss_file).write_text(str(proc_peak_rss_mib(os.getpid()))))


def add_run_parser(sub):
    """The ``run`` subcommand every reference has: what the suite calls it with."""
    p = sub.add_parser("run")
    p.add_argument("--file", type=Path, required=True)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--timeout", type=float, default=120)
    return p


def make_file(path, size: int) -> None:
    """``size`` bytes that no tool can compress or deduplicate (fresh random 1 MiB blocks
    rotated by a byte each time), left in the page cache like a file just written."""
    block = os.urandom(min(size, MiB) or 1)
    with open(path, "wb") as f:
        written = 0
        while written < size:
            chunk = block[:size - written]
            f.write(chunk)
            written += len(chunk)
            block = block[1:] + block[:1]


def make_tree(root, files: int, total: int, per_directory: int = 100) -> None:
    """A directory of ``files`` random files of ``total // files`` bytes each,
    ``per_directory`` to a subdirectory: a source tree, a photo album."""
    root = Path(root)
    each = max(1, total // files)
    for i in range(files):
        directory = root / f"d{i // per_directory:03d}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{i:05d}.bin").write_bytes(os.urandom(each))


def size_of(src) -> int:
    """A file's size, or a directory tree's total."""
    src = Path(src)
    if src.is_file():
        return src.stat().st_size
    return sum(p.stat().st_size for p in src.rglob("*") if p.is_file())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, child: "Child" = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if child is not None and not child.alive():
                raise RuntimeError(f"{child.name} exited before listening on {port}:\n"
                                   f"{child.output_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")
            time.sleep(0.05)


def wait_for_file(path: Path, timeout: float, child: "Child" = None) -> str:
    deadline = time.monotonic() + timeout
    while True:
        if path.exists() and path.stat().st_size:
            return path.read_text().strip()
        if child is not None and not child.alive():
            raise RuntimeError(f"{child.name} exited before writing {path}:\n"
                               f"{child.output_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not written after {timeout}s")
        time.sleep(0.01)


def proc_cpu_times(pid: int) -> tuple[float, float]:
    """(user, kernel) CPU seconds of a live process, all threads, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process from /proc/PID/stat."""
    return sum(proc_cpu_times(pid))


def proc_peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Child:
    """A child process whose output goes to a log file, reaped with ``wait4`` so its CPU
    time is known after it ends.

    Peak RSS: ``ru_maxrss`` counts the spawning process's memory too (the child runs in its
    parent's address space until ``exec`` under vfork), so a child that calls
    :func:`install_sigterm_exit` writes its own VmHWM to a file at exit and that is used;
    ``ru_maxrss`` only for programs that are not ours (the wormhole servers).
    """

    def __init__(self, name: str, argv: list, log_dir: Path, env: dict | None = None,
                 cwd: str | None = None):
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.log"
        self._log = open(self.log_path, "ab")
        full_env = dict(os.environ)
        full_env["PYTHONUNBUFFERED"] = "1"
        self._rss_file = Path(log_dir) / f"{name}.rss"
        self._rss_file.unlink(missing_ok=True)
        full_env[RSS_FILE_VARIABLE] = str(self._rss_file)
        if env:
            full_env.update(env)
        self.popen = subprocess.Popen(
            [str(a) for a in argv], stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=full_env, cwd=cwd, start_new_session=True)
        self.pid = self.popen.pid
        self.returncode = None
        self.peak_rss_mib = float("nan")
        self.cpu_seconds = float("nan")

    def alive(self) -> bool:
        return self.returncode is None and not self._reap(os.WNOHANG)

    def _reap(self, flags: int) -> bool:
        try:
            pid, status, usage = os.wait4(self.pid, flags)
        except ChildProcessError:
            self.returncode = self.popen.poll() if self.returncode is None else \
                self.returncode
            return True
        if pid == 0:
            return False
        self.returncode = os.waitstatus_to_exitcode(status)
        self.popen.returncode = self.returncode  # keep Popen from waiting again
        try:
            self.peak_rss_mib = float(self._rss_file.read_text())
            self._rss_file.unlink()
        except (OSError, ValueError):
            self.peak_rss_mib = usage.ru_maxrss / 1024
        self.cpu_seconds = usage.ru_utime + usage.ru_stime
        self._log.close()
        return True

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while not self._reap(os.WNOHANG):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} still running after {timeout:.0f}s:\n"
                                   f"{self.output_tail()}")
            time.sleep(0.01)
        return self.returncode

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not ended within ``timeout`` seconds."""
        if self.returncode is not None:
            return
        if not self._reap(os.WNOHANG):
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.wait(timeout)
            except TimeoutError:
                os.kill(self.pid, signal.SIGKILL)
                self.wait(10)

    def output_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Children:
    """Every child of one sample; ``close()`` stops them all by PID, newest first."""

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.all: list[Child] = []

    def start(self, name: str, argv: list, **kwargs) -> Child:
        child = Child(name, argv, self.log_dir, **kwargs)
        self.all.append(child)
        return child

    def close(self) -> None:
        for child in reversed(self.all):
            child.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_result(path, result: dict) -> None:
    """The sample's outcome for the suite, written atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, path)


def python() -> str:
    return sys.executable
