"""nginx in front of the gateway on this machine, from the project's own template.

The template (nginx/templates/default.conf.template) is what production runs: the official
image renders it with envsubst, replacing only `${NGINX_...}` variables. `render_site` does the
same (and refuses a template variable without a value, which in the image would stay literal
and break nginx far from the cause). It is included in a main config that repeats the
http-level directives of the image's nginx.conf (so a template that sets one of them again
fails here as it would in the image) and keeps every path nginx writes under one private
prefix, so no root paths are needed.

This module is the only renderer: `wsm loadtest` runs nginx with it, and tests/ops checks the
very config it writes (`write_config`).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections.abc import Iterable, Mapping
from pathlib import Path

from wsm.stack import Service, port_accepts

TEMPLATE = Path(__file__).resolve().parents[1] / "nginx" / "templates" / "default.conf.template"
# The TLS listener, rendered into <conf dir>/wsm-tls/tls.conf when certificates are provided
# (nginx/entrypoint/40-wsm-tls.sh in the image, `tls_site` here).
TLS_TEMPLATE = Path(__file__).resolve().parents[1] / "nginx" / "tls" / "tls.conf.template"

# The upstream block a stack on 127.0.0.1 sends webhooks to (`keepalive_upstream`): its
# gateway is at an IP literal, so nothing is lost by nginx resolving the block once, at start.
GATEWAY_POOL = "wsm_gateway"
# Idle connections nginx keeps to the gateway, and for how long: below uvicorn's own 5 s
# keep-alive timeout, so nginx drops an idle connection before the gateway closes it under a
# request on its way (a request that meets a closed kept connection is retried on a new one,
# proxy_next_upstream, but that costs a round trip).
POOL_CONNECTIONS = 64
POOL_IDLE_SECONDS = 4

# Who may POST /webhook by default: loopback and the private ranges, where WAHA runs (compose's
# network is one of them). compose.yaml's default of NGINX_WEBHOOK_ALLOW is the same list.
DEFAULT_WEBHOOK_NETWORKS = (
    "127.0.0.0/8",
    "::1",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
)
# The filter compose gives the official image (NGINX_ENVSUBST_FILTER).
ENVSUBST_FILTER = re.compile(r"^NGINX_")
_REFERENCE = re.compile(r"\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|\$(?P<bare>[A-Za-z_]\w*)")

MAIN_CONFIG = """\
{user}
worker_processes 1;
worker_rlimit_nofile 8192;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    # As in the official image's nginx.conf.
    default_type application/octet-stream;
    log_format main '$remote_addr - $remote_user [$time_local] "$request" '
                    '$status $body_bytes_sent "$http_referer" '
                    '"$http_user_agent" "$http_x_forwarded_for"';
    access_log {prefix}/access-main.log main;
    sendfile on;
    keepalive_timeout 65;

    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    include {prefix}/conf.d/*.conf;
}}
"""


class EdgeUnavailable(RuntimeError):
    """nginx is not installed (terminal for `--nginx on`)."""


class MissingTemplateVariable(KeyError):
    """The template names an NGINX_ variable that was given no value."""


def find_nginx() -> str | None:
    # nginx lives in /usr/sbin, which is not on every user's PATH.
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")


def template_variables(text: str) -> set[str]:
    """The NGINX_ variables a template references (what envsubst would replace)."""
    return {
        m.group("braced") or m.group("bare")
        for m in _REFERENCE.finditer(text)
        if ENVSUBST_FILTER.search(m.group("braced") or m.group("bare"))
    }


def render_site(text: str, values: Mapping[str, str]) -> str:
    """envsubst restricted to NGINX_ names, as the official image runs it."""
    wanted = template_variables(text)
    missing = sorted(wanted - set(values))
    if missing:
        raise MissingTemplateVariable(f"template variables without a value: {', '.join(missing)}")

    def substitute(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        return values[name] if name in wanted else match.group(0)

    return _REFERENCE.sub(substitute, text)


def webhook_allow_rules(networks: Iterable[str] = DEFAULT_WEBHOOK_NETWORKS) -> str:
    """NGINX_WEBHOOK_ALLOW's value for these networks: nginx `allow` rules on one line."""
    return " ".join(f"allow {network};" for network in networks)


def tls_site(values: Mapping[str, str]) -> str:
    """The TLS listener as the image's entrypoint script renders it (NGINX_TLS_* values)."""
    return render_site(TLS_TEMPLATE.read_text("utf-8"), values)


def keepalive_upstream(name: str, address: str) -> str:
    """An upstream block keeping idle connections to `address` (host:port; an IP literal, as
    nginx before 1.27.3 resolves a block's names only at start). NGINX_GATEWAY_UPSTREAM set to
    `name` makes the template use it."""
    return (
        f"upstream {name} {{\n"
        f"    server {address};\n"
        f"    keepalive {POOL_CONNECTIONS};\n"
        f"    keepalive_timeout {POOL_IDLE_SECONDS}s;\n"
        "}\n"
    )


def loopback_values(
    *,
    port: int,
    gateway: str,
    api: str,
    webhook_rate: str = "100000r/s",
    webhook_burst: int = 100000,
    api_rate: str = "10000r/s",
    api_burst: int = 10000,
) -> dict[str, str]:
    """The template's variables for a stack on 127.0.0.1. Upstreams are IP literals, or the name
    of a keep-alive block (`keepalive_upstream`): neither is sent to the resolver, whose
    setting the template still requires. The webhook limit is per
    client IP and the simulator is one client, so by default it is set far above any load this
    machine can make: a load test measures the product, not the guard against strangers."""
    return {
        "NGINX_LISTEN": f"127.0.0.1:{port}",
        "NGINX_RESOLVER": "127.0.0.1",
        "NGINX_GATEWAY_UPSTREAM": gateway,
        "NGINX_API_UPSTREAM": api,
        "NGINX_CLIENT_MAX_BODY_SIZE": "1m",
        "NGINX_MEDIA_MAX_BODY_SIZE": "17m",
        "NGINX_WEBHOOK_RATE": webhook_rate,
        "NGINX_WEBHOOK_BURST": str(webhook_burst),
        "NGINX_API_RATE": api_rate,
        "NGINX_API_BURST": str(api_burst),
        "NGINX_WEBHOOK_ALLOW": webhook_allow_rules(("127.0.0.0/8", "::1")),
        # The simulator posts with hundreds of connections at once from one address.
        "NGINX_CONN_PER_CLIENT": "10000",
    }


def write_config(
    prefix: Path,
    values: Mapping[str, str],
    *,
    template: str | None = None,
    upstreams: Mapping[str, str] | None = None,
) -> Path:
    """Render the site (the project's template unless `template` is given) into
    <prefix>/conf.d/default.conf, each of `upstreams` (name -> address) as a keep-alive block
    into <prefix>/wsm-upstreams/<name>.conf, and the main config into <prefix>/nginx.conf,
    which it returns."""
    (prefix / "conf.d").mkdir(parents=True, exist_ok=True)
    site = TEMPLATE.read_text("utf-8") if template is None else template
    (prefix / "conf.d" / "default.conf").write_text(render_site(site, values), "utf-8")
    pools = prefix / "wsm-upstreams"
    shutil.rmtree(pools, ignore_errors=True)  # a block written for an earlier run is not kept
    if upstreams:
        pools.mkdir()
        for name, address in upstreams.items():
            (pools / f"{name}.conf").write_text(keepalive_upstream(name, address), "utf-8")
    # Run as root, nginx's workers would switch to "nobody", who cannot enter a private
    # temporary directory.
    user = "user root;" if os.geteuid() == 0 else ""
    main = prefix / "nginx.conf"
    main.write_text(MAIN_CONFIG.format(prefix=prefix, user=user), "utf-8")
    return main


def nginx_argv(binary: str, prefix: Path, *extra: str) -> list[str]:
    """nginx on the config `write_config` wrote under `prefix` (`-t`, `-T`, `-g ...` in extra)."""
    return [
        binary,
        "-p",
        str(prefix),
        "-c",
        str(prefix / "nginx.conf"),
        "-e",
        str(prefix / "error.log"),
        *extra,
    ]


def nginx_service(
    prefix: Path,
    values: Mapping[str, str],
    *,
    port: int,
    nginx: str | None = None,
    upstreams: Mapping[str, str] | None = None,
) -> Service:
    """nginx in the foreground on the rendered template (and `upstreams`, as write_config);
    SIGQUIT stops it gracefully."""
    binary = nginx or find_nginx()
    if binary is None:
        raise EdgeUnavailable("nginx is not installed (apt-get install -y nginx)")
    write_config(prefix, values, upstreams=upstreams)
    return Service(
        "nginx",
        nginx_argv(binary, prefix, "-g", "daemon off;"),
        # The template logs each request to /dev/stdout: this file.
        prefix / "access.log",
        ready=lambda: port_accepts(port),
        stop_signal=signal.SIGQUIT,
        grace_seconds=10.0,
    )
