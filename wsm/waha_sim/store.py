"""What the simulated WhatsApp holds: sessions and their status, every chat's messages (ours and
the customer's) with typing and read state, the lid -> phone number mapping, and the files
customers sent (as WAHA keeps downloaded media for `GET /api/files/...`).

Everything lives in memory on one event loop, so no locks: a change and the wake-up of the
long-polls waiting on it happen in the same step.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field
from typing import Any

from shared.clock import now_ms
from wsm.waha_sim.payloads import ACK_NAMES


@dataclass(slots=True)
class ChatMessage:
    seq: int
    id: str
    session: str
    direction: str  # "in": the customer wrote it; "out": sent through the API
    text: str
    timestamp: int  # seconds, as in WAHA's payload
    ack: int | None
    reply_to: str | None = None
    read: bool = False  # for "in": we sent sendSeen for it
    # A customer's file {kind, mimetype, filename, size, url}, or a location they shared.
    media: dict[str, Any] | None = None
    location: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        ack_name = ACK_NAMES.get(self.ack) if self.ack is not None else None
        return {**asdict(self), "ackName": ack_name}


class Chat:
    __slots__ = ("_changed", "chat_id", "messages", "typing", "typing_changed_at")

    def __init__(self, chat_id: str, limit: int) -> None:
        self.chat_id = chat_id
        self.messages: deque[ChatMessage] = deque(maxlen=limit)
        self.typing = False
        self.typing_changed_at: int | None = None
        self._changed = asyncio.Event()

    def notify(self) -> None:
        # Waiters hold the old event; setting it wakes them, the new one serves the next wait.
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, seconds: float) -> None:
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    def after(self, seq: int) -> list[ChatMessage]:
        return [m for m in self.messages if m.seq > seq]

    def as_dict(self, after: int = 0) -> dict[str, Any]:
        last = self.messages[-1].seq if self.messages else 0
        return {
            "chat_id": self.chat_id,
            "typing": self.typing,
            "last_seq": last,
            "messages": [m.as_dict() for m in self.after(after)],
        }


@dataclass(slots=True)
class SessionState:
    name: str
    status: str
    me: dict[str, Any] | None
    history: list[tuple[str, int]] = field(default_factory=list)
    working: asyncio.Event = field(default_factory=asyncio.Event)
    last_activity: int | None = None
    # Customer messages written while the session was down; WhatsApp delivers them when the
    # session is back, so they are emitted on the next WORKING.
    held_inbound: list[dict[str, Any]] = field(default_factory=list)

    def set_status(self, status: str, at_ms: int) -> None:
        self.status = status
        self.history.append((status, at_ms))
        del self.history[:-3]
        if status == "WORKING":
            self.working.set()
        else:
            self.working.clear()

    def info(self) -> dict[str, Any]:
        """An entry of `GET /api/sessions` (WAHA's SessionInfo)."""
        return {
            "name": self.name,
            "status": self.status,
            "config": None,
            "me": self.me,
            "presence": None,
            "timestamps": {"activity": self.last_activity},
        }


# Files customers sent: one may be this big, and all of them together this much (the oldest
# go first, as WAHA deletes downloaded media after a while: a fetch then answers 404).
MAX_FILE_BYTES = 64 * 1024 * 1024
FILES_MAX_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoredFile:
    data: bytes
    # What WAHA's static file server answers: the type its extension names, without the
    # parameters (`audio/ogg; codecs=opus` is served as `audio/ogg`).
    content_type: str


class SimStore:
    def __init__(
        self,
        history_limit: int = 1000,
        *,
        max_file_bytes: int = MAX_FILE_BYTES,
        files_max_bytes: int = FILES_MAX_BYTES,
    ) -> None:
        self.history_limit = history_limit
        self.sessions: dict[str, SessionState] = {}
        self.chats: dict[str, Chat] = {}
        self.lids: dict[str, str] = {}
        self._by_id: dict[str, tuple[Chat, ChatMessage]] = {}
        self._seq = 0
        self.max_file_bytes = max_file_bytes
        self.files_max_bytes = files_max_bytes
        # "<session>/<file name>" -> the file, oldest first.
        self.files: OrderedDict[str, StoredFile] = OrderedDict()
        self.files_bytes = 0

    # --- chats -----------------------------------------------------------------------------
    def canonical(self, chat_id: str) -> str:
        """A lid chat whose phone number is known is the phone number's chat, so replies sent
        to either form land in one conversation."""
        return self.lids.get(chat_id) or chat_id

    def chat(self, chat_id: str) -> Chat:
        key = self.canonical(chat_id)
        chat = self.chats.get(key)
        if chat is None:
            chat = self.chats[key] = Chat(key, self.history_limit)
        return chat

    def add_message(
        self,
        *,
        chat_id: str,
        message_id: str,
        session: str,
        direction: str,
        text: str,
        timestamp: int,
        ack: int | None,
        reply_to: str | None = None,
        media: dict[str, Any] | None = None,
        location: dict[str, Any] | None = None,
    ) -> ChatMessage:
        chat = self.chat(chat_id)
        self._seq += 1
        message = ChatMessage(
            self._seq, message_id, session, direction, text, timestamp, ack, reply_to,
            media=media, location=location,
        )  # fmt: skip
        if len(chat.messages) == chat.messages.maxlen:
            self._by_id.pop(chat.messages[0].id, None)
        chat.messages.append(message)
        self._by_id[message_id] = (chat, message)
        if direction == "out":
            # WhatsApp clears the typing indicator when the message arrives.
            chat.typing = False
        chat.notify()
        return message

    def message(self, message_id: str) -> ChatMessage | None:
        found = self._by_id.get(message_id)
        return found[1] if found else None

    def set_ack(self, message_id: str, ack: int) -> None:
        found = self._by_id.get(message_id)
        if found and (found[1].ack is None or ack > found[1].ack):
            found[1].ack = ack
            found[0].notify()

    def set_typing(self, chat_id: str, typing: bool) -> None:
        chat = self.chat(chat_id)
        if chat.typing != typing:
            chat.typing = typing
            chat.typing_changed_at = now_ms()
            chat.notify()

    def mark_read(self, chat_id: str, message_ids: list[str] | None) -> list[str]:
        """Marks the customer's messages read (all unread ones when no ids are given)."""
        chat = self.chat(chat_id)
        wanted = set(message_ids) if message_ids else None
        read = []
        for message in chat.messages:
            unread = message.direction == "in" and not message.read
            if unread and (wanted is None or message.id in wanted):
                message.read = True
                read.append(message.id)
        if read:
            chat.notify()
        return read

    # --- lids ------------------------------------------------------------------------------
    def add_lid(self, lid: str, phone_chat: str) -> None:
        self.lids[lid] = phone_chat
        # Messages already kept under the lid move to the phone number's chat.
        old = self.chats.pop(lid, None)
        if old is not None:
            target = self.chat(phone_chat)
            merged = sorted([*target.messages, *old.messages], key=lambda m: m.seq)
            target.messages = deque(merged, maxlen=self.history_limit)
            for message in target.messages:
                self._by_id[message.id] = (target, message)
            target.notify()
            old.notify()

    def reset_chats(self) -> None:
        for chat in self.chats.values():
            chat.notify()
        self.chats.clear()
        self._by_id.clear()
        self.lids.clear()
        self.files.clear()
        self.files_bytes = 0

    # --- files -----------------------------------------------------------------------------
    def add_file(self, session: str, name: str, data: bytes, mimetype: str) -> None:
        """Keeps a customer's file for `GET /api/files/<session>/<name>`; the oldest files go
        when they would pass `files_max_bytes` together. The caller checks `max_file_bytes`."""
        key = f"{session}/{name}"
        old = self.files.pop(key, None)
        if old is not None:
            self.files_bytes -= len(old.data)
        while self.files and self.files_bytes + len(data) > self.files_max_bytes:
            _, dropped = self.files.popitem(last=False)
            self.files_bytes -= len(dropped.data)
        content_type = mimetype.split(";")[0].strip() or "application/octet-stream"
        self.files[key] = StoredFile(data, content_type)
        self.files_bytes += len(data)

    def file(self, session: str, name: str) -> StoredFile | None:
        return self.files.get(f"{session}/{name}")
