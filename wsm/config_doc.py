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
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from shared.settings import Settings

# Variables read by compose.yaml alone (not by wsm's processes): (name, default, meaning).
# `.env.example` lists them after wsm's own settings; a test checks compose uses no other.
DEPLOYMENT_VARIABLES: list[tuple[str, str, str]] = [
    ("GRAFANA_ADMIN_PASSWORD", "", "compose: Grafana's admin password (required)."),
    ("GRAFANA_ADMIN_USER", "admin", "compose: Grafana's admin user."),
    ("GRAFANA_PORT", "3000", "compose: Grafana's port on the host's loopback."),
    ("HTTP_PORT", "80", "compose: the port nginx publishes."),
    ("WAHA_SESSION", "default", "compose: the WAHA session wsm serves."),
    (
        "WAHA_HOOK_EVENTS",
        "message.any,message.ack,message.reaction,message.revoked,message.edited,session.status",
        "compose: the events WAHA posts (message OR message.any, never both).",
    ),
    ("GATEWAY_WORKERS", "2", "compose: gateway processes in its one container."),
    ("WORKER_PROCESSES", "2", "compose: worker processes per worker replica."),
    ("WORKER_CONCURRENCY", "16", "compose: conversations at once per worker process."),
    ("NGINX_WEBHOOK_RATE", "200r/s", "compose: nginx's per-IP rate for /webhook."),
    ("NGINX_WEBHOOK_BURST", "400", "compose: nginx's burst for /webhook."),
    ("NGINX_API_RATE", "20r/s", "compose: nginx's per-IP rate for /api/."),
    ("NGINX_API_BURST", "40", "compose: nginx's burst for /api/."),
    ("REDIS_APPENDFSYNC", "always", "compose: Redis appendfsync (always: nothing acked is lost)."),
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
    lines = ["# wsm settings: copy to .env and edit. Every variable is optional unless noted."]
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


def effective() -> str:
    settings = Settings()
    lines = []
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        shown = "***" if isinstance(value, SecretStr) else value
        lines.append(f"{field.alias}={shown}")
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
    print(markdown_table() if args.markdown else env_example() if args.env else effective())
    return 0
