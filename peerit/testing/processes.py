"""The process helpers for tests: :mod:`peerit.processes` (the demo uses them too)."""

from peerit.processes import (  # noqa: F401
    REPO_ROOT, Process, ctl_argv, environment, run_ctl, twistd_argv)
