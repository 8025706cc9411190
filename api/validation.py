"""The operator API's input checks that hold for every route: path (and `session` query)
parameters have the forms WhatsApp and WAHA give them, and commands go only to conversations
that exist.

- a session name is WAHA's: 1-64 of `A-Z a-z 0-9 _ -`;
- a chat id is a person's chat: `<digits>@c.us`, `<digits>@lid` or `<digits>@s.whatsapp.net`
  (no groups, broadcasts or channels: the product never talks there);
- an agent id: 1-64 of `A-Z a-z 0-9 . _ @ + -`, starting with a letter or digit.

Anything else is answered 422 before the route runs, so nothing is stored. A command (a
message, close, handback: every POST on a conversation) to a conversation that does not exist
is answered 404: the API answers customers, it cannot cold-message arbitrary numbers.

One router dependency (`operator_input`), so every route under /api gets the checks without
each repeating them. The rules bodies share live here too: what an agent writes (`ReplyText`,
also the console's), an agent's name (`AgentName`), a history cursor (`history_cursor`, also
the console's pages and live channel; shared/stream_ids.py, as the engine's history reads it);
the JSON bodies refuse fields they do not take.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import HTTPException, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints

from shared.keys import engine_keys_for
from shared.redis_client import RedisClient

SESSION = re.compile(r"[A-Za-z0-9_-]{1,64}")
CHAT_ID = re.compile(r"[0-9]{1,32}@(?:c\.us|lid|s\.whatsapp\.net)")
AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
AGENT_ID_RULE = "an agent id: 1-64 of A-Z a-z 0-9 . _ @ + -, starting with one of A-Z a-z 0-9"
# What an agent writes to a customer (API and console): trimmed, then 1 to REPLY_MAX characters;
# a text of only spaces and line breaks is refused, never sent as a blank message.
REPLY_MAX = 4096
NAME_MAX = 100


def not_blank(value: str) -> str:
    if not value:
        raise ValueError("must have a character other than spaces and line breaks")
    return value


ReplyText = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=REPLY_MAX),
    AfterValidator(not_blank),
]


def display_name(value: str | None) -> str | None:
    """An agent's name as given (the API's `name` / `agent_name`): trimmed; blank is none, and
    the agent id stands in (customers are told who took them: never a name of spaces)."""
    return (value or "").strip() or None


AgentName = (
    Annotated[
        str,
        StringConstraints(strip_whitespace=True, max_length=NAME_MAX),
        AfterValidator(display_name),
    ]
    | None
)


class NoFields(BaseModel):
    """The body of a route that takes none (close, handback, offline): no body (or `{}`) is
    what clients send; a field (a typo, or one another route takes: `agent_id`) or a JSON that
    is not an object is refused 422 like an unknown field anywhere else, nothing stored, rather
    than ignored unseen."""

    model_config = ConfigDict(extra="forbid")


_RULES: dict[str, tuple[re.Pattern[str], str]] = {
    "session": (SESSION, "a WAHA session name: 1-64 of A-Z a-z 0-9 _ -"),
    "chat_id": (CHAT_ID, "a chat id: <digits>@c.us, <digits>@lid or <digits>@s.whatsapp.net"),
    "agent_id": (AGENT_ID, AGENT_ID_RULE),
}


def invalid_parameters(params: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """FastAPI-shaped 422 details for every parameter of `params` that breaks its rule."""
    errors = []
    for name, value in params.items():
        rule = _RULES.get(name)
        if rule is None or value is None:
            continue
        pattern, meaning = rule
        if not pattern.fullmatch(str(value)):
            errors.append(
                {
                    "type": "value_error",
                    "loc": [where, name],
                    "msg": f"must be {meaning}",
                }
            )
    return errors


def operator_input(
    redis: RedisClient, *, prefix: str, shards: int
) -> Callable[[Request], Awaitable[None]]:
    """The /api router's dependency (after the bearer check)."""

    async def check(request: Request) -> None:
        errors = invalid_parameters(dict(request.path_params), "path")
        errors += invalid_parameters(
            {name: request.query_params.get(name) for name in ("session", "agent_id")}, "query"
        )
        if errors:
            raise HTTPException(422, errors)
        path = request.path_params
        if request.method == "POST" and "session" in path and "chat_id" in path:
            keys = engine_keys_for(path["session"], path["chat_id"], shards, prefix)
            if not await redis.exists(keys.state):
                raise HTTPException(
                    404, "no such conversation: the API only writes to existing ones"
                )

    return check
