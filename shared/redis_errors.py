"""What "Redis is unavailable right now" means, in one place.

redis-py wraps socket errors in its own ConnectionError/TimeoutError; BusyLoadingError (Redis
replaying its append-only file after a restart) is a ConnectionError; a cluster without a
quorum or in the middle of a failover or resharding answers ClusterDown / TryAgain. Not the
builtin TimeoutError (asyncio.wait_for raises it, and it means something else), and not
ResponseError: a command Redis answered with an error is the caller's fault, not Redis's.
"""

from __future__ import annotations

from redis.exceptions import ClusterDownError, ConnectionError, TimeoutError, TryAgainError

REDIS_UNAVAILABLE: tuple[type[Exception], ...] = (
    ConnectionError,
    TimeoutError,
    ClusterDownError,
    TryAgainError,
)

# The longest wait between two attempts to reach Redis again, for every loop that waits it out
# (the worker's claims and start, the sender's clean-up). Short, because recovery after an
# outage is this late at worst (with 5 s, the chaos run's conversations waited up to 5 s more
# after Redis was back); cheap, because an attempt against a Redis that is down is a refused
# connection: 16 consumer slots in a process make at most ~32 a second.
RETRY_CAP_SECONDS = 1.0
