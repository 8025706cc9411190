"""A parent killed outright (SIGKILL: no chance to clean up) must not leave its parts running:
each part stops on its own when its parent dies (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable

from tests.support.polling import wait_until


def kill_and_wait_for_the_parts(
    parent: subprocess.Popen[str], parts: Callable[[], list[int]]
) -> None:
    """SIGKILL `parent`, then wait until `parts()` (the processes it started) is empty."""
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    wait_until(
        lambda: parts() == [], timeout=90, interval=0.2,
        what="the parts to stop after their parent died",
    )  # fmt: skip
