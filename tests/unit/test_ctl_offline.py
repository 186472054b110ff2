"""peerit-ctl create and inspect, in process through main()."""

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from peerit.ctl.main import main
from peerit.metainfo import Metainfo

FINGERPRINT = "ab" * 32


class Run:
    """Outcome of one in-process peerit-ctl run."""

    def __init__(self, argv, stderr=None):
        out = io.StringIO()
        err = stderr or io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                self.code = main(argv)
            except SystemExit as e:  # argparse: --help, missing arguments
                self.code = e.code
        self.stdout = out.getvalue()
        self.stderr = err.getvalue()

    def json(self):
        return json.loads(self.stdout)


class CtlTestCase(SynchronousTestCase):
    def setUp(self):
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        self.root = Path(directory.name)
        self.share = self.root / "share"
        (self.share / "sub" / "deeper").mkdir(parents=True)
        (self.share / "sub" / "deeper" / "a.bin").write_bytes(os.urandom(70000))
        (self.share / "sub" / "empty").write_bytes(b"")
        (self.share / "b.txt").write_bytes(b"hello\n" * 3000)
        previous = os.getcwd()
        os.chdir(self.root)
        self.addCleanup(os.chdir, previous)

    def assertOneLineError(self, run, code, text):
        self.assertEqual(run.code, code, run.stderr)
        self.assertEqual(run.stderr.count("\n"), 1, run.stderr)
        self.assertTrue(run.stderr.startswith("peerit-ctl: "), run.stderr)
        self.assertIn(text, run.stderr)
        self.assertNotIn("Traceback", run.stderr)


class CreateCommandTests(CtlTestCase):
    def test_default_output_in_current_directory(self):
        """create writes NAME.p2p here and prints its path and the info-hash."""
        run = Run(["create", str(self.share)])
        self.assertEqual(run.code, 0, run.stderr)
        self.assertEqual(run.stderr, "")  # stderr is not a terminal: no progress bar
        metainfo = Metainfo.read(str(self.root / "share.p2p"))
        self.assertEqual(run.stdout.splitlines(),
                         ["created share.p2p", f"info-hash {metainfo.info_hash_hex}"])
        self.assertEqual([f.path for f in metainfo.files],
                         ["b.txt", "sub/deeper/a.bin", "sub/empty"])

    def test_refuses_to_overwrite_without_force(self):
        (self.root / "share.p2p").write_bytes(b"precious")
        run = Run(["create", str(self.share)])
        self.assertOneLineError(run, 2, "already exists (use --force")
        self.assertEqual((self.root / "share.p2p").read_bytes(), b"precious")
        run = Run(["create", str(self.share), "--force"])
        self.assertEqual(run.code, 0, run.stderr)
        Metainfo.read(str(self.root / "share.p2p"))

    def test_options_are_recorded_and_json_describes_the_result(self):
        output = self.root / "out" / "x.p2p"
        output.parent.mkdir()
        run = Run(["create", str(self.share / "b.txt"), "-o", str(output), "--json",
                   "--tracker", f"127.0.0.1:6000#{FINGERPRINT}", "--tracker", "tracker.example",
                   "--piece-length", "16K", "--comment", "for friends"])
        self.assertEqual(run.code, 0, run.stderr)
        result = run.json()
        self.assertEqual(result["path"], str(output))
        self.assertEqual(result["piece_length"], 16384)
        self.assertEqual(result["piece_count"], 2)
        self.assertEqual(result["comment"], "for friends")
        self.assertEqual([t["address"] for t in result["trackers"]],
                         [f"127.0.0.1:6000#{FINGERPRINT}", "tracker.example:59000"])
        metainfo = Metainfo.read(str(output))
        self.assertEqual(result["info_hash"], metainfo.info_hash_hex)
        data = (self.share / "b.txt").read_bytes()
        self.assertEqual(metainfo.piece_hash(1), hashlib.sha256(data[16384:]).digest())

    def test_bad_inputs_are_one_line(self):
        cases = [
            (["create", str(self.root / "missing")], 2, "no such file"),
            (["create", str(self.share), "--piece-length", "1000"], 2, "bad piece length"),
            (["create", str(self.share), "--piece-length", "128M"], 2, "bad piece length"),
            (["create", str(self.share), "--piece-length", "lots"], 2, "bad size"),
            (["create", str(self.share), "--tracker", "host:99999"], 2, "bad port"),
            (["create", str(self.share), "--tracker", "host:1#nothex"], 2, "bad tracker"),
            (["create", str(self.share), "-o", str(self.root / "nodir" / "x.p2p")], 2,
             "does not exist"),
            (["create", str(self.share), "--comment", "x" * 70000], 2, "comment"),
        ]
        for argv, code, text in cases:
            self.assertOneLineError(Run(argv), code, text)
        self.assertFalse((self.root / "share.p2p").exists())

    def test_a_symlink_inside_the_share_is_refused(self):
        (self.share / "link").symlink_to(self.share / "b.txt")
        self.assertOneLineError(Run(["create", str(self.share)]), 2, "symbolic link")

    def test_progress_bar_on_a_terminal(self):
        """With stderr on a terminal a tqdm bar is drawn there, and stdout stays clean."""
        class Terminal(io.StringIO):
            def isatty(self):
                return True
        run = Run(["create", str(self.share)], stderr=Terminal())
        self.assertEqual(run.code, 0)
        self.assertIn("hashing share", run.stderr)
        self.assertTrue(run.stdout.startswith("created share.p2p\n"))

    def test_help_explains_the_command_and_its_options(self):
        run = Run(["create", "--help"])
        self.assertEqual(run.code, 0)
        for text in ("--piece-length", "--tracker", "--force", "symbolic links", "FINGERPRINT"):
            self.assertIn(text, run.stdout)


class InspectCommandTests(CtlTestCase):
    def create(self, *extra) -> Path:
        output = self.root / "s.p2p"
        run = Run(["create", str(self.share), "-o", str(output), *extra])
        self.assertEqual(run.code, 0, run.stderr)
        return output

    def test_text_lists_every_field_of_the_p2p(self):
        path = self.create("--tracker", f"10.0.0.1:7#{FINGERPRINT}", "--comment", "hi",
                           "--piece-length", "32K")
        metainfo = Metainfo.read(str(path))
        run = Run(["inspect", str(path)])
        self.assertEqual(run.code, 0, run.stderr)
        lines = run.stdout.splitlines()
        self.assertIn("name:         share", lines)
        self.assertIn(f"info-hash:    {metainfo.info_hash_hex}", lines)
        self.assertIn(f"total size:   85.9 KiB ({metainfo.total_size} bytes)", lines)
        self.assertIn("piece length: 32 KiB (32768 bytes)", lines)
        self.assertIn("pieces:       3", lines)
        self.assertIn("comment:      hi", lines)
        self.assertIn(f"  10.0.0.1:7#{FINGERPRINT}", lines)
        self.assertIn("  sub/deeper/a.bin  68.4 KiB (70000 bytes)", lines)
        self.assertIn("  sub/empty  0 B (0 bytes)", lines)
        self.assertTrue(any(line.startswith("created:      20") for line in lines))

    def test_json_has_every_field_of_the_p2p(self):
        path = self.create("--tracker", "127.0.0.1:1")
        run = Run(["inspect", "--json", str(path)])
        self.assertEqual(run.code, 0, run.stderr)
        result = run.json()
        metainfo = Metainfo.read(str(path))
        self.assertEqual(result["info_hash"], metainfo.info_hash_hex)
        self.assertEqual(result["total_size"], 70000 + 18000)
        self.assertEqual(result["layout"], "directory")
        self.assertEqual(result["files"], [{"path": f.path, "size": f.size}
                                           for f in metainfo.files])
        self.assertEqual(result["trackers"], [{"address": "127.0.0.1:1", "host": "127.0.0.1",
                                               "port": 1, "fingerprint": None}])
        self.assertEqual(result["created"], metainfo.created)

    def test_control_characters_are_escaped(self):
        """A hostile name cannot send escape sequences to the terminal."""
        odd = self.root / "odd"
        odd.mkdir()
        (odd / "evil\x1b[2Jname").write_bytes(b"x")
        run = Run(["create", str(odd), "-o", str(self.root / "odd.p2p")])
        self.assertEqual(run.code, 0, run.stderr)
        run = Run(["inspect", str(self.root / "odd.p2p")])
        self.assertNotIn("\x1b", run.stdout)
        self.assertIn("evil\\x1b[2Jname", run.stdout)

    def test_damaged_files_are_refused_with_exit_code_5_or_2(self):
        path = self.create()
        data = path.read_bytes()
        path.write_bytes(data[:-3])
        self.assertOneLineError(Run(["inspect", str(path)]), 5, "truncated")
        path.write_bytes(data + b"!")
        self.assertOneLineError(Run(["inspect", str(path)]), 5, "trailing bytes")
        self.assertOneLineError(Run(["inspect", str(self.root / "none.p2p")]), 2,
                                "no such file")
        self.assertOneLineError(Run(["inspect", str(self.root)]), 2, "")


class ProgramExitTests(CtlTestCase):
    """``python -m peerit.ctl.main`` (and the peerit-ctl script) end the process as soon as
    main returns, without the interpreter's teardown: what was printed still arrives whole,
    and the exit code is main's."""

    def program(self, *argv):
        repo = Path(__file__).resolve().parents[2]
        # Buffered output, as a script reading peerit-ctl's output through a pipe gets it.
        environ = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        return subprocess.run([sys.executable, "-m", "peerit.ctl.main", *argv],
                              capture_output=True, text=True, timeout=60, cwd=self.root,
                              env=dict(environ, PYTHONPATH=str(repo)))

    def test_output_in_a_pipe_is_flushed_before_the_process_ends(self):
        path = self.root / "s.p2p"
        self.assertEqual(Run(["create", str(self.share), "-o", str(path)]).code, 0)
        done = self.program("inspect", "--json", str(path))
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(json.loads(done.stdout)["info_hash"],
                         Metainfo.read(str(path)).info_hash_hex)  # parsed: it is whole

    def test_the_exit_code_and_the_error_line_are_mains(self):
        done = self.program("inspect", str(self.root / "none.p2p"))
        self.assertEqual(done.returncode, 2)
        self.assertEqual(done.stderr.count("\n"), 1, done.stderr)
        self.assertIn("no such file", done.stderr)

