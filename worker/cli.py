"""`wsm worker` (also `python -m worker`): run the fleet, or check its health.

    wsm worker [--processes N] [--concurrency C] [--handler module:attr] [--metrics-port P]
    wsm worker --check        exit 0 when this host's fleet is healthy (see worker/health.py)

Options override the settings of the same name (WSM_WORKER_*); everything else comes from the
environment. `--child` is how the supervisor starts its worker processes.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import sys

from shared.settings import Settings
from shared.startup import load_settings

# Same rule as WSM_WORKER_FLEET_ID: it becomes part of a hash tag, so no braces.
FLEET_ID = re.compile(r"[A-Za-z0-9_.-]+")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsm worker",
        description="The worker fleet: per-conversation order, conversations in parallel.",
    )
    parser.add_argument("--processes", type=int, help="worker processes (WSM_WORKER_PROCESSES)")
    parser.add_argument(
        "--concurrency", type=int, help="conversations at once per process (WSM_WORKER_CONCURRENCY)"
    )
    parser.add_argument("--handler", help="module:attr of the handler (WSM_WORKER_HANDLER)")
    parser.add_argument(
        "--metrics-port", type=int, help="port of /metrics, 0 for none (WSM_WORKER_METRICS_PORT)"
    )
    parser.add_argument("--fleet-id", help="name of this fleet's heartbeats (WSM_WORKER_FLEET_ID)")
    parser.add_argument(
        "--check", action="store_true", help="exit 0 if this host's fleet is healthy, else 1"
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--supervisor-pid", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings("wsm worker")
    if settings is None:
        return 2
    fleet_id = args.fleet_id or settings.worker_fleet_id or socket.gethostname()
    if not FLEET_ID.fullmatch(fleet_id):
        print(f"wsm worker: fleet id {fleet_id!r} must match {FLEET_ID.pattern}", file=sys.stderr)
        return 2
    # `is None`, not `or`: an explicit `--processes 0` is an error to report, not "unset".
    handler = args.handler if args.handler is not None else settings.worker_handler
    concurrency = args.concurrency if args.concurrency is not None else settings.worker_concurrency
    processes = args.processes if args.processes is not None else settings.worker_processes
    if concurrency < 1 or processes < 1:
        print("wsm worker: --processes and --concurrency must be at least 1", file=sys.stderr)
        return 2

    if args.check:
        return run_check(settings, fleet_id)

    if args.child is not None:
        from worker.process import ProcessOptions, run_process

        return run_process(
            settings,
            ProcessOptions(args.child, concurrency, handler, fleet_id, args.supervisor_pid),
        )

    # Multiprocess metrics must be switched on before anything imports prometheus_client.
    from shared.logs import setup_logging
    from shared.metrics_setup import enable_multiprocess_metrics

    setup_logging(settings.log_level)
    enable_multiprocess_metrics(settings.worker_metrics_dir)
    from engine.businesses import business_files_usable

    # Before any process starts: each would fail on the files at every restart.
    if not business_files_usable(settings, "wsm worker"):
        return 2
    from worker.supervisor import FleetOptions, Supervisor

    metrics_port = settings.worker_metrics_port if args.metrics_port is None else args.metrics_port
    options = FleetOptions(
        processes=processes,
        concurrency=concurrency,
        handler=handler,
        fleet_id=fleet_id,
        metrics_host=settings.worker_metrics_host,
        metrics_port=metrics_port,
    )
    return asyncio.run(Supervisor(settings, options).run())


def run_check(settings: Settings, fleet_id: str) -> int:
    from shared.keys import FleetKeys
    from shared.redis_client import connect
    from worker.health import check_fleet

    async def check() -> int:
        client = connect(settings.redis_url, socket_timeout=3, socket_connect_timeout=3)
        try:
            report = await check_fleet(client, FleetKeys(fleet_id, settings.key_prefix))
        finally:
            await client.aclose()
        print(report.as_json().decode())
        return 0 if report.healthy else 1

    return asyncio.run(check())
