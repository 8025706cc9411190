"""Worker fleet throughput: drain a queue with a no-op handler, against a plain BRPOP baseline.

    python3 bench/worker_bench.py [--messages 20000] [--chats 500] [--concurrency 16] [--repeat 3]
                                  [--processes 1 2]

Starts a private redis-server (no persistence), queues the messages through the gateway's
enqueue path (shared.enqueue, pipelined), then runs `python -m worker` with 1 and with 2
processes and measures messages/s from the first message handled to the queue being empty.
The baseline, in the same run: the same records LPUSHed onto one list and drained by the same
number of processes, each with the same number of asyncio tasks looping on BRPOP (no order
per chat, no lease, nothing survives a crash). Each figure is the median of `--repeat` runs,
interleaved, so a burst of load from elsewhere on the machine hits both sides alike. Beside the
rates, the CPU per message of the consumers and of Redis over the same window (from /proc):
other work on a shared machine slows both sides' wall clock, but does not add to their CPU.
Prints one table and the per-round figures; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.embedded_redis import EmbeddedRedis  # noqa: E402
from shared.enqueue import EnqueueRequest, enqueue_many  # noqa: E402
from shared.envelope import QueuedEvent  # noqa: E402
from shared.keys import ShardKeys  # noqa: E402
from shared.redis_client import connect  # noqa: E402
from tests.worker.support.fleet import text_request  # noqa: E402
from wsm.load.cpu import Component, CpuMeter  # noqa: E402

POLL_SECONDS = 0.005


async def noop(event: QueuedEvent, ctx: Any) -> None:
    """The benchmark's handler: nothing to do, so the fleet acks with no writes."""


def build_requests(messages: int, chats: int, prefix: str) -> list[EnqueueRequest]:
    return [
        text_request(
            f"5511{n % chats:09d}@c.us",
            f"mensagem {n}",
            prefix,
            received_at_ms=int(time.time() * 1000),
        )[1]
        for n in range(messages)
    ]


async def waiting(client: Any, prefix: str) -> int:
    return int(await client.hget(ShardKeys(0, prefix).stats, "waiting") or 0)


@dataclass(frozen=True, slots=True)
class Drain:
    rate: float  # messages/s, wall clock
    # CPU per message over the same window, from /proc (wsm/load/cpu.py): the consuming
    # processes and the Redis server. Less sensitive than the rate to other work on the
    # machine, which takes wall time from both sides but adds no CPU to theirs.
    consumer_us: float
    redis_us: float

    @property
    def cpu_us(self) -> float:
        return self.consumer_us + self.redis_us


async def measure_drain(
    read_left: Any, total: int, consumers: list[int], redis_pid: int, timeout: float = 300
) -> Drain:
    """Messages/s from the first message gone to the last (polls how many are left), and the
    CPU the consumers (process trees of `consumers`) and Redis spent in that window."""
    meter = CpuMeter(
        [Component("consumer", lambda: consumers), Component("redis", lambda: [redis_pid])]
    )
    deadline = time.monotonic() + timeout
    while (left := await read_left()) >= total:
        if time.monotonic() > deadline:
            raise RuntimeError("nothing was drained")
        await asyncio.sleep(POLL_SECONDS)
    meter.sample()
    started, left_at_start = time.perf_counter(), left
    while (left := await read_left()) > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"drain stalled with {left} left")
        await asyncio.sleep(POLL_SECONDS)
    meter.sample()
    rate = left_at_start / (time.perf_counter() - started)
    seconds = meter.seconds()
    return Drain(
        rate,
        1e6 * seconds["consumer"] / left_at_start,
        1e6 * seconds["redis"] / left_at_start,
    )


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


async def run_fleet(url: str, redis_pid: int, args: argparse.Namespace, processes: int) -> Drain:
    prefix = "bench" + uuid.uuid4().hex[:8]
    client = connect(url)
    requests = build_requests(args.messages, args.chats, prefix)
    for i in range(0, len(requests), 1000):
        await enqueue_many(client, requests[i : i + 1000])
    env = os.environ | {"REDIS_URL": url, "WSM_KEY_PREFIX": prefix, "WSM_LOG_LEVEL": "WARNING"}
    env["PYTHONPATH"] = str(ROOT)
    # Popen only starts the process (no waiting), so the event loop is not blocked.
    fleet = subprocess.Popen(  # noqa: ASYNC220
        [
            sys.executable, "-m", "worker",
            "--processes", str(processes),
            "--concurrency", str(args.concurrency),
            "--handler", "bench.worker_bench:noop",
            "--metrics-port", "0",
            "--fleet-id", prefix,
        ],
        cwd=ROOT,
        env=env,
    )  # fmt: skip
    try:
        return await measure_drain(
            lambda: waiting(client, prefix), args.messages, [fleet.pid], redis_pid
        )
    finally:
        stop([fleet])
        await client.aclose()


async def brpop_consumer(url: str, key: str, concurrency: int) -> None:
    client = connect(url)

    async def loop() -> None:
        while True:
            item = await client.brpop([key], timeout=1)
            if item is None:
                return
            await noop(None, None)  # type: ignore[arg-type]

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    await client.aclose()


async def run_baseline(url: str, redis_pid: int, args: argparse.Namespace, processes: int) -> Drain:
    key = "bench:baseline:" + uuid.uuid4().hex[:8]
    client = connect(url)
    records = [b"x" * 600] * args.messages  # about the size of a queued record
    for i in range(0, len(records), 1000):
        pipe = client.pipeline(transaction=False)
        for record in records[i : i + 1000]:
            pipe.lpush(key, record)
        await pipe.execute()
    consumers = [
        subprocess.Popen(  # noqa: ASYNC220 - starts the process, does not wait for it
            [sys.executable, __file__, "--brpop-child", url, key, str(args.concurrency)],
            cwd=ROOT,
        )
        for _ in range(processes)
    ]
    try:
        return await measure_drain(
            lambda: client.llen(key), args.messages, [c.pid for c in consumers], redis_pid
        )
    finally:
        stop(consumers)
        await client.aclose()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="wsm-bench-") as tmp:
        server = EmbeddedRedis(Path(tmp), appendonly=False)
        server.start()
        assert server.process is not None
        redis_pid = server.process.pid
        try:
            runs: dict[tuple[str, int], list[Drain]] = {}
            for _ in range(args.repeat):
                for processes in args.processes:
                    fleet = await run_fleet(server.url, redis_pid, args, processes)
                    runs.setdefault(("fleet", processes), []).append(fleet)
                    baseline = await run_baseline(server.url, redis_pid, args, processes)
                    runs.setdefault(("brpop", processes), []).append(baseline)
        finally:
            server.stop()
    print(
        f"{args.messages} messages over {args.chats} chats, concurrency {args.concurrency} "
        f"per process, {os.cpu_count()} cores, median of {args.repeat} rounds"
    )
    for (kind, processes), drains in sorted(runs.items()):
        print(
            f"  {kind} x{processes}: msgs/s "
            + ", ".join(f"{d.rate:,.0f}" for d in drains)
            + "; CPU us/msg (consumer + redis) "
            + ", ".join(f"{d.consumer_us:.0f}+{d.redis_us:.0f}" for d in drains)
        )
    print(
        f"{'processes':>9}  {'fleet msgs/s':>12}  {'BRPOP msgs/s':>12}  {'fleet/BRPOP':>11}"
        f"  {'CPU: BRPOP/fleet':>16}"
    )
    for processes in args.processes:
        fleets, brpops = runs[("fleet", processes)], runs[("brpop", processes)]
        fleet = statistics.median(d.rate for d in fleets)
        baseline = statistics.median(d.rate for d in brpops)
        # CPU per message, baseline over fleet: 1.0 means the fleet costs what BRPOP costs.
        cpu = statistics.median(b.cpu_us / f.cpu_us for f, b in zip(fleets, brpops, strict=True))
        print(
            f"{processes:>9}  {fleet:>12,.0f}  {baseline:>12,.0f}  {fleet / baseline:>11.2f}"
            f"  {cpu:>16.2f}"
        )
        pairs = list(zip(fleets, brpops, strict=True))
        print(
            "  per round: fleet/BRPOP msgs/s "
            + ", ".join(f"{f.rate / b.rate:.2f}" for f, b in pairs)
            + "; BRPOP/fleet CPU per message "
            + ", ".join(f"{b.cpu_us / f.cpu_us:.2f}" for f, b in pairs)
        )
    if 1 in args.processes and 2 in args.processes:
        one = statistics.median(d.rate for d in runs[("fleet", 1)])
        two = statistics.median(d.rate for d in runs[("fleet", 2)])
        print(f"fleet scaling, 2 processes / 1: {two / one:.2f}x")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--chats", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--brpop-child", nargs=3, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.brpop_child:
        import uvloop

        url, key, concurrency = arguments.brpop_child
        uvloop.run(brpop_consumer(url, key, int(concurrency)))
    else:
        asyncio.run(main(arguments))
