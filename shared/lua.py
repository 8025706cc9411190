"""Loading and calling the Lua scripts in `shared/scripts/`.

We call EVALSHA ourselves instead of redis-py's `Script` objects because a redis-py pipeline
holding a script sends `SCRIPT EXISTS` before every execution: an extra round trip on the hot
path. Here a script is loaded once, and a NOSCRIPT answer (Redis restarted, or failed over
to a replica that never saw the script) reloads it and runs the call again.

A block that several scripts need is written once, in `shared/scripts/lib/<name>.lua`, and a
script names it on a line of its own: `--#include <name>`. The loader inlines it there (once per
script, also when libraries include each other), so every script still reaches Redis whole:
one EVALSHA, nothing defined server-side beforehand (no Redis Function library to load and
keep in step across a cluster's primaries and failovers), and its flags line (`#!lua ...`)
stays its first line. Line numbers in a Redis error count lines of the inlined source.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

KeyArg = str | bytes
Arg = str | bytes | int | float

SCRIPTS = "shared.scripts"
# `--#include name` on a line of its own; anything else starting `--#include` is refused, so a
# mistyped include never passes silently as a comment.
_INCLUDE = re.compile(r"--#include(?P<rest>.*)")
_LIB_NAME = re.compile(r"\s+(?P<name>[a-z][a-z0-9_]*)\s*")


class LuaSourceError(ValueError):
    """A script's source cannot be assembled (unknown or malformed include, flags misplaced)."""


def read_lib(name: str) -> str:
    """The source of `shared/scripts/lib/<name>.lua` (LuaSourceError when there is none)."""
    path = resources.files(SCRIPTS).joinpath("lib", f"{name}.lua")
    if not path.is_file():
        raise LuaSourceError(f"no Lua library shared/scripts/lib/{name}.lua")
    return path.read_text("utf-8")


def inline_includes(source: str, read: Callable[[str], str] = read_lib, *, name: str = "") -> str:
    """`source` with every `--#include <lib>` line replaced by that library's source, itself
    expanded; a library included again (directly or through another) is skipped, since it is
    in already. A flags line (`#!`) may only open the script itself: Redis reads it there."""
    seen: set[str] = set()

    def expand(text: str, within: tuple[str, ...]) -> list[str]:
        out: list[str] = []
        for number, line in enumerate(text.splitlines(keepends=True), 1):
            where = f"{' > '.join((name or 'script', *within))}, line {number}"
            if line.startswith("#!") and (within or number > 1):
                raise LuaSourceError(f"{where}: a flags line (#!) belongs on a script's first line")
            include = _INCLUDE.fullmatch(line.rstrip("\r\n"))
            if include is None:
                out.append(line)
                continue
            lib = _LIB_NAME.fullmatch(include["rest"])
            if lib is None:
                raise LuaSourceError(f"{where}: write includes as `--#include <name>`")
            if lib["name"] in within:
                raise LuaSourceError(f"{where}: {lib['name']} includes itself")
            if lib["name"] in seen:
                continue
            seen.add(lib["name"])
            body = read(lib["name"])
            out += expand(body if body.endswith("\n") else body + "\n", (*within, lib["name"]))
        return out

    return "".join(expand(source, ()))


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
        """The script `shared/scripts/<name>.lua`, its includes inlined (what Redis runs)."""
        source = resources.files(SCRIPTS).joinpath(f"{name}.lua").read_text("utf-8")
        return cls(name=name, source=inline_includes(source, name=name))

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
