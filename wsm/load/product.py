"""The whole product as a private stack of real processes, for one load test run.

    Redis (append-only, fsync always) <- gateway <- nginx (when used) <- WAHA simulator
    Redis -> worker fleet (engine + menu brain) -> WAHA simulator's API
    Redis <- operator API (the checks read every conversation's history through it)

Everything listens on free loopback ports and keeps its data, logs and spool under `home`.
Started in the order that lets each part find what it needs (Redis first, the simulator last:
it announces its session as soon as it starts); stopped in the order that loses nothing: first
what brings events in, then the workers (they finish what they hold), Redis last.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis as redis_sync

from shared.embedded_redis import free_port
from shared.keys import FleetKeys
from wsm import edge
from wsm.stack import Service, Stack, port_accepts, python_module, redis_service, wiring

ROOT = Path(__file__).resolve().parents[2]
FLEET_ID = "loadtest"
KEY_PREFIX = "wsm"
STOP_ORDER = ("waha-sim", "nginx", "gateway", "worker", "api", "redis")
ENGINE_HANDLER = "engine.agent.service:create"


@dataclass(frozen=True)
class StackOptions:
    home: Path
    processes: int = 2
    concurrency: int = 16
    # The deliberate typing pause's cap (WSM_TYPING_DELAY_MAX_MS); 0: none.
    typing_ms: int = 0
    nginx: str = "auto"  # auto | on | off
    # Short leases so a SIGKILLed worker's conversations move on within seconds.
    lease_seconds: float = 5.0
    reaper_interval: float = 1.0
    gateway_workers: int = 1
    # Extra settings for every part (WSM_... names), e.g. from the command line.
    env: dict[str, str] = field(default_factory=dict)
    # Extra `wsm waha-sim` flags (tests: a shorter wait for WORKING, ...).
    sim_args: tuple[str, ...] = ()


@dataclass
class ProductStack:
    options: StackOptions
    stack: Stack
    redis: Service
    worker: Service
    redis_url: str
    sim_url: str
    api_url: str
    webhook_url: str
    gateway_url: str
    hmac_key: str
    api_token: str
    uses_nginx: bool

    def start(self, timeout: float = 60.0) -> None:
        for service in self.stack:
            self.stack.start(service, timeout)

    @property
    def stop_order(self) -> tuple[str, ...]:
        return STOP_ORDER


def _fleet_ready(redis_url: str, processes: int) -> bool:
    """Every worker process has loaded its handler and written its heartbeat."""
    fleet = FleetKeys(FLEET_ID, KEY_PREFIX)
    try:
        with redis_sync.Redis.from_url(redis_url, socket_timeout=1) as client:
            return bool(client.exists(*[fleet.process(i) for i in range(processes)]) == processes)
    except redis_sync.RedisError:
        return False


def want_nginx(choice: str) -> bool:
    if choice == "off":
        return False
    if edge.find_nginx() is None:
        if choice == "on":
            raise edge.EdgeUnavailable("--nginx on, but nginx is not installed")
        return False
    return True


def build_stack(options: StackOptions) -> ProductStack:
    home = options.home.resolve()
    logs = home / "logs"
    ports = {name: free_port() for name in ("redis", "sim", "gateway", "edge", "api")}
    hmac_key = secrets.token_hex(24)
    api_token = secrets.token_hex(24)
    redis_url = f"redis://127.0.0.1:{ports['redis']}/0"
    sim_url = f"http://127.0.0.1:{ports['sim']}"
    uses_nginx = want_nginx(options.nginx)
    webhook_port = ports["edge"] if uses_nginx else ports["gateway"]
    webhook_url = f"http://127.0.0.1:{webhook_port}/webhook"

    inherited = os.environ.get("PYTHONPATH")
    env = {
        # The parts run with their data folder as working directory (no stray .env is read)
        # and find the project's packages here.
        "PYTHONPATH": str(ROOT) + (os.pathsep + inherited if inherited else ""),
        **wiring(redis_url, hmac_key, sim_url, api_token, home),
        "WSM_KEY_PREFIX": KEY_PREFIX,
        "WSM_GATEWAY_METRICS_DIR": str(home / "metrics-gateway"),
        "WSM_WORKER_METRICS_DIR": str(home / "metrics-worker"),
        "WSM_WORKER_FLEET_ID": FLEET_ID,
        "WSM_TYPING_DELAY_MAX_MS": str(options.typing_ms),
        # One simulated WAHA session carries every customer: its anti-ban send limit (20/s by
        # default) would measure the limit, not the product.
        "WSM_SENDS_PER_SECOND_PER_SESSION": "0",
        "WSM_LEASE_SECONDS": str(options.lease_seconds),
        "WSM_REAPER_INTERVAL": str(options.reaper_interval),
        "WSM_LOG_LEVEL": "WARNING",
        **options.env,
    }
    stack = Stack()

    def part(
        name: str, argv: list[str], ready: Callable[[], bool], grace_seconds: float = 45.0
    ) -> Service:
        service = Service(
            name, argv, logs / f"{name}.log", env=env, ready=ready, cwd=home,
            grace_seconds=grace_seconds,
            # The menu brain: no language model is called under load.
            drop_env=("GROQ_API_KEY",),
        )  # fmt: skip
        return stack.add(service)

    redis = stack.add(
        redis_service(home / "redis", port=ports["redis"], log_path=logs / "redis.log")
    )
    part(
        "gateway",
        python_module(
            "gateway", "--host", "127.0.0.1", "--port", str(ports["gateway"]),
            "--workers", str(options.gateway_workers),
        ),
        ready=lambda: port_accepts(ports["gateway"]),
    )  # fmt: skip
    if uses_nginx:
        # Webhooks go through a keep-alive block: the gateway is at an IP literal here, as for
        # nginx outside Docker (docs/operations.md, "Keep-alive").
        stack.add(
            edge.nginx_service(
                home / "nginx",
                edge.loopback_values(
                    port=ports["edge"], gateway=edge.GATEWAY_POOL, api=f"127.0.0.1:{ports['api']}"
                ),
                port=ports["edge"],
                upstreams={edge.GATEWAY_POOL: f"127.0.0.1:{ports['gateway']}"},
            )
        )
    worker = part(
        "worker",
        python_module(
            "worker", "--processes", str(options.processes),
            "--concurrency", str(options.concurrency),
            "--handler", ENGINE_HANDLER, "--metrics-port", "0",
        ),
        ready=lambda: _fleet_ready(redis_url, options.processes),
    )  # fmt: skip
    part(
        "api",
        python_module("api", "--host", "127.0.0.1", "--port", str(ports["api"])),
        ready=lambda: port_accepts(ports["api"]),
    )
    part(
        "waha-sim",
        python_module(
            "wsm", "waha-sim", "--port", str(ports["sim"]), "--webhook-url", webhook_url,
            # "=": a value starting with "-" is not taken for an option.
            f"--hmac-key={hmac_key}", "--no-full-gc", *options.sim_args,
        ),
        ready=lambda: port_accepts(ports["sim"]),
        grace_seconds=10.0,
    )  # fmt: skip
    return ProductStack(
        options=options,
        stack=stack,
        redis=redis,
        worker=worker,
        redis_url=redis_url,
        sim_url=sim_url,
        api_url=f"http://127.0.0.1:{ports['api']}",
        webhook_url=webhook_url,
        gateway_url=f"http://127.0.0.1:{ports['gateway']}",
        hmac_key=hmac_key,
        api_token=api_token,
        uses_nginx=uses_nginx,
    )
