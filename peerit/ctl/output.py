"""What peerit-ctl prints: JSON or text, sizes and rates, times, and names made safe.

Every command prints through here so that ``--json`` and the text forms look alike across
commands. Names come from .p2p files and peers that may be hostile: :func:`printable` keeps
their control characters (escape sequences, carriage returns) off the terminal.
"""

import datetime
import json
import sys

from peerit.units import format_rate, format_size

__all__ = ["emit", "format_eta", "format_rate", "format_size", "format_time", "print_json",
           "printable", "progress_bar"]


def print_json(value) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def emit(args, value, text: str) -> None:
    """``value`` as JSON with ``--json``, else ``text``."""
    if args.json:
        print_json(value)
    else:
        print(text)


def printable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def format_eta(seconds: float) -> str:
    if seconds < 0:
        return "-"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}:{seconds % 60:02d}"


def format_time(seconds: int) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return f"{seconds} (seconds since 1970)"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def progress_bar(total: int, desc: str, args=None):
    """A tqdm bar on stderr when a person is watching it (and not ``--json``), else None."""
    if not total or (args is not None and args.json) or not sys.stderr.isatty():
        return None
    # tqdm costs ~30 ms to import: only commands that draw a bar pay for it.
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                desc=printable(desc), leave=False, dynamic_ncols=True)
