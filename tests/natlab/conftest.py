"""NAT lab fixtures: every test here needs root, iproute2 and nftables, and skips without them."""

import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lab import LabUnavailable, NatLab, check_available  # noqa: E402


def pytest_collection_modifyitems(items):
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.natlab)


@pytest.fixture(scope="session")
def natlab_available():
    try:
        check_available()
    except LabUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def make_lab(natlab_available, tmp_path_factory):
    """``with make_lab(r1="symmetric") as lab:`` builds a lab and always tears it down."""

    @contextmanager
    def build(**kwargs):
        workdir = tmp_path_factory.mktemp("natlab")
        try:
            with NatLab(workdir, **kwargs) as lab:
                yield lab
        except LabUnavailable as e:
            pytest.skip(str(e))

    return build
