"""A cancelled slot of today offered to a customer in line (`wsm.freed_slot`, queued by the
freed-slots pass, engine/agent/freed_slots.py), and their answer.

The offer runs under the conversation's lease like a customer's message, its reply committed
with the command's ack (fenced): a worker killed before the commit leaves the command at the
head, a zombie's commit is refused. Nothing in the payload is trusted but the booking id: the
booking is read again (still cancelled, same start, the same WhatsApp session, not this
customer's own) and its slot must still be free; the customer must still be in line. The
offer's mark, committed in the state with the reply, refuses a repeat the queue's dedupe
window no longer catches.

The answer (`answer`, from engine/turn/customer.py `waiting_message`): "1" while an offer is
pending books the slot with the booking script, the one place that decides who gets a slot:
of several customers answering, exactly one books it, the others are told it is gone and
keep their place. Anything else is an ordinary message from someone in line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from engine.agent.bookings import (
    Booking,
    BookingLimit,
    Customer,
    SlotTaken,
    booking_id_for,
)
from engine.agent.calendar import InvalidSlot
from engine.agent.freed_slots import OFFER_KEY, OFFERED_KEEP, OFFERED_KEY
from engine.agent.metrics import FREED_SLOTS
from engine.brain import Brain
from engine.menu_brain import option_number
from engine.state import State, Trigger
from engine.turn.frame import ConversationTurn
from shared.keys import CalendarKeys, split_conversation_token

if TYPE_CHECKING:
    from engine.agent.menu import SchedulingMenuBrain


async def freed_slot(turn: ConversationTurn) -> None:
    payload = turn.payload
    booking_id = str(payload.get("booking_id") or "")
    text = str(payload.get("text") or "")
    try:
        start_ms = int(payload.get("start_ms") or 0)
    except (TypeError, ValueError):
        return
    if not booking_id or not text or not start_ms or turn.state.state is not State.WAITING:
        return  # malformed, or no longer in line (left, or with a person now)
    offered = [m for m in turn.state.collected.get(OFFERED_KEY, "").split(",") if m]
    if booking_id in offered:
        return  # committed before: a repeat
    booking = Booking.from_hash(
        await turn.redis.hgetall(CalendarKeys(turn.config.prefix).booking(booking_id))
    )
    if (
        booking is None
        or booking.status != "cancelled"
        or booking.start_ms != start_ms
        or start_ms <= turn.now
        or booking.customer == turn.conversation.token
        or split_conversation_token(booking.customer)[0] != turn.conversation.session
    ):
        return  # booked again, over, or not a slot of this line
    day = CalendarKeys(turn.config.prefix, booking.business).day(booking.day)
    if any(await turn.redis.hmget(day, list(booking.steps))):
        return  # someone took it meanwhile
    offer = {"booking": booking.id, "service": booking.service_id, "start": booking.start}
    turn.reply(text)
    turn.state = turn.state.with_collected(
        {
            OFFER_KEY: orjson.dumps(offer).decode(),
            OFFERED_KEY: ",".join([*offered, booking_id][-OFFERED_KEEP:]),
        }
    )
    turn.after.append(_count("sent"))


def _count(event: str) -> Any:
    async def count() -> None:
        # After the commit: counted once per committed turn, not per attempt.
        FREED_SLOTS.labels(event).inc()

    return count


def _menu(brain: Brain, session: str) -> SchedulingMenuBrain | None:
    """The session's scheduling menu: its agenda holds the worker's own booking store (the
    business's slots, limits and webhook). None with the engine's plain menu (no bookings)."""
    # Imported here: the menu's tools import engine.turn.customer, which imports this module.
    from engine.agent.menu import SchedulingMenuBrain

    brain_for = getattr(brain, "brain_for", None)  # several businesses (engine/businesses.py)
    if callable(brain_for):
        brain = brain_for(session)
    menu = getattr(brain, "menu", brain)  # the agent's FallbackBrain keeps its menu
    return menu if isinstance(menu, SchedulingMenuBrain) else None


def _offer(raw: str) -> dict[str, str] | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(value.get(k), str) and value.get(k) for k in ("booking", "service", "start")
    ):
        return None
    return value


async def answer(turn: ConversationTurn, text: str) -> bool:
    """A waiting customer's "1" to a pending offer: book it. -> False when this message is not
    that answer (then it is handled as any message in line)."""
    raw = turn.state.collected.get(OFFER_KEY, "")
    if not raw or option_number(text) != 1:
        return False
    menu = _menu(turn.tools.brain, turn.conversation.session)
    offer = _offer(raw)
    if menu is None or offer is None:
        return False
    agenda, texts = menu.agenda, menu.agent_texts
    # Answered, whatever the outcome: a second "1" is an ordinary message again.
    turn.state = turn.state.with_collected({OFFER_KEY: ""})
    customer = Customer(
        token=turn.conversation.token,
        name=turn.state.collected.get("name", ""),
        phone=turn.state.phone,
    )
    try:
        service = agenda.calendar.service(offer["service"])
        if service is None:
            raise InvalidSlot(offer["service"])
        slot = agenda.calendar.slot(service, offer["start"], agenda.now())
        # Stable per customer and freed slot: this message handled again books once.
        booking_id = booking_id_for(customer.token, f"freed:{offer['booking']}", slot.id)
        await agenda.store.book(customer, slot, booking_id=booking_id)
    except (SlotTaken, InvalidSlot):
        # Someone else answered first, or it is too late to book it: still in line.
        turn.reply(texts.render("freed_slot_lost"))
        turn.after.append(_count("lost"))
        return True
    except BookingLimit as exc:
        turn.reply(texts.render("limit_reached", count=exc.active))
        return True
    # They booked: out of the line. They were waiting for this day's appointment, which they
    # now hold; kept in line, their place would still take a person's time (and an agent's
    # capacity) for a need already met. The offer said so, and asking for a person again
    # brings them back.
    await turn.leave_line()
    turn.state = turn.state.moved(Trigger.LEFT_LINE)
    turn.reply(texts.render("freed_slot_booked", service=service.name, when=agenda.label(slot)))
    turn.after.append(_count("taken"))
    return True
