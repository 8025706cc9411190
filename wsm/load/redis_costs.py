"""Redis's own time per command and per Lua script during a load run, from its SLOWLOG.

    meter = RedisCostMeter(redis_url)
    await meter.start()                 # before the load starts
    await meter.run(stop)               # until `stop` is set
    meter.per_message(messages)         # [{"name": "script:ack_message", ...}, ...]

`/proc` says how much CPU Redis used per customer message (wsm/load/cpu.py); this says on what.
With `slowlog-log-slower-than 0` Redis logs every command with the microseconds it spent
executing it (not the network, not the wait in its event loop). The meter drains the log once
a second (`SLOWLOG GET -1` and `SLOWLOG RESET` in one MULTI, so no command falls between the
two), names each EVALSHA after the script of shared/scripts/ it runs, and puts both settings
back as they were when it stops.

A script's own commands are logged too, from the client "?:0", and their time is already inside
the script's: they are left out, so the rows add up to Redis's time on what clients sent.
Logging every command costs Redis time of its own, so a run's CPU figures with the meter on are
not comparable with a run without it (`wsm loadtest --redis-costs` says so).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.asyncio as aioredis

from shared.lua import SCRIPTS, LuaScript

# Commands a script runs are logged with this client address.
SCRIPT_CLIENT = "?:0"
# Enough for a second of load on this machine (about 30 commands per customer message) with
# room to spare; an entry keeps at most 32 arguments of 128 bytes, so the log stays a few MB.
LOG_LENGTH = 100_000
# What the meter's own drain looks like in the log: not part of the load.
OWN_COMMANDS = frozenset({"slowlog", "multi", "exec", "config"})
DRAIN_SECONDS = 1.0
SETTINGS = ("slowlog-log-slower-than", "slowlog-max-len")


def script_names() -> dict[str, str]:
    """Every script of shared/scripts/ by the SHA1 Redis knows it by (libraries excluded)."""
    names = {}
    for entry in resources.files(SCRIPTS).iterdir():
        if entry.name.endswith(".lua"):
            script = LuaScript.named(entry.name.removesuffix(".lua"))
            names[script.sha] = script.name
    return names


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def command_name(args: Sequence[Any], scripts: dict[str, str]) -> str:
    """A log entry's row: `script:<name>` for a known EVALSHA, else the command in lower case."""
    command = _text(args[0]).lower() if args else "?"
    if command in ("evalsha", "evalsha_ro") and len(args) > 1:
        sha = _text(args[1]).lower()
        return f"script:{scripts.get(sha, sha[:12])}"
    return command


@dataclass(slots=True)
class Cost:
    calls: int = 0
    usec: int = 0


class RedisCostMeter:
    def __init__(self, redis_url: str, *, drain_seconds: float = DRAIN_SECONDS) -> None:
        self._url = redis_url
        self._drain_seconds = drain_seconds
        self._scripts = script_names()
        self.costs: dict[str, Cost] = {}
        self._client: aioredis.Redis | None = None
        # The two settings as they were before start(), put back by run().
        self._before: dict[str, str] = {}

    def add(self, entries: Iterable[Sequence[Any]]) -> None:
        """Count raw SLOWLOG GET entries: [id, time, usec, args, client, name]."""
        for entry in entries:
            usec, args, client = entry[2], entry[3], _text(entry[4])
            if client == SCRIPT_CLIENT:
                continue
            name = command_name(args, self._scripts)
            if name in OWN_COMMANDS:
                continue
            cost = self.costs.setdefault(name, Cost())
            cost.calls += 1
            cost.usec += int(usec)

    async def start(self) -> None:
        """Log every command from now on (awaited before the load starts, so its first
        messages are counted too)."""
        client = aioredis.Redis.from_url(self._url, socket_timeout=5)
        try:
            found = await client.config_get("slowlog-*")
            self._before = {name: str(found[name]) for name in SETTINGS}
            await client.config_set("slowlog-max-len", LOG_LENGTH)
            await client.slowlog_reset()
            await client.config_set("slowlog-log-slower-than", 0)
        except BaseException:
            await client.aclose()
            raise
        self._client = client

    async def run(self, stop: asyncio.Event) -> None:
        """Drain the log once a second until `stop` is set, then put the settings back."""
        client = self._client
        if client is None:
            raise RuntimeError("RedisCostMeter.run before start")
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._drain_seconds)
                await self._drain(client)
        finally:
            try:
                for name in SETTINGS:
                    await client.config_set(name, self._before[name])
            finally:
                self._client = None
                await client.aclose()

    async def _drain(self, client: aioredis.Redis) -> None:
        async with client.pipeline(transaction=True) as pipe:
            pipe.execute_command("SLOWLOG", "GET", -1)
            pipe.execute_command("SLOWLOG", "RESET")
            entries, _ = await pipe.execute()
        self.add(entries)

    def per_message(self, messages: int) -> list[dict[str, Any]]:
        """Each row per customer message, the costliest first."""
        if messages <= 0:
            return []
        rows = [
            {
                "name": name,
                "calls_per_message": round(cost.calls / messages, 2),
                "usec_per_call": round(cost.usec / cost.calls, 1),
                "usec_per_message": round(cost.usec / messages, 1),
            }
            for name, cost in self.costs.items()
        ]
        return sorted(rows, key=lambda row: -row["usec_per_message"])


def costs_line(rows: list[dict[str, Any]], *, top: int = 6) -> str:
    """`612 µs per message: script:enqueue_event 5.02 x 37.4 µs = 188; ...`."""
    total = sum(row["usec_per_message"] for row in rows)
    shown = "; ".join(
        f"{row['name']} {row['calls_per_message']} x {row['usec_per_call']} µs"
        f" = {row['usec_per_message']:.0f}"
        for row in rows[:top]
    )
    return f"{total:.0f} µs per message: {shown}" if rows else "nothing logged"
