"""An agent sends a file (`wsm.agent_media`, queued by api/media_send.py for the operator API
and the console): the conversation becomes the agent's, as with a text (agent_writes), and the
file goes to the outbox as a reply of kind image, document or voice that names the stored file
(engine/outbox.py). Its bytes stay in the media store; the sender reads them just before the
send (engine/media/store.py MediaLibrary.read_media) and delivers it exactly once through the
outbox, like any reply.

The reply's id (`mid`) comes with the command, chosen by the API from the command's id, so the
API can follow the reply's outcome in the history (`<mid>:status`, `<mid>:error`).
"""

from __future__ import annotations

import logging
import re

from engine.identity import send_target
from engine.outbox import OutboxEntry
from engine.turn.commands import agent_writes
from engine.turn.frame import ConversationTurn

log = logging.getLogger("wsm.engine.media_send")

# What the sender can send, and with which WAHA call (engine/waha_client.py MEDIA_ENDPOINTS).
KINDS = frozenset({"image", "document", "voice"})
MID = re.compile(r"[0-9a-f]{32}")
MEDIA_FIELDS = ("id", "mimetype", "filename", "size", "sha256")


async def agent_media(turn: ConversationTurn) -> None:
    payload = turn.payload
    agent_id = str(payload.get("agent_id") or "")
    agent_name = str(payload.get("agent_name") or agent_id)
    kind = str(payload.get("kind") or "")
    mid = str(payload.get("mid") or "")
    media = payload.get("media")
    if (
        not agent_id
        or kind not in KINDS
        or not MID.fullmatch(mid)
        or not isinstance(media, dict)
        or not media.get("id")
    ):
        # Only the API queues this command, always whole: a broken one is dropped, not retried.
        log.warning("agent_media command without what it needs", extra={"mid": mid})
        return
    await agent_writes(turn, agent_id, agent_name)
    turn.replies.append(
        OutboxEntry(
            mid=mid,
            chat_id=send_target(turn.conversation.chat_id),
            text=str(payload.get("caption") or ""),
            created_at=turn.now,
            mark_seen=False,  # an agent's reply, as with agent_message
            author=f"agent:{agent_id}",
            kind=kind,
            media={name: media.get(name) for name in MEDIA_FIELDS},
        )
    )
