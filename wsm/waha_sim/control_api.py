"""The simulator's own API under `/_sim/`: the customer's side and the test bench.

Not part of WAHA and not behind WAHA's X-Api-Key (a development tool, listening on
127.0.0.1 unless told otherwise).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from wsm.waha_sim.errors import ControlError
from wsm.waha_sim.ids import normalize_chat
from wsm.waha_sim.web import JSON, json_object, sim_of

router = APIRouter(prefix="/_sim", tags=["simulator control"])

MAX_WAIT_SECONDS = 60.0


@router.get("/health")
async def health() -> JSON:
    return JSON({"status": "ok"})


@router.post("/inbound")
async def inbound(request: Request) -> JSON:
    """A customer writes: `{chat|phone|lid, text, session?, message_id?, reply_to?, wait?}`,
    or sends a file, `media: {data: <base64>, mimetype?, filename?, kind?}` with `text` its
    caption, or a location, `location: {latitude, longitude, name?}`. With `wait: true` the
    answer comes once every delivery of the events has finished."""
    body = await json_object(request, control=True)
    return JSON(await sim_of(request).customer_writes(body))


@router.get("/chats")
async def chats(request: Request) -> JSON:
    store = sim_of(request).store
    return JSON(
        [
            {
                "chat_id": chat.chat_id,
                "messages": len(chat.messages),
                "last_seq": chat.messages[-1].seq if chat.messages else 0,
                "typing": chat.typing,
            }
            for chat in store.chats.values()
        ]
    )


@router.get("/chats/{chat_id}/messages")
async def chat_messages(request: Request, chat_id: str, after: int = 0, wait: float = 0) -> JSON:
    """What the chat holds after message number `after`. With `wait` (seconds) and nothing
    new, waits for the next change (a message, an ack, typing on or off) before answering."""
    store = sim_of(request).store
    chat = store.chat(normalize_chat(chat_id))
    if wait > 0 and not chat.after(after):
        await chat.wait_changed(min(_seconds(wait), MAX_WAIT_SECONDS))
        chat = store.chat(normalize_chat(chat_id))
    return JSON(chat.as_dict(after))


@router.post("/reset")
async def reset(request: Request) -> JSON:
    """Forgets chats, lids, faults and webhook statistics; sessions go back to their start
    status (without events)."""
    sim_of(request).reset()
    return JSON({"reset": True})


@router.get("/sessions")
async def sessions(request: Request) -> JSON:
    return JSON([s.info() for s in sim_of(request).store.sessions.values()])


@router.post("/sessions/{session}/status")
async def set_session_status(request: Request, session: str) -> JSON:
    """`{status}`: STOPPED, STARTING, SCAN_QR_CODE, WORKING or FAILED; emits session.status.
    Creates the session when it does not exist."""
    body = await json_object(request, control=True)
    status = body.get("status")
    if not isinstance(status, str):
        raise ControlError("status must be a string")
    state = await sim_of(request).set_status(session, status)
    return JSON(state.info())


@router.get("/lids")
async def lids(request: Request) -> JSON:
    return JSON([{"lid": k, "pn": v} for k, v in sim_of(request).store.lids.items()])


@router.post("/lids")
async def add_lid(request: Request) -> JSON:
    body = await json_object(request, control=True)
    lid, phone = body.get("lid"), body.get("phone") or body.get("pn")
    if not isinstance(lid, str) or not isinstance(phone, str):
        raise ControlError("give lid and phone as strings")
    return JSON(sim_of(request).register_lid(lid, phone))


@router.get("/faults")
async def faults(request: Request) -> JSON:
    return JSON(sim_of(request).dispatcher.faults.describe())


@router.post("/faults")
async def set_faults(request: Request) -> JSON:
    """Any of `latency {ms, jitter_ms?, paths?}`, `fail_next {count, status, paths?,
    retry_after?}`, `duplicate {count, mode, events?}`, `reorder {count, events?, hold_ms?}`;
    null clears one."""
    body = await json_object(request, control=True)
    state = sim_of(request).dispatcher.faults
    try:
        state.update(body)
    except ValueError as exc:
        raise ControlError(str(exc)) from None
    return JSON(state.describe())


@router.delete("/faults")
async def clear_faults(request: Request) -> JSON:
    state = sim_of(request).dispatcher.faults
    state.clear()
    return JSON(state.describe())


@router.get("/webhooks")
async def webhook_stats(request: Request) -> JSON:
    return JSON(sim_of(request).dispatcher.stats())


@router.get("/webhooks/deliveries")
async def deliveries(request: Request, limit: int = 100, event: str | None = None) -> JSON:
    records = [
        d.as_dict() for d in sim_of(request).dispatcher.records if event is None or d.event == event
    ]
    return JSON(records[-limit:] if limit > 0 else [])


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ControlError("a wait must be a number of seconds >= 0")
    return float(value)
