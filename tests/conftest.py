from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.procs import Proc, start_mock


@pytest.fixture(scope="session")
def mock_upstream() -> Iterator[Proc]:
    """One mock upstream process for the session (tests tag their requests to tell them apart)."""
    proc = start_mock()
    yield proc
    proc.stop()
