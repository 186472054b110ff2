"""peerit-ctl's command-line habits: global options on either side of the command, 'help
COMMAND', completion scripts and the manual page generated from the parser, and command
modules that fail loudly."""

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from peerit.ctl import main as ctl_main
from peerit.ctl import manpage
from tests.unit.test_ctl_offline import Run

ROOT = Path(__file__).resolve().parents[2]


class GlobalOptionTests(SynchronousTestCase):
    def parse(self, argv):
        return ctl_main.build_parser().parse_args(argv)

    def test_json_and_control_work_before_the_command(self):
        args = self.parse(["--json", "--control", "unix:/a", "status"])
        self.assertEqual((args.json, args.control, args.command), (True, "unix:/a", "status"))

    def test_json_and_control_work_after_the_command(self):
        args = self.parse(["status", "--json", "--control", "unix:/a"])
        self.assertEqual((args.json, args.control, args.command), (True, "unix:/a", "status"))

    def test_an_option_before_the_command_is_not_reset_by_the_command(self):
        args = self.parse(["--json", "list"])
        self.assertTrue(args.json)
        args = self.parse(["--control", "unix:/b", "peers", "abc"])
        self.assertEqual(args.control, "unix:/b")

    def test_defaults_when_no_global_option_is_given(self):
        args = self.parse(["status"])
        self.assertEqual((args.json, args.control), (False, None))

    def test_json_before_an_offline_command_gives_json(self):
        run = Run(["--json", "inspect", "/nonexistent.p2p"])
        self.assertEqual(run.code, 2, run.stderr)  # parsed: the error is about the file


class HelpCommandTests(SynchronousTestCase):
    def test_help_command_prints_what_command_help_prints(self):
        for command in ("create", "download", "status", "completion"):
            self.assertEqual(Run(["help", command]).stdout, Run([command, "--help"]).stdout,
                             command)
            self.assertEqual(Run(["help", command]).code, 0)

    def test_help_alone_prints_the_top_level_help(self):
        run = Run(["help"])
        self.assertEqual((run.code, run.stdout), (0, Run(["--help"]).stdout))

    def test_help_for_an_unknown_command_is_one_line_with_exit_code_2(self):
        run = Run(["help", "frobnicate"])
        self.assertEqual(run.code, 2)
        self.assertEqual(run.stderr.count("\n"), 1, run.stderr)
        self.assertIn("no command 'frobnicate'", run.stderr)
        self.assertIn("download", run.stderr)

    def test_top_level_help_documents_units_and_exit_codes(self):
        text = Run(["--help"]).stdout
        self.assertIn("Ki, Mi, Gi = 1024", text)
        self.assertIn("3 daemon not running", text)


class CompletionTests(SynchronousTestCase):
    def test_bash_and_zsh_scripts_know_every_command_and_their_options(self):
        for shell in ("bash", "zsh"):
            run = Run(["completion", shell])
            self.assertEqual(run.code, 0, run.stderr)
            for word in ("create", "download", "netcheck", "--piece-length", "--delete-data",
                         "--control"):
                self.assertIn(word, run.stdout, f"{shell}: {word}")

    def test_an_unknown_shell_is_refused(self):
        self.assertEqual(Run(["completion", "fish"]).code, 2)


class ManPageTests(SynchronousTestCase):
    def test_committed_man_page_matches_the_parser(self):
        committed = (ROOT / "docs" / "peerit-ctl.1").read_text()
        self.assertEqual(committed, manpage.render(),
                         "regenerate it: python -m peerit.ctl.manpage > docs/peerit-ctl.1")

    def test_man_page_lists_every_command_and_option(self):
        page = manpage.render()
        for text in (".SS download", ".SS completion", "\\-\\-delete\\-data", ".SH EXIT STATUS",
                     "PEERIT_CONTROL"):
            self.assertIn(text, page)


class RegistrationTests(SynchronousTestCase):
    def test_a_command_module_that_fails_to_import_is_an_error_not_a_missing_command(self):
        self.patch(ctl_main, "COMMAND_MODULES",
                   ctl_main.COMMAND_MODULES + ("peerit.ctl.no_such_module",))
        self.assertRaises(ModuleNotFoundError, ctl_main.build_parser)
