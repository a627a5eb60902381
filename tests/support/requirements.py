"""What a test needs from the machine: a user's machine may lack it, CI must not."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(what: str, reason: str) -> NoReturn:
    """Skip the test, saying why; under CI=true fail it instead: a suite that silently skips
    its fault tests proves nothing."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is required under CI=true: {reason}")
    pytest.skip(f"{what} unavailable, test skipped: {reason}")
