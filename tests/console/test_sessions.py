"""Accounts, cookies and sessions of the console, on the real app and a real Redis (no
browser): what the password hash is, what the cookie says, and what a forged one gets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from api.app import create_app
from shared.keys import ConsoleKeys
from tests.conftest import keys_with_prefix
from tests.console.support import app_login
from tests.engine.harness import settings_for
from tests.support.asgi import served

TOKEN = "console-test-token-" + "x" * 32


BASE_URL = "http://console.test"


@pytest.fixture
async def app(aredis: Any, redis_url: str, key_prefix: str) -> Any:
    built = create_app(settings_for(key_prefix, redis_url, api_token=TOKEN), aredis)
    await built.state.console.accounts.add("ana", "Ana", "agent", "a long password")
    return built


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with served(app, BASE_URL) as client:
        yield client


async def login(client: httpx.AsyncClient, headers: dict[str, str] | None = None) -> httpx.Response:
    return await app_login(client, "ana", "a long password", headers)


async def test_the_password_is_stored_as_an_argon2id_hash(app: Any, aredis: Any) -> None:
    stored = await aredis.hget(
        ConsoleKeys(app.state.console.settings.key_prefix).account("ana"), "hash"
    )
    assert stored.startswith(b"$argon2id$") and b"a long password" not in stored


@pytest.mark.parametrize(
    ("headers", "secure"), [({}, False), ({"X-Forwarded-Proto": "https"}, True)]
)
async def test_the_session_cookie_is_httponly_samesite_and_secure_behind_tls(
    client: httpx.AsyncClient, headers: dict[str, str], secure: bool
) -> None:
    answer = await login(client, headers)
    assert answer.status_code == 303
    cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("wsm_console="))
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert "httponly" in flags and "samesite=lax" in flags
    assert ("secure" in flags) is secure


async def test_a_forged_or_tampered_cookie_is_not_a_session(
    client: httpx.AsyncClient, sync_redis: Any, key_prefix: str
) -> None:
    answer = await login(client)
    value = answer.cookies["wsm_console"]
    sid, _, signature = value.rpartition(".")
    forged = [f"{sid}.{'0' * len(signature)}", f"x{sid}.{signature}", sid, "anything"]
    before = keys_with_prefix(sync_redis, key_prefix)
    for cookie in forged:
        client.cookies.clear()
        client.cookies.set("wsm_console", cookie)
        page = await client.get("/")
        assert page.status_code == 303 and page.headers["location"] == "/login"
        refused = await client.post("/presence", data={"online": "1"})
        assert refused.status_code == 401
    assert keys_with_prefix(sync_redis, key_prefix) == before


async def test_the_login_form_needs_its_csrf_token(
    client: httpx.AsyncClient, sync_redis: Any, key_prefix: str
) -> None:
    before = keys_with_prefix(sync_redis, key_prefix)
    await client.get("/login")
    answer = await client.post("/login", data={"user": "ana", "password": "a long password"})
    assert answer.status_code == 403 and "wsm_console=" not in answer.headers.get("set-cookie", "")
    assert keys_with_prefix(sync_redis, key_prefix) == before


@pytest.mark.parametrize(("language", "words"), [("pt-BR", "Entrar"), ("en", "Sign in")])
async def test_the_console_speaks_the_products_language(
    aredis: Any, redis_url: str, key_prefix: str, language: str, words: str
) -> None:
    settings = settings_for(key_prefix, redis_url, api_token=TOKEN, language=language)
    async with served(create_app(settings, aredis), BASE_URL) as client:
        page = await client.get("/login")
    assert page.status_code == 200 and f">{words}</button>" in page.text
    assert f'lang="{language}"' in page.text


async def test_ensure_account_makes_a_first_admin_once(
    aredis: Any, redis_url: str, key_prefix: str
) -> None:
    """What `wsm dev` can call to give a fresh stack its first admin."""
    from api.console.accounts import AccountStore
    from api.console.cli import ensure_account

    assert await ensure_account(redis_url, key_prefix, "admin", "Admin", "admin", "first pass 1")
    assert not await ensure_account(redis_url, key_prefix, "admin", "X", "agent", "other pass 2")
    store = AccountStore(aredis, ConsoleKeys(key_prefix))
    account = await store.verify("admin", "first pass 1")
    assert account is not None and account.admin and account.name == "Admin"


def test_an_agent_id_with_a_trailing_newline_is_refused() -> None:
    """`$` in the id's pattern let "ana\n" through (found by an audit): matched whole now."""
    from api.console.accounts import AccountError, check_id

    assert check_id("ana.souza-2") == "ana.souza-2"
    for bad in ("ana\n", "Ana", "-ana", "ana souza", "a" * 41, ""):
        with pytest.raises(AccountError):
            check_id(bad)
