"""shared/lua.py: a block several scripts need is written once (shared/scripts/lib/<name>.lua)
and inlined where a script says `--#include <name>`, so each script still reaches Redis whole
(one EVALSHA, flags line first)."""

from __future__ import annotations

import re
from importlib import resources

import pytest
import redis
from redis.exceptions import ResponseError

from shared.lua import LuaScript, LuaSourceError, inline_includes, read_lib

SCRIPTS = sorted(
    entry.name.removesuffix(".lua")
    for entry in resources.files("shared.scripts").iterdir()
    if entry.name.endswith(".lua")
)
LIBS = sorted(
    entry.name.removesuffix(".lua")
    for entry in resources.files("shared.scripts").joinpath("lib").iterdir()
    if entry.name.endswith(".lua")
)


def test_an_include_line_becomes_the_library_and_the_flags_line_stays_first() -> None:
    lib = {"double": "local function double(x)\n  return 2 * x\nend\n"}
    source = "#!lua flags=no-writes\n-- doubles\n--#include double\nreturn double(21)\n"
    assert inline_includes(source, lib.__getitem__) == (
        "#!lua flags=no-writes\n-- doubles\n"
        "local function double(x)\n  return 2 * x\nend\n"
        "return double(21)\n"
    )


def test_a_library_is_inlined_once_however_often_it_is_included() -> None:
    lib = {
        "a": "local A = 1\n",
        "b": "--#include a\nlocal B = A + 1\n",
        "c": "--#include a\n--#include b\nlocal C = B + 1",  # no final newline
    }
    source = "#!lua\n--#include c\n--#include b\n--#include a\nreturn C\n"
    assert inline_includes(source, lib.__getitem__) == (
        "#!lua\nlocal A = 1\nlocal B = A + 1\nlocal C = B + 1\nreturn C\n"
    )


@pytest.mark.parametrize(
    ("source", "lib", "error"),
    [
        ("#!lua\n--#include nowhere\n", {}, "no Lua library shared/scripts/lib/nowhere.lua"),
        ("#!lua\n--#include lib/x.lua\n", {}, "write includes as `--#include <name>`"),
        ("#!lua\n--#includex\n", {}, "write includes as `--#include <name>`"),
        ("#!lua\n--#include a\n", {"a": "--#include b\n", "b": "--#include a\n"}, "a includes"),
        ("#!lua\n--#include a\n", {"a": "#!lua flags=no-writes\n"}, "flags line"),
        ("--#include a\n#!lua\nreturn 1\n", {"a": "local A = 1\n"}, "flags line"),
    ],
)
def test_a_source_that_cannot_be_assembled_is_refused(
    source: str, lib: dict[str, str], error: str
) -> None:
    def read(name: str) -> str:
        return lib[name] if name in lib else read_lib(name)

    with pytest.raises(LuaSourceError, match=re.escape(error)):
        inline_includes(source, read, name="s")


def test_every_script_is_whole_with_its_flags_line_first() -> None:
    for name in SCRIPTS:
        script = LuaScript.named(name)
        lines = script.source.splitlines()
        assert lines[0].startswith("#!lua"), name
        assert not any(line.startswith("--#include") for line in lines), name
        assert not any(line.startswith("#!") for line in lines[1:]), name


def test_every_library_is_used_and_every_function_defined_once_per_script() -> None:
    included = set()
    for name in SCRIPTS:
        raw = resources.files("shared.scripts").joinpath(f"{name}.lua").read_text("utf-8")
        included |= set(re.findall(r"^--#include (\w+)$", raw, re.M))
        defined = re.findall(r"^local function (\w+)", LuaScript.named(name).source, re.M)
        assert len(defined) == len(set(defined)), (name, defined)
    assert included == set(LIBS)


def test_every_script_compiles_in_redis_and_runs_by_its_sha(sync_redis: redis.Redis) -> None:
    for name in SCRIPTS:
        script = LuaScript.named(name)
        assert sync_redis.script_load(script.source) == script.sha, name


def test_an_inlined_script_runs_in_one_evalsha_under_its_flags(
    sync_redis: redis.Redis, key_prefix: str
) -> None:
    """The library's function runs in the script; the flags line still binds it: a no-writes
    script that writes is refused by Redis, and nothing was stored."""
    key = f"{key_prefix}:x"
    reads = LuaScript("reads", inline_includes("#!lua flags=no-writes\n--#include clock\n"
                                               "return redis_now_ms()\n"))  # fmt: skip
    seconds, micros = sync_redis.time()
    sync_redis.script_load(reads.source)
    answer = sync_redis.evalsha(reads.sha, 0)
    assert isinstance(answer, int) and answer >= seconds * 1000 + micros // 1000
    writes = LuaScript("writes", inline_includes("#!lua flags=no-writes\n--#include fence\n"
                                                 "return draw_fence(KEYS[1], nil)\n"))  # fmt: skip
    sync_redis.script_load(writes.source)
    with pytest.raises(ResponseError, match=r"[Ww]rite commands are not allowed"):
        sync_redis.evalsha(writes.sha, 1, key)
    assert sync_redis.exists(key) == 0
