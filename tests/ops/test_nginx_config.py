"""The nginx template, rendered as the official image renders it, passes `nginx -t` and gixy."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from api.console import CSP
from tests.ops.nginx_harness import NGINX_PROGRAM, NginxPrefix, loopback_values
from tests.support.tools import require_program
from wsm.edge import TEMPLATE as NGINX_TEMPLATE
from wsm.edge import MissingTemplateVariable, template_variables, tls_site
from wsm.edge import render_site as render_nginx_template

TEMPLATE = NGINX_TEMPLATE.read_text("utf-8")


def compose_like_values() -> dict[str, str]:
    """What compose.yaml gives the image (names resolved through Docker's DNS at run time)."""
    return {
        "NGINX_LISTEN": "80",
        "NGINX_RESOLVER": "127.0.0.11",
        "NGINX_GATEWAY_UPSTREAM": "gateway:8080",
        "NGINX_API_UPSTREAM": "api:8081",
        "NGINX_CLIENT_MAX_BODY_SIZE": "1m",
        "NGINX_MEDIA_MAX_BODY_SIZE": "17m",
        "NGINX_WEBHOOK_RATE": "200r/s",
        "NGINX_WEBHOOK_BURST": "400",
        "NGINX_API_RATE": "20r/s",
        "NGINX_API_BURST": "40",
        "NGINX_WEBHOOK_ALLOW": "allow 127.0.0.0/8; allow ::1; allow 10.0.0.0/8; "
        "allow 172.16.0.0/12; allow 192.168.0.0/16; allow fc00::/7;",
        "NGINX_CONN_PER_CLIENT": "100",
    }


def gixy_findings(config: Path) -> list[dict[str, object]]:
    gixy = require_program("gixy")
    result = subprocess.run(
        [gixy, "-f", "json", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip(), result.stderr
    findings: list[dict[str, object]] = json.loads(result.stdout)
    return findings


def test_renderer_substitutes_only_the_filtered_variables() -> None:
    text = "a ${NGINX_X} b $NGINX_X c $remote_addr d ${HOME} e $NGINX_Xtra"
    rendered = render_nginx_template(text, {"NGINX_X": "1", "NGINX_Xtra": "2", "HOME": "/root"})
    assert rendered == "a 1 b 1 c $remote_addr d ${HOME} e 2"


def test_renderer_refuses_a_missing_variable() -> None:
    values = compose_like_values()
    del values["NGINX_RESOLVER"]
    with pytest.raises(MissingTemplateVariable, match="NGINX_RESOLVER"):
        render_nginx_template(TEMPLATE, values)


def test_template_uses_exactly_the_documented_variables() -> None:
    assert template_variables(TEMPLATE) == set(compose_like_values())


def test_rendered_config_passes_nginx_t_for_loopback(tmp_path: Path) -> None:
    nginx = require_program(NGINX_PROGRAM)
    prefix = NginxPrefix(
        tmp_path, loopback_values(port=18080, gateway="127.0.0.1:18081", api="127.0.0.1:18082")
    )
    result = prefix.check(nginx)
    assert result.returncode == 0, result.stderr
    assert template_variables(prefix.site.read_text()) == set()


def test_rendered_config_passes_nginx_t_with_compose_values(tmp_path: Path) -> None:
    """Upstream names are variables resolved per request, so `nginx -t` passes even where
    `gateway` and `api` do not resolve (and nginx starts before they exist in compose)."""
    nginx = require_program(NGINX_PROGRAM)
    values = compose_like_values() | {"NGINX_LISTEN": "127.0.0.1:18083"}
    result = NginxPrefix(tmp_path, values).check(nginx)
    assert result.returncode == 0, result.stderr


def test_nginx_t_fails_on_a_broken_render(tmp_path: Path) -> None:
    """The check above can fail: the same harness refuses a duplicated http-level directive."""
    nginx = require_program(NGINX_PROGRAM)
    broken = "keepalive_timeout 30s;\n" + TEMPLATE
    prefix = NginxPrefix(
        tmp_path,
        loopback_values(port=18084, gateway="127.0.0.1:1", api="127.0.0.1:2"),
        template=broken,
    )
    result = prefix.check(nginx)
    assert result.returncode != 0
    assert "duplicate" in result.stderr


def test_gixy_finds_no_problem(tmp_path: Path) -> None:
    prefix = NginxPrefix(tmp_path, compose_like_values())
    assert gixy_findings(prefix.main) == []


def test_gixy_finds_no_problem_with_tls_on(tmp_path: Path) -> None:
    """The config as compose runs it once certificate files are there (the entrypoint writes
    wsm-tls/tls.conf): ciphers set, HSTS sent."""
    values = compose_like_values() | {
        "NGINX_TLS_LISTEN": "443",
        "NGINX_TLS_CERT_FILE": "/etc/nginx/certs/fullchain.pem",
        "NGINX_TLS_KEY_FILE": "/etc/nginx/certs/privkey.pem",
        "NGINX_TLS_PUBLIC_PORT": "443",
    }
    prefix = NginxPrefix(tmp_path, values)
    (prefix.root / "wsm-tls").mkdir()
    (prefix.root / "wsm-tls" / "tls.conf").write_text(tls_site(values), "utf-8")
    assert gixy_findings(prefix.main) == []


def test_gixy_would_catch_a_location_that_drops_the_security_headers(tmp_path: Path) -> None:
    broken = TEMPLATE.replace(
        "location = /webhook {", "location = /webhook {\n        add_header X-Debug 1;", 1
    )
    assert broken != TEMPLATE
    prefix = NginxPrefix(tmp_path, compose_like_values(), template=broken)
    plugins = {finding["plugin"] for finding in gixy_findings(prefix.main)}
    assert "add_header_redefinition" in plugins


def test_nginx_sends_the_console_pages_the_consoles_own_policy() -> None:
    # Behind nginx the console's pages get nginx's Content-Security-Policy: it must be the one
    # the console sends itself (api/console), or a page works in `make run` and breaks behind
    # nginx (voice notes that do not play without media-src, say).
    rendered = render_nginx_template(NGINX_TEMPLATE.read_text("utf-8"), compose_like_values())
    console_rule = next(line for line in rendered.splitlines() if "script-src 'self'" in line)
    assert console_rule.strip().rstrip(";").split('" "', 1)[1].rstrip('"') == CSP
