"""Start and stop the real programs (twistd plugins, peerit-ctl): the demo, tests, benchmarks.

Every process is started by us, remembered by PID and ended by PID (SIGTERM, then SIGKILL
after a bounded wait). The repository root goes first on PYTHONPATH so ``twistd`` finds the
plugins in ``twisted/plugins`` whether or not the package is installed.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def environment(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PEERIT_CONTROL", None)
    if extra:
        env.update(extra)
    return env


def twistd_argv(plugin: str, *args: str, prefix: tuple = (),
                module: str | None = None) -> list[str]:
    """argv for ``twistd -n --pidfile= PLUGIN ARGS``: the twistd next to this interpreter
    (or ``python -m MODULE``, a test launcher that runs twistd after patching something)."""
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if module is not None:
        twistd_cmd = [sys.executable, "-m", module]
    elif not os.path.exists(twistd):
        twistd_cmd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    else:
        twistd_cmd = [sys.executable, twistd]
    return [*prefix, *twistd_cmd, "-n", "--pidfile=", plugin, *args]


def ctl_argv(*args: str, prefix: tuple = ()) -> list[str]:
    return [*prefix, sys.executable, "-m", "peerit.ctl.main", *args]


class Process:
    """One child process with its output in a log file; stopped by PID."""

    def __init__(self, argv: list[str], log_path: Path, env: dict | None = None,
                 cwd: str | None = None):
        self.argv = argv
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=environment(env), cwd=cwd or str(REPO_ROOT), start_new_session=True)
        self.pid = self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            content = self.log()
            if text in content:
                return content
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.argv[:6]} exited with {self.popen.returncode} before "
                    f"logging {text!r}:\n{content[-4000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"no {text!r} in {self.log_path} after {timeout}s:\n"
                           f"{self.log()[-4000:]}")

    def wait_for_path(self, path: Path, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if Path(path).exists():
                return
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.argv[:6]} exited with {self.popen.returncode}:\n"
                                   f"{self.log()[-4000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"{path} did not appear in {timeout}s:\n{self.log()[-4000:]}")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not end in ``timeout`` seconds."""
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(10)
        self._log.close()
        return self.popen.returncode


def run_ctl(*args: str, env: dict | None = None, timeout: float = 60.0,
            prefix: tuple = ()) -> subprocess.CompletedProcess:
    return subprocess.run(ctl_argv(*args, prefix=prefix), capture_output=True, text=True,
                          env=environment(env), timeout=timeout, cwd=str(REPO_ROOT))
