"""The form of a short code as people type it (magic-wormhole's: a nameplate number, then
words), checked before anything is sent. Its own small module: ``peerit-ctl receive`` checks
the code before it reaches the daemon, and must not wait for the links' imports to do so."""

import re

from peerit.errors import UsageError

CODE_PATTERN = re.compile(r"^[0-9]{1,6}(-[a-z]{1,20}){2,6}$")


def check_code(code: str) -> str:
    """A short code as a person typed it, normalised; one clear line when it cannot be one."""
    code = code.strip().lower().replace(" ", "-")
    if not CODE_PATTERN.match(code):
        raise UsageError(f"bad code {code[:40]!r}: expected a number and words, like "
                         f"7-guitarist-revenge")
    return code
