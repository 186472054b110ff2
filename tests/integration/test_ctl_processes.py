"""peerit-ctl as users run it, in its own process: exit codes, one-line errors, a start-up that
does not load the networking and crypto stack for --help, and a completion script bash accepts."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from peerit.testing.processes import run_ctl
from tests.unit.test_ctl_offline import CtlTestCase, Run

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


class SubprocessTests(CtlTestCase):
    """The installed entry point as users run it: exit codes and one-line errors."""

    def test_create_then_inspect_agree_on_the_info_hash(self):
        output = self.root / "s.p2p"
        created = run_ctl("create", str(self.share), "-o", str(output), "--json")
        self.assertEqual(created.returncode, 0, created.stderr)
        self.assertEqual(created.stderr, "")
        inspected = run_ctl("inspect", "--json", str(output))
        self.assertEqual(inspected.returncode, 0, inspected.stderr)
        self.assertEqual(json.loads(inspected.stdout)["info_hash"],
                         json.loads(created.stdout)["info_hash"])

    def test_errors_exit_with_their_codes_and_one_line(self):
        bad = self.root / "bad.p2p"
        bad.write_bytes(b"\x89P2P\r\n\x1a\n\x00\x01garbage")
        for argv, code in ((("inspect", str(bad)), 5),
                           (("create", str(self.root / "missing")), 2),
                           (("create", str(self.share), "--piece-length", "3K"), 2)):
            result = run_ctl(*argv)
            self.assertEqual(result.returncode, code, result.stderr)
            self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
            self.assertTrue(result.stderr.startswith("peerit-ctl: "), result.stderr)

    def test_an_unreadable_p2p_exits_with_the_permission_code(self):
        """An unreadable .p2p exits with the permission code (run as an unprivileged user)."""
        if os.geteuid() != 0 or not shutil.which("setpriv"):
            raise self.skipTest("needs root and setpriv to become an unprivileged user")
        os.chmod(self.root, 0o755)
        locked = self.root / "locked.p2p"
        created = run_ctl("create", str(self.share), "-o", str(locked))
        self.assertEqual(created.returncode, 0, created.stderr)
        os.chmod(locked, 0o600)
        result = run_ctl("inspect", str(locked),
                         prefix=("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"))
        self.assertEqual(result.returncode, 7, result.stderr)
        self.assertEqual(result.stderr.strip(),
                         f"peerit-ctl: cannot read {locked}: permission denied")


class CompletionScriptTests(SynchronousTestCase):
    def test_bash_script_is_valid_bash(self):
        script = Run(["completion", "bash"]).stdout
        checked = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
        self.assertEqual(checked.returncode, 0, checked.stderr)


class StartupTests(SynchronousTestCase):
    HEAVY = ("twisted", "OpenSSL", "cryptography", "construct", "tqdm", "shtab", "peerit.client",
             "peerit.metainfo")

    def loaded_by(self, argv):
        # main() as the program runs it (run() then ends the process at once, before this
        # could look).
        code = ("import sys\n"
                f"sys.argv = ['peerit-ctl', *{argv!r}]\n"
                "from peerit.ctl.main import main\n"
                "try:\n    main()\n"
                "except SystemExit:\n    pass\n"
                f"heavy = {self.HEAVY!r}\n"
                "print('loaded:', *sorted(m for m in sys.modules if m.split('.')[0] in heavy "
                "or m in heavy), file=sys.stderr)\n")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=ROOT, env=env, timeout=60)
        return done.stderr.strip().splitlines()[-1].removeprefix("loaded:").strip()

    def test_help_and_version_load_no_networking_crypto_or_format_modules(self):
        for argv in (["--help"], ["--version"], ["download", "--help"], ["help", "create"]):
            self.assertEqual(self.loaded_by(argv), "", argv)

    def test_daemon_commands_load_neither_twisted_nor_crypto_nor_construct(self):
        """The daemon commands speak AMP on a plain socket: a download of a .p2p or a link
        and a status pay for no reactor, TLS or format library (here refused: no daemon)."""
        link = "peerit:?v=1&ih=" + "ab" * 32 + "&tr=127.0.0.1:1%23" + "cd" * 32
        for argv in (["download", "/nonexistent.p2p"], ["download", link], ["status"]):
            loaded = self.loaded_by([*argv, "--control", "/nonexistent/control.sock"])
            self.assertEqual(loaded, "", argv)
