"""peerit-ctl entry point: argument parsing, dispatch, and one-line errors with exit codes.

Each command module offers ``register(subparsers, common)`` adding its subcommands (``common``
is the parent parser of every subcommand: ``--json``); a subcommand sets ``run(args) -> int``.
A new group of commands is one more module in :data:`COMMAND_MODULES`. Errors are
:class:`peerit.errors.PeeritError`s, printed as one line on stderr with the exit code the error
class carries; nothing else leaks a traceback.

Start-up time matters (``peerit-ctl --help`` should answer in well under 0.1 s): command
modules import Twisted, cryptography, construct and tqdm inside the commands that use them,
never at module level.
"""

import argparse
import importlib
import os
import re
import sys
import textwrap

from peerit import __version__
from peerit.ctl import options
from peerit import errors
from peerit.errors import PeeritError

COMMAND_MODULES = ("peerit.ctl.offline", "peerit.ctl.daemon_commands",
                   "peerit.ctl.link_commands", "peerit.ctl.shell", "peerit.ctl.ui")

DESCRIPTION = ("Share and download files over the peer-it network. 'create' and 'inspect' "
               "work alone; the other commands drive a running peerit-daemon over its control "
               "socket. Global options (--json, --control) go before or after the command.")



def exit_codes() -> list[tuple[int, str]]:
    """``(code, meaning)`` from the error classes of :mod:`peerit.errors`, plus the others."""
    found = {0: "done", 130: "interrupted (Ctrl-C)"}
    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, PeeritError):
            words = re.sub(r"(?<!^)([A-Z])", r" \1", value.__name__).lower()
            if value.exit_code not in found or value.__bases__ == (PeeritError,):
                found[value.exit_code] = "error" if value is PeeritError else words
    return sorted(found.items())


EPILOG = (
    "sizes and rates: k, M, G = 1000, 1000^2, 1000^3; Ki, Mi, Gi = 1024, 1024^2, 1024^3\n"
    "(a piece length is a power of two, so there 256K and 1M mean 256Ki and 1Mi).\n"
    "'peerit-ctl help COMMAND' (or COMMAND --help) explains a command.\n"
    + textwrap.fill("exit codes: " + ", ".join(f"{code} {meaning}"
                                               for code, meaning in exit_codes()), 78))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peerit-ctl", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"peerit-ctl {__version__}")
    options.add_json_option(parser, in_subcommand=False)
    options.add_control_option(parser, in_subcommand=False)
    parser.set_defaults(root_parser=parser)
    common = options.json_parent()
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        # A module that fails to import is a broken installation: let the error show.
        importlib.import_module(name).register(subparsers, common)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except PeeritError as e:
        print(f"peerit-ctl: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("peerit-ctl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141


def run() -> None:
    """The program (``peerit-ctl``, ``python -m peerit.ctl.main``): :func:`main`, then exit
    at once. A command's work is done when main returns (files closed, threads joined), and
    tearing the interpreter down (clearing every module, a last garbage collection) took
    another ~8 ms, on the clock of every script that waits for peerit-ctl to exit."""
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        code = code or 141
    os._exit(code)


if __name__ == "__main__":
    run()
