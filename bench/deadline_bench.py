"""The deadline around each Redis round trip: CPU per command of the lean client
(`shared/redis_lean.py`) with its deadline kept by `shared.deadlines.deadline` (one timer per
loop for every round trip in flight) against the same client with an `asyncio.timeout` around
each round trip, as it was before the eighteenth session.

    python3 bench/deadline_bench.py [--commands 40000] [--concurrency 16] [--rounds 4]

A private redis-server (no persistence) answers `GET` from `--concurrency` tasks at once; what
is measured is this process's CPU (`time.process_time`) per command, the server's excluded.
Rounds alternate the two. Results: docs/benchmarks.md ("End to end", eighteenth session).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import shared.redis_lean as redis_lean  # noqa: E402
from shared.embedded_redis import EmbeddedRedis, free_port  # noqa: E402
from shared.redis_client import connect  # noqa: E402

T = TypeVar("T")
PRODUCT_WITHIN = redis_lean.within


async def within_asyncio_timeout(seconds: float | None, round_trip: Awaitable[T]) -> T:
    """The baseline: `within` as it was, one `asyncio.timeout` per round trip."""
    if seconds is None:
        return await round_trip
    try:
        async with asyncio.timeout(seconds):
            return await round_trip
    except TimeoutError:
        raise redis_lean.RedisTimeoutError(f"Redis did not answer within {seconds} s") from None


async def cpu_per_command_us(url: str, *, commands: int, concurrency: int) -> float:
    client = connect(url, socket_timeout=5)
    await client.set("k", "v")

    async def run(n: int) -> None:
        for _ in range(n):
            await client.get("k")

    await run(500)  # connections open, code paths warm
    each = commands // concurrency
    started = time.process_time()
    await asyncio.gather(*(run(each) for _ in range(concurrency)))
    spent = time.process_time() - started
    await client.aclose()
    return spent / (each * concurrency) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=40000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    variants = {"asyncio.timeout": within_asyncio_timeout, "deadline": PRODUCT_WITHIN}
    figures: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as data:
        server = EmbeddedRedis(Path(data), port=free_port(), appendonly=False)
        server.start()
        try:
            for round_no in range(1, args.rounds + 1):
                for name, within in variants.items():
                    redis_lean.within = within  # type: ignore[assignment]
                    us = uvloop.run(
                        cpu_per_command_us(
                            server.url, commands=args.commands, concurrency=args.concurrency
                        )
                    )
                    figures[name].append(us)
                    print(f"round {round_no}: {name:>15}: {us:5.1f} us of CPU per command")
        finally:
            redis_lean.within = PRODUCT_WITHIN
            server.stop()
    base, new = (statistics.median(figures[k]) for k in variants)
    ratios = ", ".join(
        f"{d / b:.2f}" for d, b in zip(figures["deadline"], figures["asyncio.timeout"], strict=True)
    )
    print(f"median: asyncio.timeout {base:.1f} us, deadline {new:.1f} us per command")
    print(f"deadline / asyncio.timeout: {new / base:.2f} (per round: {ratios})")


if __name__ == "__main__":
    main()
