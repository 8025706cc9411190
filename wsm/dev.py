"""`wsm dev` (what `make run` runs): the whole product on one machine, on embedded defaults.

Starts, in order: Redis (REDIS_URL if set, else a private server with its data under
`var/dev/redis`), the WAHA simulator (unless WAHA_URL is set), the gateway, the worker fleet and
the operator API. It prints where each listens and, on Ctrl-C or SIGTERM, stops them in the
order that loses nothing: first what brings events in (simulator, gateway: an event the gateway
said yes to is already in Redis or its spool), then the workers (they finish or hand back what
they hold), then the API, and Redis last (it flushes its append-only file on SIGTERM).

The parts are `wsm.stack` services, as in `wsm loadtest`: each in a session of its own (a
Ctrl-C at the terminal reaches only `wsm dev`, which then stops them in that order; Redis is
never stopped by the Ctrl-C itself), and each told to stop if `wsm dev` dies.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import socket
import sys
import time
from pathlib import Path

import httpx

from shared.embedded_redis import RedisServerUnavailable, free_port
from shared.settings import Settings
from shared.startup import load_settings
from wsm.stack import (
    Service,
    ServiceFailed,
    Stack,
    StopRequested,
    python_module,
    redis_service,
    running,
    wiring,
)

# What brings events in first, then the workers, then the API; Redis last.
STOP_ORDER = ("waha-sim", "gateway", "worker", "api", "redis")
# A part has this long to answer its health check at start.
READY_SECONDS = 60.0


def _dev_secret(path: Path) -> str:
    """A development secret kept under var/dev, so restarts keep the same one."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hex: a urlsafe token can start with "-", which a child's argument parser takes for a flag.
    value = secrets.token_hex(24)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def _shown(path: Path) -> Path:
    """A path as the user would type it: relative to where they ran `make run` when inside."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _answers_200(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _part(name: str, args: list[str], health_url: str, env: dict[str, str], logs: Path) -> Service:
    """`python -m wsm <name> ...`, ready once `health_url` answers 200."""
    return Service(
        name,
        python_module("wsm", name, *args),
        logs / f"{name}.log",
        env=env,
        ready=lambda: _answers_200(health_url),
    )


def build_parts(
    args: argparse.Namespace, settings: Settings, redis_url: str
) -> list[tuple[Service, str]]:
    """The parts after Redis, in start order, each with the address the banner shows."""
    home: Path = args.home
    logs = home / "logs"
    hmac_key = (
        settings.webhook_hmac_key.get_secret_value()
        if settings.webhook_hmac_key
        else _dev_secret(home / "hmac-key")
    )
    # From the settings, as REDIS_URL: the environment or a `.env` file.
    api_token = (
        settings.api_token.get_secret_value()
        if settings.api_token
        else _dev_secret(home / "api-token")
    )
    # Where the banner says the token is: the file is written only when no WSM_API_TOKEN is set.
    token_source = "WSM_API_TOKEN" if settings.api_token else f"in {_shown(home / 'api-token')}"
    simulate_waha = simulates_waha(settings)
    waha_url = settings.waha_url if not simulate_waha else f"http://127.0.0.1:{args.waha_port}"
    common = {
        **wiring(redis_url, hmac_key, waha_url, api_token, home),
        "WSM_MEDIA_DIR": str(home / "media"),
        # The workers' metrics on the address everything else listens on (their own default,
        # every interface, is for a container), so the port check at start covers them too.
        "WSM_WORKER_METRICS_HOST": args.host,
    }
    gateway = f"http://{args.host}:{args.gateway_port}"
    metrics = f"http://{args.host}:{args.worker_metrics_port}/metrics"
    api = f"http://{args.host}:{args.api_port}"
    parts: list[tuple[Service, str]] = []
    if simulate_waha:
        # The simulator guards WAHA's API with a key as WAHA does, so `make run` goes through
        # the same X-Api-Key as production (the engine's sends, its fetches of customers' files).
        waha_key = (
            settings.waha_api_key.get_secret_value()
            if settings.waha_api_key
            else _dev_secret(home / "waha-api-key")
        )
        common["WAHA_API_KEY"] = waha_key
        sim_args = [
            "--port",
            str(args.waha_port),
            "--webhook-url",
            f"http://127.0.0.1:{args.gateway_port}/webhook",
            # "=": a value starting with "-" is not taken for an option.
            f"--hmac-key={hmac_key}",
            f"--api-key={waha_key}",
        ]
        parts.append(
            (_part("waha-sim", sim_args, f"{waha_url}/_sim/health", common, logs), waha_url)
        )
    gateway_args = ["--host", args.host, "--port", str(args.gateway_port)]
    worker_args = [
        "--processes",
        str(args.processes),
        "--metrics-port",
        str(args.worker_metrics_port),
    ]
    api_args = ["--host", args.host, "--port", str(args.api_port)]
    parts += [
        (_part("gateway", gateway_args, f"{gateway}/healthz", common, logs), f"{gateway}/webhook"),
        (_part("worker", worker_args, metrics, common, logs), metrics),
        (
            _part("api", api_args, f"{api}/healthz", common, logs),
            f"{api}/docs  (token {token_source})",
        ),
    ]
    return parts


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="wsm dev",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--home", type=Path, default=Path("var/dev"), help="data and logs")
    parser.add_argument("--host", default="127.0.0.1", help="where every part listens")
    parser.add_argument("--gateway-port", type=int, default=8080, help="the webhook gateway")
    parser.add_argument("--api-port", type=int, default=8081, help="the API and console")
    parser.add_argument("--waha-port", type=int, default=3000, help="the WAHA simulator")
    parser.add_argument(
        "--worker-metrics-port", type=int, default=9091, help="the workers' /metrics"
    )
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    args = parser.parse_args(argv)
    if args.worker_metrics_port == 0:
        # `wsm worker`'s "0: off" leaves nothing to tell that the workers are up.
        parser.error("--worker-metrics-port: wsm dev watches the workers there; choose a port")
    return args


def simulates_waha(settings: Settings) -> bool:
    """The simulator runs unless WAHA_URL is set, in the environment or in `.env` (its default
    is the simulator's own address, so only a value given counts)."""
    return "waha_url" not in settings.model_fields_set


def busy_ports(args: argparse.Namespace, settings: Settings) -> list[str]:
    """The ports `wsm dev` would listen on that something else holds, as "port (part)"."""
    parts_ports = {
        "waha-sim": args.waha_port,
        "gateway": args.gateway_port,
        "worker": args.worker_metrics_port,
        "api": args.api_port,
    }
    return [
        f"{port} ({name})"
        for name, port in parts_ports.items()
        # A real WAHA on the simulator's port is no conflict.
        if port and not (name == "waha-sim" and not simulates_waha(settings))
        if not _port_free(args.host, port)
    ]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # The default home is relative (`var/dev`, under the directory `make run` runs from): made
    # absolute once here, so no part depends on its own working directory to find its data.
    args.home = args.home.resolve()
    settings = load_settings("wsm dev")
    if settings is None:
        return 2
    from engine.businesses import business_files_usable

    if not business_files_usable(settings, "wsm dev"):  # before Redis or any part starts
        return 2
    args.home.mkdir(parents=True, exist_ok=True)
    logs = args.home / "logs"
    logs.mkdir(exist_ok=True)

    busy = busy_ports(args, settings)
    if busy:
        print(
            f"wsm dev: port(s) in use: {', '.join(busy)}. Stop what listens there (another "
            "`make run`?) or choose others: python -m wsm dev --help",
            file=sys.stderr,
            flush=True,
        )
        return 1

    stack = Stack()
    try:
        # Inside, SIGTERM raises StopRequested; on the way out every part started is stopped,
        # in STOP_ORDER (Redis last), with Ctrl-C and SIGTERM ignored meanwhile.
        with running(stack, STOP_ORDER):
            try:
                return _run(args, settings, stack, logs)
            except (KeyboardInterrupt, StopRequested):
                print("\nwsm dev: stopping", flush=True)
                return 0
            except (ServiceFailed, RedisServerUnavailable) as exc:
                print(f"wsm dev: {exc}", file=sys.stderr, flush=True)
                return 1
    finally:
        print("wsm dev: stopped", flush=True)


def _run(args: argparse.Namespace, settings: Settings, stack: Stack, logs: Path) -> int:
    """Start Redis (unless REDIS_URL is set) and the parts, then watch them until one exits
    (returns 1) or Ctrl-C / SIGTERM (raises)."""
    if "redis_url" in settings.model_fields_set:
        redis_url = settings.redis_url
        private = ""
    else:
        # Its log is the one the server writes itself (--logfile), so a failure to start shows
        # the server's own words.
        data = args.home / "redis"
        port = free_port()
        stack.start(redis_service(data, port=port, log_path=data / "redis.log"), READY_SECONDS)
        redis_url = f"redis://127.0.0.1:{port}/0"
        private = "  (private)"
    print(f"wsm dev: Redis      {redis_url}{private}", flush=True)
    for service, shown in build_parts(args, settings, redis_url):
        stack.start(service, READY_SECONDS)
        print(f"wsm dev: {service.name:<10} {shown}", flush=True)
    print(f"wsm dev: console    {_console(args, settings, redis_url)}", flush=True)
    print(f"wsm dev: logs in {_shown(logs)}/ ; Ctrl-C stops everything", flush=True)
    while True:
        try:
            stack.check()
        except ServiceFailed as exc:
            print(f"wsm dev: {exc}", file=sys.stderr, flush=True)
            return 1
        time.sleep(0.5)


def _console(args: argparse.Namespace, settings: Settings, redis_url: str) -> str:
    """The attendants' console on the API's port, with a first admin made once for this
    development stack (its password kept under var/dev, like the API token)."""
    from api.console.cli import ensure_account

    password_file = args.home / "console-password"
    password = _dev_secret(password_file)
    asyncio.run(ensure_account(redis_url, settings.key_prefix, "admin", "Admin", "admin", password))
    url = f"http://{args.host}:{args.api_port}/"
    return f"{url}  (user admin, password in {_shown(password_file)})"


def _port_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (SO_REUSEADDR, as servers bind)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
