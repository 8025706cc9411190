"""The console's links to a conversation are built in one place (api/console/ui.py `conv_url`:
the pages, their redirects, the live channel's fragments and every template), each id
percent-encoded as one path segment, so the data cannot change the path. Found by an audit: the
templates' `urlencode` filter kept a `/` of a chat id as it was. No browser: the templates
rendered as the pages and the live channel render them."""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from api.console.ui import Ui, conv_url

HOSTILE = [
    ("default", "5511/../../canned@c.us"),
    ("de/fault", "5511987650001@c.us"),
    ("default", "5511?before=0-0#x@c.us"),
    ("a b%2F", "5511%2F..@lid"),
]
LINK = re.compile(r'href="(/c/[^"]*)"')


def test_a_real_conversations_link_is_as_it_always_was() -> None:
    assert conv_url("default", "5511987650001@c.us") == "/c/default/5511987650001@c.us"
    assert conv_url("my_session-2", "200000000000001@lid") == "/c/my_session-2/200000000000001@lid"


@pytest.mark.parametrize(("session", "chat_id"), HOSTILE)
def test_every_link_to_a_conversation_keeps_each_id_in_its_own_segment(
    session: str, chat_id: str
) -> None:
    conversation: dict[str, Any] = {
        "token": f"{session}|{chat_id}", "session": session, "chat_id": chat_id,
        "name": "Ana", "phone": "5511", "state": "agent", "unread": 0,
    }  # fmt: skip
    waiting = conversation | {"position": 1, "waited_seconds": 5, "last_message": "oi"}
    agent = {"id": "maria", "name": "Maria", "online": True, "conversations": [conversation]}
    viewer = {"id": "chefe", "name": "Chefe", "admin": True, "csrf": "x"}
    # The search page holds every list that links to a conversation: the line, the agent's
    # own, the agents' (an admin's) and the search results.
    page = Ui("pt-BR", 1024).render(
        "search.html", viewer=viewer, online=True, since="0-0", view=None, q="",
        line={session: [waiting]}, mine=[conversation], agents=[agent], found=[conversation],
    )  # fmt: skip
    links = [html.unescape(found) for found in LINK.findall(page)]
    assert links == [conv_url(session, chat_id)] * 4
    parts = urlsplit(links[0])
    assert (parts.query, parts.fragment) == ("", "")
    assert [unquote(s) for s in parts.path.split("/")] == ["", "c", session, chat_id]
