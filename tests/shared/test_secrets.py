"""Secrets (issue 12, section 3): short tokens and keys, a booking webhook without a secret, and
plain-http URLs to other hosts are refused with a clear message, by the settings and by the
real processes at start (which then store nothing); `wsm config` masks credentials inside
URLs; a malformed REDIS_URL is reported without its password."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.embedded_redis import EmbeddedRedis
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]
LONG = "0123456789abcdef0123456789abcdef"  # 32 characters: the shortest accepted
SHORT = LONG[:31]


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def refusal(**values: object) -> str:
    with pytest.raises(ValidationError) as caught:
        settings(**values)
    return str(caught.value)


# --- the settings ---------------------------------------------------------------------------


def test_a_short_api_token_is_refused_with_a_clear_message() -> None:
    message = refusal(WSM_API_TOKEN=SHORT)
    assert "WSM_API_TOKEN is too short: at least 32 characters" in message
    assert SHORT not in message
    assert settings(WSM_API_TOKEN=LONG).api_token is not None
    # Blanks are not a secret, however many (found by an audit).
    assert "WSM_API_TOKEN is too short" in refusal(WSM_API_TOKEN=" " * 40)
    assert "WSM_API_TOKEN is too short" in refusal(WSM_API_TOKEN=SHORT + " " * 40)


def test_every_hmac_key_must_be_long_enough_also_while_rotating() -> None:
    assert "WEBHOOK_HMAC_KEY (key 1) is too short" in refusal(WEBHOOK_HMAC_KEY=SHORT)
    message = refusal(WEBHOOK_HMAC_KEY=f"{LONG}x,{SHORT}")
    assert "WEBHOOK_HMAC_KEY (key 2) is too short" in message and SHORT not in message
    assert settings(WEBHOOK_HMAC_KEY=f"{LONG}x,{LONG}").hmac_keys() == [
        f"{LONG}x".encode(),
        LONG.encode(),
    ]
    message = refusal(
        WSM_BOOKING_WEBHOOK_URL="https://crm.example/h", WSM_BOOKING_WEBHOOK_SECRET=SHORT
    )
    assert "WSM_BOOKING_WEBHOOK_SECRET is too short" in message


def test_the_booking_webhook_needs_a_secret() -> None:
    message = refusal(WSM_BOOKING_WEBHOOK_URL="https://crm.example/hooks")
    assert "WSM_BOOKING_WEBHOOK_URL is set without WSM_BOOKING_WEBHOOK_SECRET" in message


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("GROQ_BASE_URL", {}),
        ("WSM_BOOKING_WEBHOOK_URL", {"WSM_BOOKING_WEBHOOK_SECRET": LONG}),
    ],
)
def test_plain_http_is_refused_unless_the_host_is_loopback(
    name: str, extra: dict[str, str]
) -> None:
    for refused in ("http://api.example.com/v1", "http://evil.localhost/v1"):
        message = refusal(**{name: refused}, **extra)
        assert f"{name} must be an https:// URL" in message
    for url in (
        "https://api.example.com",
        "http://127.0.0.1:8000",
        "http://localhost:9",
        "http://[::1]:9",
    ):
        assert getattr(settings(**{name: url}, **extra), name.lower().removeprefix("wsm_")) == url


def test_a_malformed_redis_url_is_reported_without_its_password() -> None:
    for url in (
        "redis://:hunter2-password@redis:notaport/0",
        "redis://default:hunter2-password@redis:6379/zero",
        "redis://:hunter2-password@:6379/0",
        "http://:hunter2-password@redis:6379/0",
    ):
        message = refusal(REDIS_URL=url)
        assert "REDIS_URL" in message
        assert "hunter2" not in message


def test_wsm_config_masks_credentials_inside_urls() -> None:
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WSM_", "REDIS_", "GROQ_", "WAHA_"))
    } | {
        "PYTHONPATH": str(REPO),
        "REDIS_URL": "redis://default:hunter2-password@redis:6379/0",
        "WAHA_URL": "https://waha:waha-password@waha.example:3000",
        "WSM_BOOKING_WEBHOOK_URL": "https://crm.example/hooks?token=crm-token-value",
        "WSM_BOOKING_WEBHOOK_SECRET": LONG,
        "WSM_API_TOKEN": LONG,
    }
    result = subprocess.run(
        [sys.executable, "-m", "wsm", "config"],
        env=environment, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for secret in ("hunter2", "waha-password", "crm-token-value", LONG):
        assert secret not in result.stdout
    assert "REDIS_URL=redis://***@redis:6379/0" in result.stdout
    assert "WAHA_URL=https://***@waha.example:3000" in result.stdout


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # Not a URL the parser takes (an unclosed IPv6 bracket): nothing of it is shown.
        ("http://u:broken-secret@[::1", "http://***"),
        # A `?` in the password: the parser sees a query, and the netloc has no `@`.
        ("https://u:p?query-secret@hooks.example.com/x", "https://***@hooks.example.com/x"),
    ],
)
def test_wsm_config_masks_urls_the_parser_gets_wrong(url: str, shown: str) -> None:
    """Found by an audit: these were printed whole, password and all."""
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WSM_", "REDIS_", "GROQ_", "WAHA_"))
    } | {"PYTHONPATH": str(REPO), "WAHA_URL": url, "WSM_API_TOKEN": LONG}
    result = subprocess.run(
        [sys.executable, "-m", "wsm", "config"],
        env=environment, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "secret" not in result.stdout
    assert f"WAHA_URL={shown}" in result.stdout


# --- the processes refuse to start, and store nothing -----------------------------------------


@pytest.fixture
def empty_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False)
    server.start()
    yield server
    server.stop()


def run(
    module: str, args: list[str], environment: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WSM_", "WEBHOOK_", "REDIS_", "GROQ_", "WAHA_", "PROMETHEUS_"))
    }
    env |= {"PYTHONPATH": str(REPO), **environment}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def key_count(server: EmbeddedRedis) -> int:
    import redis

    client = redis.Redis.from_url(server.url)
    try:
        return int(client.dbsize())
    finally:
        client.close()


def test_the_gateway_refuses_a_short_hmac_key(empty_redis: EmbeddedRedis, tmp_path: Path) -> None:
    result = run(
        "gateway",
        ["--port", "0"],
        {
            "REDIS_URL": empty_redis.url,
            "WEBHOOK_HMAC_KEY": SHORT,
            "WSM_SPOOL_DIR": str(tmp_path / "spool"),
        },
        tmp_path,
    )
    assert result.returncode == 2
    assert "WEBHOOK_HMAC_KEY (key 1) is too short: at least 32 characters" in result.stderr
    assert SHORT not in result.stderr
    assert key_count(empty_redis) == 0


def test_the_api_refuses_a_short_token(empty_redis: EmbeddedRedis, tmp_path: Path) -> None:
    result = run(
        "api", ["--port", "0"], {"REDIS_URL": empty_redis.url, "WSM_API_TOKEN": SHORT}, tmp_path
    )
    assert result.returncode != 0
    assert "WSM_API_TOKEN is too short: at least 32 characters" in result.stderr
    assert SHORT not in result.stderr
    assert key_count(empty_redis) == 0


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        (
            {"GROQ_API_KEY": "gsk_x", "GROQ_BASE_URL": "http://llm.example.com"},
            "GROQ_BASE_URL must be an https:// URL",
        ),
        (
            {"WSM_BOOKING_WEBHOOK_URL": "https://crm.example/hooks"},
            "WSM_BOOKING_WEBHOOK_URL is set without WSM_BOOKING_WEBHOOK_SECRET",
        ),
    ],
    ids=["plain_http_llm", "webhook_without_secret"],
)
def test_the_worker_refuses_to_start(
    environment: dict[str, str], expected: str, empty_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    result = run(
        "worker",
        ["--processes", "1", "--metrics-port", "0"],
        {"REDIS_URL": empty_redis.url, **environment},
        tmp_path,
    )
    assert result.returncode == 2
    assert expected in result.stderr
    assert key_count(empty_redis) == 0
