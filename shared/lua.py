"""Loading and calling the Lua scripts in `shared/scripts/`.

We call EVALSHA ourselves instead of redis-py's `Script` objects because a redis-py pipeline
holding a script sends `SCRIPT EXISTS` before every execution: an extra round trip on the hot
path. Here a script is loaded once, and a NOSCRIPT answer (Redis restarted, or failed over
to a replica that never saw the script) reloads it and runs the call again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

KeyArg = str | bytes
Arg = str | bytes | int | float


@dataclass(slots=True)
class LuaScript:
    """One script of `shared/scripts/`, addressed by its SHA1."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    @classmethod
    def named(cls, name: str) -> LuaScript:
        source = resources.files("shared.scripts").joinpath(f"{name}.lua").read_text("utf-8")
        return cls(name=name, source=source)

    async def load(self, client: Any) -> None:
        """SCRIPT LOAD (on every primary, for a cluster client)."""
        await client.script_load(self.source)

    async def __call__(self, client: Any, keys: Sequence[KeyArg], args: Sequence[Arg]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.load(client)
            return await client.evalsha(self.sha, len(keys), *keys, *args)

    def queue_in(self, pipe: Any, keys: Sequence[KeyArg], args: Sequence[Arg]) -> None:
        """Add a call to a pipeline (the caller handles NoScriptError by loading and retrying)."""
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


def is_noscript(error: BaseException) -> bool:
    return isinstance(error, NoScriptError) or (
        isinstance(error, ResponseError) and str(error).startswith("NOSCRIPT")
    )
