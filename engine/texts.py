"""Every message the product sends, as a template: pt-BR by default, English available, and any
of them overridable per deployment with a TOML file (`WSM_TEXTS_FILE`).

The override file holds flat `key = "template"` lines for the configured language, and/or
tables named after a language (`[en]`, `["pt-BR"]`) that apply to that language only:

    greeting = "Oi! Aqui é a {business}. Qual é o seu nome?"

    [en]
    greeting = "Hi! This is {business}. What's your name?"

Templates use `str.format` fields. Each key has a fixed set of fields (see FIELDS); an override
that names an unknown key or field is refused at start-up (TextsFileError), not at the moment a
customer would have received a broken message.
"""

from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.text import fold

LANGUAGES = ("pt-BR", "en")

_WORD = re.compile(r"[\w']+", re.UNICODE)
# A request to leave the line is short: "quero sair da fila" is four words.
_LEAVE_MAX_WORDS = 4
_NEGATIONS = frozenset({"nao", "no", "not", "don't", "dont", "nunca", "never"})

# The fields each template may use. Rendering passes exactly these.
FIELDS: dict[str, frozenset[str]] = {
    "greeting": frozenset({"business"}),
    "greeting_again": frozenset({"business", "name"}),
    "ask_name_again": frozenset(),
    "menu_header": frozenset({"name"}),
    "menu_option": frozenset({"number", "label"}),
    "option_services": frozenset(),
    "option_hours": frozenset(),
    "option_agent": frozenset(),
    "services_list": frozenset({"services"}),
    "service_chosen": frozenset({"service"}),
    "hours": frozenset(),
    "invalid_option": frozenset(),
    # A voice note or audio the bot could not transcribe, and any other media (image,
    # document, ...): followed by the menu's numbered options; `number` is the person option's.
    "audio_unsupported": frozenset({"number"}),
    "media_received": frozenset({"number"}),
    "line_entered": frozenset({"position", "ordinal", "minutes", "leave_word"}),
    "line_position": frozenset({"position", "ordinal", "minutes"}),
    "line_front": frozenset(),
    # Next in line with nobody of the line's team online: no "in a moment".
    "line_front_nobody": frozenset(),
    "line_still_waiting": frozenset({"position", "ordinal", "minutes", "leave_word"}),
    "line_taken": frozenset({"agent"}),
    # Open, nobody of the line's team online: no minutes (no one is there to count on).
    "line_entered_nobody": frozenset({"position", "ordinal", "leave_word"}),
    "line_position_nobody": frozenset({"position", "ordinal"}),
    "line_still_waiting_nobody": frozenset({"position", "ordinal", "leave_word"}),
    # Outside opening hours (once), and at the opening.
    "line_closed": frozenset({"opens", "team", "leave_word"}),
    "line_closed_no_opening": frozenset({"team", "leave_word"}),
    # Added to the closed notice when the bot can book (the AI agent or its scheduling menu).
    "line_closed_booking": frozenset({"leave_word"}),
    "line_opened": frozenset({"position", "ordinal", "minutes"}),
    "line_opened_nobody": frozenset({"position", "ordinal"}),
    # Open, but the estimate runs past the closing (`closes`, "12:00"): no minutes that would
    # count the closed hours; the place is kept for the reopening (`opens`, "hoje às 13:30").
    "line_entered_closing": frozenset({"position", "ordinal", "closes", "opens", "leave_word"}),
    "line_position_closing": frozenset({"position", "ordinal", "closes", "opens"}),
    "line_still_waiting_closing": frozenset(
        {"position", "ordinal", "closes", "opens", "leave_word"}
    ),
    "line_opened_closing": frozenset({"position", "ordinal", "closes", "opens"}),
    # Several teams: which one (a numbered choice, `menu_option` lines).
    "team_question": frozenset({"teams", "leave_word"}),
    # A voice note nobody could transcribe as the answer to team_question (which follows).
    "team_audio_unsupported": frozenset(),
    # The leave word (or "menu") as the answer to team_question: they never joined a line.
    "team_left": frozenset(),
    "line_left": frozenset(),
    "line_timeout": frozenset(),
    "handback": frozenset(),
    "goodbye": frozenset(),
    "leave_word": frozenset(),
}

_PT_BR: dict[str, str] = {
    "greeting": "Olá! 👋 Bem-vindo(a) à {business}. Como posso te chamar?",
    "greeting_again": "Que bom te ver de novo, {name}! 😊",
    "ask_name_again": "Desculpe, não entendi. Como posso te chamar?",
    "menu_header": "Como posso ajudar, {name}? Responda com o número da opção:",
    "menu_option": "{number}. {label}",
    "option_services": "Conhecer nossos serviços",
    "option_hours": "Horário de atendimento",
    "option_agent": "Falar com um atendente",
    "services_list": (
        "Nossos serviços:\n{services}\nResponda com o número do serviço que te interessa."
    ),
    "service_chosen": "Anotado: {service}. ✅",
    "hours": "Atendemos de segunda a sexta, das 8h às 18h.",
    "invalid_option": "Não entendi. 🤔 Responda com o número de uma das opções.",
    "audio_unsupported": (
        "Desculpe, ainda não consigo ouvir áudios. 🎧 Escreva sua mensagem, por favor, ou "
        "responda *{number}* para falar com um atendente. Também pode escolher outra opção:"
    ),
    "media_received": (
        "Recebemos o que você enviou, obrigado! 📎 Para alguém da equipe ver, responda "
        "*{number}* e fale com um atendente. Também pode escolher outra opção:"
    ),
    "line_entered": (
        "Você é o {ordinal} da fila, cerca de {minutes} min. "
        "Para sair da fila, escreva *{leave_word}*."
    ),
    "line_position": "Agora você é o {ordinal} da fila, cerca de {minutes} min.",
    "line_front": "Você é o próximo da fila! Um atendente vai falar com você em instantes.",
    "line_front_nobody": (
        "Você é o próximo da fila! Ninguém da equipe está online agora: assim que alguém "
        "entrar, vai falar com você."
    ),
    "line_still_waiting": (
        "Você continua na fila: é o {ordinal}, cerca de {minutes} min. "
        "Para sair, escreva *{leave_word}*."
    ),
    "line_taken": "{agent} vai te atender agora. 🙋",
    "line_entered_nobody": (
        "Você é o {ordinal} da fila. Ninguém da equipe está online agora, então não dá para "
        "prever o tempo; você será atendido nesta ordem assim que alguém entrar. "
        "Para sair da fila, escreva *{leave_word}*."
    ),
    "line_position_nobody": (
        "Agora você é o {ordinal} da fila. Ninguém da equipe está online agora; "
        "você será atendido nesta ordem."
    ),
    "line_still_waiting_nobody": (
        "Você continua na fila: é o {ordinal}. Ninguém da equipe está online agora; "
        "você será atendido nesta ordem. Para sair, escreva *{leave_word}*."
    ),
    "line_closed": (
        "Nosso atendimento está fechado agora. 🌙 Abrimos {opens}. Você já está na fila e "
        "guardamos o seu lugar para a abertura. Para sair da fila, escreva *{leave_word}*."
    ),
    "line_closed_no_opening": (
        "Nosso atendimento está fechado agora. 🌙 Você está na fila e guardamos o seu lugar. "
        "Para sair da fila, escreva *{leave_word}*."
    ),
    # "sair" only leaves the line: the booking is the menu's (found by an audit: the text said
    # "sair" would book).
    "line_closed_booking": (
        "Se preferir marcar um horário, escreva *{leave_word}* e depois *menu*."
    ),
    "line_opened": "Já estamos atendendo! ☀️ Você é o {ordinal} da fila, cerca de {minutes} min.",
    "line_entered_closing": (
        "Você é o {ordinal} da fila. Fechamos às {closes} e talvez não dê tempo antes disso; "
        "se não der, guardamos o seu lugar para a reabertura, {opens}. "
        "Para sair da fila, escreva *{leave_word}*."
    ),
    "line_position_closing": (
        "Agora você é o {ordinal} da fila. Fechamos às {closes}; se não der tempo, guardamos "
        "o seu lugar para a reabertura, {opens}."
    ),
    "line_still_waiting_closing": (
        "Você continua na fila: é o {ordinal}. Fechamos às {closes}; se não der tempo, "
        "guardamos o seu lugar para a reabertura, {opens}. Para sair, escreva *{leave_word}*."
    ),
    "line_opened_closing": (
        "Já estamos atendendo! ☀️ Você é o {ordinal} da fila. Fechamos às {closes}; se não der "
        "tempo, guardamos o seu lugar para a reabertura, {opens}."
    ),
    "line_opened_nobody": (
        "Já estamos atendendo! ☀️ Você é o {ordinal} da fila; assim que alguém da equipe "
        "entrar, você será atendido nesta ordem."
    ),
    "team_question": (
        "Com qual equipe você quer falar? Responda com o número:\n{teams}\n"
        "Para voltar, escreva *{leave_word}*."
    ),
    "team_audio_unsupported": "Desculpe, ainda não consigo ouvir áudios. 🎧 Escreva, por favor.",
    "team_left": "Tudo bem, você não entrou na fila. Se precisar, é só escrever de novo.",
    "line_left": "Você saiu da fila. Se precisar, é só escrever de novo.",
    "line_timeout": (
        "Não conseguimos te atender a tempo e você saiu da fila. 😔 Escreva de novo quando quiser."
    ),
    "handback": "Você voltou ao atendimento automático.",
    "goodbye": "Vamos encerrar por aqui. Obrigado pelo contato! Se precisar, é só escrever. 👋",
    "leave_word": "sair",
}

_EN: dict[str, str] = {
    "greeting": "Hello! 👋 Welcome to {business}. What should I call you?",
    "greeting_again": "Good to see you again, {name}! 😊",
    "ask_name_again": "Sorry, I did not get that. What should I call you?",
    "menu_header": "How can I help, {name}? Reply with the option's number:",
    "menu_option": "{number}. {label}",
    "option_services": "Our services",
    "option_hours": "Opening hours",
    "option_agent": "Talk to a person",
    "services_list": "Our services:\n{services}\nReply with the number of the one you want.",
    "service_chosen": "Noted: {service}. ✅",
    "hours": "We are open Monday to Friday, 8am to 6pm.",
    "invalid_option": "Sorry, I did not get that. 🤔 Reply with the number of an option.",
    "audio_unsupported": (
        "Sorry, I cannot listen to audio yet. 🎧 Please type your message, or reply "
        "*{number}* to talk to a person. You can also pick another option:"
    ),
    "media_received": (
        "Thanks, we got what you sent! 📎 For someone of the team to see it, reply "
        "*{number}* to talk to a person. You can also pick another option:"
    ),
    "line_entered": (
        "You are {ordinal} in line, about {minutes} min. To leave the line, write *{leave_word}*."
    ),
    "line_position": "You are now {ordinal} in line, about {minutes} min.",
    "line_front": "You are next in line! A person will talk to you in a moment.",
    "line_front_nobody": (
        "You are next in line! Nobody from the team is online right now: as soon as someone "
        "is, they will talk to you."
    ),
    "line_still_waiting": (
        "You are still in line: {ordinal}, about {minutes} min. To leave, write *{leave_word}*."
    ),
    "line_taken": "{agent} will help you now. 🙋",
    "line_entered_nobody": (
        "You are {ordinal} in line. Nobody of the team is online right now, so we cannot tell "
        "how long; you will be served in this order as soon as someone is. "
        "To leave the line, write *{leave_word}*."
    ),
    "line_position_nobody": (
        "You are now {ordinal} in line. Nobody of the team is online right now; "
        "you will be served in this order."
    ),
    "line_still_waiting_nobody": (
        "You are still in line: {ordinal}. Nobody of the team is online right now; "
        "you will be served in this order. To leave, write *{leave_word}*."
    ),
    "line_closed": (
        "We are closed right now. 🌙 We open {opens}. You are in line and keep your place "
        "for the opening. To leave the line, write *{leave_word}*."
    ),
    "line_closed_no_opening": (
        "We are closed right now. 🌙 You are in line and keep your place. "
        "To leave the line, write *{leave_word}*."
    ),
    "line_closed_booking": "To book a time instead, write *{leave_word}*, then *menu*.",
    "line_opened": "We are open! ☀️ You are {ordinal} in line, about {minutes} min.",
    "line_entered_closing": (
        "You are {ordinal} in line. We close at {closes} and may not get to you before then; "
        "if not, you keep your place for the reopening, {opens}. "
        "To leave the line, write *{leave_word}*."
    ),
    "line_position_closing": (
        "You are now {ordinal} in line. We close at {closes}; if we do not get to you before "
        "then, you keep your place for the reopening, {opens}."
    ),
    "line_still_waiting_closing": (
        "You are still in line: {ordinal}. We close at {closes}; if we do not get to you "
        "before then, you keep your place for the reopening, {opens}. "
        "To leave, write *{leave_word}*."
    ),
    "line_opened_closing": (
        "We are open! ☀️ You are {ordinal} in line. We close at {closes}; if we do not get to "
        "you before then, you keep your place for the reopening, {opens}."
    ),
    "line_opened_nobody": (
        "We are open! ☀️ You are {ordinal} in line; as soon as someone of the team is online, "
        "you will be served in this order."
    ),
    "team_question": (
        "Which team would you like to talk to? Reply with the number:\n{teams}\n"
        "To go back, write *{leave_word}*."
    ),
    "team_audio_unsupported": "Sorry, I can't listen to audio yet. 🎧 Please write instead.",
    "team_left": "All right, you did not join the line. Write again whenever you need.",
    "line_left": "You left the line. Write again whenever you need.",
    "line_timeout": (
        "We could not get to you in time and you left the line. 😔 Write again anytime."
    ),
    "handback": "You are back with the automated assistant.",
    "goodbye": "We are closing this conversation. Thank you! Write again whenever you need. 👋",
    "leave_word": "leave",
}

DEFAULTS: dict[str, dict[str, str]] = {"pt-BR": _PT_BR, "en": _EN}


class TextsFileError(ValueError):
    """The override file cannot be used (terminal: fix the file; wsm refuses to start)."""


def ordinal(position: int, language: str) -> str:
    if language == "en":
        if 10 <= position % 100 <= 20:
            suffix = "th"
        else:
            suffix = {1: "st", 2: "nd", 3: "rd"}.get(position % 10, "th")
        return f"{position}{suffix}"
    return f"{position}º"


def _fields_of(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def check_template(
    key: str,
    template: object,
    where: str,
    fields: Mapping[str, frozenset[str]],
    error: type[ValueError],
) -> None:
    """An override is usable: a known text, a string, a valid template using only the fields
    its text is rendered with. `error` otherwise (each texts file has its own): the engine's
    texts here, the agent's in engine/agent/texts.py."""
    if key not in fields:
        raise error(f"{where}: unknown text {key!r}")
    if not isinstance(template, str):
        raise error(f"{where}: text {key!r} must be a string")
    try:
        unknown = _fields_of(template) - fields[key]
    except ValueError as exc:
        raise error(f"{where}: text {key!r} is not a valid template: {exc}") from exc
    if unknown:
        allowed = ", ".join(sorted(fields[key])) or "none"
        raise error(
            f"{where}: text {key!r} uses unknown field(s) {sorted(unknown)}; allowed: {allowed}"
        )


def _check(key: str, template: str, where: str) -> None:
    check_template(key, template, where, FIELDS, TextsFileError)


@dataclass(frozen=True, slots=True)
class Templates:
    """The templates of one language, overrides applied: the engine's (Texts) and the
    agent's (engine/agent/texts.py AgentTexts)."""

    language: str
    templates: Mapping[str, str]

    def render(self, key: str, **values: object) -> str:
        return self.templates[key].format(**values)


@dataclass(frozen=True, slots=True)
class Texts(Templates):
    """The engine's templates of one language, overrides applied."""

    def ordinal(self, position: int) -> str:
        return ordinal(position, self.language)

    def with_business(self, overrides: Mapping[str, Mapping[str, str]]) -> Texts:
        """These texts with a business file's `texts` applied (per language, as there): its
        keys that are the engine's, each checked like an override file's. Keys of the agent's
        texts are left to engine/agent/texts.py, which refuses a key neither knows."""
        templates = dict(self.templates)
        for language, table in overrides.items():
            for key, template in table.items():
                if key not in FIELDS:
                    continue
                _check(key, template, f"business file texts [{language}]")
                if language == self.language:
                    templates[key] = template
        return Texts(language=self.language, templates=templates)

    @property
    def leave_words(self) -> frozenset[str]:
        """Words that take a customer out of the line: this language's and pt-BR's."""
        return frozenset({fold(self.templates["leave_word"]), _PT_BR["leave_word"]})

    def says_leave(self, text: str) -> bool:
        """The customer asks to leave the line: the leave word in a short message with no
        negation ("sair", "Sair!", "quero sair", "quero sair da fila"; not "não quero sair",
        nor a long message that happens to hold the word)."""
        words = _WORD.findall(fold(text))
        return (
            bool(self.leave_words & set(words))
            and len(words) <= _LEAVE_MAX_WORDS
            and not _NEGATIONS & set(words)
        )


def load_texts(language: str = "pt-BR", override_file: Path | None = None) -> Texts:
    if language not in DEFAULTS:
        raise TextsFileError(f"unknown language {language!r}; available: {', '.join(LANGUAGES)}")
    templates = dict(DEFAULTS[language])
    if override_file is not None:
        templates.update(_read_overrides(Path(override_file), language))
    return Texts(language=language, templates=templates)


def _read_overrides(path: Path, language: str) -> dict[str, str]:
    try:
        document = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise TextsFileError(f"{path}: cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TextsFileError(f"{path}: not valid TOML: {exc}") from exc
    overrides: dict[str, str] = {}
    for key, value in document.items():
        if key in DEFAULTS:
            if not isinstance(value, dict):
                raise TextsFileError(f"{path}: [{key}] must be a table")
            for inner_key, template in value.items():
                _check(inner_key, template, f"{path} [{key}]")
                if key == language:
                    overrides[inner_key] = template
        else:
            _check(key, value, str(path))
            overrides.setdefault(key, value)
    # A language table wins over the flat keys for that language.
    table = document.get(language)
    if isinstance(table, dict):
        overrides.update(table)
    return overrides
