"""Console sessions, CSRF tokens and the slowdown of failed logins.

A session is a record in Redis (`{console}:sess:<sid>`: agent, CSRF token; it expires after
SESSION_SECONDS without use); the browser holds only the session id, signed with HMAC-SHA256,
in an HttpOnly SameSite=Lax cookie (Secure when the request came over TLS, directly or as
nginx's X-Forwarded-Proto says). Logging out deletes the record, so a copied cookie dies with it.

Every state-changing request carries the session's CSRF token, as the `csrf` form field or the
`X-CSRF-Token` header (htmx sends it from the page's `hx-headers`). The login form, before any
session, carries a token bound to a pre-login cookie.

Failed logins are counted per account and per client address; past a few, each further attempt
doubles a lock (429 with Retry-After) up to LOCK_MAX_SECONDS.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request, Response

from api.console.accounts import AGENT_ID, Account, AccountStore
from shared.clock import now_ms
from shared.keys import ConsoleKeys
from shared.redis_client import RedisClient
from shared.text import as_text

COOKIE = "wsm_console"
PRE_COOKIE = "wsm_console_pre"
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 12 * 3600

ACCOUNT_FREE_FAILURES = 5
IP_FREE_FAILURES = 20
FAILURE_WINDOW_SECONDS = 15 * 60
LOCK_MAX_SECONDS = 15 * 60


def cookie_secret(api_token: str) -> bytes:
    """The key that signs cookies and login CSRF tokens, derived from WSM_API_TOKEN so the
    console needs no secret of its own (rotating the token logs everyone out)."""
    return hmac.new(api_token.encode(), b"wsm console cookies v1", hashlib.sha256).digest()


def is_tls(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "")
    return request.url.scheme == "https" or forwarded.split(",")[0].strip() == "https"


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is logged in on this request: always from the server-side session, never from
    anything the page sends."""

    id: str
    name: str
    role: str
    sid: str
    csrf: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"


class LoginRequired(Exception):
    """No valid session: pages redirect to the login form, htmx requests are told to."""


class CsrfRefused(Exception):
    """A state-changing request without the session's CSRF token (nothing was done)."""


class Sessions:
    def __init__(
        self, redis: RedisClient, keys: ConsoleKeys, accounts: AccountStore, secret: bytes
    ):
        self._redis = redis
        self.keys = keys
        self.accounts = accounts
        self._secret = secret

    # --- cookies ---------------------------------------------------------------------------
    def _sign(self, value: str) -> str:
        return hmac.new(self._secret, value.encode(), hashlib.sha256).hexdigest()

    def cookie_value(self, sid: str) -> str:
        return f"{sid}.{self._sign('s:' + sid)}"

    def sid_from(self, cookie: str | None) -> str | None:
        if not cookie or "." not in cookie:
            return None
        sid, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(signature, self._sign("s:" + sid)):
            return None
        return sid

    def set_cookie(self, response: Response, request: Request, name: str, value: str) -> None:
        response.set_cookie(
            name,
            value,
            httponly=True,
            samesite="lax",
            secure=is_tls(request),
            path="/",
            max_age=SESSION_SECONDS,
        )

    # --- the pre-login CSRF token ----------------------------------------------------------
    def login_token(self, pre: str) -> str:
        return self._sign("login:" + pre)

    def login_token_ok(self, pre: str | None, given: str | None) -> bool:
        return bool(pre and given) and hmac.compare_digest(str(given), self.login_token(str(pre)))

    # --- sessions --------------------------------------------------------------------------
    async def create(self, account: Account) -> str:
        sid = secrets.token_urlsafe(32)
        key = self.keys.session(sid)
        await self._redis.hset(
            key,
            mapping={
                "agent": account.id,
                "csrf": secrets.token_urlsafe(32),
                "created_at": str(now_ms()),
            },
        )
        await self._redis.expire(key, SESSION_SECONDS)
        await self._redis.sadd(self.keys.account_sessions(account.id), sid)
        await self._redis.expire(self.keys.account_sessions(account.id), SESSION_SECONDS)
        return sid

    async def viewer(self, request: Request) -> Viewer | None:
        sid = self.sid_from(request.cookies.get(COOKIE))
        if sid is None:
            return None
        raw = await self._redis.hgetall(self.keys.session(sid))
        record = {as_text(k): as_text(v) for k, v in raw.items()}
        if not record.get("agent"):
            return None
        # The account is read on every request: a removed account or a changed role counts
        # at once, not at the session's end.
        account = await self.accounts.get(record["agent"])
        if account is None:
            await self.end(sid, record["agent"])
            return None
        await self._redis.expire(self.keys.session(sid), SESSION_SECONDS)
        # The account's list of sessions lives as long as its newest session.
        await self._redis.expire(self.keys.account_sessions(account.id), SESSION_SECONDS)
        return Viewer(account.id, account.name, account.role, sid, record.get("csrf", ""))

    async def alive(self, viewer: Viewer) -> bool:
        return bool(await self._redis.exists(self.keys.session(viewer.sid)))

    async def end(self, sid: str, agent_id: str) -> None:
        await self._redis.delete(self.keys.session(sid))
        await self._redis.srem(self.keys.account_sessions(agent_id), sid)

    # --- failed logins ---------------------------------------------------------------------
    def _subjects(self, agent_id: str, address: str) -> list[tuple[str, str, int]]:
        subjects = [("ip", address, IP_FREE_FAILURES)]
        if AGENT_ID.fullmatch(agent_id):  # anything else cannot be an account: not worth a key
            subjects.append(("user", agent_id, ACCOUNT_FREE_FAILURES))
        return subjects

    async def locked_for(self, agent_id: str, address: str) -> int:
        """Seconds until this account or address may try again (0: now)."""
        longest = 0
        for kind, who, _ in self._subjects(agent_id, address):
            ttl = int(await self._redis.pttl(self.keys.lock(kind, who)))
            longest = max(longest, ttl)
        return 0 if longest <= 0 else max(1, -(-longest // 1000))

    async def failed(self, agent_id: str, address: str) -> None:
        for kind, who, free in self._subjects(agent_id, address):
            count = int(await self._redis.incr(self.keys.failures(kind, who)))
            await self._redis.expire(self.keys.failures(kind, who), FAILURE_WINDOW_SECONDS)
            if count > free:
                delay = min(LOCK_MAX_SECONDS, 2 ** min(count - free, 20))
                await self._redis.set(self.keys.lock(kind, who), "1", ex=delay)

    async def succeeded(self, agent_id: str) -> None:
        await self._redis.delete(
            self.keys.failures("user", agent_id), self.keys.lock("user", agent_id)
        )


async def csrf_given(request: Request) -> str:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        # The body is kept (Starlette reads it once): the route reads its form after this
        # check, and a file upload's (api/forms.py) parses the body again, checking it whole.
        await request.body()
        form = await request.form()
        value = form.get("csrf")
        return value if isinstance(value, str) else ""
    return ""


async def require_csrf(request: Request, viewer: Viewer) -> None:
    given = await csrf_given(request)
    if not given or not viewer.csrf or not hmac.compare_digest(given, viewer.csrf):
        raise CsrfRefused()
