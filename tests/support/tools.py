"""Finding the real programs tests need; skipping outside CI, failing inside it."""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_program(name: str) -> str:
    """Path of `name`; outside CI a missing program skips the test, in CI it fails it
    (`.ci/run` installs everything, so a missing program there is a broken CI script)."""
    # nginx lives in /usr/sbin, which is not on every user's PATH.
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path:
        return path
    if in_ci():
        pytest.fail(f"{name} is not installed; .ci/run must install it")
    pytest.skip(f"{name} is not installed (apt-get install -y {name})")
