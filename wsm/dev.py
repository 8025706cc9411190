"""`wsm dev` (what `make run` runs): the whole product on one machine, on embedded defaults.

Starts, in order: Redis (REDIS_URL if set, else a private server with its data under
`var/dev/redis`), the WAHA simulator (unless WAHA_URL is set), the gateway, the worker fleet and
the operator API. It prints where each listens and, on Ctrl-C or SIGTERM, stops them in the
order that loses nothing: first what brings events in (simulator, gateway: an event the gateway
said yes to is already in Redis or its spool), then the workers (they finish or hand back what
they hold), then the API, and Redis last (it flushes its append-only file on SIGTERM).

A part whose package is not installed yet is skipped with a note, so `make run` works at every
stage of the project.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

from shared.embedded_redis import EmbeddedRedis, RedisServerUnavailable
from shared.settings import Settings


@dataclass
class Part:
    name: str  # also the `wsm` subcommand that runs it
    module: str  # the package that must be installed for the part to run
    args: list[str]
    url: str
    health_url: str  # answers 200 once the part is ready
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None


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


def _available(module: str) -> bool:
    return importlib.util.find_spec(module.split(".")[0]) is not None and (
        importlib.util.find_spec(module) is not None
    )


def build_parts(args: argparse.Namespace, settings: Settings, redis_url: str) -> list[Part]:
    home: Path = args.home
    hmac_key = (
        settings.webhook_hmac_key.get_secret_value()
        if settings.webhook_hmac_key
        else _dev_secret(home / "hmac-key")
    )
    api_token = os.environ.get("WSM_API_TOKEN") or _dev_secret(home / "api-token")
    simulate_waha = "WAHA_URL" not in os.environ
    waha_url = os.environ.get("WAHA_URL", f"http://127.0.0.1:{args.waha_port}")
    common = {
        "REDIS_URL": redis_url,
        "WEBHOOK_HMAC_KEY": hmac_key,
        "WAHA_URL": waha_url,
        "WSM_API_TOKEN": api_token,
        "WSM_SPOOL_DIR": str(home / "spool"),
    }
    parts: list[Part] = []
    if simulate_waha:
        parts.append(
            Part(
                "waha-sim",
                "wsm.waha_sim",
                [
                    "--port",
                    str(args.waha_port),
                    "--webhook-url",
                    f"http://127.0.0.1:{args.gateway_port}/webhook",
                    f"--hmac-key={hmac_key}",
                ],
                waha_url,
                f"{waha_url}/_sim/health",
            )
        )
    parts += [
        Part(
            "gateway",
            "gateway",
            ["--host", args.host, "--port", str(args.gateway_port)],
            f"http://{args.host}:{args.gateway_port}/webhook",
            f"http://{args.host}:{args.gateway_port}/healthz",
        ),
        Part(
            "worker",
            "worker",
            [
                "--processes",
                str(args.processes),
                "--metrics-port",
                str(args.worker_metrics_port),
            ],
            f"http://127.0.0.1:{args.worker_metrics_port}/metrics",
            f"http://127.0.0.1:{args.worker_metrics_port}/metrics",
        ),
        Part(
            "api",
            "api",
            ["--host", args.host, "--port", str(args.api_port)],
            f"http://{args.host}:{args.api_port}/docs  (token in {_shown(home / 'api-token')})",
            f"http://{args.host}:{args.api_port}/healthz",
        ),
    ]
    for part in parts:
        part.env = common
    return parts


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wsm dev", description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=Path("var/dev"), help="data and logs")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--gateway-port", type=int, default=8080)
    parser.add_argument("--api-port", type=int, default=8081)
    parser.add_argument("--waha-port", type=int, default=3000)
    parser.add_argument("--worker-metrics-port", type=int, default=9091)
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    return parser.parse_args(argv)


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # The default home is relative (`var/dev`, under the directory `make run` runs from): made
    # absolute once here, so no part depends on its own working directory to find its data.
    args.home = args.home.resolve()
    settings = Settings()
    args.home.mkdir(parents=True, exist_ok=True)
    logs = args.home / "logs"
    logs.mkdir(exist_ok=True)

    parts_ports = {
        "waha-sim": args.waha_port,
        "gateway": args.gateway_port,
        "worker": args.worker_metrics_port,
        "api": args.api_port,
    }
    busy = [
        f"{port} ({name})"
        for name, port in parts_ports.items()
        if port and not (name == "waha-sim" and "WAHA_URL" in os.environ)
        if not _port_free(args.host, port)
    ]
    if busy:
        print(
            f"wsm dev: port(s) in use: {', '.join(busy)}. Stop what listens there (another "
            "`make run`?) or choose others: python -m wsm dev --help",
            file=sys.stderr,
            flush=True,
        )
        return 1

    redis: EmbeddedRedis | None = None
    started: list[Part] = []
    signal.signal(signal.SIGTERM, _raise_stop)
    try:
        if "redis_url" in settings.model_fields_set:
            redis_url = settings.redis_url
        else:
            # In its own session: Ctrl-C reaches the whole foreground process group, and Redis
            # must outlive the workers that finish and hand back their messages (stopped last).
            redis = EmbeddedRedis(args.home / "redis", appendonly=True, own_session=True)
            redis.start()
            redis_url = redis.url
        print(f"wsm dev: Redis      {redis_url}" + ("  (private)" if redis else ""), flush=True)
        for part in build_parts(args, settings, redis_url):
            if not _available(part.module):
                print(f"wsm dev: {part.name:<10} not built yet, skipped", flush=True)
                continue
            log = (logs / f"{part.name}.log").open("ab")
            part.process = subprocess.Popen(
                [sys.executable, "-m", "wsm", part.name, *part.args],
                env={**os.environ, **part.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
            )
            started.append(part)
            _wait_ready(part, logs)
            print(f"wsm dev: {part.name:<10} {part.url}", flush=True)
        print(f"wsm dev: logs in {_shown(logs)}/ ; Ctrl-C stops everything", flush=True)
        while True:
            for part in started:
                if part.process is not None and part.process.poll() is not None:
                    print(
                        f"wsm dev: {part.name} exited with {part.process.returncode}; "
                        f"see {logs / (part.name + '.log')}",
                        file=sys.stderr,
                        flush=True,
                    )
                    return 1
            time.sleep(0.5)
    except (KeyboardInterrupt, _Stop):
        print("\nwsm dev: stopping", flush=True)
        return 0
    except (PartFailed, RedisServerUnavailable) as exc:
        print(f"wsm dev: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for part in started:  # started in the order that also stops them safely
            _stop(part)
        if redis is not None:
            redis.stop()
        print("wsm dev: stopped", flush=True)


def _port_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (SO_REUSEADDR, as servers bind)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class PartFailed(RuntimeError):
    """A part exited or did not become ready at start."""


def _wait_ready(part: Part, logs: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if part.process is not None and part.process.poll() is not None:
            break
        try:
            if httpx.get(part.health_url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise PartFailed(f"{part.name} did not start; see {logs / (part.name + '.log')}")


def _stop(part: Part, grace: float = 40.0) -> None:
    process = part.process
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
