"""A child that stops when its parent dies: Linux's PR_SET_PDEATHSIG, set up in one place.

Used by `wsm.stack` (every part `wsm dev` and `wsm loadtest` start, between fork and exec) and
by the worker fleet's processes (told to stop when their supervisor dies), so that even a parent
that is SIGKILLed leaves no orphan running.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal

PR_SET_PDEATHSIG = 1


def signal_on_parent_death(signum: int = signal.SIGTERM) -> None:
    """Ask Linux to send `signum` to this process when its parent dies. Linux ties the request
    to the parent's thread that forked, not to the parent process: fork from the main thread.
    Does nothing where prctl is unavailable (not Linux). Safe between fork and exec: one call,
    no lock taken."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signum)
