"""Attendants' accounts: one per agent, its password stored as an argon2id hash (argon2-cffi).

An account's id is the agent id the waiting line and the engine know (`{line}:agents`,
`agent:<id>` authors in history), so the console acts as exactly that agent. Ids go into key
names and URLs, hence the narrow alphabet.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from shared.clock import now_ms
from shared.keys import ConsoleKeys
from shared.redis_client import RedisClient
from shared.text import as_text

ROLES = ("agent", "admin")
# Matched whole (fullmatch): `$` would let a trailing newline through ("ana\n").
AGENT_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,39}")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024

_hasher = PasswordHasher()
# Verified against when the account does not exist, so a wrong user costs as much time as a
# wrong password and the answer's timing does not tell which accounts exist.
_DUMMY_HASH = _hasher.hash("wsm-console-no-such-account")


class AccountError(ValueError):
    """A request about accounts that cannot be done as asked (terminal: the caller's)."""


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    name: str
    role: str
    password_hash: str
    created_at: int = 0

    @property
    def admin(self) -> bool:
        return self.role == "admin"


def check_id(agent_id: str) -> str:
    if not AGENT_ID.fullmatch(agent_id):
        raise AccountError(
            f"invalid agent id {agent_id!r}: 1-40 of a-z 0-9 . _ -, starting with a letter or digit"
        )
    return agent_id


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AccountError(f"the password must have {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


class AccountStore:
    def __init__(self, redis: RedisClient, keys: ConsoleKeys) -> None:
        self._redis = redis
        self.keys = keys

    async def get(self, agent_id: str) -> Account | None:
        if not AGENT_ID.fullmatch(agent_id):
            return None
        raw = {
            as_text(k): as_text(v)
            for k, v in (await self._redis.hgetall(self.keys.account(agent_id))).items()
        }
        if not raw.get("hash"):
            return None
        return Account(
            id=agent_id,
            name=raw.get("name") or agent_id,
            role=raw["role"] if raw.get("role") in ROLES else "agent",
            password_hash=raw["hash"],
            created_at=int(raw.get("created_at") or 0),
        )

    async def list(self) -> list[Account]:
        ids = sorted(as_text(m) for m in await self._redis.smembers(self.keys.accounts))
        found = [await self.get(agent_id) for agent_id in ids]
        return [a for a in found if a is not None]

    async def add(self, agent_id: str, name: str, role: str, password: str) -> Account:
        check_id(agent_id)
        check_password(password)
        if role not in ROLES:
            raise AccountError(f"role must be one of {', '.join(ROLES)}")
        name = name.strip() or agent_id
        hashed = await asyncio.to_thread(_hasher.hash, password)
        now = now_ms()
        # HSETNX on the hash field first: two `wsm agent add` of one id cannot both win.
        if not await self._redis.hsetnx(self.keys.account(agent_id), "hash", hashed):
            raise AccountError(f"agent {agent_id!r} exists already (wsm agent passwd changes it)")
        await self._redis.hset(
            self.keys.account(agent_id),
            mapping={"name": name, "role": role, "hash": hashed, "created_at": str(now)},
        )
        await self._redis.sadd(self.keys.accounts, agent_id)
        return Account(agent_id, name, role, hashed, now)

    async def set_password(self, agent_id: str, password: str) -> None:
        check_password(password)
        if await self.get(agent_id) is None:
            raise AccountError(f"no agent {agent_id!r}")
        hashed = await asyncio.to_thread(_hasher.hash, password)
        await self._redis.hset(self.keys.account(agent_id), "hash", hashed)
        # A new password ends every session opened with the old one.
        await self.end_sessions(agent_id)

    async def remove(self, agent_id: str) -> bool:
        if not AGENT_ID.fullmatch(agent_id):
            return False
        removed = bool(await self._redis.delete(self.keys.account(agent_id)))
        await self._redis.srem(self.keys.accounts, agent_id)
        await self.end_sessions(agent_id)
        return removed

    async def end_sessions(self, agent_id: str) -> None:
        sids = [
            as_text(s) for s in await self._redis.smembers(self.keys.account_sessions(agent_id))
        ]
        for sid in sids:
            await self._redis.delete(self.keys.session(sid))
        await self._redis.delete(self.keys.account_sessions(agent_id))

    async def verify(self, agent_id: str, password: str) -> Account | None:
        """The account when the password is right; None otherwise, in about the same time
        whether or not the account exists."""
        account = await self.get(agent_id)
        hashed = account.password_hash if account else _DUMMY_HASH
        try:
            await asyncio.to_thread(_hasher.verify, hashed, password[:MAX_PASSWORD])
        except (VerificationError, InvalidHashError):
            return None
        if account is None:
            return None
        if _hasher.check_needs_rehash(hashed):
            new_hash = await asyncio.to_thread(_hasher.hash, password)
            await self._redis.hset(self.keys.account(agent_id), "hash", new_hash)
        return account
