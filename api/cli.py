"""`wsm api`: the operator API (default 127.0.0.1:8081; nginx routes /api/ to it).

Refuses to start without WSM_API_TOKEN: an operator API open to anyone would hand out every
customer's conversation.
"""

from __future__ import annotations

import argparse
import sys

from shared.logs import setup_logging
from shared.startup import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wsm api", description=__doc__)
    parser.add_argument("--host", help="address to listen on (WSM_API_HOST)")
    parser.add_argument("--port", type=int, help="port to listen on (WSM_API_PORT)")
    args = parser.parse_args(argv)
    settings = load_settings("wsm api")
    if settings is None:
        return 2
    setup_logging(settings.log_level)
    if settings.api_token is None or not settings.api_token.get_secret_value():
        print("wsm api: WSM_API_TOKEN is not set; refusing to start an open operator API",
              file=sys.stderr)  # fmt: skip
        return 2
    from engine.businesses import business_files_usable

    if not business_files_usable(settings, "wsm api"):
        return 2

    import uvicorn

    from api.app import create_app
    from shared.redis_client import connect

    redis = connect(settings.redis_url)
    app = create_app(settings, redis)
    uvicorn.run(
        app,
        host=args.host or settings.api_host,
        port=args.port or settings.api_port,
        log_config=None,
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
