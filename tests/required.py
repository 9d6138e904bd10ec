"""A component a test needs is missing: a skip on a developer's machine, a failure under CI
(`CI` set), where a skipped required behaviour would pass unseen."""

from __future__ import annotations

import os

import pytest


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)
