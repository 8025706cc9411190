"""`wsm waha-sim`: run the WAHA simulator.

Prints one line when it listens (`waha-sim listening on http://HOST:PORT`, the real port when
--port 0 was given) so scripts can wait for it; stops on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType

import uvicorn

from shared.heap import hold_full_collections
from shared.logs import setup_logging
from wsm.waha_sim.app import create_app
from wsm.waha_sim.config import KNOWN_EVENTS, RETRY_POLICIES, SESSION_STATUSES, SimConfig

_DEFAULTS = SimConfig()


def _events(value: str) -> frozenset[str]:
    names = {v.strip() for v in value.split(",") if v.strip()}
    if "*" in names:
        return frozenset(KNOWN_EVENTS)
    return frozenset(names)


def _metadata(values: list[str]) -> dict[str, str]:
    pairs = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--metadata wants key=value, got {item!r}")
        pairs[key] = value
    return pairs


def parser() -> argparse.ArgumentParser:
    d = _DEFAULTS
    p = argparse.ArgumentParser(
        prog="wsm waha-sim",
        description="A WAHA stand-in: WAHA's API subset, signed webhooks, /_sim/ control API.",
    )
    p.add_argument("--host", default=d.host, help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="port; 0 picks a free one (3000)")
    p.add_argument(
        "--webhook-url",
        action="append",
        default=[],
        help="where webhooks go (repeat for several; none: no webhooks are sent)",
    )
    p.add_argument(
        "--events",
        type=_events,
        default=",".join(KNOWN_EVENTS),
        help="subscribed events, comma-separated, or * (default %(default)s)",
    )
    p.add_argument("--hmac-key", default=None, help="sign webhooks with this HMAC-SHA512 key")
    p.add_argument("--api-key", default=None, help="require this X-Api-Key on WAHA's API")
    p.add_argument("--retries-policy", choices=RETRY_POLICIES, default=d.retries_policy)
    p.add_argument(
        "--retries-delay", type=float, default=d.retries_delay, help="seconds (default 2)"
    )
    p.add_argument(
        "--retries-attempts",
        type=int,
        default=d.retries_attempts,
        help="retries after the first request (WAHA's default 15)",
    )
    p.add_argument(
        "--webhook-timeout",
        type=float,
        default=d.webhook_timeout,
        help="seconds before a silent webhook request counts as failed (default 8)",
    )
    p.add_argument("--webhook-concurrency", type=int, default=d.webhook_concurrency)
    p.add_argument(
        "--webhook-transport",
        choices=("lean", "httpx"),
        default=d.webhook_transport,
        help="lean: asyncio + httptools under httpx (default); httpx: httpx's own transport",
    )
    p.add_argument("--max-pending", type=int, default=d.max_pending)
    p.add_argument("--session", default=d.session, help="the session's name (default)")
    p.add_argument("--status", choices=SESSION_STATUSES, default=d.initial_status)
    p.add_argument("--engine", default=d.engine, help="engine named in events (GOWS)")
    p.add_argument(
        "--tier",
        choices=("PLUS", "CORE"),
        type=str.upper,
        default=d.tier,
        help="PLUS sends files; CORE refuses them with 422 AvailableInPlusVersion (WAHA Core)",
    )
    p.add_argument("--waha-version", default=d.waha_version)
    p.add_argument("--me-phone", default=d.me_phone, help="the business's own number")
    p.add_argument("--me-push-name", default=d.me_push_name)
    p.add_argument("--me-lid", default=d.me_lid)
    p.add_argument(
        "--metadata", action="append", default=[], help="session metadata key=value (repeat)"
    )
    p.add_argument(
        "--session-wait",
        type=float,
        default=d.session_wait,
        help="seconds an API call waits for WORKING before 422 (WAHA: 5)",
    )
    p.add_argument(
        "--no-full-gc",
        action="store_true",
        help="for load tests: no full garbage collection while running (30-50 ms pauses over "
        "the simulator's growing records, measured as the product's latency otherwise)",
    )
    p.add_argument("--ack-delay", type=float, default=d.ack_delay, help="send -> DEVICE ack")
    p.add_argument(
        "--read-delay", type=float, default=d.read_delay, help="DEVICE -> READ ack; 0: none"
    )
    p.add_argument(
        "--no-announce",
        action="store_true",
        help="do not emit session.status STARTING/WORKING at start",
    )
    p.add_argument("--history-limit", type=int, default=d.history_limit)
    p.add_argument("--log-level", default="WARNING")
    return p


def config_from(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        host=args.host,
        port=args.port,
        webhook_urls=tuple(args.webhook_url),
        events=args.events,
        hmac_key=args.hmac_key or None,
        api_key=args.api_key or None,
        retries_policy=args.retries_policy,
        retries_delay=args.retries_delay,
        retries_attempts=args.retries_attempts,
        webhook_timeout=args.webhook_timeout,
        webhook_concurrency=args.webhook_concurrency,
        webhook_transport=args.webhook_transport,
        max_pending=args.max_pending,
        session=args.session,
        initial_status=args.status,
        engine=args.engine,
        tier=args.tier,
        waha_version=args.waha_version,
        me_phone=args.me_phone,
        me_push_name=args.me_push_name,
        me_lid=args.me_lid,
        metadata=_metadata(args.metadata),
        session_wait=args.session_wait,
        ack_delay=args.ack_delay,
        read_delay=args.read_delay,
        announce=not args.no_announce,
        history_limit=args.history_limit,
    )


def listen(host: str, port: int) -> socket.socket:
    """Binds before uvicorn starts: a taken port is one clear message, and port 0's choice is
    known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


async def serve(config: SimConfig, sock: socket.socket, log_level: str) -> None:
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            log_level=log_level.lower(),
            access_log=False,
            lifespan="on",
            # Requests waiting for room in a full webhook backlog must not hold up a stop.
            timeout_graceful_shutdown=3,
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    # uvicorn exposes readiness only as a flag, so it is polled.
    while not server.started and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    if server.started:
        port = sock.getsockname()[1]
        targets = ", ".join(config.webhook_urls) or "nowhere"
        print(
            f"waha-sim listening on http://{config.host}:{port} "
            f"(session {config.session} {config.initial_status}, webhooks -> {targets})",
            flush=True,
        )
    await task


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (uvicorn[standard] brings it): the simulator's own overhead is
    what limits a load test."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _stopped(_signum: int, _frame: FrameType | None) -> None:
    return None


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        config = config_from(args)
    except argparse.ArgumentTypeError as exc:
        print(f"wsm waha-sim: {exc}", file=sys.stderr)
        return 2
    try:
        sock = listen(config.host, config.port)
    except OSError as exc:
        print(f"wsm waha-sim: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 2
    # With --port 0 the kernel chose the port: the media URLs the simulator hands out need it.
    config = dataclasses.replace(config, port=sock.getsockname()[1])
    setup_logging(args.log_level)
    # uvicorn handles SIGTERM/SIGINT itself, shuts down cleanly, then raises the signal again
    # for the previous handler: make that a no-op for SIGTERM (KeyboardInterrupt for SIGINT is
    # caught below) so a requested stop exits 0.
    signal.signal(signal.SIGTERM, _stopped)
    if args.no_full_gc:
        hold_full_collections()
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=_loop_factory()) as runner,
    ):
        runner.run(serve(config, sock, args.log_level))
    return 0
