"""Run the reliability suites in their long form and print their figures.

    .venv/bin/python bench/reliability.py            # long form (the issue's counts)
    .venv/bin/python bench/reliability.py --short    # the CI form, for a quick look
    .venv/bin/python bench/reliability.py -- -k crash   # extra pytest arguments

Each suite in ``tests/reliability`` records its figures (cases tried, faults injected,
crashes, corrupt bytes, peak RSS, recovery times); this script collects them from
``$PEERIT_FIGURES`` and prints one block per suite, then the pytest summary line. The exit
status is pytest's.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="the CI form instead")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures_path = Path(tmp) / "figures.jsonl"
        env = dict(os.environ, PEERIT_FIGURES=str(figures_path),
                   PEERIT_LONG="0" if options.short else "1")
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/reliability", "-q", "-p",
             "no:cacheprovider", "-o", "timeout=3600", *options.pytest_args],
            cwd=ROOT, env=env, capture_output=True, text=True)
        elapsed = time.monotonic() - started
        entries = [json.loads(line) for line in figures_path.read_text().splitlines()] \
            if figures_path.exists() else []
    form = "short" if options.short else "long"
    print(f"peer-it reliability suites, {form} form, {elapsed / 60:.1f} min\n")
    for entry in entries:
        print(f"== {entry['suite']} :: {entry['test']}")
        for key, value in sorted(entry.items()):
            if key in ("suite", "test", "form"):
                continue
            print(f"   {key}: {json.dumps(value) if not isinstance(value, str) else value}")
    summary = [line for line in result.stdout.splitlines() if " passed" in line
               or " failed" in line or " error" in line]
    print("\n" + (summary[-1] if summary else result.stdout[-2000:]))
    if result.returncode:
        print(result.stdout[-6000:], file=sys.stderr)
    if options.json:
        Path(options.json).write_text(json.dumps(entries, indent=1))
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
