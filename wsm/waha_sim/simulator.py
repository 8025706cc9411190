"""The simulated WhatsApp account: what each API call does, and which events follow.

- sendText keeps the message, answers WAHA's shape with a fresh `true_<chat>_<ID>` id, then
  (in the background) echoes it on `message.any` (fromMe, source api) and acknowledges it
  with `message.ack` DEVICE and later READ, as the customer's phone would.
- A customer's message (the control API's inbound) becomes a `message` and a `message.any`
  event; while the session is not WORKING it is held and delivered when the session is back.
  A file the customer sends is kept and served at WAHA's `GET /api/files/<session>/<name>`
  (behind the API key, as WAHA's), and the event carries `media {url, ...}` and GOWS's
  `_data.Message.<type>Message`, as WAHA sends once it has downloaded the file.
- A session status change emits `session.status`; API calls that need WORKING wait for it
  as WAHA does (up to `session_wait`), then answer 422.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import mimetypes
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from shared.clock import now_ms
from wsm.waha_sim.config import SESSION_STATUSES, SimConfig
from wsm.waha_sim.errors import (
    AvailableInPlusVersion,
    BadRequest,
    ControlError,
    InvalidLid,
    SessionNotFound,
    SessionNotWorking,
)
from wsm.waha_sim.ids import (
    message_id,
    normalize_chat,
    outgoing_wa_id,
    phone_wa_id,
)
from wsm.waha_sim.payloads import (
    ACK_DEVICE,
    ACK_READ,
    ACK_SERVER,
    CAPTIONED,
    MEDIA_KINDS,
    ack_payload,
    envelope,
    gows_data,
    location_field,
    me_info,
    media_field,
    message_payload,
    raw_location_message,
    raw_media_message,
    reply_to_payload,
    send_text_response,
    session_status_payload,
)
from wsm.waha_sim.store import SessionState, SimStore
from wsm.waha_sim.webhooks import Delivery, WebhookDispatcher

log = logging.getLogger("wsm.waha_sim.simulator")


def _string(body: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{key} must be a non-empty string")
    return value


def _chat_kind(chat_id: str) -> str:
    return chat_id.rpartition("@")[2]


def _target(body: dict[str, Any]) -> tuple[str, str]:
    """A send's session (WAHA's default: `default`) and chat, as given."""
    name = _string(body, "session", required=False) or "default"
    raw_chat = _string(body, "chatId")
    assert raw_chat is not None
    return name, raw_chat


# mime-db's first extension of each type: WAHA names a downloaded file `<message id>.<ext>`
# with `mime-types.extension()` (`audio/ogg` -> `oga`, as in message-media-voice.json). Other
# types: Python's guess, else `bin`.
_EXTENSIONS = {
    "image/jpeg": "jpeg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "video/mp4": "mp4",
    "video/3gpp": "3gp",
    "audio/ogg": "oga",
    "audio/mpeg": "mpga",
    "audio/mp4": "m4a",
    "application/pdf": "pdf",
    "text/plain": "txt",
}
# What WhatsApp records a voice note as (ENGINEERING.md, "Media").
VOICE_MIMETYPE = "audio/ogg; codecs=opus"


def _main_type(mimetype: str) -> str:
    return mimetype.split(";")[0].strip().lower()


def extension_of(mimetype: str) -> str:
    main = _main_type(mimetype)
    found = _EXTENSIONS.get(main) or mimetypes.guess_extension(main) or ".bin"
    return found.lstrip(".")


def kind_of(mimetype: str) -> str:
    """The kind a file of this type is sent as when the control API does not say: a webp is
    a sticker, Opus in Ogg a voice note (what WhatsApp records), a type it cannot show a
    document."""
    main = _main_type(mimetype)
    if main == "image/webp":
        return "sticker"
    if main == "audio/ogg" and "opus" in mimetype.lower():
        return "voice"
    for prefix in ("image", "video", "audio"):
        if main.startswith(prefix + "/"):
            return prefix
    return "document"


@dataclass(frozen=True, slots=True)
class InboundFile:
    kind: str
    data: bytes
    mimetype: str
    filename: str | None


def inbound_file(spec: object, max_bytes: int) -> InboundFile:
    """The control API's `media: {data: <base64>, mimetype?, filename?, kind?}`, checked."""
    if not isinstance(spec, dict):
        raise ControlError("media must be an object {data, mimetype, filename?, kind?}")
    data, kind = spec.get("data"), spec.get("kind")
    mimetype, filename = spec.get("mimetype"), spec.get("filename")
    if not isinstance(data, str) or not data:
        raise ControlError("media.data must be the file's bytes in base64")
    if kind is not None and kind not in MEDIA_KINDS:
        raise ControlError(f"media.kind must be one of {', '.join(MEDIA_KINDS)}")
    if filename is not None and not (isinstance(filename, str) and filename.strip()):
        raise ControlError("media.filename must be a non-empty string")
    if mimetype is None:
        guessed = mimetypes.guess_type(filename)[0] if filename else None
        mimetype = VOICE_MIMETYPE if kind == "voice" else guessed
        if mimetype is None:
            raise ControlError("give media.mimetype (it cannot be told from the file name)")
    if not isinstance(mimetype, str) or "/" not in mimetype:
        raise ControlError("media.mimetype must be a type like image/jpeg")
    # Checked before decoding: a body far too big is refused without holding its bytes twice.
    if len(data) > 4 * ((max_bytes + 2) // 3) + 4:
        raise ControlError(f"media is larger than {max_bytes} bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ControlError("media.data is not valid base64") from None
    if not raw:
        raise ControlError("media.data is empty")
    if len(raw) > max_bytes:
        raise ControlError(f"media is larger than {max_bytes} bytes")
    return InboundFile(kind or kind_of(mimetype), raw, mimetype, filename)


def inbound_location(spec: object) -> tuple[float, float, str]:
    """The control API's `location: {latitude, longitude, name?}`, checked."""
    if not isinstance(spec, dict):
        raise ControlError("location must be an object {latitude, longitude, name?}")
    coordinates: list[float] = []
    for key, limit in (("latitude", 90), ("longitude", 180)):
        value = spec.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or abs(value) > limit:
            raise ControlError("location needs latitude (±90) and longitude (±180) as numbers")
        coordinates.append(float(value))
    name = spec.get("name") or ""
    if not isinstance(name, str):
        raise ControlError("location.name must be a string")
    return coordinates[0], coordinates[1], name


class Simulator:
    def __init__(self, config: SimConfig, store: SimStore, dispatcher: WebhookDispatcher) -> None:
        self.config = config
        self.store = store
        self.dispatcher = dispatcher
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        name, status = self.config.session, self.config.initial_status
        if self.config.announce and status == "WORKING":
            # What WAHA emits when it starts a session that is already paired.
            self.store.sessions[name] = SessionState(name, "STOPPED", None)
            self.store.sessions[name].set_status("STOPPED", now_ms())
            await self.set_status(name, "STARTING")
            await self.set_status(name, "WORKING")
        else:
            session = SessionState(name, status, self.me_for(status, None))
            session.set_status(status, now_ms())
            self.store.sessions[name] = session

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def reset(self) -> None:
        """Forgets chats, lids, faults and webhook statistics; sessions go back to their start
        status, without events."""
        self.store.reset_chats()
        self.dispatcher.faults.clear()
        self.dispatcher.reset_stats()
        initial = self.config.initial_status
        for name, session in list(self.store.sessions.items()):
            if name != self.config.session:
                del self.store.sessions[name]
                continue
            session.held_inbound.clear()
            if session.status != initial:
                session.me = self.me_for(initial, session.me)
                session.set_status(initial, now_ms())

    # --- sessions --------------------------------------------------------------------------
    def session(self, name: str) -> SessionState:
        session = self.store.sessions.get(name)
        if session is None:
            raise SessionNotFound(name)
        return session

    async def working_session(self, name: str) -> SessionState:
        session = self.session(name)
        if session.status != "WORKING":
            try:
                await asyncio.wait_for(session.working.wait(), self.config.session_wait)
            except TimeoutError:
                raise SessionNotWorking(name, session.status) from None
        return session

    def me_for(self, status: str, current: dict[str, Any] | None) -> dict[str, Any] | None:
        # GOWS learns `me` when it connects and forgets it only when the session stops.
        if status == "WORKING":
            return me_info(self.config)
        if status == "STOPPED":
            return None
        return current

    async def set_status(self, name: str, status: str) -> SessionState:
        if status not in SESSION_STATUSES:
            raise ControlError(f"status must be one of {SESSION_STATUSES}")
        session = self.store.sessions.get(name)
        if session is None:
            session = self.store.sessions[name] = SessionState(name, "STOPPED", None)
        at = now_ms()
        session.me = self.me_for(status, session.me)
        session.set_status(status, at)
        await self.emit(
            session, "session.status", session_status_payload(status, session.history), at
        )
        if status == "WORKING" and session.held_inbound:
            held, session.held_inbound = session.held_inbound, []
            for payload in held:
                await self._emit_message(session, payload)
        return session

    async def start_session(self, name: str) -> dict[str, Any]:
        session = self.session(name)
        if session.status == "STOPPED":
            await self.set_status(name, "STARTING")
            self._spawn(self._finish_start(name))
        return {"name": name, "status": session.status, "config": None}

    async def _finish_start(self, name: str) -> None:
        await asyncio.sleep(0.05)
        if self.store.sessions[name].status == "STARTING":
            await self.set_status(name, "WORKING")

    async def stop_session(self, name: str) -> dict[str, Any]:
        session = self.session(name)
        if session.status != "STOPPED":
            await self.set_status(name, "STOPPED")
        return {"name": name, "status": session.status, "config": None}

    # --- events ----------------------------------------------------------------------------
    async def emit(
        self, session: SessionState, event: str, payload: dict[str, Any], at: int | None = None
    ) -> list[Delivery]:
        if not self.dispatcher.subscribed(event):
            return []
        document = envelope(
            self.config,
            event=event,
            session=session.name,
            me=session.me,
            payload=payload,
            timestamp_ms=now_ms() if at is None else at,
        )
        return await self.dispatcher.emit(document)

    async def _emit_message(self, session: SessionState, payload: dict[str, Any]) -> list[Delivery]:
        deliveries = await self.emit(session, "message", payload)
        deliveries += await self.emit(session, "message.any", payload)
        return deliveries

    # --- the WAHA API ----------------------------------------------------------------------
    async def send_text(self, body: dict[str, Any]) -> dict[str, Any]:
        name, raw_chat = _target(body)
        text = body.get("text")
        if not isinstance(text, str):
            raise BadRequest("text must be a string")
        reply_to = _string(body, "reply_to", required=False)
        serialized = await self._send(name, raw_chat, text, reply_to)
        return send_text_response(serialized, text)

    async def send_file(self, body: dict[str, Any]) -> dict[str, Any]:
        """sendImage / sendFile / sendVoice: WAHA Core refuses them (422); Plus keeps the
        message (its caption as the text) and echoes and acks it as sendText does."""
        if self.config.tier.upper() != "PLUS":
            raise AvailableInPlusVersion(self.config.engine)
        name, raw_chat = _target(body)
        file = body.get("file")
        if not isinstance(file, dict) or not (file.get("data") or file.get("url")):
            raise BadRequest("file must have data or url")
        caption = body.get("caption") or ""
        if not isinstance(caption, str):
            raise BadRequest("caption must be a string")
        serialized = await self._send(name, raw_chat, caption, None)
        return {"id": serialized, "_data": {"imageMessage": {"caption": caption}}}

    async def _send(self, name: str, raw_chat: str, text: str, reply_to: str | None) -> str:
        """Every send once its own fields are checked: waits for WORKING, keeps the message
        with ack SERVER, then (in the background) echoes and acks it. Returns its id."""
        session = await self.working_session(name)
        chat_id = normalize_chat(raw_chat)
        at = now_ms()
        serialized = message_id(True, chat_id, outgoing_wa_id())
        self.store.add_message(
            chat_id=chat_id,
            message_id=serialized,
            session=name,
            direction="out",
            text=text,
            timestamp=at // 1000,
            ack=ACK_SERVER,
            reply_to=reply_to,
        )
        session.last_activity = at
        self._spawn(self._after_send(session, chat_id, serialized, text, at // 1000, reply_to))
        return serialized

    def _quote(self, reply_to: str | None, author: str) -> dict[str, Any] | None:
        """The `replyTo` of a message quoting `reply_to` (written by `author`); None when it
        quotes nothing."""
        if not reply_to:
            return None
        original = self.store.message(reply_to)
        return reply_to_payload(reply_to, author, original.text if original else None)

    async def _after_send(
        self,
        session: SessionState,
        chat_id: str,
        serialized: str,
        text: str,
        timestamp: int,
        reply_to: str | None,
    ) -> None:
        echo = message_payload(
            message_id=serialized,
            chat_id=chat_id,
            body=text,
            timestamp_s=timestamp,
            from_me=True,
            reply_to=self._quote(reply_to, chat_id),
        )
        await self.emit(session, "message.any", echo)
        for ack, delay in ((ACK_DEVICE, self.config.ack_delay), (ACK_READ, self.config.read_delay)):
            if ack == ACK_READ and delay <= 0:
                return
            await asyncio.sleep(delay)
            self.store.set_ack(serialized, ack)
            await self.emit(
                session, "message.ack", ack_payload(message_id=serialized, chat_id=chat_id, ack=ack)
            )

    async def send_seen(self, body: dict[str, Any]) -> dict[str, Any] | None:
        name = _string(body, "session", required=False) or "default"
        raw_chat = _string(body, "chatId")
        assert raw_chat is not None
        ids: list[str] = []
        if isinstance(body.get("messageIds"), list):
            ids = [m for m in body["messageIds"] if isinstance(m, str)]
        if isinstance(body.get("messageId"), str):
            ids.append(body["messageId"])
        session = await self.working_session(name)
        session.last_activity = now_ms()
        read = self.store.mark_read(normalize_chat(raw_chat), ids or None)
        # WAHA: with message ids it answers nothing; without, it reads the chat's recent
        # messages and answers {"ids": [...]}.
        return None if ids else {"ids": read}

    async def typing(self, body: dict[str, Any], on: bool) -> dict[str, Any]:
        name = _string(body, "session", required=False) or "default"
        raw_chat = _string(body, "chatId")
        assert raw_chat is not None
        session = await self.working_session(name)
        session.last_activity = now_ms()
        self.store.set_typing(normalize_chat(raw_chat), on)
        return {"result": True}

    async def lid_to_phone(self, name: str, lid: str) -> dict[str, Any]:
        if "@" not in lid:
            lid += "@lid"
        if not lid.endswith("@lid"):
            raise InvalidLid()
        await self.working_session(name)
        return {"lid": lid, "pn": self.store.lids.get(lid)}

    async def phone_to_lid(self, name: str, phone: str) -> dict[str, Any]:
        await self.working_session(name)
        if phone.endswith("@lid"):
            return {"lid": phone, "pn": None}
        pn = normalize_chat(phone)
        lid = next((k for k, v in self.store.lids.items() if v == pn), None)
        return {"lid": lid, "pn": pn}

    async def all_lids(self, name: str, limit: int | None, offset: int) -> list[dict[str, Any]]:
        await self.working_session(name)
        rows = [{"lid": k, "pn": v} for k, v in sorted(self.store.lids.items())]
        return rows[offset : offset + limit if limit is not None else None]

    # --- the customer's side ---------------------------------------------------------------
    async def customer_writes(self, body: dict[str, Any]) -> dict[str, Any]:
        """The control API's inbound: with `wait: true` it answers once every delivery of the
        events has finished (or `wait_timeout` seconds passed), listing them."""
        answer, deliveries = await self.inbound(body)
        if body.get("wait"):
            seconds = body.get("wait_timeout", 30)
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
                raise ControlError("wait_timeout must be a number of seconds >= 0")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(d.done.wait() for d in deliveries)), seconds
                )
            answer["deliveries"] = [d.as_dict() for d in deliveries]
        return answer

    async def inbound(self, body: dict[str, Any]) -> tuple[dict[str, Any], list[Delivery]]:
        """A customer writes: a text, or a file (`media`, `text` its caption) or a location.
        Everything is checked before anything is kept. Returns the answer for the control API
        and the deliveries."""
        file, location = self._attachment(body)
        text = body.get("text")
        if text is None and (file or location):
            text = ""
        if not isinstance(text, str):
            raise ControlError("text must be a string")
        if text and (location or (file and file.kind not in CAPTIONED)):
            what = f"a {file.kind}" if file else "a location"
            raise ControlError(f'{what} has no caption: give text ""')
        name = body.get("session") or self.config.session
        if not isinstance(name, str):
            raise ControlError("session must be a string")
        session = self.session(name)
        sender = self._sender(body)
        wa_id = body.get("message_id") or phone_wa_id()
        if not isinstance(wa_id, str) or "_" in wa_id:
            raise ControlError("message_id must be a bare WhatsApp id (no '_')")
        serialized = message_id(False, sender, wa_id)
        timestamp = now_ms() // 1000
        reply_to = body.get("reply_to")
        # The customer quotes one of our messages: its author is us.
        author = session.me["id"] if session.me else sender
        quoted = self._quote(reply_to if isinstance(reply_to, str) else None, author)
        media: dict[str, Any] | None = None
        record: dict[str, Any] | None = None
        place: dict[str, Any] | None = None
        data: dict[str, Any] | None = None
        if file is not None:
            # WAHA has downloaded the file before it sends the event: kept first, so the URL
            # in the event answers as soon as a worker asks.
            file_name = f"{serialized}.{extension_of(file.mimetype)}"
            self.store.add_file(name, file_name, file.data, file.mimetype)
            # WhatsApp keeps the sender's file name for documents only.
            kept_name = file.filename if file.kind == "document" else None
            media = media_field(self.file_url(name, file_name), file.mimetype, kept_name)
            record = {"kind": file.kind, "size": len(file.data), **media}
            del record["error"]
            raw = raw_media_message(
                file.kind, mimetype=file.mimetype, size=len(file.data), caption=text,
                filename=file.filename, timestamp_s=timestamp,
            )  # fmt: skip
            data = gows_data(
                chat_id=sender, wa_id=wa_id, timestamp_s=timestamp, media_type=file.kind,
                message=raw,
            )  # fmt: skip
        elif location is not None:
            place = location_field(*location)
            data = gows_data(
                chat_id=sender, wa_id=wa_id, timestamp_s=timestamp, media_type="location",
                message=raw_location_message(*location),
            )  # fmt: skip
        payload = message_payload(
            message_id=serialized,
            chat_id=sender,
            body=text,
            timestamp_s=timestamp,
            from_me=False,
            reply_to=quoted,
            media=media,
            location=place,
            data=data,
        )
        stored = self.store.add_message(
            chat_id=sender,
            message_id=serialized,
            session=name,
            direction="in",
            text=text,
            timestamp=timestamp,
            ack=None,
            media=record,
            location=place,
        )
        # `seq` lets a client long-poll the chat for what comes after its own message.
        answer: dict[str, Any] = {
            "chat_id": self.store.canonical(sender),
            "message_id": serialized,
            "seq": stored.seq,
            "held": False,
        }
        if record is not None:
            answer["media"] = record
        if session.status != "WORKING":
            session.held_inbound.append(payload)
            answer["held"] = True
            return answer, []
        deliveries = await self._emit_message(session, payload)
        seen: dict[str, str] = {}
        for d in deliveries:
            seen.setdefault(d.event_id, d.event)
        answer["events"] = [{"id": i, "event": e} for i, e in seen.items()]
        return answer, deliveries

    def _attachment(
        self, body: dict[str, Any]
    ) -> tuple[InboundFile | None, tuple[float, float, str] | None]:
        media, location = body.get("media"), body.get("location")
        if media is not None and location is not None:
            raise ControlError("give media or location, not both")
        file = None if media is None else inbound_file(media, self.store.max_file_bytes)
        return file, None if location is None else inbound_location(location)

    def file_url(self, session: str, file_name: str) -> str:
        """Where WAHA says a downloaded file is: its own base URL (WAHA_BASE_URL, by default
        `http://<hostname>:<port>`) + `/api/files/<session>/<file name>`. wsm fetches the path
        from its own WAHA_URL (engine/media/fetch.py)."""
        host = self.config.host
        host = "localhost" if host in ("", "0.0.0.0", "::") else host
        host = f"[{host}]" if ":" in host else host
        path = f"/api/files/{quote(session, safe='')}/{quote(file_name, safe='@')}"
        return f"http://{host}:{self.config.port}{path}"

    def _sender(self, body: dict[str, Any]) -> str:
        phone = body.get("chat") or body.get("phone")
        lid = body.get("lid")
        if phone is not None and not (isinstance(phone, str) and phone.strip()):
            raise ControlError("chat/phone must be a non-empty string")
        if lid is not None and not (isinstance(lid, str) and lid.strip()):
            raise ControlError("lid must be a non-empty string")
        if lid:
            lid = lid if "@" in lid else lid + "@lid"
            if not lid.endswith("@lid"):
                raise ControlError("lid must end with @lid")
            if phone:
                self.register_lid(lid, phone)
            return lid
        if not phone:
            raise ControlError("give chat (or phone) or lid")
        chat_id = normalize_chat(phone)
        if _chat_kind(chat_id) not in ("c.us", "lid"):
            raise ControlError("only 1:1 chats (@c.us or @lid) are simulated")
        return chat_id

    def register_lid(self, lid: str, phone: str) -> dict[str, str]:
        lid = lid if "@" in lid else lid + "@lid"
        pn = normalize_chat(phone)
        if not lid.endswith("@lid") or _chat_kind(pn) != "c.us":
            raise ControlError("lid must end with @lid and phone must be a @c.us number")
        self.store.add_lid(lid, pn)
        return {"lid": lid, "pn": pn}
