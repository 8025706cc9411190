"""Which step handles which event: one entry per event name. A feature that handles a new
event (media, business hours, teams) adds its step module and a line here.

LIGHT_STEPS come first: a light step runs without the conversation's state and answers True
when the event needed nothing else (its writes, if any, are committed with the message's ack,
in the conversation's order like any turn); False sends the event on to its full step in
STEPS. Delivery statuses, edits, revokes and reactions never move the state; a `message.any`
twin or the echo of our own reply changes nothing. Those are most of WAHA's events (each
customer message brings a twin, our reply's echo and two acks), so they skip the state read,
the brain and the turn's follow-ups. (Most acks and echoes never get here: the gateway settles
one whose message is in the history already, shared/enqueue.py; the ones queued came before
their message was recorded.)"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from engine import commands
from engine.turn import business, customer, media_send, receipts
from engine.turn import commands as command_steps
from engine.turn import freed_slot as freed_slot_step
from engine.turn import reminder as reminder_step
from engine.turn.frame import ConversationTurn, Prefetch

Step = Callable[[ConversationTurn], Awaitable[None]]
LightStep = Callable[[ConversationTurn], Awaitable[bool]]


def always(step: Step) -> LightStep:
    """A step that never needs the state, as a light step."""

    async def light(turn: ConversationTurn) -> bool:
        await step(turn)
        return True

    return light


# Reads a step needs first, made in the state's round trip (frame.py, ConversationTurn.run).
PREFETCH: dict[str, Prefetch] = {"message": customer.prefetch}

LIGHT_STEPS: dict[str, LightStep] = {
    "message.any": business.any_message_light,
    "message.ack": always(receipts.ack),
    "message.ack.group": always(receipts.ack),
    "message.edited": always(receipts.edited),
    "message.revoked": always(receipts.revoked),
    "message.reaction": always(receipts.reaction),
}

STEPS: dict[str, Step] = {
    # WAHA's events (the gateway queues them as WAHA sent them)
    "message": customer.message,
    "message.any": business.any_message,
    "message.ack": receipts.ack,
    "message.ack.group": receipts.ack,
    "message.edited": receipts.edited,
    "message.revoked": receipts.revoked,
    "message.reaction": receipts.reaction,
    # the product's own commands (engine/commands.py)
    commands.AGENT_MESSAGE: command_steps.agent_message,
    commands.CLOSE: command_steps.close_command,
    commands.HANDBACK: command_steps.handback,
    commands.ASSIGNED: command_steps.assigned,
    commands.LINE: command_steps.line_notice,
    commands.TIMEOUT: command_steps.timeout,
    commands.AGENT_MEDIA: media_send.agent_media,
    commands.REMINDER: reminder_step.reminder,
    commands.FREED_SLOT: freed_slot_step.freed_slot,
}
