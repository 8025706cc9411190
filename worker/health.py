"""`wsm worker --check`: is this host's fleet healthy? (the container's health check)

Healthy means all of:
1. Redis answers;
2. the fleet's supervisor heartbeat exists (written every WSM_HEARTBEAT_INTERVAL, gone after
   three intervals without a write);
3. every one of its N worker processes has a heartbeat, written by the process that the
   supervisor currently runs under that index (not one left by a process that died);
4. no worker process is crash-looping (3 or more exits in a row, each within 30 s of its start).

The fleet is found by WSM_WORKER_FLEET_ID (the host name when unset) and WSM_KEY_PREFIX, the
same settings the fleet itself read. Exit status 0 when healthy, 1 otherwise; one JSON line on
stdout says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from shared.keys import FleetKeys
from shared.redis_client import RedisClient
from shared.redis_errors import REDIS_UNAVAILABLE

# Exits in a row, each soon after start, that make a process "crash-looping".
CRASH_LOOP_EXITS = 3


@dataclass
class HealthReport:
    healthy: bool
    problems: list[str] = field(default_factory=list)
    processes: int = 0
    alive: int = 0

    def as_json(self) -> bytes:
        # orjson writes a dataclass as an object of its fields.
        return orjson.dumps(self)


async def check_fleet(client: RedisClient, fleet: FleetKeys) -> HealthReport:
    try:
        supervisor_raw = await client.get(fleet.supervisor)
    except REDIS_UNAVAILABLE as exc:
        return HealthReport(False, [f"redis unreachable: {exc}"])
    if supervisor_raw is None:
        return HealthReport(False, [f"no supervisor heartbeat for fleet {fleet.fleet_id!r}"])
    supervisor = orjson.loads(supervisor_raw)
    children: list[dict[str, Any]] = supervisor.get("children", [])
    report = HealthReport(True, processes=len(children))
    if not children:
        report.problems.append("the supervisor runs no worker processes")
    try:
        beats = await client.mget([fleet.process(c["index"]) for c in children]) if children else []
    except REDIS_UNAVAILABLE as exc:
        return HealthReport(False, [f"redis unreachable: {exc}"], processes=len(children))
    for child, beat_raw in zip(children, beats, strict=True):
        index = child["index"]
        beat = orjson.loads(beat_raw) if beat_raw is not None else None
        if beat is None:
            report.problems.append(f"process {index}: no heartbeat")
        elif child.get("pid") is None or beat.get("pid") != child.get("pid"):
            report.problems.append(f"process {index}: heartbeat is not from its current process")
        else:
            report.alive += 1
        if int(child.get("quick_exits", 0)) >= CRASH_LOOP_EXITS:
            report.problems.append(
                f"process {index}: crash-looping ({child['quick_exits']} quick exits in a row)"
            )
    report.healthy = not report.problems
    return report
