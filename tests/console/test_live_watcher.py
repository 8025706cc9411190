"""What the console's Watcher (api/console/live.py) notices, driven pass by pass on a real Redis
so no race is left to timing: a message that lands before the Watcher first looks at a
conversation a page just opened (it recorded such a conversation's newest message silently, and
the page never showed it until reloaded; found while chasing a flaky browser test). The team
lines of a business of its own: tests/api/test_teams_api.py."""

from __future__ import annotations

import html
import re
from typing import Any

from api.app import create_app
from api.console.channel import PageChannel
from api.console.sessions import Viewer
from engine.history import HistoryEntry, HistoryKeys, append_writes
from engine.state import ConversationState, State, state_writes
from shared.keys import conversation_token, engine_keys_for
from tests.console.support import app_login
from tests.engine.harness import settings_for
from tests.support.asgi import served

TOKEN = "console-test-token-" + "x" * 32
CHAT = "5511901200088@c.us"
CONNECT = re.compile(r'sse-connect="/events\?since=([^&"]+)&amp;conv=[^&"]+&amp;after=([^&"]*)"')


async def say(aredis: Any, history: HistoryKeys, n: int, text: str) -> None:
    """The customer's message, written with the engine's own history encoding."""
    entry = HistoryEntry(mid=f"in-{n}", direction="in", text=text, at=1_796_000_000_000 + n)
    for write in append_writes(history, entry, retention_seconds=3600):
        await aredis.execute_command(*write)


async def test_a_message_landing_before_the_watcher_sees_the_page_still_reaches_it(
    aredis: Any, redis_url: str, key_prefix: str
) -> None:
    settings = settings_for(key_prefix, redis_url, api_token=TOKEN)
    keys = engine_keys_for("default", CHAT, settings.queue_shards, key_prefix)
    history = HistoryKeys(keys.history, keys.history_meta)
    # A conversation with the bot: in no line and with no agent, watched only once a page
    # shows it (an admin's).
    for write in state_writes(keys.state, ConversationState(state=State.BOT), 3600):
        await aredis.execute_command(*write)
    await say(aredis, history, 1, "oi")
    app = create_app(settings, aredis)
    console = app.state.console
    console.watcher.stopped = True  # no background loops: the passes below are the Watcher's
    await console.watcher.tick()  # its first pass (it publishes `resync`)
    await console.accounts.add("chefe", "Chefe", "admin", "a long password")
    async with served(app, "http://console.test") as client:
        assert (await app_login(client, "chefe", "a long password")).status_code == 303
        page = await client.get(f"/c/default/{CHAT}")
    assert page.status_code == 200 and "oi" in page.text
    connect = CONNECT.search(page.text)
    assert connect, "the page has no live channel"
    since, after = connect[1], connect[2]

    await say(aredis, history, 2, "quero remarcar")  # before the Watcher's next pass
    assert "quero remarcar" not in page.text
    await console.watcher.tick()

    # What the page's channel sends from `since` on, as /events renders it for this page.
    token = conversation_token("default", CHAT)
    admin = Viewer(id="chefe", name="Chefe", role="admin", sid="s", csrf="c")
    channel = PageChannel(console, admin, token, after)
    backlog = await console.hub.since(since)
    assert backlog is not None
    sent = [await channel.render(event) for event in backlog]
    shown = html.unescape("".join(part or "" for part in sent))
    assert shown.count("quero remarcar") == 1, shown
    assert "oi</div>" not in shown  # what the page had is not sent again

    # A later pass with nothing new sends nothing more for it.
    await console.watcher.tick()
    later = await console.hub.since(backlog[-1].id)
    assert later == []
