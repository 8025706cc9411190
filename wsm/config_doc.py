"""`wsm config`: the settings as documentation, from the one Settings class.

    wsm config               the effective values (secrets masked)
    wsm config --markdown    README's configuration table
    wsm config --env         .env.example
    wsm config --update-docs rewrite both in the repository (`make docs`)

README's table and .env.example are generated with this, and a test checks they name every
setting, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr, ValidationError

from shared.settings import Settings

# Variables read by compose.yaml alone (not by wsm's processes): (name, default, meaning).
# `.env.example` lists them after wsm's own settings; a test checks compose uses no other.
DEPLOYMENT_VARIABLES: list[tuple[str, str, str]] = [
    ("GRAFANA_ADMIN_PASSWORD", "", "compose: Grafana's admin password (required)."),
    ("GRAFANA_ADMIN_USER", "admin", "compose: Grafana's admin user."),
    ("GRAFANA_PORT", "3000", "compose: Grafana's port on the host's loopback."),
    ("HTTP_PORT", "80", "compose: the port nginx publishes."),
    (
        "HTTPS_PORT",
        "443",
        "compose: nginx's https port (served once nginx/certs/ holds the files).",
    ),
    (
        "REDIS_GATEWAY_PASSWORD",
        "",
        "compose: Redis password of the gateway's ACL user (required). Hex: openssl rand -hex 32.",
    ),
    (
        "REDIS_WORKER_PASSWORD",
        "",
        "compose: Redis password of the workers' ACL user (required). Hex: openssl rand -hex 32.",
    ),
    (
        "REDIS_API_PASSWORD",
        "",
        "compose: Redis password of the API's ACL user (required). Hex: openssl rand -hex 32.",
    ),
    (
        "REDIS_ADMIN_PASSWORD",
        "",
        "compose: Redis password of the `admin` user, for an operator's redis-cli (required). Hex.",
    ),
    (
        "REDIS_MAXMEMORY",
        "1gb",
        "compose: Redis's maxmemory (noeviction: at the limit Redis refuses writes and the "
        "gateway spools); below the host's memory (docs/operations.md, Redis memory).",
    ),
    ("WAHA_SESSION", "default", "compose: the WAHA session wsm serves."),
    (
        "WAHA_HOOK_EVENTS",
        "message.any,message.ack,message.reaction,message.revoked,message.edited,session.status",
        "compose: the events WAHA posts (message OR message.any, never both).",
    ),
    (
        "WAHA_FILES_LIFETIME",
        "86400",
        "compose: seconds WAHA keeps a customer's file for the workers to fetch (WAHA's own "
        "default, 180, is shorter than a queue backlog or WAHA's retries).",
    ),
    ("GATEWAY_WORKERS", "2", "compose: gateway processes in its one container."),
    ("WORKER_PROCESSES", "2", "compose: worker processes per worker replica."),
    ("WORKER_CONCURRENCY", "16", "compose: conversations at once per worker process."),
    ("NGINX_WEBHOOK_RATE", "200r/s", "compose: nginx's per-IP rate for /webhook."),
    ("NGINX_WEBHOOK_BURST", "400", "compose: nginx's burst for /webhook."),
    ("NGINX_API_RATE", "20r/s", "compose: nginx's per-IP rate for /api/."),
    ("NGINX_API_BURST", "40", "compose: nginx's burst for /api/."),
    (
        "NGINX_WEBHOOK_ALLOW",
        "allow 127.0.0.0/8; allow ::1; allow 10.0.0.0/8; allow 172.16.0.0/12; "
        "allow 192.168.0.0/16; allow fc00::/7;",
        "compose: who may POST /webhook, as nginx allow rules (others get 403).",
    ),
    (
        "NGINX_CONN_PER_CLIENT",
        "100",
        "compose: connections one client address may have in progress at nginx (429 above).",
    ),
    (
        "NGINX_MEDIA_MAX_BODY_SIZE",
        "17m",
        "compose: largest file an attendant sends through nginx (WSM_MEDIA_MAX_BYTES + the form).",
    ),
    ("PROMETHEUS_RETENTION", "15d", "compose: how long Prometheus keeps samples."),
    ("WSM_IMAGE", "wsm:local", "compose: the image gateway, worker and api run."),
]


def _default(field: Any) -> str:
    if field.is_required():
        return "(required)"
    value = field.default
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def markdown_table() -> str:
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for field in Settings.model_fields.values():
        default = _default(field)
        shown = f"`{default}`" if default else "—"
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{field.alias}` | {shown} | {description} |")
    return "\n".join(rows)


def env_example() -> str:
    lines = [
        "# wsm settings: copy to .env and edit. Every variable is optional unless noted.",
        "# With compose, .env holds the secrets and the compose variables at the end; the other",
        '# settings go in wsm.env (docs/operations.md, "Settings").',
    ]
    for field in Settings.model_fields.values():
        lines.append("")
        lines.append(f"# {field.description}")
        default = _default(field)
        prefix = "" if "SecretStr" in str(field.annotation) else "# "
        lines.append(f"{prefix}{field.alias}={default}")
    lines += ["", "", "# --- Deployment with compose.yaml only ---"]
    for name, default, meaning in DEPLOYMENT_VARIABLES:
        required = "(required)" in meaning
        lines += ["", f"# {meaning}", f"{'' if required else '# '}{name}={default}"]
    return "\n".join(lines) + "\n"


def mask_url(value: str) -> str:
    """`scheme://user:password@host/...?token=...` with the credentials masked (a Redis
    password, a token in a webhook URL's user part or query); anything else unchanged. A URL
    that does not parse, or whose credentials hold a `?` or `#` (so that the parser sees a
    query), is masked too: printed whole, it would show its password."""
    scheme, sep, rest = value.partition("://")
    if not sep:
        return value
    try:
        parts = urlsplit(value)
    except ValueError:
        return f"{scheme}://***"
    if "@" in parts.netloc:
        parts = parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2])
    elif "@" in rest:
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    if parts.query:
        parts = parts._replace(query=_SECRET_QUERY.sub(r"\1=***", parts.query))
    return urlunsplit(parts)


# Query parameters that usually carry a credential (`?token=`, `?api_key=`, `?sig=`...).
_SECRET_QUERY = re.compile(
    r"((?:^|(?<=&))[^=&]*(?:token|key|secret|pass|auth|sig)[^=&]*)=[^&]*", re.IGNORECASE
)


def _shown(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "***"
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return value


def effective() -> str:
    settings = Settings()
    lines = []
    for name, field in Settings.model_fields.items():
        lines.append(f"{field.alias}={_shown(getattr(settings, name))}")
    return "\n".join(lines)


BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def update_docs(root: Path) -> None:
    readme = root / "README.md"
    text = readme.read_text("utf-8")
    block = f"{BEGIN}\n{markdown_table()}\n{END}"
    text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    readme.write_text(text, "utf-8")
    (root / ".env.example").write_text(env_example(), "utf-8")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wsm config", description="show the settings")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--markdown", action="store_true", help="README's configuration table")
    group.add_argument("--env", action="store_true", help=".env.example")
    group.add_argument("--update-docs", action="store_true", help="rewrite README + .env.example")
    args = parser.parse_args(argv)
    if args.update_docs:
        update_docs(Path.cwd())
        return 0
    try:
        print(markdown_table() if args.markdown else env_example() if args.env else effective())
    except ValidationError as exc:  # the values are never echoed (hide_input_in_errors)
        print(f"wsm config: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    return 0
