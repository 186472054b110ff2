"""Suite-wide: in CI, a tool the tests need must be installed, not skipped for.

Tests that need Debian programs (redis-server, chromium, coturn's turnutils_stunclient, the
NAT lab's ip/nft/conntrack) skip with a reason on a developer's machine without them. In CI
(``CI=true``, where ``bin/setup --test`` installs them) such a skip would hide a broken install
step behind a green run, so the run stops at once with the missing program's name.
"""

import os
import shutil

import pytest

CI_REQUIRED = ("redis-server", "chromium", "turnutils_stunclient", "ip", "nft", "conntrack")


def pytest_sessionstart(session):
    if os.environ.get("CI") != "true":
        return
    missing = [tool for tool in CI_REQUIRED if shutil.which(tool) is None]
    if missing:
        pytest.exit(f"CI: required programs not installed: {', '.join(missing)} "
                    "(bin/setup --test installs them)", returncode=3)
