"""The AI agent's own texts (the scheduling menu and the replies code writes when the model is
not there to write them): pt-BR by default, English available, and overridable per deployment
in the calendar file's `texts:` section, per language:

    texts:
      pt-BR:
        booked: "Agendado! ✅ {service} em {when}."

The engine's texts (engine/texts.py) keep their own keys and WSM_TEXTS_FILE; these are apart
because that file refuses keys it does not know. A business file's `texts:` may hold both:
the engine's keys (the line's, the menu's) change that business's engine texts
(`Texts.with_business`), the rest are these. A key neither knows, or an unknown field, is
refused at start-up (AgentTextsError), like the engine's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from engine.texts import FIELDS as ENGINE_FIELDS
from engine.texts import Templates, check_template

FIELDS: dict[str, frozenset[str]] = {
    "option_book": frozenset(),
    "option_my_bookings": frozenset(),
    "option_cancel": frozenset(),
    "hours": frozenset({"hours"}),
    "choose_service": frozenset({"services"}),
    "slots_offer": frozenset({"service", "slots"}),
    "no_slots": frozenset({"service", "days"}),
    "confirm_book": frozenset({"service", "when"}),
    "confirm_reschedule": frozenset({"service", "old", "when"}),
    "confirm_cancel": frozenset({"service", "when"}),
    "booked": frozenset({"service", "when"}),
    "rescheduled": frozenset({"service", "when"}),
    "cancelled": frozenset({"service", "when"}),
    "not_confirmed": frozenset(),
    "slot_taken": frozenset(),
    "my_bookings": frozenset({"bookings"}),
    "booking_line": frozenset({"service", "when"}),
    "no_bookings": frozenset(),
    "cancel_pick": frozenset({"bookings"}),
    "limit_reached": frozenset({"count"}),
    "booking_gone": frozenset(),
    "invalid_choice": frozenset(),
    "option_line": frozenset({"number", "label"}),
    # A booking's reminder (engine/agent/reminders.py) and the answer to its "1".
    "reminder": frozenset({"business", "service", "when"}),
    "reminder_confirmed": frozenset({"service", "when"}),
    # A cancelled slot of today offered to a customer in line (engine/agent/freed_slots.py),
    # and the answers to its "1": booked (they leave the line), or no longer free.
    "freed_slot_offer": frozenset({"business", "service", "when"}),
    "freed_slot_booked": frozenset({"service", "when"}),
    "freed_slot_lost": frozenset(),
    # A change to a booking (book, move, cancel, confirm) that the turn's deadline cut while the
    # customer was also handed to a person: whether it was made is not known yet.
    "change_unconfirmed": frozenset(),
}

_PT_BR: dict[str, str] = {
    "option_book": "Agendar um horário",
    "option_my_bookings": "Ver meus agendamentos",
    "option_cancel": "Cancelar um agendamento",
    "hours": "Nosso horário de atendimento:\n{hours}",
    "choose_service": "Qual serviço você quer agendar?\n{services}\nResponda com o número.",
    "slots_offer": (
        "Horários livres para *{service}*:\n{slots}\n"
        "Responda com o número do horário. Para voltar, escreva *menu*."
    ),
    "no_slots": "Não encontrei horários livres para {service} nos próximos {days} dias. 😕",
    "confirm_book": "Confirma *{service}* em *{when}*?\n1. Sim\n2. Não",
    "confirm_reschedule": "Confirma mudar *{service}* de {old} para *{when}*?\n1. Sim\n2. Não",
    "confirm_cancel": "Confirma o cancelamento de *{service}* em *{when}*?\n1. Sim\n2. Não",
    "booked": "Pronto! ✅ Horário de *{service}* marcado para *{when}*.",
    "rescheduled": "Pronto! ✅ Horário de *{service}* remarcado para *{when}*.",
    "cancelled": "Pronto: o horário de *{service}* em {when} foi cancelado.",
    "not_confirmed": "Tudo bem, não alterei nada.",
    "slot_taken": "Esse horário acabou de ser reservado por outra pessoa. 😕",
    "my_bookings": "Seus agendamentos:\n{bookings}",
    "booking_line": "• {service}: {when}",
    "no_bookings": "Você não tem agendamentos marcados.",
    "cancel_pick": "Qual agendamento você quer cancelar?\n{bookings}\nResponda com o número.",
    "limit_reached": (
        "Você já tem {count} agendamentos marcados, o máximo permitido. "
        "Para marcar outro, cancele um deles."
    ),
    "booking_gone": "Não encontrei esse agendamento; talvez ele já tenha sido cancelado.",
    "invalid_choice": "Não entendi. 🤔 Responda com o número de uma das opções.",
    "option_line": "{number}. {label}",
    "reminder": (
        "Olá! Lembrete da *{business}*: *{service}* em *{when}*.\n"
        "1. Confirmar\n2. Remarcar\n3. Cancelar\nResponda com o número."
    ),
    "reminder_confirmed": "Obrigado! ✅ Horário de *{service}* confirmado para *{when}*. Até lá!",
    "freed_slot_offer": (
        "Vagou um horário hoje na *{business}*: *{service}* em *{when}*.\n"
        "Quer? Responda *1* para marcar (você sai da fila). "
        "Se não quiser, é só esperar: você continua na fila."
    ),
    "freed_slot_booked": (
        "Pronto! ✅ Horário de *{service}* marcado para *{when}*. Você saiu da fila; "
        "se precisar de um atendente, é só pedir."
    ),
    "freed_slot_lost": (
        "Que pena: esse horário não está mais disponível. 😕 Você continua na fila."
    ),
    "change_unconfirmed": (
        "Não consegui concluir a alteração no seu agendamento agora. "
        "Uma pessoa da equipe vai verificar e te confirmar."
    ),
}

_EN: dict[str, str] = {
    "option_book": "Book an appointment",
    "option_my_bookings": "See my appointments",
    "option_cancel": "Cancel an appointment",
    "hours": "Our opening hours:\n{hours}",
    "choose_service": "Which service would you like to book?\n{services}\nReply with its number.",
    "slots_offer": (
        "Free times for *{service}*:\n{slots}\n"
        "Reply with the number of a time. To go back, write *menu*."
    ),
    "no_slots": "I found no free times for {service} in the next {days} days. 😕",
    "confirm_book": "Shall I book *{service}* on *{when}*?\n1. Yes\n2. No",
    "confirm_reschedule": "Move *{service}* from {old} to *{when}*?\n1. Yes\n2. No",
    "confirm_cancel": "Cancel *{service}* on *{when}*?\n1. Yes\n2. No",
    "booked": "Done! ✅ *{service}* booked for *{when}*.",
    "rescheduled": "Done! ✅ *{service}* moved to *{when}*.",
    "cancelled": "Done: *{service}* on {when} is cancelled.",
    "not_confirmed": "All right, I changed nothing.",
    "slot_taken": "Someone has just taken that time. 😕",
    "my_bookings": "Your appointments:\n{bookings}",
    "booking_line": "• {service}: {when}",
    "no_bookings": "You have no appointments booked.",
    "cancel_pick": "Which appointment do you want to cancel?\n{bookings}\nReply with its number.",
    "limit_reached": (
        "You already have {count} appointments booked, the most allowed. "
        "To book another, cancel one of them."
    ),
    "booking_gone": "I could not find that appointment; it may have been cancelled already.",
    "invalid_choice": "Sorry, I did not get that. 🤔 Reply with the number of an option.",
    "option_line": "{number}. {label}",
    "reminder": (
        "Hello! A reminder from *{business}*: *{service}* on *{when}*.\n"
        "1. Confirm\n2. Reschedule\n3. Cancel\nReply with the number."
    ),
    "reminder_confirmed": "Thank you! ✅ *{service}* confirmed for *{when}*. See you then!",
    "freed_slot_offer": (
        "A time has just opened up today at *{business}*: *{service}* on *{when}*.\n"
        "Want it? Reply *1* to book it (you leave the line). "
        "If not, just wait: you keep your place in line."
    ),
    "freed_slot_booked": (
        "Done! ✅ *{service}* booked for *{when}*. You have left the line; "
        "ask for an attendant whenever you need one."
    ),
    "freed_slot_lost": "Sorry: that time is no longer available. 😕 You keep your place in line.",
    "change_unconfirmed": (
        "I couldn't finish the change to your appointment just now. "
        "Someone from our team will check it and confirm it with you."
    ),
}

DEFAULTS: dict[str, dict[str, str]] = {"pt-BR": _PT_BR, "en": _EN}


class AgentTextsError(ValueError):
    """An override of the agent's texts cannot be used (terminal: fix the calendar file)."""


@dataclass(frozen=True, slots=True)
class AgentTexts(Templates):
    """The agent's templates of one language (the business file's overrides applied)."""

    def numbered(self, labels: list[str]) -> str:
        return "\n".join(
            self.render("option_line", number=n, label=label)
            for n, label in enumerate(labels, start=1)
        )


def _check(language: str, key: str, template: object) -> None:
    check_template(key, template, f"calendar texts [{language}]", FIELDS, AgentTextsError)


def load_agent_texts(
    language: str, overrides: Mapping[str, Mapping[str, str]] | None = None
) -> AgentTexts:
    if language not in DEFAULTS:
        raise AgentTextsError(f"unknown language {language!r}")
    templates = dict(DEFAULTS[language])
    for lang, table in (overrides or {}).items():
        if lang not in DEFAULTS:
            raise AgentTextsError(f"calendar texts: unknown language {lang!r}")
        for key, template in table.items():
            if key not in FIELDS and key in ENGINE_FIELDS:
                continue  # the engine's text (the line's, the menu's): Texts.with_business
            _check(lang, key, template)
            if lang == language:
                templates[key] = template
    return AgentTexts(language=language, templates=templates)
