"""peerit-ctl's global options, accepted before and after the command.

``peerit-ctl --json status`` and ``peerit-ctl status --json`` mean the same. The top-level
parser holds each option with its real default; each subcommand repeats it with
``argparse.SUPPRESS`` as default, so a value given after the command is set and one given
before it is not overwritten by the subcommand's default.
"""

import argparse

CONTROL_HELP = ("the daemon's control socket (default: $PEERIT_CONTROL, else the daemon's "
                "default: $XDG_RUNTIME_DIR/peerit/control.sock or "
                "~/.local/share/peerit/control.sock)")
JSON_HELP = "print machine-readable JSON on stdout instead of text"


def add_json_option(parser: argparse.ArgumentParser, in_subcommand: bool) -> None:
    parser.add_argument("--json", action="store_true",
                        default=argparse.SUPPRESS if in_subcommand else False, help=JSON_HELP)


def add_control_option(parser: argparse.ArgumentParser, in_subcommand: bool) -> None:
    parser.add_argument("--control", metavar="unix:PATH",
                        default=argparse.SUPPRESS if in_subcommand else None,
                        help=CONTROL_HELP)


def json_parent() -> argparse.ArgumentParser:
    """The parent parser of every subcommand: ``--json``."""
    parent = argparse.ArgumentParser(add_help=False)
    add_json_option(parent, in_subcommand=True)
    return parent


def control_parent() -> argparse.ArgumentParser:
    """The parent parser of the commands that talk to a daemon: ``--control``."""
    parent = argparse.ArgumentParser(add_help=False)
    add_control_option(parent, in_subcommand=True)
    return parent


def daemon_command_adder(subparsers, common: argparse.ArgumentParser, run_with):
    """``add(name, function, help, description=None)`` for a command group's commands that
    talk to a daemon: the common options and ``--control``, run through ``run_with``."""
    parents = [common, control_parent()]

    def add(name, function, help, description=None):
        p = subparsers.add_parser(name, parents=parents, help=help,
                                  description=description or help)
        p.set_defaults(run=run_with(function))
        return p
    return add
