"""`python -m gateway` as a real process: concurrency, `--workers N` metrics, refusals."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis

from shared.keys import ShardKeys
from tests.gateway.conftest import (
    REPO,
    STEADY_REDIS_TIMEOUT_MS,
    GatewayProcess,
    gateway_environment,
    signed,
)
from tests.support.polling import wait_until
from tests.support.waha import compact, text_message


def all_queued_ids(client: redis.Redis, prefix: str) -> list[str]:
    shard = ShardKeys(0, prefix)
    ids: list[str] = []
    for token in client.lrange(shard.ready, 0, -1):
        conversation = shard.conversation(token.decode())
        ids += [i.decode() for i in client.lrange(conversation.messages, 0, -1)]
    return ids


async def test_500_concurrent_signed_requests_are_500_distinct_queued_events(
    redis_url: str,
    key_prefix: str,
    tmp_path: Path,
    sync_redis: redis.Redis,
    start_gateway: Callable[..., Any],
) -> None:
    gateway: GatewayProcess = start_gateway(
        gateway_environment(redis_url, key_prefix, tmp_path / "spool")
    )
    documents = [text_message(f"55119000{n % 25:05d}@c.us", f"mensagem {n} ✓") for n in range(500)]
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
    async with httpx.AsyncClient(base_url=gateway.url, limits=limits, timeout=30) as client:

        async def post(document: dict[str, Any]) -> httpx.Response:
            body = compact(document)
            return await client.post("/webhook", content=body, headers=signed(body))

        responses = await asyncio.gather(*(post(d) for d in documents))
    assert [r.status_code for r in responses] == [200] * 500
    # Under a loaded machine a burst may miss the 50 ms deadline and be spooled: still 200,
    # still queued exactly once (replayed), which is what this checks.
    assert {r.json()["status"] for r in responses} <= {"queued", "spooled"}
    wait_until(
        lambda: len(all_queued_ids(sync_redis, key_prefix)) >= 500,
        timeout=15,
        what="500 events queued",
    )
    ids = all_queued_ids(sync_redis, key_prefix)
    assert sorted(ids) == sorted(d["id"] for d in documents)
    assert int(sync_redis.hget(ShardKeys(0, key_prefix).stats, "waiting") or 0) == 500


def per_process_queued(metrics_dir: Path) -> dict[int, float]:
    """Each live process's own count, read from its own multiprocess file."""
    from prometheus_client.multiprocess import MultiProcessCollector

    counts: dict[int, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        for metric in MultiProcessCollector.merge([str(path)], accumulate=True):
            for sample in metric.samples:
                if (
                    sample.name == "wsm_webhook_requests_total"
                    and sample.labels.get("outcome") == "queued"
                ):
                    counts[pid] = counts.get(pid, 0.0) + sample.value
    return counts


def test_workers_2_metrics_report_both_processes(
    redis_url: str, key_prefix: str, tmp_path: Path, start_gateway: Callable[..., Any]
) -> None:
    metrics_dir = tmp_path / "metrics"
    gateway: GatewayProcess = start_gateway(
        gateway_environment(
            redis_url,
            key_prefix,
            tmp_path / "spool",
            WSM_GATEWAY_METRICS_DIR=str(metrics_dir),
            # About metrics, not the deadline: `queued` must not turn `spooled` under load.
            WSM_WEBHOOK_REDIS_TIMEOUT_MS=str(STEADY_REDIS_TIMEOUT_MS),
        ),
        workers=2,
    )

    def both_processes_serving() -> bool:
        text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
        return text.count("wsm_gateway_process_start_time_seconds{pid=") == 2

    wait_until(both_processes_serving, timeout=30, what="two gateway processes")
    sent = 0

    def both_processes_handled_requests() -> bool:
        nonlocal sent
        # A new connection per request: the kernel spreads accepts over both processes.
        body = compact(text_message("5511977776666@c.us", f"m{sent}"))
        response = httpx.post(f"{gateway.url}/webhook", content=body, headers=signed(body))
        assert response.json() == {"status": "queued"}
        sent += 1
        counts = per_process_queued(metrics_dir)
        return len([c for c in counts.values() if c > 0]) == 2

    wait_until(both_processes_handled_requests, timeout=30, interval=0, what="both handled")
    counts = per_process_queued(metrics_dir)
    assert sum(counts.values()) == sent
    for _ in range(6):  # whichever process answers the scrape reports the sum of both
        text = httpx.get(f"{gateway.url}/metrics", headers={"connection": "close"}).text
        assert f'wsm_webhook_requests_total{{outcome="queued"}} {float(sent)}' in text
        assert "wsm_spool_events 0.0" in text


def run_cli(environment: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WSM_", "WEBHOOK_", "REDIS_URL", "PROMETHEUS_"))
    }
    env.update(environment, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "gateway", "--port", "1"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_refuses_to_start_without_an_hmac_key(redis_url: str, tmp_path: Path) -> None:
    result = run_cli({"REDIS_URL": redis_url, "WSM_SPOOL_DIR": str(tmp_path)}, tmp_path)
    assert result.returncode == 2
    assert "WEBHOOK_HMAC_KEY is not set" in result.stderr
    assert "WSM_ALLOW_UNSIGNED=1" in result.stderr


def test_unsigned_mode_starts_with_a_loud_warning(
    redis_url: str, key_prefix: str, tmp_path: Path, start_gateway: Callable[..., Any]
) -> None:
    environment = gateway_environment(
        redis_url,
        key_prefix,
        tmp_path / "spool",
        WSM_ALLOW_UNSIGNED="1",
        WSM_WEBHOOK_REDIS_TIMEOUT_MS=str(STEADY_REDIS_TIMEOUT_MS),
    )
    del environment["WEBHOOK_HMAC_KEY"]
    gateway: GatewayProcess = start_gateway(environment)
    body = compact(text_message("5511977775555@c.us", "sem assinatura"))
    response = httpx.post(f"{gateway.url}/webhook", content=body, headers=signed(body, key=None))
    assert response.json() == {"status": "queued"}
    assert "webhooks are NOT verified" in gateway.log()
    assert '"level":"warning"' in gateway.log()
