from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.procs import Proc, start_mock

# Every test talks to servers on loopback; a proxy set for this machine must not carry that traffic (the gateway
# processes the tests start inherit this environment, and the upstream client honours HTTP(S)_PROXY).
for _variable in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(_variable, None)


@pytest.fixture(scope="session")
def mock_upstream() -> Iterator[Proc]:
    """One mock upstream process for the session (tests tag their requests to tell them apart)."""
    proc = start_mock()
    yield proc
    proc.stop()
