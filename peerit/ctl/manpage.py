"""peerit-ctl's manual page, generated from its argument parser.

``python -m peerit.ctl.manpage > docs/peerit-ctl.1`` rewrites the committed page; a unit test
checks that the committed page is what the parser gives today, so options and the manual
cannot drift apart. No date goes into the page, so the output depends only on the parser.
"""

import argparse
import sys

from peerit import __version__
from peerit.ctl.main import DESCRIPTION, build_parser, exit_codes
from peerit.units import UNITS_HELP


def _escape(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    # A line starting with '.' or "'" would be read as a request.
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line
                     for line in text.splitlines())


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=10_000)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups,
                        prefix="")
    return " ".join(formatter.format_help().split())


def _options(parser: argparse.ArgumentParser) -> list[str]:
    lines = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            metavar = ""
            if action.nargs != 0:
                metavar = " " + (action.metavar or action.dest.upper())
            name = ", ".join(f"\\fB{_escape(o)}\\fR{_escape(metavar)}"
                             for o in action.option_strings)
        else:
            name = f"\\fI{_escape(action.metavar or action.dest)}\\fR"
        lines += [".TP", name, _escape(action.help or "")]
    return lines


def _subcommands(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def render(parser: argparse.ArgumentParser | None = None) -> str:
    parser = parser or build_parser()
    out = [f'.TH PEERIT\\-CTL 1 "" "peer-it {__version__}" "peer-it manual"',
           ".SH NAME", "peerit\\-ctl \\- share and download files over the peer\\-it network",
           ".SH SYNOPSIS", f"\\fBpeerit\\-ctl\\fR {_escape(_usage(parser)[len('peerit-ctl '):])}",
           ".SH DESCRIPTION", _escape(DESCRIPTION),
           ".SH GLOBAL OPTIONS", *_options(parser),
           ".SH COMMANDS"]
    for name, summary, sub in _subcommands(parser):
        out += [".SS " + _escape(name), f"\\fB{_escape(_usage(sub))}\\fR", ".PP",
                _escape(sub.description or summary or "")]
        out += _options(sub)
        if sub.epilog:
            out += [".PP", ".nf", _escape(sub.epilog.rstrip()), ".fi"]
    out += [".SH SIZES AND RATES", _escape(
                f"Options that take a size or a rate read {UNITS_HELP}; a trailing B or /s "
                "is accepted. A piece length must be a power of two, so there 256K and 1M "
                "keep meaning 256Ki and 1Mi."),
            ".SH ENVIRONMENT", ".TP", "\\fBPEERIT_CONTROL\\fR",
            "the daemon's control socket when \\fB\\-\\-control\\fR is not given",
            ".SH EXIT STATUS"]
    for code, meaning in exit_codes():
        out += [".TP", str(code), _escape(meaning)]
    out += [".SH SEE ALSO", "\\fBtwistd\\fR(1): \\fBtwistd peerit\\-daemon \\-\\-help\\fR, "
            "\\fBtwistd peerit\\-tracker \\-\\-help\\fR"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
