"""The wall clock in the units the product stores: milliseconds since the epoch.

Scores, deadlines and timestamps kept in Redis are wall-clock milliseconds so that every
process (and the Lua scripts, which read Redis's own `TIME`) agree on them. One function, so a
test can see where the product reads the clock.
"""

from __future__ import annotations

import time

# A day in those units (retentions and deadlines counted in days).
DAY_MS = 86_400_000


def now_ms() -> int:
    return int(time.time() * 1000)
