"""Which brains are given the conversation's history (issue 19): the menus answer from the
state's step and the message and say they do not read it; the AI agent does; a brain that does
not say is given it; a business's brain decides for its own sessions."""

from __future__ import annotations

from typing import Any, cast

from engine.agent.breaker import CircuitBreaker
from engine.agent.calendar import default_calendar
from engine.agent.fallback import FallbackBrain
from engine.agent.groq_brain import GroqBrain
from engine.agent.menu import SchedulingMenuBrain
from engine.agent.texts import load_agent_texts
from engine.brain import Brain, Decision, Turn, reads_history
from engine.businesses import Business, Businesses, SessionBrain
from engine.identity import Conversation
from engine.menu_brain import MenuBrain
from engine.texts import load_texts

ANA = Conversation("default", "5511987650001@c.us")
CLINIC = Conversation("clinica", "5511987650001@c.us")


class Unsaid:
    """A brain that does not say whether it reads the history."""

    async def decide(self, turn: Turn) -> Decision:
        return Decision()


def menu() -> MenuBrain:
    return MenuBrain(load_texts(), business="Clínica", services=["Consulta"])


def scheduling_menu() -> SchedulingMenuBrain:
    # Any: the agenda is not touched by reads_history.
    agenda = cast(Any, object())
    return SchedulingMenuBrain(
        load_texts(), load_agent_texts("pt-BR"), agenda, business="Clínica", services=["Consulta"]
    )


def test_the_menus_do_not_read_it_and_an_unsaid_brain_is_given_it() -> None:
    assert reads_history(menu(), ANA) is False
    assert reads_history(scheduling_menu(), ANA) is False
    assert reads_history(Unsaid(), ANA) is True


def test_the_agent_reads_it_and_its_menu_alone_does_not() -> None:
    breaker = CircuitBreaker(failures_to_open=3, reset_seconds=30)
    model = cast(GroqBrain, object())
    assert reads_history(FallbackBrain(model, scheduling_menu(), breaker), ANA) is True
    assert reads_history(FallbackBrain(None, scheduling_menu(), breaker), ANA) is False


def test_each_business_decides_for_its_own_sessions() -> None:
    default = Business("", default_calendar("Loja", ["Venda"]))
    clinic = Business("clinica", default_calendar("Clínica", ["Consulta"]))
    businesses = Businesses(default, {"clinica": clinic})
    brain: Brain = SessionBrain(menu(), {"clinica": Unsaid()}, businesses)
    assert reads_history(brain, ANA) is False  # the default business's menu
    assert reads_history(brain, CLINIC) is True  # the clinic's brain reads it
