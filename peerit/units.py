"""Sizes and rates as users type them and as peer-it prints them.

One meaning in every option: SI prefixes ``k``, ``M``, ``G``, ``T`` are powers of 1000 and
binary prefixes ``Ki``, ``Mi``, ``Gi``, ``Ti`` are powers of 1024 (IEC 80000-13). Prefixes are
read case-insensitively (``16k`` = ``16K``); a trailing ``B`` (``MB``, ``MiB``) and, for rates,
``/s`` are accepted and mean nothing more. Printed sizes use binary units (``1.5 MiB``).

A piece length must be a power of two, so there ``256K``/``1M`` (never a power of two in SI)
keep the binary meaning they always had: see :func:`parse_piece_length`.
"""

import re

from peerit.errors import UsageError

SI = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
BINARY = {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
MULTIPLIERS = {"": 1, **SI, **BINARY}

UNITS_HELP = "k, M, G = 1000, 1000^2, 1000^3; Ki, Mi, Gi = 1024, 1024^2, 1024^3"

_QUANTITY = re.compile(r"(\d+(?:\.\d*)?(?:e\d+)?)\s*([kmgt]i?)?b?", re.IGNORECASE)


def _parse(text: str, what: str, example: str) -> tuple[float, str]:
    match = _QUANTITY.fullmatch(text.strip())
    if not match:
        raise UsageError(f"bad {what} {text!r}: expected a number with an optional unit "
                         f"({UNITS_HELP}), e.g. {example}")
    return float(match.group(1)), (match.group(2) or "").lower()


def parse_size(text: str) -> int:
    """Bytes: ``262144``, ``256k`` (256,000), ``256Ki``/``256KiB`` (262,144), ``1.5G``."""
    number, unit = _parse(text, "size", "64Mi, 1G")
    value = number * MULTIPLIERS[unit]
    if value != int(value):
        raise UsageError(f"bad size {text!r}: not a whole number of bytes")
    return int(value)


def parse_rate(text: str) -> float:
    """Bytes per second: ``10M`` (10,000,000), ``512k``, ``8Mi`` (8 MiB), ``1e6``, ``5MB/s``."""
    stripped = text.strip()
    if stripped.lower().endswith("/s"):
        stripped = stripped[:-2]
    number, unit = _parse(stripped, "rate", "10M, 8Mi")
    return number * MULTIPLIERS[unit]


def parse_piece_length(text: str, check) -> int:
    """A power-of-two length; ``check(length)`` raises ValueError for a length it refuses.

    ``256K``, ``1M``, ``4M`` have named these lengths from the start and no SI multiple is a
    power of two, so an SI prefix is read as its binary one here (``1M`` = ``1Mi``).
    """
    number, unit = _parse(text, "size", "256Ki, 1Mi")
    length = number * MULTIPLIERS[unit]
    if unit in SI and not _is_power_of_two(length):
        length = number * BINARY[unit + "i"]
    if length != int(length):
        raise UsageError(f"bad piece length {text!r}: not a whole number of bytes")
    check(int(length))
    return int(length)


def _is_power_of_two(value: float) -> bool:
    return value == int(value) and value > 0 and (int(value) & (int(value) - 1)) == 0


def format_size(size: int) -> str:
    """``1023 B``, ``1 KiB``, ``1.5 MiB``: binary units, one decimal where it says something."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "B":
        return f"{size} B"
    return f"{value:.1f} {unit}".replace(".0 ", " ")


def format_rate(rate: float) -> str:
    """Bytes per second in binary units: ``1.5 MiB/s``."""
    return f"{format_size(int(rate))}/s"
