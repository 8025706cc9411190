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

from engine.media.transcribe import TRANSCRIPT_MARK
from shared.text import fold

PENDING_KEY = "pending_action"

Kind = Literal["book", "reschedule", "cancel"]

# Words of a clear yes / no, pt-BR and English, compared without accents and case.
_YES = {
    "sim", "s", "ss", "pode", "podes", "confirmo", "confirma", "confirmado", "confirmar",
    "ok", "okay", "isso", "certo", "claro", "beleza", "blz", "fechado", "perfeito", "quero",
    "bora", "vamos", "combinado", "otimo", "otima", "yes", "y", "yep", "yeah", "sure", "confirm",
    "confirmed", "correct", "1", "um",
}  # fmt: skip
_NO = {
    "nao", "n", "no", "nope", "negativo", "espera", "espere", "aguarde", "wait", "prefiro",
    "outro", "outra", "mudar", "trocar", "2", "dois", "nem", "jamais", "nunca", "don't", "dont",
    "not", "mas", "porem", "troca", "troque", "muda", "mude", "depois", "desisto", "diferente",
    "antes", "segunda", "terca", "quarta", "quinta", "sexta", "sabado", "domingo",
}  # fmt: skip
# A cancel's own words: a yes to "Confirma o cancelamento?", a no to any other question.
_CANCEL = {"cancela", "cancelar", "cancele", "cancelo", "cancelado", "cancelamento", "desmarca",
           "desmarcar", "desmarque", "cancel"}  # fmt: skip
# What may stand beside a yes and leave it a clear yes: politeness, "pode marcar", "até lá".
# Anything else (a question, a time, "quero saber o preço") is not an answer to the question
# asked, whatever yes word it holds: the customer is asked again.
_ALONG = {
    "a", "o", "as", "os", "e", "de", "da", "do", "pra", "para", "mim", "me", "por", "favor",
    "obrigado", "obrigada", "obg", "brigado", "brigada", "valeu", "vlw", "muito", "ate", "la",
    "entao", "ta", "tudo", "certinho", "show", "top", "esse", "este", "essa", "esta", "mesmo",
    "horario", "ser", "marcar", "marca", "marque", "agendar", "agenda", "agende", "pfv", "pf",
    "please", "thanks", "thank", "you", "that", "s", "fine", "great", "perfect", "go", "ahead",
    "it", "is", "sounds", "good", "book", "can", "ja", "agora", "aqui", "estarei",
    "com", "certeza", "exatamente", "isso", "bom", "boa",
}  # fmt: skip
# Greetings that name a time of day without asking for one.
_GREETINGS = re.compile(r"\b(bom dia|boa tarde|boa noite)\b")
_YES_SYMBOLS = ("👍", "✅", "👌")
_WORD = re.compile(r"[\w']+", re.UNICODE)


def _words(text: str) -> set[str]:
    # A transcribed voice note reaches the agent as "[áudio] <words>": the mark is not theirs.
    folded = _GREETINGS.sub(" ", fold(text.replace(TRANSCRIPT_MARK, " ")))
    return set(_WORD.findall(folded))


def confirms(text: str, kind: Kind | None = None) -> bool:
    """A clear yes to the question asked: a yes word (or 👍) with nothing but politeness beside
    it, and no question mark, no word of refusal or hesitation, no other time or day. To a
    cancel (`kind`), "pode cancelar" is a yes; to anything else a cancel word is a no."""
    if "?" in text:
        return False
    words = _words(text)
    refusal = _NO if kind == "cancel" else _NO | _CANCEL
    if words & refusal:
        return False
    yes = _YES | _CANCEL if kind == "cancel" else _YES
    if not (words & yes or any(symbol in text for symbol in _YES_SYMBOLS)):
        return False
    return words <= yes | _ALONG


def refuses(text: str, kind: Kind | None = None) -> bool:
    """A clear no: a word of refusal; to a question other than a cancel's, a cancel word too."""
    words = _words(text)
    no = {"nao", "n", "no", "nope", "negativo", "2", "dois"}
    return bool(words & (no if kind == "cancel" else no | _CANCEL))


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
