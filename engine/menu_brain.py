"""The engine's menu brain (`MenuBrain`): deterministic, no model. A greeting, the customer's
name, and a numbered menu whose last option is always "falar com um atendente". It is the
brain of `EngineService` when none is given; the AI agent's scheduling menu
(engine/agent/menu.py, `SchedulingMenuBrain`) is this brain with booking options added.

Extension point: `MenuOption`s given as `extra_options` are listed before the person option
(the AI agent issue adds book / see / cancel appointments this way); each option is a label
text and an async action returning a Decision.

Steps (ConversationState.step): "" (never greeted) -> "ask_name" -> "menu" <-> "choose_service".

Media (docs/agent.md, "Voice notes and media"): a transcribed voice note is read as the words
in its transcript (`heard`); a voice note or audio with no transcript (no GROQ_API_KEY, or the
transcription failed) gets `audio_unsupported`, any other media (image, document, video,
sticker, location, contact card) `media_received`, each followed by the numbered options, the
person's last, at whatever step the conversation was: never "Não entendi", never the name
question again, and the next message finds the menu.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from engine.brain import Decision, HandOff, InboundMessage, Turn
from engine.identity import Conversation
from engine.media.transcribe import TRANSCRIBED_KINDS
from engine.state import State
from engine.texts import Texts
from shared.text import fold

STEP_ASK_NAME = "ask_name"
STEP_MENU = "menu"
STEP_CHOOSE_SERVICE = "choose_service"

# Words that ask for a person outright, wherever the customer is in the menu.
PERSON_WORDS = re.compile(r"\b(atendente|humano|pessoa|agent|human|person)\b", re.IGNORECASE)
# The same asked where a name is expected: not "pessoa" nor "person" alone, which are names too
# (Fernando Pessoa), but "falar com ..." is a request.
ASKS_FOR_PERSON = re.compile(r"\b(atendente|humano|agent|human)\b|\bfalar com\b", re.IGNORECASE)
# Words that go back to the menu from a step under way (the scheduling menu's steps, the line's
# team question).
BACK_WORDS = frozenset({"menu", "voltar", "volta", "inicio", "back"})
# A menu choice: a number, optionally followed by "." or ")", or as a keycap emoji ("2️⃣":
# the digit, then U+FE0F and U+20E3, which WhatsApp's emoji keyboard sends).
NUMBER = re.compile(r"^\s*(\d{1,2})\s*(?:\ufe0f?\u20e3)?\s*[.)]?\s*$")
# The same choice in words, as customers type it and as Whisper writes a spoken number
# ("Dois."); compared without accents and case.
_NUMBER_WORDS = {
    **{w: n for n, ws in enumerate(
        (("um", "uma"), ("dois", "duas"), ("tres",), ("quatro",), ("cinco",), ("seis",),
         ("sete",), ("oito",), ("nove",), ("dez",)), start=1) for w in ws},
    **{w: n for n, w in enumerate(
        ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"), start=1)},
}  # fmt: skip
_MAX_NAME = 40
# What Whisper ends a sentence with: "Dois." is the option 2, "Ana." the name Ana.
_TRAILING_PUNCTUATION = ".!?…"


def option_number(text: str) -> int | None:
    """The number a menu answer names: "2", "2.", "2)", "2️⃣", "dois" or "Dois."; None for
    anything else."""
    match = NUMBER.match(text)
    if match:
        return int(match.group(1))
    return _NUMBER_WORDS.get(fold(text).rstrip(_TRAILING_PUNCTUATION).strip())


def spoken(transcript: str) -> str:
    """A transcript as a typed answer: without the full stop Whisper ends a sentence with."""
    return transcript.strip().rstrip(_TRAILING_PUNCTUATION).strip() or transcript.strip()


def unheard_audio(message: InboundMessage) -> bool:
    """A voice note or audio nobody could turn into words (no transcript)."""
    return message.kind in TRANSCRIBED_KINDS and not (message.transcript or "").strip()


def wordless_media(message: InboundMessage) -> bool:
    """Anything but text and audio: an image, a document, a video, a sticker, a location or
    a contact card (its caption is data, not a menu answer)."""
    return message.kind != "text" and message.kind not in TRANSCRIBED_KINDS


def words(message: InboundMessage) -> str:
    """What the customer said, as the menus and the line's steps read it: a transcribed voice
    note is its transcript's words (without the "[áudio]" mark the agent reads, nor Whisper's
    full stop), anything else its text."""
    transcript = (message.transcript or "").strip() if message.kind in TRANSCRIBED_KINDS else ""
    return spoken(transcript) if transcript else message.text


def heard(turn: Turn) -> Turn:
    """The turn as the menus read it (`words`), so "dois", "atendente" or a name said in a
    voice note work as if typed."""
    text = words(turn.message)
    if text == turn.message.text:
        return turn
    return replace(turn, message=replace(turn.message, text=text))


def goes_back(text: str) -> bool:
    """A way back to the menu ("menu", "Voltar!", "início."), from any step under way."""
    return fold(text).strip().strip(" .!") in BACK_WORDS


@dataclass(frozen=True, slots=True)
class MenuOption:
    label: str  # a text key (rendered) or, for extra options, the label itself
    action: Callable[[Turn], Awaitable[Decision]]
    label_is_text_key: bool = False


class MenuBrain:
    def __init__(
        self,
        texts: Texts,
        *,
        business: str,
        services: Sequence[str],
        extra_options: Sequence[MenuOption] = (),
    ) -> None:
        self.texts = texts
        self.business = business
        self.services = [s for s in services if s]
        self.options: list[MenuOption] = [
            MenuOption("option_services", self._services, label_is_text_key=True),
            MenuOption("option_hours", self._hours, label_is_text_key=True),
            *extra_options,
            # Always last: the customer can always reach a person.
            MenuOption("option_agent", self._person, label_is_text_key=True),
        ]

    # --- the seam --------------------------------------------------------------------------
    def reads_history(self, conversation: Conversation) -> bool:
        """The menus answer from the state's step and the new message alone."""
        return False

    async def decide(self, turn: Turn) -> Decision:
        turn = heard(turn)
        media = await self.media_answer(turn)
        if media is not None:
            return media
        text = turn.message.text.strip()
        name = turn.state.collected.get("name", "")
        step = turn.state.step
        if not step:
            if name:
                return self._welcome_back(turn)
            greeting = self.texts.render("greeting", business=self.business)
            return Decision(replies=[greeting], step=STEP_ASK_NAME)
        if step == STEP_ASK_NAME:
            if ASKS_FOR_PERSON.search(text):
                # "quero falar com um atendente" is no name (found by an audit: it became one).
                return await self._person(turn)
            candidate = _clean_name(text)
            if not candidate:
                return Decision(replies=[self.texts.render("ask_name_again")], step=STEP_ASK_NAME)
            return Decision(
                replies=[self.menu(candidate)], step=STEP_MENU, collected={"name": candidate}
            )
        if PERSON_WORDS.search(text):
            return await self._person(turn)
        if goes_back(text):
            # "menu" shows the menu (the closed line's notice tells customers to write it).
            return Decision(replies=[self.menu(name)], step=STEP_MENU)
        if turn.state.state is State.CLOSED:
            # Back after a close: an option number is acted on, anything else greets them back.
            if not self._option_for(text):
                return self._welcome_back(turn)
            return await self._menu_choice(turn, text)
        if step == STEP_CHOOSE_SERVICE:
            return self._choose_service(turn, text)
        return await self._menu_choice(turn, text)

    # --- pieces ----------------------------------------------------------------------------
    def menu(self, name: str) -> str:
        return f"{self.texts.render('menu_header', name=name)}\n{self.options_text()}"

    def options_text(self) -> str:
        """The numbered options alone (no header: it names the customer, maybe not known)."""
        return "\n".join(
            self.texts.render(
                "menu_option",
                number=number,
                label=self.texts.render(option.label) if option.label_is_text_key else option.label,
            )
            for number, option in enumerate(self.options, start=1)
        )

    async def media_answer(self, turn: Turn) -> Decision | None:
        """The answer to a voice note without a transcript or to other media, or None for a
        message with words. Either way the menu follows (the person option is the last), at
        STEP_MENU, so the next message is an option number or words like any other. A caption
        asking for a person is acted on."""
        message = turn.message
        if unheard_audio(message):
            key = "audio_unsupported"
        elif wordless_media(message):
            if PERSON_WORDS.search(message.caption or message.text):
                return await self._person(turn)
            key = "media_received"
        else:
            return None
        text = self.texts.render(key, number=len(self.options))
        return Decision(replies=[f"{text}\n{self.options_text()}"], step=STEP_MENU)

    def _option_for(self, text: str) -> MenuOption | None:
        number = option_number(text)
        if number is not None and 1 <= number <= len(self.options):
            return self.options[number - 1]
        return None

    def _welcome_back(self, turn: Turn) -> Decision:
        name = turn.state.collected.get("name", "")
        hello = self.texts.render("greeting_again", business=self.business, name=name)
        return Decision(replies=[hello, self.menu(name)], step=STEP_MENU)

    async def _menu_choice(self, turn: Turn, text: str) -> Decision:
        option = self._option_for(text)
        if option is not None:
            return await option.action(turn)
        name = turn.state.collected.get("name", "")
        return Decision(
            replies=[self.texts.render("invalid_option"), self.menu(name)], step=STEP_MENU
        )

    async def _services(self, turn: Turn) -> Decision:
        listing = "\n".join(
            self.texts.render("menu_option", number=n, label=s)
            for n, s in enumerate(self.services, start=1)
        )
        return Decision(
            replies=[self.texts.render("services_list", services=listing)],
            step=STEP_CHOOSE_SERVICE,
        )

    def _choose_service(self, turn: Turn, text: str) -> Decision:
        number = option_number(text)
        name = turn.state.collected.get("name", "")
        if number is not None and 1 <= number <= len(self.services):
            service = self.services[number - 1]
            return Decision(
                replies=[self.texts.render("service_chosen", service=service), self.menu(name)],
                step=STEP_MENU,
                collected={"service": service},
            )
        return Decision(replies=[self.texts.render("invalid_option")], step=STEP_CHOOSE_SERVICE)

    async def _hours(self, turn: Turn) -> Decision:
        name = turn.state.collected.get("name", "")
        return Decision(replies=[self.texts.render("hours"), self.menu(name)], step=STEP_MENU)

    async def _person(self, turn: Turn) -> Decision:
        # The engine tells the customer their place in line; nothing to add here.
        return Decision(step=STEP_MENU, requests=[HandOff("customer asked for a person")])


def _clean_name(text: str) -> str:
    name = " ".join(text.split())[:_MAX_NAME]
    if not name or NUMBER.match(name) or not any(ch.isalpha() for ch in name):
        return ""
    return name
