"""The transactional outbox: a handler's replies are written to the conversation's outbox in
the same commit as its state, its history and the inbound message's ack (one fenced script).
Either all of it happens once, or none of it: a message redelivered after a crash re-runs a
handler whose first run committed nothing, and a message already acked is never handled again.

The sender (engine/sender.py) then delivers each conversation's outbox in order and removes a
reply only after WAHA answered 201.

A reply is a text, or a file (`kind` image, document or voice, with `media`: the stored file's
id, type, name, size and hash; `text` is then its caption): the file's bytes stay in the media
store (engine/media/store.py) and the sender reads them just before the send.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from engine.history import HistoryEntry, HistoryKeys, append_writes
from shared.clock import now_ms
from shared.commit_writes import Write, write
from shared.keys import EngineConversationKeys


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    mid: str
    chat_id: str  # where to send (WAHA chat id)
    text: str
    created_at: int
    mark_seen: bool = True  # a reply to the customer: mark their messages seen first
    author: str = "bot"
    attempts: int = 0
    last_error: str = ""
    kind: str = "text"  # text | image | document | voice
    media: dict[str, Any] | None = None  # {id, mimetype, filename, size, sha256} for a file

    def encode(self) -> str:
        value: dict[str, Any] = {
            "mid": self.mid,
            "chat": self.chat_id,
            "text": self.text,
            "created": self.created_at,
            "seen": self.mark_seen,
            "author": self.author,
            "attempts": self.attempts,
            "last_error": self.last_error,
        }
        if self.kind != "text":  # a text reply keeps the shape older senders read
            value["kind"] = self.kind
            value["media"] = self.media
        return orjson.dumps(value).decode()

    @classmethod
    def decode(cls, raw: bytes | str) -> OutboxEntry:
        value: dict[str, Any] = orjson.loads(raw)
        return cls(
            mid=str(value["mid"]),
            chat_id=str(value["chat"]),
            text=str(value["text"]),
            created_at=int(value.get("created", 0)),
            mark_seen=bool(value.get("seen", True)),
            author=str(value.get("author", "bot")),
            attempts=int(value.get("attempts", 0)),
            last_error=str(value.get("last_error", "")),
            kind=str(value.get("kind", "text")),
            media=value.get("media") if isinstance(value.get("media"), dict) else None,
        )


def new_entry(
    chat_id: str, text: str, *, author: str = "bot", at_ms: int | None = None
) -> OutboxEntry:
    return OutboxEntry(
        mid=uuid.uuid4().hex,
        chat_id=chat_id,
        text=text,
        created_at=now_ms() if at_ms is None else at_ms,
        mark_seen=author == "bot",
        author=author,
    )


def history_keys(keys: EngineConversationKeys) -> HistoryKeys:
    return HistoryKeys(stream=keys.history, meta=keys.history_meta)


def outbox_writes(
    keys: EngineConversationKeys,
    entries: list[OutboxEntry],
    *,
    retention_seconds: int,
    now_ms: int,
) -> list[Write]:
    """Queue replies for sending, and write each to the history as `queued`."""
    if not entries:
        return []
    writes: list[Write] = []
    for entry in entries:
        writes += append_writes(
            history_keys(keys),
            HistoryEntry(
                mid=entry.mid,
                direction="out",
                text=entry.text,
                at=entry.created_at,
                author=entry.author,
                kind=entry.kind,
                status="queued",
                # A file: the history names the stored file (the console shows it) and its
                # caption, as it does a customer's.
                media=entry.media if entry.kind != "text" else None,
                caption=(entry.text or None) if entry.kind != "text" else None,
            ),
            retention_seconds=retention_seconds,
            now_ms=now_ms,
        )
    writes.append(write("RPUSH", keys.outbox, *[e.encode() for e in entries]))
    writes.append(write("EXPIRE", keys.outbox, retention_seconds))
    # LT only limits updates (an absent member is added): a new reply makes the conversation
    # due now, and never pushes an earlier due time later.
    writes.append(write("ZADD", keys.outbox_pending, "LT", now_ms, keys.conversation.token))
    return writes
