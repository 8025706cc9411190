"""`wsm loadtest`: the whole product under load, and under chaos, proving its promises.

    wsm loadtest --customers K --messages M [--processes N] [--rate R] [--typing-ms T]
                 [--chaos] [--nginx auto|on|off] [--events E,...] [--redis-costs] [--json out.json]

Starts a private stack of real processes (Redis with its append-only file, the WAHA simulator,
nginx when installed, the gateway, the worker fleet running the conversation engine with the
menu brain, the operator API), then K simulated customers talk at once, each writing its next
message once the previous one was answered (see wsm/load/customers.py). It reports messages/s
and the latency from the webhook to the reply's sendText (p50, p90, p99), then checks, from
the engine's history and the simulator's chats, that no message was lost, no reply was sent
twice and every conversation stayed in order (wsm/load/checks.py). `--chaos` SIGKILLs worker
processes and breaks Redis meanwhile (wsm/load/chaos.py). `--redis-costs` also reports Redis's
time per customer message by command and Lua script, from its SLOWLOG (wsm/load/redis_costs.py).

Exit status: 0 when every check passed, 1 when one failed, 2 when the stack could not run.
Every process it started is stopped, whatever happens (Ctrl-C included).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvloop

from shared.heap import hold_full_collections
from wsm.load.chaos import Chaos, ChaosLog, ChaosPlan
from wsm.load.checks import Findings, check_conversation, latency_summary, read_history
from wsm.load.cpu import CpuMeter, cpu_line, product_per_bench, stack_components
from wsm.load.customers import Customer, Progress, SimClient, run_customers
from wsm.load.product import ProductStack, StackOptions, build_stack
from wsm.load.quiet import dead_letters, gateway_answers, wait_quiet
from wsm.load.redis_costs import RedisCostMeter, costs_line
from wsm.stack import ServiceFailed, StopRequested, running
from wsm.waha_sim.config import KNOWN_EVENTS

SESSION = "default"
# The warm-up customer's number is outside the load's range.
WARMUP_INDEX = 99_999_999


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="wsm loadtest", description=__doc__.split("\n\n")[0])
    p.add_argument("--customers", type=int, default=100, help="customers talking at once")
    p.add_argument("--messages", type=int, default=10, help="messages each customer writes")
    p.add_argument("--processes", type=int, default=2, help="worker processes")
    p.add_argument("--concurrency", type=int, default=16, help="conversations per process")
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="target messages/s in all (each customer paced at customers/rate s); "
        "0: each writes as soon as answered",
    )
    p.add_argument("--typing-ms", type=int, default=0, help="cap of the typing pause (0: no pause)")
    p.add_argument(
        "--nginx",
        choices=("auto", "on", "off"),
        default="auto",
        help="nginx in front of the gateway (auto: when installed)",
    )
    p.add_argument(
        "--events",
        default=",".join(KNOWN_EVENTS),
        help="the events the simulated WAHA is subscribed to, comma-separated (default: every "
        "one it knows, `message` and `message.any` both, as issue 19 measured; compose "
        "subscribes WAHA to message.any without message, as README advises)",
    )
    p.add_argument("--chaos", action="store_true", help="kill workers, restart and stop Redis")
    p.add_argument("--kill-interval", type=float, default=10.0, help="seconds between kills")
    p.add_argument("--worker-kills", type=int, default=0, help="most worker kills (0: no cap)")
    p.add_argument(
        "--outage-seconds",
        type=float,
        default=35.0,
        help="how long Redis stays down (longer than WAHA's 30 s retry window)",
    )
    p.add_argument("--no-redis-restart", action="store_true", help="chaos without the crash")
    p.add_argument("--no-redis-outage", action="store_true", help="chaos without the outage")
    p.add_argument("--lease-seconds", type=float, default=5.0, help="WSM_LEASE_SECONDS")
    p.add_argument(
        "--reply-timeout", type=float, default=150.0, help="seconds a customer waits for a reply"
    )
    p.add_argument(
        "--settle-timeout", type=float, default=120.0, help="seconds to wait for quiet at the end"
    )
    p.add_argument("--home", type=Path, help="data and logs (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the data and logs folder")
    p.add_argument(
        "--redis-costs",
        action="store_true",
        help="Redis's time per message by command and script (its SLOWLOG; costs Redis CPU)",
    )
    p.add_argument("--json", type=Path, help="also write the report here")
    p.add_argument("--quiet", action="store_true", help="only the summary")
    args = p.parse_args(argv)
    if args.customers < 1 or args.messages < 1 or args.processes < 1 or args.rate < 0:
        p.error("--customers, --messages and --processes must be at least 1, --rate >= 0")
    args.events = subscribed_events(p, args.events)
    if args.redis_costs and args.chaos:
        # A restarted Redis starts with its own slowlog settings and an empty log.
        p.error("--redis-costs measures a run without chaos: leave out --chaos")
    return args


def subscribed_events(p: argparse.ArgumentParser, value: str) -> str:
    """`--events` checked: only events the simulator knows, and a customer's message among them
    (without `message` or `message.any` no customer would ever be answered)."""
    events = [name.strip() for name in value.split(",") if name.strip()]
    unknown = sorted(set(events) - set(KNOWN_EVENTS))
    if unknown:
        p.error(f"--events: unknown {', '.join(unknown)} (known: {', '.join(KNOWN_EVENTS)})")
    if not {"message", "message.any"} & set(events):
        p.error("--events needs message or message.any: no customer message would reach wsm")
    return ",".join(events)


def chaos_plan(args: argparse.Namespace) -> ChaosPlan | None:
    if not args.chaos:
        return None
    return ChaosPlan(
        kill_interval=args.kill_interval,
        processes=args.processes,
        max_kills=args.worker_kills or None,
        restart_at=None if args.no_redis_restart else 0.3,
        outage_at=None if args.no_redis_outage else 0.6,
        outage_seconds=args.outage_seconds,
    )


class Run:
    def __init__(self, args: argparse.Namespace, product: ProductStack) -> None:
        self.args = args
        self.product = product
        self.customers = [Customer.numbered(i) for i in range(1, args.customers + 1)]
        self.progress = Progress(total=args.customers * args.messages)
        self.chaos_log = ChaosLog()
        self.duration = 0.0
        self.settled = True
        self.dead_letters = {"queue": 0, "outbox": 0}
        self.webhooks: dict[str, Any] = {}
        self.gateway: dict[str, dict[str, float]] = {}
        # CPU of every part from the load's start until the system settled (wsm/load/cpu.py).
        self.cpu = CpuMeter(stack_components(product.stack))
        self.cpu_stop = asyncio.Event()
        self.cpu_task: asyncio.Task[None] | None = None
        # Redis's time by command and script, over the same window (wsm/load/redis_costs.py).
        self.redis_costs = RedisCostMeter(product.redis_url) if args.redis_costs else None
        self.redis_costs_task: asyncio.Task[None] | None = None

    def say(self, line: str) -> None:
        if not self.args.quiet:
            print(f"wsm loadtest: {line}", flush=True)

    async def warm_up(self, timeout: float = 60.0) -> None:
        """One conversation end to end before the clock starts (imports, pools, scripts)."""
        warm = Customer.numbered(WARMUP_INDEX)
        await run_customers(
            self.product.sim_url, [warm], 1, Progress(total=1), reply_timeout=timeout
        )
        if warm.error:
            raise ServiceFailed(f"the warm-up conversation failed: {warm.error}")

    async def load(self) -> None:
        if self.redis_costs is not None:
            # Armed before the first customer writes, so every message is counted.
            await self.redis_costs.start()
        pace = self.args.customers / self.args.rate if self.args.rate else 0.0
        plan = chaos_plan(self.args)
        done = asyncio.Event()
        reporter = asyncio.create_task(self._report_progress(done))
        chaos_task = None
        if plan is not None:
            chaos = Chaos(
                plan, self.progress, worker=self.product.worker, redis=self.product.redis,
                say=self.say,
            )  # fmt: skip
            self.chaos_log = chaos.log
            chaos_task = asyncio.create_task(chaos.run(done))
        if self.redis_costs is not None:
            self.redis_costs_task = asyncio.create_task(self.redis_costs.run(self.cpu_stop))
        self.cpu_task = asyncio.create_task(self.cpu.run(self.cpu_stop))
        started = time.monotonic()
        try:
            await run_customers(
                self.product.sim_url, self.customers, self.args.messages, self.progress,
                pace=pace, reply_timeout=self.args.reply_timeout,
            )  # fmt: skip
            finished = [c.finished_at for c in self.customers if c.finished_at is not None]
            self.duration = (max(finished) if finished else time.monotonic()) - started
        finally:
            done.set()
            if chaos_task is not None:
                await chaos_task
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter

    async def _report_progress(self, done: asyncio.Event) -> None:
        last_answered, last_at = 0, time.monotonic()
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 5.0)
            now = time.monotonic()
            rate = (self.progress.answered - last_answered) / max(1e-6, now - last_at)
            last_answered, last_at = self.progress.answered, now
            self.say(
                f"load +{now - self.progress.started_at:6.1f}s  written "
                f"{self.progress.sent}/{self.progress.total}  answered "
                f"{self.progress.answered}  ({rate:.0f} msg/s)"
            )

    async def settle(self) -> None:
        """Wait until nothing is under way (wsm/load/quiet.py): then the records are final."""
        self.settled = await wait_quiet(
            self.product.redis_url, self.product.sim_url, timeout=self.args.settle_timeout
        )
        # The acks and echoes that follow the last replies are part of the load's cost.
        self.cpu_stop.set()
        if self.cpu_task is not None:
            await self.cpu_task
        if self.redis_costs_task is not None:
            await self.redis_costs_task
        if not self.settled:
            self.say("the system did not settle in time; checking what is there")
        sim = SimClient(self.product.sim_url, connections=2)
        try:
            self.webhooks = await sim.get("/_sim/webhooks")
        finally:
            await sim.aclose()
        self.dead_letters = await dead_letters(self.product.redis_url)
        self.gateway = await gateway_answers(self.product.gateway_url)

    async def check(self) -> Findings:
        findings = Findings()
        sim = SimClient(self.product.sim_url, connections=16)
        api = httpx.AsyncClient(
            base_url=self.product.api_url,
            headers={"Authorization": f"Bearer {self.product.api_token}"},
            timeout=30,
        )
        semaphore = asyncio.Semaphore(16)

        async def one(customer: Customer) -> None:
            async with semaphore:
                history = await read_history(api, SESSION, customer.chat_id)
                chat = await sim.chat(customer.chat_id)
            check_conversation(customer, history, chat["messages"], findings)

        try:
            await asyncio.gather(*(one(c) for c in self.customers))
        finally:
            await api.aclose()
            await sim.aclose()
        return findings

    def report(self, findings: Findings) -> dict[str, Any]:
        answered = self.progress.answered
        cpu = self.cpu.ms_per_message(answered)
        failures = findings.failures()
        gave_up = int(self.webhooks.get("gave_up", 0) or 0)
        ok = findings.ok and self.settled and not any(self.dead_letters.values()) and not gave_up
        return {
            "ok": ok,
            "config": {
                "customers": self.args.customers,
                "messages": self.args.messages,
                "processes": self.args.processes,
                "concurrency": self.args.concurrency,
                "rate": self.args.rate or None,
                "typing_ms": self.args.typing_ms,
                "nginx": self.product.uses_nginx,
                "events": self.args.events.split(","),
                "chaos": self.args.chaos,
            },
            "duration_s": round(self.duration, 2),
            "messages_written": self.progress.sent,
            "messages_answered": answered,
            "messages_per_s": round(answered / self.duration, 1) if self.duration else None,
            "replies_delivered": findings.replies,
            "replies_per_s": round(findings.replies / self.duration, 1) if self.duration else None,
            "latency_first_reply": latency_summary(findings.first_reply_ms),
            # CPU ms per customer message answered, per component: `product` is gateway +
            # worker + redis + nginx + api; `bench` the simulator and the customers.
            "cpu_ms_per_message": cpu,
            # The two in the same run: what compares trees on a noisy machine.
            "cpu_product_per_bench": product_per_bench(cpu),
            # With --redis-costs: Redis's own time per message by command and script (and its
            # CPU above includes logging every command).
            "redis_costs": (
                None if self.redis_costs is None else self.redis_costs.per_message(answered)
            ),
            "latency_every_reply": latency_summary(findings.every_reply_ms),
            "checks": {
                "lost": findings.lost.count,
                "inbound_duplicated": findings.inbound_duplicated.count,
                "inbound_out_of_order": findings.inbound_out_of_order.count,
                "replies_sent_twice": findings.replies_sent_twice.count,
                "replies_not_delivered": findings.replies_not_delivered.count,
                "replies_out_of_order": findings.replies_out_of_order.count,
                "customers_unanswered": findings.customers_unanswered.count,
                "dead_letters": self.dead_letters,
                "webhooks_given_up": gave_up,
                "settled": self.settled,
            },
            "failures": {name: asdict(f) for name, f in failures.items()},
            "chaos": {
                "worker_kills": self.chaos_log.kills,
                "redis_restarts": self.chaos_log.redis_restarts,
                "redis_outages": self.chaos_log.redis_outages,
                "events": self.chaos_log.as_dicts(),
            },
            "webhooks": {
                k: self.webhooks.get(k)
                for k in ("events", "deliveries", "attempts", "retries", "statuses", "gave_up")
            },
            "gateway": {
                "answers": self.gateway.get("wsm_webhook_requests", {}),
                "spool_replayed": self.gateway.get("wsm_spool_replayed", {}),
            },
        }


def summary_lines(report: dict[str, Any]) -> list[str]:
    first, every, checks = (
        report["latency_first_reply"],
        report["latency_every_reply"],
        report["checks"],
    )
    config = report["config"]
    lines = [
        f"{config['customers']} customers x {config['messages']} messages, "
        f"{config['processes']} worker processes, nginx {'on' if config['nginx'] else 'off'}, "
        f"typing pause {config['typing_ms']} ms, events {','.join(config['events'])}"
        f"{', CHAOS' if config['chaos'] else ''}",
        f"{report['messages_answered']} messages answered in {report['duration_s']} s: "
        f"{report['messages_per_s']} messages/s ({report['replies_per_s']} replies/s)",
        f"webhook -> first reply's sendText: p50 {first['p50_ms']} ms, p90 {first['p90_ms']} ms, "
        f"p99 {first['p99_ms']} ms, max {first['max_ms']} ms",
        f"webhook -> every reply's sendText: p50 {every['p50_ms']} ms, p99 {every['p99_ms']} ms",
        f"CPU per message: {cpu_line(report['cpu_ms_per_message'])}",
        *(
            []
            if report["redis_costs"] is None
            else [
                f"Redis time per message (CPU above includes its slowlog): "
                f"{costs_line(report['redis_costs'])}"
            ]
        ),
        f"lost {checks['lost']}, inbound duplicated {checks['inbound_duplicated']}, "
        f"inbound out of order {checks['inbound_out_of_order']}, replies sent twice "
        f"{checks['replies_sent_twice']}, replies not delivered {checks['replies_not_delivered']}, "
        f"replies out of order {checks['replies_out_of_order']}, unanswered customers "
        f"{checks['customers_unanswered']}",
        f"dead letters {checks['dead_letters']}, webhooks given up by WAHA "
        f"{checks['webhooks_given_up']}, settled {checks['settled']}",
    ]
    answers = {k: int(v) for k, v in report["gateway"]["answers"].items() if v}
    lines.append(
        f"webhooks: {report['webhooks']['deliveries']} delivered by WAHA (statuses "
        f"{report['webhooks']['statuses']}); gateway answers {answers}"
    )
    if config["chaos"]:
        chaos = report["chaos"]
        lines.append(
            f"chaos: {chaos['worker_kills']} worker kills, {chaos['redis_restarts']} Redis "
            f"restart(s), {chaos['redis_outages']} Redis outage(s)"
        )
    for name, failure in report["failures"].items():
        lines += [f"FAILED {name}: {failure['count']}"]
        lines += [f"    {example}" for example in failure["examples"]]
    lines.append("PASS" if report["ok"] else "FAIL")
    return lines


async def drive(run: Run) -> dict[str, Any]:
    # Ctrl-C or SIGTERM while the loop runs: cancel the run (the stack is stopped on the way
    # out), and again every second until it ends. One cancel is not always enough: landing
    # inside a Redis call under a deadline it can come out as a timeout (CPython gh-86296),
    # which the load takes for a slow answer and carries on; the next one lands elsewhere.
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()

    def stop() -> None:
        if not task.done():
            task.cancel()
            loop.call_later(1.0, stop)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    await run.warm_up()
    # This process is the customers: a full collection over their records would pause every
    # conversation in flight and be measured as the product's latency (shared/heap.py).
    hold_full_collections()
    run.say(
        f"{run.args.customers} customers start talking" + (" (chaos on)" if run.args.chaos else "")
    )
    await run.load()
    run.say("load done; waiting for the system to settle")
    await run.settle()
    findings = await run.check()
    return run.report(findings)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    home = args.home or Path(tempfile.mkdtemp(prefix="wsm-loadtest-"))
    home.mkdir(parents=True, exist_ok=True)
    options = StackOptions(
        home=home,
        processes=args.processes,
        concurrency=args.concurrency,
        typing_ms=args.typing_ms,
        nginx=args.nginx,
        lease_seconds=args.lease_seconds,
        sim_args=("--events", args.events),
    )
    report: dict[str, Any] | None = None
    code = 2
    try:
        product = build_stack(options)
        with running(product.stack, product.stop_order):
            started = time.monotonic()
            product.start()
            print(
                f"wsm loadtest: stack up in {time.monotonic() - started:.1f} s "
                f"(webhooks -> {product.webhook_url}; logs in {home / 'logs'})",
                flush=True,
            )
            run = Run(args, product)
            try:
                report = uvloop.run(drive(run))
            except asyncio.CancelledError:
                raise StopRequested from None
        code = 0 if report["ok"] else 1
    except (KeyboardInterrupt, StopRequested):
        print("wsm loadtest: interrupted; everything it started is stopped", file=sys.stderr)
        code = 130
    except ServiceFailed as exc:
        print(f"wsm loadtest: the stack failed: {exc}", file=sys.stderr)
    except Exception as exc:
        print(f"wsm loadtest: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise
    finally:
        if report is not None:
            for line in summary_lines(report):
                print(f"wsm loadtest: {line}", flush=True)
            if args.json:
                args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        if code == 0 and not args.keep and not args.home:
            shutil.rmtree(home, ignore_errors=True)
        elif code != 130 or args.keep:
            print(f"wsm loadtest: data and logs kept in {home}", file=sys.stderr)
    return code
