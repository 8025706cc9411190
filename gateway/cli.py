"""`wsm gateway [--host H] [--port P] [--workers N]`: check the configuration, then serve.

Order matters: prometheus-client's multiprocess mode is switched on before anything imports
it (the app's modules do), and every refusal (no HMAC key, Redis older than 7.0) happens here,
in one process, with one clear message, before uvicorn forks workers.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from shared.logs import setup_logging
from shared.metrics_setup import enable_multiprocess_metrics
from shared.redis_client import UnsupportedRedis
from shared.startup import load_settings

log = logging.getLogger("wsm.gateway.cli")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="wsm gateway",
        description="The webhook gateway: verifies WAHA's webhooks and queues them in Redis.",
    )
    parser.add_argument("--host", help="listen address (default: WSM_GATEWAY_HOST, 0.0.0.0)")
    parser.add_argument("--port", type=int, help="listen port (default: WSM_GATEWAY_PORT, 8080)")
    parser.add_argument("--workers", type=int, help="processes (default: WSM_GATEWAY_WORKERS, 1)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    settings = load_settings("wsm gateway")
    if settings is None:
        return 2
    setup_logging(settings.log_level)

    from gateway.signature import UNSIGNED_REFUSED, UNSIGNED_WARNING

    if not settings.hmac_keys():
        if not settings.allow_unsigned:
            log.critical(UNSIGNED_REFUSED)
            return 2
        log.warning(UNSIGNED_WARNING)

    from gateway.redis_link import check_server_at_start

    try:
        version = asyncio.run(check_server_at_start(settings))
    except UnsupportedRedis as exc:
        log.critical(f"refusing to start: {exc}")
        return 2

    enable_multiprocess_metrics(settings.gateway_metrics_dir)
    import uvicorn

    host = args.host or settings.gateway_host
    port = args.port or settings.gateway_port
    workers = args.workers or settings.gateway_workers
    log.info(
        "gateway starting",
        extra={
            "host": host,
            "port": port,
            "workers": workers,
            "redis_version": version,
            "spool_dir": str(settings.spool_dir.resolve()),
        },
    )
    uvicorn.run(
        "gateway.app:create_app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,  # keep our JSON lines (shared.logs) instead of uvicorn's format
        access_log=False,
        # The gateway never reads the client's address (nginx logs it at the edge), and
        # uvicorn's proxy-headers middleware rewrote it from X-Forwarded-For on every webhook:
        # about 2% of the gateway's samples under load (docs/benchmarks.md, eighth session).
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    return 0
