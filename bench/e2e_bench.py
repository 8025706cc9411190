"""End to end: messages/s and the latency from WAHA's webhook to the reply's sendText, through
the whole product, against the floor of the measuring bench itself at the same load.

    python3 bench/e2e_bench.py [--customers 200] [--messages 20] [--rates 25,50,100] [--quick]
                               [--rounds N] [--events E,...]

Each run is a fresh private stack (see `wsm loadtest`), one after the other:

- the product with the menu brain, nginx in front, typing pause off, customers writing as
  soon as they are answered (the machine's ceiling): 1 worker process, then 2;
- the product with customers paced at fixed rates (2 processes): latency below saturation;
- the product with the typing pause on (its default cap), paced: the pause is the latency;
- the product under chaos (worker SIGKILLs, a Redis crash, a 35 s Redis outage).

The baseline of each run, measured in the same invocation at the same load: the floor, the
WAHA simulator and the same simulated customers with a minimal bot in place of the product (a
bare ASGI app answering each `message` webhook with one sendText). It is what the bench itself
costs on this machine, so what the product adds is read against it.

Each run also reports CPU per customer message from /proc (wsm/load/cpu.py): the product's
(gateway, worker fleet, Redis, nginx, API) split by component, and the bench's (simulator,
customers, the floor's bot). `product/floor` is the product's messages/s over the floor's in
the same round. `--rounds N` repeats every run, floor first, N times (the machine is shared:
per-round figures, not one).

`--events` subscribes the simulated WAHA (the product's and the floor's) to those events, as
`wsm loadtest --events`: by default every event it knows, `message` and `message.any` both, as
issue 19 measured; `--events message.any,message.ack,session.status` is the subscription
compose gives WAHA (README: one of the two, not both). The floor's bot then answers the
customer's `message.any` instead of its `message`.

Prints one table (also written, with the raw reports, to --out); see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.embedded_redis import free_port  # noqa: E402
from shared.heap import hold_full_collections  # noqa: E402
from wsm.load.checks import latency_summary  # noqa: E402
from wsm.load.cpu import PRODUCT, CpuMeter, stack_components  # noqa: E402
from wsm.load.customers import Customer, Progress, run_customers  # noqa: E402
from wsm.loadtest import subscribed_events  # noqa: E402
from wsm.stack import Service, Stack, port_accepts, python_module, running  # noqa: E402
from wsm.waha_sim.config import KNOWN_EVENTS  # noqa: E402

ALL_EVENTS = ",".join(KNOWN_EVENTS)


# --- the floor: simulator + minimal bot -----------------------------------------------------
def bot_app(sim_url: str, answer: str = "message") -> Any:
    """A bare ASGI app: 200 to every webhook, and one sendText back for each customer message
    (the `answer` event without `fromMe`: `message`, or `message.any` when WAHA sends only
    that one)."""
    import httpx
    import orjson

    from wsm.waha_sim.transport import LeanHTTPTransport

    client = httpx.AsyncClient(
        base_url=sim_url, transport=LeanHTTPTransport(max_idle_per_host=256), timeout=30
    )
    tasks: set[asyncio.Task[Any]] = set()

    async def reply(chat: str) -> None:
        body = {"session": "default", "chatId": chat, "text": "ok"}
        await client.post("/api/sendText", json=body)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        document = orjson.loads(body) if body else {}
        payload = document.get("payload") or {}
        if document.get("event") == answer and not payload.get("fromMe"):
            task = asyncio.get_running_loop().create_task(reply(payload["from"]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


def serve_bot(port: int, sim_url: str, answer: str) -> None:
    import uvicorn

    uvicorn.run(
        bot_app(sim_url, answer), host="127.0.0.1", port=port, loop="uvloop", http="httptools",
        log_level="warning", access_log=False,
    )  # fmt: skip


def floor_latencies(customers: list[Customer]) -> list[float]:
    """Each message's delay to the first reply after it in the chat (one reply per message)."""
    delays = []
    for customer in customers:
        replies = sorted((customer.seq_of[i], at) for i, at in customer.reply_seen_at.items())
        for sent in customer.sent:
            seq = customer.seq_of.get(sent.message_id)
            after = [at for s, at in replies if seq is not None and s > seq]
            if after:
                delays.append((after[0] - sent.at) * 1000)
    return delays


def run_floor(
    customers: int, messages: int, home: Path, rate: float = 0.0, events: str = ALL_EVENTS
) -> dict[str, Any]:
    sim_port, bot_port = free_port(), free_port()
    answering = ["--answer", "message" if "message" in events.split(",") else "message.any"]
    sim_url = f"http://127.0.0.1:{sim_port}"
    stack = Stack()
    stack.add(
        Service(
            "bot",
            [sys.executable, __file__, "--bot", str(bot_port), "--sim", sim_url, *answering],
            home / "bot.log",
            ready=lambda: port_accepts(bot_port),
        )
    )
    stack.add(
        Service(
            "waha-sim",
            python_module(
                "wsm", "waha-sim", "--port", str(sim_port),
                "--webhook-url", f"http://127.0.0.1:{bot_port}/webhook", "--no-full-gc",
                "--events", events,
            ),
            home / "sim.log",
            ready=lambda: port_accepts(sim_port),
            cwd=ROOT,
        )
    )  # fmt: skip
    with running(stack, ("waha-sim", "bot")):
        for service in stack:
            stack.start(service)
        people = [Customer.numbered(i) for i in range(1, customers + 1)]
        progress = Progress(total=customers * messages)
        started = time.monotonic()
        pace = customers / rate if rate else 0.0
        meter = CpuMeter(stack_components(stack))

        async def load() -> None:
            hold_full_collections()  # the customers' records, as in wsm loadtest
            stop = asyncio.Event()
            sampling = asyncio.create_task(meter.run(stop))
            try:
                await run_customers(
                    sim_url, people, messages, progress, pace=pace, reply_timeout=60
                )
            finally:
                stop.set()
                await sampling

        asyncio.run(load())
        duration = time.monotonic() - started
    failed = [c.error for c in people if c.error]
    return {
        "ok": not failed,
        "duration_s": round(duration, 2),
        "messages_answered": progress.answered,
        "messages_per_s": round(progress.answered / duration, 1),
        "latency_first_reply": latency_summary(floor_latencies(people)),
        "cpu_ms_per_message": meter.ms_per_message(progress.answered),
    }


# --- the product, through `wsm loadtest` ----------------------------------------------------
def run_loadtest(args: list[str], out: Path) -> dict[str, Any]:
    report = out / f"loadtest-{len(list(out.glob('loadtest-*.json')))}.json"
    command = [sys.executable, "-m", "wsm", "loadtest", *args, "--json", str(report), "--quiet"]
    print("  $ wsm loadtest " + " ".join(args), flush=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if not report.exists():
        raise RuntimeError(f"wsm loadtest failed:\n{done.stdout}\n{done.stderr}")
    result: dict[str, Any] = json.loads(report.read_text())
    result["command"] = "wsm loadtest " + " ".join(args)
    return result


def figures(result: dict[str, Any]) -> str:
    latency = result["latency_first_reply"]
    return f"{result['messages_per_s']} | {latency['p50_ms']} | {latency['p99_ms']}"


def cpu_split(cpu: dict[str, float]) -> str:
    """`4.1 (worker 2.0, gateway 0.9, ...)`: the product's CPU ms per message and its parts."""
    parts = ", ".join(f"{k} {cpu[k]}" for k in PRODUCT if k in cpu)
    return f"{cpu.get('product', '-')} ({parts})"


def row(name: str, round_no: int, result: dict[str, Any], floor: dict[str, Any]) -> str:
    checks = result.get("checks", {})
    cpu = result.get("cpu_ms_per_message", {})
    ratio = (result["messages_per_s"] or 0) / max(1e-9, floor["messages_per_s"] or 0)
    return (
        f"| {name} | {round_no} | {figures(result)} | {figures(floor)} | {ratio:.2f} | "
        f"{cpu_split(cpu)} | {cpu.get('bench', '-')} | "
        f"{floor['cpu_ms_per_message'].get('bench', '-')} | {checks.get('lost', '-')} | "
        f"{checks.get('replies_sent_twice', '-')} | {'yes' if result['ok'] else 'NO'} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--rates", default="25,50,100", help="paced runs, messages/s")
    parser.add_argument("--paced-messages", type=int, default=5, help="per customer, paced runs")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 processes only: unpaced, then paced at --rates (no typing pause, no chaos)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat every run N times")
    parser.add_argument("--no-chaos", action="store_true")
    parser.add_argument("--out", type=Path, help="folder for the raw reports")
    parser.add_argument(
        "--events", default=ALL_EVENTS, help="the simulated WAHA's subscription (see above)"
    )
    parser.add_argument("--bot", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sim", help=argparse.SUPPRESS)
    parser.add_argument("--answer", default="message", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.events = subscribed_events(parser, args.events)  # the same check as wsm loadtest's
    if args.bot:
        serve_bot(args.bot, args.sim, args.answer)
        return 0

    out = args.out or Path(tempfile.mkdtemp(prefix="wsm-e2e-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    k, m, pm = str(args.customers), str(args.messages), str(args.paced_messages)
    print(f"machine: {os.cpu_count()} cores, {socket.gethostname()}; raw reports in {out}")
    print(f"WAHA's subscription: {args.events}")
    # (name, `wsm loadtest` arguments, the floor run at the same load: (messages, rate))
    subscribed = ["--events", args.events]
    full = ["--customers", k, "--messages", m, "--nginx", "auto", *subscribed]
    paced = ["--customers", k, "--messages", pm, "--nginx", "auto", *subscribed]
    plans: list[tuple[str, list[str], tuple[int, float]]] = []
    if not args.quick:
        plans.append(("1 worker process", [*full, "--processes", "1"], (args.messages, 0)))
    plans.append(("2 worker processes", [*full, "--processes", "2"], (args.messages, 0)))
    for rate in [float(r) for r in args.rates.split(",") if r]:
        plans.append(
            (f"2 processes, paced at {rate:g} msg/s", [*paced, "--rate", f"{rate:g}"],
             (args.paced_messages, rate))
        )  # fmt: skip
    if not args.quick:
        plans.append(
            ("2 processes, typing pause on (cap 3000 ms), paced at 25 msg/s",
             [*paced, "--rate", "25", "--typing-ms", "3000"], (args.paced_messages, 25))
        )  # fmt: skip
        if not args.no_chaos:
            plans.append(
                ("2 processes, CHAOS (unpaced)",
                 ["--customers", k, "--messages", "5", "--nginx", "auto", "--chaos",
                  *subscribed], (5, 0))
            )  # fmt: skip

    rows: list[tuple[str, int, dict[str, Any], dict[str, Any]]] = []
    for round_no in range(1, args.rounds + 1):
        # The floor at each load once per round, just before the product at that load.
        floors: dict[tuple[int, float], dict[str, Any]] = {}
        for name, plan, load in plans:
            if load not in floors:
                print(
                    f"round {round_no}: floor: {k} customers x {load[0]} messages, "
                    f"rate {load[1] or 'max'}", flush=True,
                )  # fmt: skip
                floors[load] = run_floor(
                    args.customers, load[0], out, rate=load[1], events=args.events
                )
            print(f"round {round_no}: {name}", flush=True)
            rows.append((name, round_no, run_loadtest(plan, out), floors[load]))

    table = [
        "| run | round | messages/s | p50 ms | p99 ms | floor: messages/s | floor p50 ms "
        "| floor p99 ms | product/floor | product CPU ms/msg | bench CPU ms/msg "
        "| floor's bench CPU ms/msg | lost | sent twice | checks |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    table += [row(name, n, result, floor) for name, n, result, floor in rows]
    print("\n".join(table))
    (out / "table.md").write_text("\n".join(table) + "\n")
    (out / "reports.json").write_text(
        json.dumps(
            [{"run": n, "round": r, "product": p, "floor": f} for n, r, p, f in rows], indent=2
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
