"""peerit-ctl entry point: argument parsing, dispatch, and one-line errors with exit codes.

Each command module offers ``register(subparsers, common)`` adding its subcommands; a
subcommand sets ``run(args) -> int``. Errors are :class:`peerit.errors.PeeritError`s, printed as
one line on stderr with the exit code the error class carries; nothing else leaks a traceback.
"""

import argparse
import json
import sys

from peerit import __version__
from peerit.errors import PeeritError

COMMAND_MODULES = ("peerit.ctl.offline", "peerit.ctl.daemon_commands", "peerit.ctl.link_commands")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peerit-ctl",
        description="Share and download files over the peer-it network. 'create' and "
                    "'inspect' work alone; the other commands drive a running peerit-daemon "
                    "over its control socket.")
    parser.add_argument("--version", action="version", version=f"peerit-ctl {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true",
                        help="print machine-readable JSON on stdout instead of text")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    import importlib
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(subparsers, common)
    return parser


def print_json(value) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


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


if __name__ == "__main__":
    sys.exit(main())
