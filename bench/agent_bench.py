"""AI agent throughput: how many conversations per second the worker fleet carries end to end
when every answer waits on the LLM, against the bound that wait sets.

    python3 bench/agent_bench.py [--conversations 600] [--delay-ms 800] [--processes 2]
                                 [--concurrency 8 16 32] [--rounds 1] [--instant-only]
                                 [--profile SECONDS [--profile-out DIR]]

A conversation here is one customer message, end to end: queued the way the gateway queues
it, claimed by a worker process, handled by the engine with the AI agent as its brain
(engine.agent.service:create: context from Redis, one chat completion, the Decision committed
with the ack), and the reply delivered by the engine's sender to WAHA. Every conversation is a
different chat, so nothing serialises them but the fleet's concurrency.

The LLM and WAHA are one local stand-in server (uvicorn, its own process): the chat
completions endpoint answers in Groq's shape after a fixed delay; WAHA's sendText answers 201
and notes when each reply arrived. The rate is measured from the first reply to the last, so
process start-up is not counted. The bound is (processes x concurrency) / delay: with every
slot waiting on the model, that many answers can come back per second at most. The same run
measures the fleet with an instant model (delay 0): the ceiling of everything but the wait.

With --profile, each run is also sampled by `py-spy record --subprocesses` (pip install py-spy)
for that many seconds from its first reply: raw collapsed stacks, one file per run in
--profile-out, summarised by `python3 bench/agent_bench.py --summarise FILE`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.embedded_redis import EmbeddedRedis  # noqa: E402
from shared.enqueue import enqueue_many  # noqa: E402
from shared.redis_client import connect  # noqa: E402
from tests.worker.support.fleet import text_request  # noqa: E402
from wsm.load.cpu import Component, CpuMeter  # noqa: E402

# --- the stand-in server (LLM + WAHA) ----------------------------------------------------------


def completion_body() -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "openai/gpt-oss-20b",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "Olá! Tenho horários amanhã às 10:00 e 14:30. Qual prefere?",
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 900, "completion_tokens": 40, "total_tokens": 940},
            "x_groq": {"id": "req_" + uuid.uuid4().hex[:26]},
        }
    )


class StandIns:
    """A raw ASGI app: the LLM after `delay` seconds, WAHA at once."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.sent: list[float] = []
        self.llm_calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        status, answer, headers = 404, b"{}", []
        if path == "/openai/v1/chat/completions":
            self.llm_calls += 1
            if self.delay:
                await asyncio.sleep(self.delay)
            status, answer = 200, completion_body()
            headers = [(b"x-ratelimit-remaining-requests", b"14000"),
                       (b"x-ratelimit-remaining-tokens", b"250000")]  # fmt: skip
        elif path == "/api/sendText":
            self.sent.append(time.perf_counter())
            chat = orjson.loads(body)["chatId"]
            status, answer = 201, orjson.dumps({"id": f"true_{chat}_{uuid.uuid4().hex}"})
        elif path in ("/api/sendSeen", "/api/startTyping", "/api/stopTyping"):
            status = 201
        elif path == "/stats":
            status = 200
            answer = orjson.dumps(
                {
                    "sent": len(self.sent),
                    "first": self.sent[0] if self.sent else 0,
                    "last": self.sent[-1] if self.sent else 0,
                    "llm_calls": self.llm_calls,
                }
            )
        elif path == "/reset":
            delay = orjson.loads(body or b"{}").get("delay")
            self.delay = self.delay if delay is None else float(delay)
            self.sent, self.llm_calls, status = [], 0, 200
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), *headers],
            }
        )
        await send({"type": "http.response.body", "body": answer})


def serve_standins(port: int) -> None:
    import uvicorn

    uvicorn.run(StandIns(0.0), host="127.0.0.1", port=port, log_level="warning", loop="uvloop")


# --- the benchmark -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def queue_conversations(client: Any, count: int, prefix: str) -> None:
    text = "Oi! Quero marcar uma consulta"
    requests = [
        text_request(f"5519{n:09d}@c.us", text, prefix, received_at_ms=int(time.time() * 1000))[1]
        for n in range(count)
    ]
    for i in range(0, len(requests), 1000):
        await enqueue_many(client, requests[i : i + 1000])


async def run(
    redis_url: str, standins: str, args: argparse.Namespace, delay: float, concurrency: int
) -> tuple[float, str, float]:
    prefix = "bench" + uuid.uuid4().hex[:8]
    client = connect(redis_url)
    async with httpx.AsyncClient(base_url=standins, timeout=10) as http:
        await http.post("/reset", json={"delay": delay})
        await queue_conversations(client, args.conversations, prefix)
        env = os.environ | {
            "PYTHONPATH": str(ROOT),
            "REDIS_URL": redis_url,
            "WSM_KEY_PREFIX": prefix,
            "WSM_LOG_LEVEL": "WARNING",
            "GROQ_API_KEY": "bench",
            "GROQ_BASE_URL": standins,
            "WAHA_URL": standins,
            "WSM_CALENDAR_FILE": str(ROOT / "config" / "calendar.example.yaml"),
            "WSM_TYPING_DELAY_MAX_MS": "0",
            "WSM_SENDS_PER_SECOND_PER_SESSION": "0",
            "WSM_LLM_MAX_RETRIES": "0",
        }
        fleet = subprocess.Popen(  # noqa: ASYNC220 - only starts it
            [
                sys.executable, "-m", "worker",
                "--processes", str(args.processes),
                "--concurrency", str(concurrency),
                "--handler", "engine.agent.service:create",
                "--metrics-port", "0",
                "--fleet-id", prefix,
            ],
            cwd=ROOT, env=env,
        )  # fmt: skip
        profiler: subprocess.Popen[bytes] | None = None
        # The fleet's CPU (supervisor and children, from /proc) from its first reply to its
        # last: per conversation, a cost that foreign load on the machine barely moves.
        meter = CpuMeter([Component("worker", lambda: [fleet.pid])])
        sent_at_start: int | None = None
        sampled = 0.0
        try:
            deadline = time.monotonic() + 600
            while True:
                stats = (await http.get("/stats")).json()
                if sent_at_start is None and stats["sent"] > 0:
                    meter.sample()
                    sent_at_start, sampled = stats["sent"], time.monotonic()
                    if args.profile:
                        profiler = start_profiler(args, fleet.pid, delay, concurrency)
                if stats["sent"] >= args.conversations:
                    meter.sample()
                    break
                if sent_at_start is not None and time.monotonic() - sampled > 1:
                    meter.sample()
                    sampled = time.monotonic()
                if time.monotonic() > deadline or fleet.poll() is not None:
                    raise RuntimeError(f"stalled: {stats}")
                await asyncio.sleep(0.05)
            # A reply sent twice would arrive after the count was reached: look again.
            await asyncio.sleep(1.0)
            replies = int((await http.get("/stats")).json()["sent"])
        finally:
            if profiler is not None:
                profiler.wait(args.profile + 60)
            fleet.terminate()
            fleet.wait(60)
            await client.aclose()
    rate = (stats["sent"] - 1) / (stats["last"] - stats["first"])
    cpu_ms = meter.ms_per_message(stats["sent"] - (sent_at_start or 0))["worker"]
    # Handled once: one LLM call and one reply per conversation (more means handled again).
    return rate, f"{stats['llm_calls']} / {replies}", cpu_ms


def start_profiler(
    args: argparse.Namespace, pid: int, delay: float, concurrency: int
) -> subprocess.Popen[bytes]:
    out = Path(args.profile_out)
    out.mkdir(parents=True, exist_ok=True)
    name = out / f"p{args.processes}-c{concurrency}-d{int(delay * 1000)}-{uuid.uuid4().hex[:4]}.txt"
    print(f"profiling {args.profile} s into {name}", file=sys.stderr)
    return subprocess.Popen(
        ["py-spy", "record", "--subprocesses", "--pid", str(pid), "--duration",
         str(args.profile), "--rate", "100", "--format", "raw", "--nonblocking",
         "--output", str(name)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def summarise(path: str) -> None:
    """Self and inclusive shares of a py-spy raw (collapsed) profile: the frames that matter."""
    total = 0
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    for line in Path(path).read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        total += count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    print(f"{total} samples")
    for title, table in (("inclusive", inclusive), ("self", own)):
        print(f"\n{title}:")
        for frame, count in sorted(table.items(), key=lambda kv: -kv[1])[:45]:
            print(f"{count / total:6.1%}  {frame}")


async def main_async(args: argparse.Namespace) -> None:
    port = free_port()
    server = subprocess.Popen(  # noqa: ASYNC220 - only starts it
        [sys.executable, __file__, "--serve-standins", str(port)], cwd=ROOT
    )
    redis_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"agent-bench-{uuid.uuid4().hex[:6]}"
    redis_server = EmbeddedRedis(redis_dir, appendonly=False)
    redis_server.start()
    standins = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=standins) as http:
            for _ in range(200):
                try:
                    await http.get("/stats")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
        delay = args.delay_ms / 1000
        print(
            f"{args.conversations} conversations, {args.processes} worker processes, "
            f"LLM stand-in delay {args.delay_ms} ms\n"
        )
        # LLM calls above the conversations mean messages were handled again after a failure.
        print("| concurrency per process | LLM delay | conversations/s | bound (P×C÷delay) "
              "| of the bound | LLM calls / replies | worker CPU ms / conversation |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for round_number in range(1, args.rounds + 1):
            for concurrency in args.concurrency:
                instant, calls, cpu = await run(redis_server.url, standins, args, 0.0, concurrency)
                print(
                    f"| {concurrency} | 0 ms (ceiling), round {round_number} | {instant:.1f} "
                    f"| - | - | {calls} | {cpu:.2f} |",
                    flush=True,
                )
                if args.instant_only:
                    continue
                rate, calls, cpu = await run(redis_server.url, standins, args, delay, concurrency)
                bound = args.processes * concurrency / delay
                print(
                    f"| {concurrency} | {args.delay_ms} ms | {rate:.1f} | {bound:.1f} "
                    f"| {rate / bound:.0%} | {calls} | {cpu:.2f} |",
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait(10)
        redis_server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=600)
    parser.add_argument("--delay-ms", type=int, default=800)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 16, 32])
    # Rounds repeat the whole sweep, so a burst of load from elsewhere shows as one odd round.
    parser.add_argument("--rounds", type=int, default=1)
    # Only the instant model: the fleet's own ceiling at each concurrency (the C sweep).
    parser.add_argument("--instant-only", action="store_true")
    parser.add_argument("--profile", type=int, default=0, help="py-spy seconds per run")
    parser.add_argument("--profile-out", default="/tmp/agent-bench-profiles")
    parser.add_argument("--summarise", help="summarise a --profile output file and exit")
    parser.add_argument("--serve-standins", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.summarise:
        summarise(args.summarise)
        return
    if args.serve_standins:
        serve_standins(args.serve_standins)
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
