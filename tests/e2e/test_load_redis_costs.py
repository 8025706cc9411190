"""`wsm loadtest --redis-costs` (wsm/load/redis_costs.py): Redis's own time by command and by
Lua script, from its SLOWLOG. Each script is named after its file, the commands a script runs
are left out (their time is inside the script's), the meter's own commands are not counted,
Redis's settings are put back, and a real load run reports its scripts per customer message."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import redis

from shared.embedded_redis import EmbeddedRedis
from shared.lua import LuaScript
from tests.e2e.test_loadtest_chaos import ROOT, run_loadtest
from wsm.load.redis_costs import RedisCostMeter, costs_line, script_names
from wsm.loadtest import parse_args

RENEW = LuaScript.named("send_lock_renew")


def test_every_script_of_the_project_is_known_by_its_sha() -> None:
    names = script_names()
    assert names[RENEW.sha] == "send_lock_renew"
    assert names[LuaScript.named("ack_message").sha] == "ack_message"
    assert "lib" not in names.values()  # libraries are inlined, never called by SHA
    scripts = Path(ROOT, "shared", "scripts")
    assert sorted(names.values()) == sorted(p.stem for p in scripts.glob("*.lua"))


async def test_the_meter_counts_what_clients_sent_and_puts_the_settings_back(
    private_redis: EmbeddedRedis,
) -> None:
    client = redis.asyncio.Redis.from_url(private_redis.url)
    await client.config_set("slowlog-log-slower-than", 12345)
    await client.config_set("slowlog-max-len", 77)
    meter = RedisCostMeter(private_redis.url, drain_seconds=0.05)
    stop = asyncio.Event()
    await meter.start()
    assert (await client.config_get("slowlog-*"))["slowlog-log-slower-than"] == "0"
    task = asyncio.create_task(meter.run(stop))
    try:
        await RENEW.load(client)
        for _ in range(3):
            # The script runs a GET of its own, which must not show as a client's GET.
            assert await RENEW(client, ["t:lock"], ["token", 1000]) == 0
        for value in range(2):
            await client.set("t:key", value)
        await asyncio.sleep(0.15)  # at least one drain while the meter runs
    finally:
        stop.set()
        await task
    settings = await client.config_get("slowlog-*")
    await client.aclose()

    costs = {name: cost.calls for name, cost in meter.costs.items()}
    assert costs["script:send_lock_renew"] == 3
    assert costs["set"] == 2
    assert "get" not in costs and "GET" not in costs
    assert not {"slowlog", "multi", "exec", "config"} & set(costs)
    assert settings["slowlog-log-slower-than"] == "12345"
    assert settings["slowlog-max-len"] == "77"


async def test_run_before_start_is_refused() -> None:
    with pytest.raises(RuntimeError, match="before start"):
        await RedisCostMeter("redis://unused").run(asyncio.Event())


def entry(usec: int, *args: str, client: str = "127.0.0.1:5000") -> list[object]:
    """A SLOWLOG GET entry as Redis sends it: id, unix time, µs, arguments, client, name."""
    return [1, 1_700_000_000, usec, [a.encode() for a in args], client.encode(), b""]


def test_rows_are_per_message_and_the_costliest_first() -> None:
    meter = RedisCostMeter("redis://unused")
    meter.add(
        [
            entry(100, "EVALSHA", RENEW.sha, "1", "k", "t", "1"),
            entry(60, "EVALSHA", RENEW.sha.upper(), "1", "k", "t", "1"),
            entry(7, "GET", "k", client="?:0"),  # inside the script above
            entry(5, "SET", "a", "1"),
            entry(3, "set", "b", "2"),
            entry(40, "EVALSHA", "f" * 40, "0"),  # a script that is not ours
            entry(9, "SLOWLOG", "GET", "-1"),
        ]
    )
    rows = meter.per_message(4)
    assert rows == [
        {"name": "script:send_lock_renew", "calls_per_message": 0.5,
         "usec_per_call": 80.0, "usec_per_message": 40.0},
        {"name": "script:" + "f" * 12, "calls_per_message": 0.25,
         "usec_per_call": 40.0, "usec_per_message": 10.0},
        {"name": "set", "calls_per_message": 0.5, "usec_per_call": 4.0, "usec_per_message": 2.0},
    ]  # fmt: skip
    assert meter.per_message(0) == []
    line = costs_line(rows, top=2)
    assert line.startswith("52 µs per message: script:send_lock_renew 0.5 x 80.0 µs = 40; ")
    assert "set" not in line  # only the top rows are named
    assert costs_line([]) == "nothing logged"


def test_redis_costs_and_chaos_are_refused_together(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        parse_args(["--redis-costs", "--chaos"])
    assert refused.value.code == 2
    assert "--redis-costs measures a run without chaos" in capsys.readouterr().err
    assert parse_args(["--redis-costs"]).redis_costs is True
    assert parse_args([]).redis_costs is False


@pytest.mark.slow
def test_a_load_run_reports_redis_time_per_message_by_script(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    run = run_loadtest(
        "--customers", "10", "--messages", "3", "--processes", "1", "--nginx", "off",
        "--redis-costs", "--home", str(tmp_path / "loadtest"), "--json", str(report_path),
        "--quiet",
        timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(report_path.read_text())
    rows = {row["name"]: row for row in report["redis_costs"]}
    # Every customer message is enqueued, committed and its reply sent: at least once each.
    for script in ("enqueue_event", "ack_message", "send_begin", "outbox_sent"):
        assert rows[f"script:{script}"]["calls_per_message"] >= 1.0, rows
        assert rows[f"script:{script}"]["usec_per_call"] > 0
    assert "Redis time per message (CPU above includes its slowlog):" in run.stdout
    assert "script:" in run.stdout.split("Redis time per message")[1].splitlines()[0]
