"""What the console keeps about one customer, for an erase (LGPD): the conversation's audit
trail, its read markers and handled-by entries of every agent, its place in the watch list.

engine/erase.py does not know these keys; the operator API's erase route should call
`erase_console(...)` next to `erase_customer(...)` (see docs/console.md).
"""

from __future__ import annotations

from typing import Any

from shared.keys import ConsoleKeys, LineKeys


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def erase_console(redis: Any, prefix: str, token: str) -> int:
    """Remove every console record naming the conversation `token`; how many were removed."""
    keys = ConsoleKeys(prefix)
    removed = int(await redis.delete(keys.audit(token)))
    removed += int(await redis.zrem(keys.viewed, token))
    agents = {_text(a) for a in await redis.smembers(keys.accounts)}
    # Agents removed since still have markers: find them by their line records too.
    agents |= {_text(a) for a in await redis.hkeys(LineKeys(prefix).agents)}
    for agent_id in sorted(agents):
        removed += int(await redis.hdel(keys.read(agent_id), token))
        removed += int(await redis.zrem(keys.handled(agent_id), token))
    return removed
