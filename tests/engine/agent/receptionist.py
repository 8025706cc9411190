"""A stand-in for the model's judgement: a small, stateless policy that reads each request the
way a model would (the customer's last words, the tool results, the system's summary) and
answers in Groq's shapes. It keeps no memory between requests: everything it knows, it read
in the request, which is what the agent must give a real model."""

from __future__ import annotations

import re
from typing import Any

from engine.agent.confirmation import confirms
from tests.engine.agent.fake_groq import completion, last_tool_results, last_user_text, tool_call

_PENDING_BOOK = re.compile(r'book_appointment service="([^"]+)", start="([^"]+)"')


def receptionist(request: dict[str, Any]) -> dict[str, Any]:
    messages = request["messages"]
    summary = messages[1]["content"]
    user = last_user_text(request).casefold()
    if messages[-1]["role"] == "tool":
        result = last_tool_results(request)[-1]
        if result.get("status") == "confirmation_required":
            return completion(f"Confirma {result['summary']}? Responda *sim* para confirmar.")
        if result.get("status") == "booked":
            booking = result["booking"]
            return completion(f"Pronto! ✅ {booking['service']} marcada para {booking['label']}.")
        if result.get("error") == "slot_taken":
            alternative = result["alternatives"][0]
            return completion(
                f"Poxa, esse horário acabou de ser reservado. Posso marcar {alternative['label']}?"
            )
        if "slots" in result:
            if "primeiro" in user:
                first = result["slots"][0]["start"]
                return completion(
                    None, [tool_call("book_appointment", {"service": "consulta", "start": first})]
                )
            offered = "; ".join(s["label"] for s in result["slots"][:3])
            return completion(f"Tenho estes horários para consulta: {offered}. Qual prefere?")
        return completion("Certo! Posso ajudar em algo mais?")
    pending = _PENDING_BOOK.search(summary)
    if pending and confirms(user):
        service, start = pending.groups()
        return completion(
            None, [tool_call("book_appointment", {"service": service, "start": start})]
        )
    if "consulta" in user or "primeiro" in user or "marcar" in user:
        return completion(None, [tool_call("list_available_slots", {"service": "Consulta"})])
    return completion("Olá! Sou o assistente da Clínica Sorriso. Como posso ajudar?")
