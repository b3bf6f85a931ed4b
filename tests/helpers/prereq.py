"""Prerequisites of a test: skip with the reason, or fail under ``SHIFTER_CI=1``."""

from __future__ import annotations

import os

import pytest

from tools.site import TEST_USERS

CI = os.environ.get("SHIFTER_CI") == "1"
USER1, USER2 = TEST_USERS[0][0], TEST_USERS[1][0]
UIDS = {name: uid for name, uid, _ in TEST_USERS}


def require(condition: bool, why: str) -> None:
    """Skip (or, under SHIFTER_CI=1, fail) the current test when ``condition`` is false."""
    if not condition:
        if CI:
            pytest.fail(f"prerequisite missing under SHIFTER_CI=1: {why}")
        pytest.skip(why)
