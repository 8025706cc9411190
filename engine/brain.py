"""The brain seam: what to answer is decided by a brain, given the conversation's state, its
recent history and the new message. It returns replies, how its own step moves, what it
collected, and requests for the engine (a person, closing). It never writes to Redis or sends
anything itself: the engine (engine/turn/customer.py) turns a Decision into writes committed
with the message's ack, so a brain's answer is sent once even when the message is handled
twice.

Brains: the engine's menu (engine/menu_brain.py); the AI agent's Groq brain
(engine/agent/groq_brain.py), which falls back to the scheduling menu (engine/agent/menu.py)
when the model is unavailable (engine/agent/fallback.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from engine.history import HistoryEntry
from engine.identity import Conversation
from engine.state import ConversationState


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """The customer's new message, as the brain sees it."""

    # What the brain reads: the text; for a voice note or audio with a transcript,
    # "[áudio] <transcript>"; for an image, video or document, its caption; else "".
    text: str
    waha_id: str
    at: int  # epoch ms
    # text | image | video | audio | voice | document | sticker | location | contact
    kind: str = "text"
    caption: str = ""  # the sender's caption of an image, video or document
    transcript: str | None = None  # a voice note's or audio's, when it was transcribed
    media_available: bool = False  # its file was stored (an attendant can open it)


@dataclass(frozen=True, slots=True)
class Turn:
    conversation: Conversation
    state: ConversationState
    history: Sequence[HistoryEntry]  # oldest first, without the new message
    message: InboundMessage


@dataclass(frozen=True, slots=True)
class HandOff:
    """Put the customer in the waiting line for a person."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Close:
    """End the conversation (the engine sends the goodbye)."""

    reason: str = ""


Request = HandOff | Close


@dataclass(frozen=True, slots=True)
class Decision:
    replies: Sequence[str] = ()
    # The brain's own position inside the bot state; None keeps the current one.
    step: str | None = None
    # Collected data to merge into the conversation's (name, chosen service, ...).
    collected: Mapping[str, str] = field(default_factory=dict)
    requests: Sequence[Request] = ()

    @property
    def hands_off(self) -> bool:
        return any(isinstance(r, HandOff) for r in self.requests)

    @property
    def closes(self) -> bool:
        return any(isinstance(r, Close) for r in self.requests)


class Brain(Protocol):
    async def decide(self, turn: Turn) -> Decision: ...


def reads_history(brain: Brain, conversation: Conversation) -> bool:
    """Whether `brain` reads `Turn.history` for this conversation. A brain that never does (the
    menus) says so with a `reads_history(conversation)` method, and the turn neither reads nor
    decodes the history for it: that was a fifth of a worker's CPU per customer message in the
    menu's load test (docs/benchmarks.md, issue 19). A brain that does not say is given it."""
    says = getattr(brain, "reads_history", None)
    return True if says is None else bool(says(conversation))
