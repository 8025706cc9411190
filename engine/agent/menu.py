"""The scheduling menu (`SchedulingMenuBrain`): the engine's menu brain (engine/menu_brain.py,
`MenuBrain`) extended with numbered options that reach the same tools as the AI agent (book,
see my appointments, cancel) before its last option, "falar com um atendente".

It is what the fallback brain answers with when the model is unavailable, and the whole bot
when no GROQ_API_KEY is set. It shares everything that matters with the agent: the agenda
(engine/agent/agenda.py: same rules, same atomic bookings) and the pending confirmation
(engine/agent/confirmation.py), so a change the model proposed can be confirmed here after a
fallback, and the customer never starts over.

Steps of its own (ConversationState.step), besides the engine menu's:

    sched_service  which service to book (numbered)
    sched_slot     which free time (numbered; the offer is kept in collected `menu_offer`)
    sched_cancel   which appointment to cancel (numbered)
    sched_confirm  "1. Sim / 2. Não" for the pending change (collected `pending_action`)

Writing "menu" (or "voltar") in any of them goes back to the menu.

A booking's reminder (engine/agent/reminders.py) leaves the conversation on `sched_reminder`
with the booking in collected `reminder_booking`: "1" confirms it, "2" offers its service's
free times (sched_slot, a reschedule once confirmed), "3" asks to confirm its cancel
(sched_confirm). The numbers are the menu's even when the model is up; words go to the agent
(here, without a model: a yes, "remarcar", "cancelar"). A conversation closed since the
reminder still reads a first "1", "2" or "3" as its answer.

Media, in every step (engine/menu_brain.py `media_answer`): a voice note without a transcript
gets the "cannot listen to audio yet" answer, other media the "we got it" one, both with the
numbered options (a person last); the flow under way (an offer, a pending confirmation) is
dropped, as "menu" drops it. A transcribed voice note is read as its transcript's words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import orjson

from engine.agent.agenda import Agenda, Proposal, UnknownService
from engine.agent.bookings import (
    Booking,
    BookingError,
    BookingLimit,
    BookingNotFound,
    Change,
    SlotTaken,
)
from engine.agent.calendar import InvalidSlot, Service
from engine.agent.confirmation import PENDING_KEY, PendingAction, confirms, refuses
from engine.agent.reminders import REMINDER_KEY, STEP_REMINDER
from engine.agent.texts import AgentTexts
from engine.agent.tools import ToolSession
from engine.brain import Decision, HandOff, Turn
from engine.menu_brain import (
    PERSON_WORDS,
    STEP_ASK_NAME,
    STEP_CHOOSE_SERVICE,
    STEP_MENU,
    MenuBrain,
    MenuOption,
    goes_back,
    heard,
    option_number,
)
from engine.texts import Texts
from shared.text import fold

STEP_SERVICE = "sched_service"
STEP_SLOT = "sched_slot"
STEP_CANCEL = "sched_cancel"
STEP_CONFIRM = "sched_confirm"
OWN_STEPS = frozenset({STEP_SERVICE, STEP_SLOT, STEP_CANCEL, STEP_CONFIRM})
MENU_STEPS = frozenset({"", STEP_ASK_NAME, STEP_MENU, STEP_CHOOSE_SERVICE}) | OWN_STEPS
OFFER_KEY = "menu_offer"
SLOTS_OFFERED = 8

_EMPTY_NAME = re.compile(r",\s*\?")
_CLEARED = {OFFER_KEY: "", PENDING_KEY: ""}
# What a change can be refused with; each has its answer in `_refused`.
_REFUSALS = (BookingError, InvalidSlot, UnknownService)


class SchedulingMenuBrain(MenuBrain):
    def __init__(
        self,
        texts: Texts,
        agent_texts: AgentTexts,
        agenda: Agenda,
        *,
        business: str,
        services: Sequence[str],
    ) -> None:
        self.agent_texts = agent_texts
        self.agenda = agenda
        super().__init__(
            texts,
            business=business,
            services=services,
            extra_options=[
                MenuOption(agent_texts.render("option_book"), self._book),
                MenuOption(agent_texts.render("option_my_bookings"), self._my_bookings),
                MenuOption(agent_texts.render("option_cancel"), self._cancel),
            ],
        )
        # The engine's fixed hours text gives way to the calendar's real hours.
        self.options = [
            MenuOption("option_hours", self._calendar_hours, label_is_text_key=True)
            if option.label == "option_hours"
            else option
            for option in self.options
        ]

    # --- the seam --------------------------------------------------------------------------
    async def decide(self, turn: Turn) -> Decision:
        turn = heard(turn)
        answered = await self.reminder_answer(turn)
        if answered is not None:
            return answered
        step = turn.state.step
        if step not in MENU_STEPS:
            return await self.resume(turn)  # the conversation was with the AI agent
        if step not in OWN_STEPS:
            return await super().decide(turn)
        media = await self.media_answer(turn)
        if media is not None:
            return media
        text = turn.message.text.strip()
        if PERSON_WORDS.search(text):
            return Decision(
                step=STEP_MENU,
                collected=_CLEARED,
                requests=[HandOff("customer asked for a person")],
            )
        if goes_back(text):
            return self._to_menu(turn, collected=_CLEARED)
        if step == STEP_SERVICE:
            return await self._service_step(turn, text)
        if step == STEP_SLOT:
            return await self._slot_step(turn, text)
        if step == STEP_CANCEL:
            return await self._cancel_step(turn, text)
        pending = PendingAction.decode(turn.state.collected.get(PENDING_KEY))
        if pending is None:
            return self._to_menu(turn, collected=_CLEARED)
        return await self._confirm_step(turn, pending)

    def owns(self, turn: Turn) -> bool:
        """Whether this message belongs to a numbered flow under way (the menu answers it even
        when the model is up: a "2" means the second option shown, not a question)."""
        step = turn.state.step
        if self.reminder_number(heard(turn)) is not None:
            return True  # the answer to a booking's reminder
        if step in OWN_STEPS or step in (STEP_ASK_NAME, STEP_CHOOSE_SERVICE):
            return True
        return step == STEP_MENU and self._option_for(heard(turn).message.text) is not None

    async def media_answer(self, turn: Turn) -> Decision | None:
        """The engine menu's answer to media, dropping the flow under way (an offer, a
        pending confirmation): the options it shows are the menu's."""
        decision = await super().media_answer(turn)
        if decision is None:
            return None
        return replace(decision, collected={**decision.collected, **_CLEARED})

    async def resume(self, turn: Turn, failed: ToolSession | None = None) -> Decision:
        """Answer a message the AI agent could not (or a conversation it was having): tell
        what its tools already did, carry a pending confirmation on, else act on an option
        number, else show the menu."""
        turn = heard(turn)
        told = [self.change_text(change) for change in failed.changes] if failed else []
        if failed is not None:
            pending = failed.pending
            proposed_now = pending is not None and pending.proposed_in == failed.message_id
        else:
            pending = PendingAction.decode(turn.state.collected.get(PENDING_KEY))
            proposed_now = False
        if not told and not proposed_now:
            # Audio nobody could hear, an image, a document: answered as such, never with a
            # pending question the customer cannot have answered.
            media = await self.media_answer(turn)
            if media is not None:
                return media
        updates = failed.collected() if failed else {}
        if pending is not None:
            if proposed_now:
                return await self._ask(turn, pending, prefix=told, updates=updates)
            return await self._confirm_step(turn, pending, prefix=told)
        if told:
            return self._to_menu(turn, prefix=told, collected={**updates, OFFER_KEY: ""})
        option = self._option_for(turn.message.text)
        if option is not None:
            return await option.action(turn)
        if not turn.state.collected.get("name"):
            state = replace(turn.state, step="")
            return await super().decide(replace(turn, state=state))
        return self._to_menu(turn, collected={**updates, OFFER_KEY: ""})

    # --- words ----------------------------------------------------------------------------
    def _menu_text(self, turn: Turn) -> str:
        name = turn.state.collected.get("name", "")
        text = self.menu(name)
        return text if name else _EMPTY_NAME.sub("?", text, count=1)

    def _to_menu(
        self, turn: Turn, *, prefix: Sequence[str] = (), collected: dict[str, str] | None = None
    ) -> Decision:
        return Decision(
            replies=[*prefix, self._menu_text(turn)], step=STEP_MENU, collected=collected or {}
        )

    def change_text(self, change: Change) -> str:
        key = {
            "booking.booked": "booked",
            "booking.rescheduled": "rescheduled",
            "booking.cancelled": "cancelled",
        }[change.event]
        booking = change.booking
        return self.agent_texts.render(
            key, service=booking.service_name, when=self.agenda.booking_label(booking)
        )

    def _question(self, proposal: Proposal) -> str:
        kind = proposal.action.kind
        if kind == "book":
            return self.agent_texts.render(
                "confirm_book", service=proposal.service, when=proposal.when
            )
        if kind == "cancel":
            return self.agent_texts.render(
                "confirm_cancel", service=proposal.service, when=proposal.when
            )
        return self.agent_texts.render(
            "confirm_reschedule", service=proposal.service, old=proposal.old, when=proposal.when
        )

    # --- options --------------------------------------------------------------------------
    async def _calendar_hours(self, turn: Turn) -> Decision:
        hours = self.agenda.calendar.hours_text(self.agent_texts.language)
        return self._to_menu(turn, prefix=[self.agent_texts.render("hours", hours=hours)])

    async def _book(self, turn: Turn) -> Decision:
        services = self.agenda.calendar.services
        if len(services) == 1:
            return await self._offer_slots(turn, services[0])
        listing = self.agent_texts.numbered([s.name for s in services])
        return Decision(
            replies=[self.agent_texts.render("choose_service", services=listing)],
            step=STEP_SERVICE,
            collected=_CLEARED,
        )

    async def _my_bookings(self, turn: Turn) -> Decision:
        mine = await self.agenda.mine(Agenda.customer(turn))
        if not mine:
            return self._to_menu(turn, prefix=[self.agent_texts.render("no_bookings")])
        lines = "\n".join(
            self.agent_texts.render(
                "booking_line", service=b.service_name, when=self.agenda.booking_label(b)
            )
            for b in mine
        )
        return self._to_menu(turn, prefix=[self.agent_texts.render("my_bookings", bookings=lines)])

    async def _cancel(self, turn: Turn) -> Decision:
        mine = await self.agenda.mine(Agenda.customer(turn))
        if not mine:
            return self._to_menu(turn, prefix=[self.agent_texts.render("no_bookings")])
        listing = self.agent_texts.numbered(
            [f"{b.service_name}: {self.agenda.booking_label(b)}" for b in mine]
        )
        return Decision(
            replies=[self.agent_texts.render("cancel_pick", bookings=listing)],
            step=STEP_CANCEL,
            collected={OFFER_KEY: orjson.dumps({"bookings": [b.id for b in mine]}).decode()},
        )

    # --- steps ----------------------------------------------------------------------------
    def _offer(self, turn: Turn) -> dict[str, Any]:
        raw = turn.state.collected.get(OFFER_KEY) or "{}"
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}

    def _invalid(self, turn: Turn, step: str) -> Decision:
        return Decision(replies=[self.agent_texts.render("invalid_choice")], step=step)

    async def _service_step(self, turn: Turn, text: str) -> Decision:
        services = self.agenda.calendar.services
        n = option_number(text)
        if n is None or not 1 <= n <= len(services):
            return self._invalid(turn, STEP_SERVICE)
        return await self._offer_slots(turn, services[n - 1])

    async def _offer_slots(
        self,
        turn: Turn,
        service: Service,
        prefix: Sequence[str] = (),
        *,
        moving: Booking | None = None,  # the times are offered to move this booking
    ) -> Decision:
        slots = await self.agenda.free_slots(service, limit=SLOTS_OFFERED, moving=moving)
        if not slots:
            none = self.agent_texts.render(
                "no_slots", service=service.name, days=self.agenda.calendar.days_ahead
            )
            return self._to_menu(turn, prefix=[*prefix, none], collected=_CLEARED)
        listing = self.agent_texts.numbered([self.agenda.label(s) for s in slots])
        offer = {"service": service.id, "slots": [s.id for s in slots]}
        if moving is not None:
            offer["booking"] = moving.id
        return Decision(
            replies=[
                *prefix,
                self.agent_texts.render("slots_offer", service=service.name, slots=listing),
            ],
            step=STEP_SLOT,
            collected={OFFER_KEY: orjson.dumps(offer).decode(), PENDING_KEY: ""},
        )

    async def _slot_step(self, turn: Turn, text: str) -> Decision:
        offer = self._offer(turn)
        slots = offer.get("slots") or []
        n = option_number(text)
        if n is None or not 1 <= n <= len(slots):
            return self._invalid(turn, STEP_SLOT)
        action = PendingAction("book", service=str(offer.get("service", "")), start=slots[n - 1])
        if offer.get("booking"):
            # The times were offered to move a booking (the answer "2" to its reminder).
            action = PendingAction(
                "reschedule", start=slots[n - 1], booking_id=str(offer["booking"])
            )
        return await self._ask(turn, action)

    async def _cancel_step(self, turn: Turn, text: str) -> Decision:
        bookings = self._offer(turn).get("bookings") or []
        n = option_number(text)
        if n is None or not 1 <= n <= len(bookings):
            return self._invalid(turn, STEP_CANCEL)
        return await self._ask(turn, PendingAction("cancel", booking_id=str(bookings[n - 1])))

    async def _ask(
        self,
        turn: Turn,
        action: PendingAction,
        *,
        prefix: Sequence[str] = (),
        updates: dict[str, str] | None = None,
    ) -> Decision:
        """Check a change and ask the customer to confirm it (sched_confirm)."""
        try:
            proposal = await self.agenda.propose(action, Agenda.customer(turn))
        except _REFUSALS as exc:
            return await self._refused(turn, action, exc, prefix)
        message_id = turn.message.waha_id or f"at-{turn.message.at}"
        return Decision(
            replies=[*prefix, self._question(proposal)],
            step=STEP_CONFIRM,
            collected={
                **(updates or {}),
                OFFER_KEY: "",
                PENDING_KEY: proposal.action.proposed(message_id).encode(),
            },
        )

    async def _confirm_step(
        self, turn: Turn, pending: PendingAction, prefix: Sequence[str] = ()
    ) -> Decision:
        text = turn.message.text
        if confirms(text, pending.kind):
            message_id = turn.message.waha_id or f"at-{turn.message.at}"
            try:
                change = await self.agenda.carry_out(pending, Agenda.customer(turn), message_id)
            except _REFUSALS as exc:
                return await self._refused(turn, pending, exc, prefix)
            return self._to_menu(
                turn, prefix=[*prefix, self.change_text(change)], collected=_CLEARED
            )
        if refuses(text, pending.kind):
            not_done = self.agent_texts.render("not_confirmed")
            return self._to_menu(turn, prefix=[*prefix, not_done], collected=_CLEARED)
        # Neither yes nor no: the question still stands.
        try:
            proposal = await self.agenda.propose(pending, Agenda.customer(turn))
        except _REFUSALS as exc:
            return await self._refused(turn, pending, exc, prefix)
        return Decision(
            replies=[*prefix, self.agent_texts.render("invalid_choice"), self._question(proposal)],
            step=STEP_CONFIRM,
        )

    async def _refused(
        self,
        turn: Turn,
        action: PendingAction,
        exc: BookingError | InvalidSlot | UnknownService,
        prefix: Sequence[str],
    ) -> Decision:
        if isinstance(exc, SlotTaken | InvalidSlot) and action.kind == "book":
            taken = self.agent_texts.render("slot_taken")
            try:
                service = self.agenda.service(action.service)
            except UnknownService:
                return self._to_menu(turn, prefix=[*prefix, taken], collected=_CLEARED)
            return await self._offer_slots(turn, service, prefix=[*prefix, taken])
        if isinstance(exc, BookingLimit):
            limit = self.agent_texts.render("limit_reached", count=exc.active)
            return self._to_menu(turn, prefix=[*prefix, limit], collected=_CLEARED)
        if isinstance(exc, UnknownService):
            return self._to_menu(turn, prefix=prefix, collected=_CLEARED)
        # Taken, gone, changed meanwhile (BookingNotFound, BookingChanged, ...).
        gone = self.agent_texts.render(
            "slot_taken" if isinstance(exc, SlotTaken) else "booking_gone"
        )
        return self._to_menu(turn, prefix=[*prefix, gone], collected=_CLEARED)

    # --- the answer to a booking's reminder (engine/agent/reminders.py) ---------------------
    def reminder_number(self, turn: Turn) -> int | None:
        """1, 2 or 3 when this message answers a reminder: right after it, or as the first
        message of a conversation closed since (its step is then "")."""
        if not turn.state.collected.get(REMINDER_KEY):
            return None
        if turn.state.step not in (STEP_REMINDER, ""):
            return None
        n = option_number(turn.message.text)
        return n if n in (1, 2, 3) else None

    def _reminder_words(self, text: str) -> int | None:
        words = set(_WORDS.findall(fold(text)))
        if words & _RESCHEDULE_WORDS:
            return 2
        if words & _CANCEL_WORDS:
            return 3
        return 1 if confirms(text) else None

    async def reminder_answer(self, turn: Turn) -> Decision | None:
        """The answer to a reminder, or None when this message is not one."""
        choice = self.reminder_number(turn)
        if choice is None and turn.state.step == STEP_REMINDER:
            choice = self._reminder_words(turn.message.text)
            if choice is None:
                # Something else: answered as any message, and the reminder is left behind.
                decision = await self.resume(turn)
                return replace(decision, collected={REMINDER_KEY: "", **decision.collected})
        if choice is None:
            return None
        booking_id = turn.state.collected.get(REMINDER_KEY, "")
        cleared = {**_CLEARED, REMINDER_KEY: ""}
        customer = Agenda.customer(turn)
        try:
            booking = await self.agenda.store.own(customer, booking_id)
        except BookingNotFound:
            booking = None
        if (
            booking is None
            or booking.status != "booked"
            or booking.start_ms <= self.agenda.now_ms()
        ):
            gone = self.agent_texts.render("booking_gone")
            return self._to_menu(turn, prefix=[gone], collected=cleared)
        if choice == 1:
            try:
                await self.agenda.store.confirm(customer, booking.id)
            except BookingNotFound:
                gone = self.agent_texts.render("booking_gone")
                return self._to_menu(turn, prefix=[gone], collected=cleared)
            when = self.agenda.booking_label(booking)
            confirmed = self.agent_texts.render(
                "reminder_confirmed", service=booking.service_name, when=when
            )
            return Decision(replies=[confirmed], step=STEP_MENU, collected=cleared)
        if choice == 2:
            try:
                service = self.agenda.service(booking.service_id)
            except UnknownService:
                return self._to_menu(turn, collected=cleared)
            decision = await self._offer_slots(turn, service, moving=booking)
            return replace(decision, collected={**decision.collected, REMINDER_KEY: ""})
        # 3: the cancel, after the customer's yes (sched_confirm), as every change.
        return await self._ask(
            turn, PendingAction("cancel", booking_id=booking.id), updates={REMINDER_KEY: ""}
        )


_WORDS = re.compile(r"[\w']+", re.UNICODE)
# What a reminder's "2" and "3" are in words (compared without accents and case).
_RESCHEDULE_WORDS = {
    "remarcar", "remarca", "remarque", "reagendar", "reagenda", "mudar", "trocar", "adiar",
    "reschedule", "move", "change",
}  # fmt: skip
_CANCEL_WORDS = {"cancelar", "cancela", "cancele", "desmarcar", "desmarca", "cancel"}
