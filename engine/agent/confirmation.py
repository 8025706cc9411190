"""Changes to bookings wait for the customer's yes, enforced in code.

A book, reschedule or cancel is first a *proposal*: it is kept in the conversation's collected
data (`pending_action`, committed with the turn by the engine) and the customer is asked.
It is carried out only on a later message of the customer that confirms it, and only exactly
as proposed. Whatever a model decides, it cannot book in the same turn it proposed, cannot
book something other than what the customer was asked about, and cannot book when the
customer's answer is not a clear yes. The menu brain uses the same pending action, so a
proposal made by the model can be confirmed on the menu after a fallback, and the reverse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

import orjson

from engine.agent.calendar import fold

PENDING_KEY = "pending_action"

Kind = Literal["book", "reschedule", "cancel"]

# Words of a clear yes / no, pt-BR and English, compared without accents and case.
_YES = {
    "sim", "s", "ss", "pode", "podes", "confirmo", "confirma", "confirmado", "confirmar",
    "ok", "okay", "isso", "certo", "claro", "beleza", "blz", "fechado", "perfeito", "quero",
    "bora", "vamos", "combinado", "otimo", "yes", "y", "yep", "yeah", "sure", "confirm",
    "confirmed", "correct", "1",
}  # fmt: skip
_NO = {
    "nao", "n", "no", "nope", "negativo", "espera", "espere", "aguarde", "wait", "prefiro",
    "outro", "outra", "mudar", "trocar", "2", "nem", "jamais", "nunca", "don't", "dont", "not",
}  # fmt: skip
_YES_SYMBOLS = ("👍", "✅", "👌")
_WORD = re.compile(r"[\w']+", re.UNICODE)


def confirms(text: str) -> bool:
    """A clear yes: a yes word (or 👍) and no word of refusal or hesitation."""
    words = set(_WORD.findall(fold(text)))
    if words & _NO:
        return False
    return bool(words & _YES) or any(symbol in text for symbol in _YES_SYMBOLS)


def refuses(text: str) -> bool:
    words = set(_WORD.findall(fold(text)))
    return bool(words & {"nao", "n", "no", "nope", "negativo", "2", "cancela", "cancelar"})


@dataclass(frozen=True, slots=True)
class PendingAction:
    kind: Kind
    service: str = ""  # service id (book)
    start: str = ""  # slot id `YYYY-MM-DDTHH:MM` (book, reschedule)
    booking_id: str = ""  # (reschedule, cancel)
    proposed_in: str = ""  # the message during which the customer was asked

    def same_as(self, other: PendingAction) -> bool:
        return (self.kind, self.service, self.start[:16], self.booking_id) == (
            other.kind,
            other.service,
            other.start[:16],
            other.booking_id,
        )

    def proposed(self, message_id: str) -> PendingAction:
        return replace(self, proposed_in=message_id)

    def encode(self) -> str:
        # orjson writes a dataclass as its fields, in order: what `decode` reads back.
        return orjson.dumps(self).decode()

    @classmethod
    def decode(cls, raw: str | None) -> PendingAction | None:
        if not raw:
            return None
        try:
            value = orjson.loads(raw)
            kind = value["kind"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None
        if kind not in ("book", "reschedule", "cancel"):
            return None
        return cls(
            kind=kind,
            service=str(value.get("service", "")),
            start=str(value.get("start", "")),
            booking_id=str(value.get("booking_id", "")),
            proposed_in=str(value.get("proposed_in", "")),
        )
