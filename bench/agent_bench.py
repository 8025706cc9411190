"""AI agent throughput: how many conversations per second the worker fleet carries end to end
when every answer waits on the LLM, against the bound that wait sets.

    python3 bench/agent_bench.py [--conversations 600] [--delay-ms 800] [--processes 2]
                                 [--concurrency 8 16 32] [--rounds 1] [--instant-only]
                                 [--profile SECONDS [--profile-out DIR]] [--trees DIR ...]
    python3 bench/agent_bench.py --call-cost CALLS [--rounds 3]

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
--profile-out, summarised by `python3 bench/agent_bench.py --summarise FILE` (add
`--frames REGEX ...` for the inclusive share of the stacks through each pattern).

With --trees, the fleet runs from each of those source trees in turn (say a copy of the tree
before a change, and one after), every C of every round back to back on each, so a burst of
load from elsewhere lands on both sides alike; each row carries the 1-minute load average at
its end, and with two trees the rate and CPU ratios of the pair follow.

--call-cost measures one piece alone, in this process: the CPU time of one chat completion
call through ChatModel.complete, against the same request through the Groq SDK's own
`chat.completions.with_raw_response.create` (what ChatModel sent before issue 19), both on one
AsyncGroq client over httpx.MockTransport (no network, no server), alternating, CALLS calls
each per round, for a first-round turn (system prompt, summary, customer message) and a
second-round one (the model's two tool calls and their results added), with the agent's tools.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, cast

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


STANDIN_LLM_HEADERS = {
    "content-type": "application/json",
    "x-ratelimit-remaining-requests": "14000",
    "x-ratelimit-remaining-tokens": "250000",
}


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
            headers = [(k.encode(), v.encode()) for k, v in STANDIN_LLM_HEADERS.items()
                       if k != "content-type"]  # fmt: skip
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


# --- one chat completion call, alone ------------------------------------------------------------


async def call_cost(calls: int, rounds: int) -> None:
    from engine.agent.context import tool_result_message
    from engine.agent.llm import ChatModel, ModelTurn, ToolCall, make_client
    from engine.agent.tools import tool_definitions

    def answer(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=completion_body(), headers=STANDIN_LLM_HEADERS)

    transport = httpx.MockTransport(answer)
    client = make_client(
        api_key="bench",
        base_url="https://groq.test",
        timeout_seconds=30,
        http_client=httpx.AsyncClient(transport=transport),
    )
    model = ChatModel(client, model="openai/gpt-oss-20b", max_retries=0, max_completion_tokens=512)
    tools = tool_definitions(knowledge=False)
    first = [
        {"role": "system", "content": "You are the WhatsApp assistant of a clinic. " * 40},
        {"role": "system", "content": "Summary: a new customer."},
        {"role": "user", "content": "Oi! Quero marcar uma consulta"},
    ]
    asked = ModelTurn(
        content="",
        tool_calls=(
            ToolCall(id="fc_1", name="list_services", arguments="{}"),
            ToolCall(id="fc_2", name="find_slots", arguments='{"service_id": "consulta"}'),
        ),
    )
    second = [
        *first,
        asked.as_message(),
        tool_result_message("fc_1", "list_services", {"services": [{"id": "consulta"}]}),
        tool_result_message("fc_2", "find_slots", {"slots": ["seg 10:00", "seg 14:30"]}),
    ]

    async def by_sdk(messages: list[dict[str, Any]]) -> None:
        raw = await client.chat.completions.with_raw_response.create(
            model=model.model,
            messages=cast(Any, messages),
            tools=cast(Any, tools),
            tool_choice="auto",
            max_completion_tokens=model.max_completion_tokens,
            temperature=0.2,
        )
        await raw.parse()

    async def by_model(messages: list[dict[str, Any]]) -> None:
        await model.complete(messages, tools)

    print(f"CPU ms per call, {calls} calls per cell, {len(tools)} tools\n")
    print("| round | turn | SDK create | ChatModel | ChatModel ÷ SDK | load average |")
    print("|---|---|---:|---:|---:|---:|")
    try:
        for round_number in range(1, rounds + 1):
            for turn, messages in (("first round", first), ("after two tool calls", second)):
                ways = [("sdk", by_sdk), ("model", by_model)]
                cost: dict[str, float] = {}
                for name, way in ways if round_number % 2 else ways[::-1]:
                    started = time.process_time()
                    for _ in range(calls):
                        await way(messages)
                    cost[name] = (time.process_time() - started) / calls * 1000
                print(
                    f"| {round_number} | {turn} | {cost['sdk']:.3f} | {cost['model']:.3f} "
                    f"| {cost['model'] / cost['sdk']:.2f} | {os.getloadavg()[0]:.1f} |",
                    flush=True,
                )
    finally:
        await client.close()


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
    redis_url: str,
    standins: str,
    args: argparse.Namespace,
    delay: float,
    concurrency: int,
    tree: Path = ROOT,
) -> tuple[float, str, float]:
    prefix = "bench" + uuid.uuid4().hex[:8]
    client = connect(redis_url)
    async with httpx.AsyncClient(base_url=standins, timeout=10) as http:
        await http.post("/reset", json={"delay": delay})
        await queue_conversations(client, args.conversations, prefix)
        env = os.environ | {
            "PYTHONPATH": str(tree),
            "REDIS_URL": redis_url,
            "WSM_KEY_PREFIX": prefix,
            "WSM_LOG_LEVEL": "WARNING",
            "GROQ_API_KEY": "bench",
            "GROQ_BASE_URL": standins,
            "WAHA_URL": standins,
            "WSM_CALENDAR_FILE": str(tree / "config" / "calendar.example.yaml"),
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
            cwd=tree, env=env,
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


def summarise(path: str, patterns: list[str]) -> None:
    """Self and inclusive shares of a py-spy raw (collapsed) profile: the frames that matter,
    then the share of the stacks through each of `patterns` (regexes on a stack's frames: a
    frame's share alone splits by line number, and a cost spread over many frames, say the
    SDK's request building, shows only as a pattern)."""
    total = 0
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    through = dict.fromkeys(patterns, 0)
    for line in Path(path).read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        total += count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for pattern in patterns:
            if re.search(pattern, stack):
                through[pattern] += count
    print(f"{total} samples")
    if patterns:
        print("\nstacks through:")
        for pattern, count in through.items():
            print(f"{count / total:6.1%}  {pattern}")
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
        trees: list[Path] = args.trees
        if len(trees) > 1:
            print("trees: " + ", ".join(f"{n}: {tree}" for n, tree in enumerate(trees, 1)) + "\n")
        # LLM calls above the conversations mean messages were handled again after a failure.
        print("| concurrency per process | LLM delay | tree | conversations/s | bound (P×C÷delay) "
              "| of the bound | LLM calls / replies | worker CPU ms / conversation "
              "| load average |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        delays = [0.0] if args.instant_only else [0.0, delay]
        for round_number in range(1, args.rounds + 1):
            for concurrency in args.concurrency:
                for run_delay in delays:
                    pair: dict[int, tuple[float, float]] = {}
                    # Every other round the other tree goes first: neither side is always the
                    # one run right after the queue was filled or a burst of load ended.
                    order = list(enumerate(trees, 1))
                    for n, tree in order if round_number % 2 else order[::-1]:
                        rate, calls, cpu = await run(
                            redis_server.url, standins, args, run_delay, concurrency, tree
                        )
                        pair[n] = (rate, cpu)
                        if run_delay:
                            bound = args.processes * concurrency / run_delay
                            label, of_bound = (
                                f"{args.delay_ms} ms",
                                f"{bound:.1f} | {rate / bound:.0%}",
                            )
                        else:
                            label, of_bound = f"0 ms (ceiling), round {round_number}", "- | -"
                        print(
                            f"| {concurrency} | {label} | {n} | {rate:.1f} | {of_bound} | {calls} "
                            f"| {cpu:.2f} | {os.getloadavg()[0]:.1f} |",
                            flush=True,
                        )
                    if len(pair) == 2:
                        (rate_1, cpu_1), (rate_2, cpu_2) = pair[1], pair[2]
                        print(
                            f"| {concurrency} | tree 1 ÷ tree 2 | | {rate_1 / rate_2:.2f} | | | "
                            f"| {cpu_1 / cpu_2:.2f} | |",
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
    parser.add_argument("--frames", nargs="*", default=[], help="with --summarise: regexes")
    parser.add_argument("--trees", nargs="*", default=[], help="source trees to run the fleet from")
    parser.add_argument("--call-cost", type=int, default=0, help="calls per cell, then exit")
    parser.add_argument("--serve-standins", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.summarise:
        summarise(args.summarise, args.frames)
        return
    if args.call_cost:
        asyncio.run(call_cost(args.call_cost, args.rounds))
        return
    if args.serve_standins:
        serve_standins(args.serve_standins)
        return
    args.trees = [Path(tree).resolve() for tree in args.trees] or [ROOT]
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
