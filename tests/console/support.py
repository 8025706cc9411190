"""What the console's test modules share: a browser assertion, a logged-in HTTP client, the
page's CSRF token, and a snapshot of the product's Redis that leaves out what the running
product rewrites on its own (to check that a refused request changed nothing)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import redis

from tests.console.conftest import PASSWORD, Product
from wsm.load.product import KEY_PREFIX

# Keys the running product rewrites on its own (heartbeats, locks, the shard's fencing
# counter, delivery statuses from WAHA's late acks, the console's own event feed and watch
# list): not "a change" made by a refused request. What a refused request could change (a
# queued command, its dedupe marker, history, outbox, state, the line, audit, accounts,
# sessions) is all compared.
VOLATILE = re.compile(
    r"\{fleet:|:reaper$|:claimed_seen$|:stats$|:fence$|:histmeta$|\{line\}:joined$|"
    r"\{console\}:(events|watcher|viewed)$|:maint|:reconcile|\{console\}:(fail|lock):|"
    # The background passes' locks (reminders, freed slots), taken and dropped on their own.
    r"\{cal\}:\w+:lock$"
)


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def snapshot(client: redis.Redis, match: str = f"{KEY_PREFIX}:*") -> dict[bytes, Any]:
    """Every key of the product (or those `match` names) with its content (TTLs aside)."""
    out: dict[bytes, Any] = {}
    for key in client.scan_iter(match=match, count=1000):
        if VOLATILE.search(bytes(key).decode()):
            continue
        kind: Any = client.type(key)
        kind = kind.decode()
        if kind == "string":
            out[key] = client.get(key)
        elif kind == "hash":
            out[key] = client.hgetall(key)
        elif kind == "list":
            out[key] = client.lrange(key, 0, -1)
        elif kind == "set":
            out[key] = client.smembers(key)
        elif kind == "zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            out[key] = client.xrange(key)
    return out


def login_csrf(page: str) -> str:
    """The CSRF token of the login form in `page`."""
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found[1]


def http_login(product: Product, user: str, password: str = PASSWORD) -> httpx.Client:
    client = httpx.Client(base_url=product.url, timeout=30)
    csrf = login_csrf(client.get("/login").text)
    answer = client.post("/login", data={"user": user, "password": password, "csrf": csrf})
    assert answer.status_code == 303, answer.text
    return client


async def app_login(
    client: httpx.AsyncClient, user: str, password: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    """The login form filled in and posted, as a browser does, on an in-process app's client."""
    csrf = login_csrf((await client.get("/login")).text)
    return await client.post(
        "/login", data={"user": user, "password": password, "csrf": csrf}, headers=headers or {}
    )


def page_csrf(client: httpx.Client) -> str:
    found = re.search(r'"X-CSRF-Token": "([^"]+)"', client.get("/").text)
    assert found
    return found[1]
