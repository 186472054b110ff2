"""peerit-ctl help and completion: the habits of other command-line tools.

``peerit-ctl help COMMAND`` prints what ``peerit-ctl COMMAND --help`` prints.
``peerit-ctl completion bash|zsh`` prints a completion script generated from the parser
(by shtab), so completion always matches the commands and options of this version.
"""

import argparse
import sys

from peerit.errors import UsageError

SHELLS = ("bash", "zsh")

COMPLETION_EPILOG = """\
install:
  bash: peerit-ctl completion bash > ~/.local/share/bash-completion/completions/peerit-ctl
  zsh:  peerit-ctl completion zsh > ~/.zfunc/_peerit-ctl
        (with fpath=(~/.zfunc $fpath) before compinit in ~/.zshrc)
"""


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "help", help="show the help of a command (like COMMAND --help)",
        description="Show the help of COMMAND, or of peerit-ctl itself without one.")
    p.add_argument("topic", nargs="?", metavar="COMMAND")
    p.set_defaults(run=run_help)

    p = subparsers.add_parser(
        "completion", help="print a shell completion script (bash or zsh)",
        description="Print a completion script for SHELL on stdout, generated from "
                    "peerit-ctl's own parser.",
        epilog=COMPLETION_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash or zsh")
    p.set_defaults(run=run_completion)


def run_help(args) -> int:
    """``args.root_parser`` is the top-level parser (set by :func:`peerit.ctl.main.build_parser`)."""
    if args.topic is None:
        args.root_parser.print_help()
        return 0
    if args.topic not in commands(args.root_parser):
        raise UsageError(f"no command {args.topic!r}; the commands are: "
                         + ", ".join(commands(args.root_parser)))
    args.root_parser.parse_args([args.topic, "--help"])  # prints it and exits 0
    return 0


def commands(root) -> list[str]:
    """The command names of the top-level parser, sorted."""
    return sorted(a for action in root._actions if action.choices and action.dest == "command"
                  for a in action.choices)


def run_completion(args) -> int:
    # shtab is needed only here, when a user installs completion: imported on use.
    import shtab
    sys.stdout.write(shtab.complete(args.root_parser, shell=args.shell))
    return 0
