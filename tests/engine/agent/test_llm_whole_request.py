"""WSM_LLM_TIMEOUT_SECONDS bounds a request to Groq as a whole (engine/agent/llm.py
`whole_request`), not each wait for bytes: a Groq that trickles its answer, each gap far
shorter than the timeout, is cut at the timeout and the menu answers. Groq stood in for by
respx, the answer's body sent a few bytes at a time (fake_groq.py `trickled`)."""

from __future__ import annotations

import time

from tests.engine.agent.chat import Chat
from tests.engine.agent.fake_groq import completion, ratelimit_headers, trickled
from tests.engine.agent.support import ANA
from tests.support.metrics import Counted

MENU_BOOK = "3. Agendar um horário"
TIMEOUT = 0.3
TRICKLE = 3.0  # the whole answer's time: ten timeouts, in gaps of a fortieth of it


def late_answer() -> object:
    return trickled(completion("tarde demais"), seconds=TRICKLE, **ratelimit_headers())


async def test_a_trickled_answer_is_cut_at_the_request_timeout(make_agent, groq) -> None:
    brain = make_agent(llm_timeout_seconds=TIMEOUT).brain
    fallbacks = Counted("wsm_llm_fallbacks_total", reason="timeout")
    timed_out = Counted("wsm_llm_requests_total", result="timeout")
    groq.then(late_answer())
    chat = Chat(ANA).named("Ana")
    started = time.monotonic()
    decision = await chat.say(brain, "oi")
    took = time.monotonic() - started
    assert TIMEOUT <= took < TIMEOUT + 0.5, took
    assert MENU_BOOK in decision.replies[-1] and "tarde demais" not in decision.replies
    assert (fallbacks.delta, timed_out.delta, len(groq.requests)) == (1, 1, 1)


async def test_each_retry_gets_its_own_whole_timeout(make_agent, groq) -> None:
    """WSM_LLM_MAX_RETRIES=1: the repeat is cut at the timeout too, and the turn ends long
    before either answer would have."""
    brain = make_agent(llm_timeout_seconds=TIMEOUT, llm_max_retries=1).brain
    timed_out = Counted("wsm_llm_requests_total", result="timeout")
    groq.then(late_answer(), late_answer())
    chat = Chat(ANA).named("Ana")
    started = time.monotonic()
    decision = await chat.say(brain, "oi")
    took = time.monotonic() - started
    # Two timeouts and one short pause between them (engine/agent/llm.py RETRY_PAUSE_SECONDS).
    assert 2 * TIMEOUT <= took < 2 * TIMEOUT + 0.8, took
    assert MENU_BOOK in decision.replies[-1]
    assert (timed_out.delta, len(groq.requests)) == (2, 2)


async def test_what_is_left_of_the_turn_cuts_a_trickled_answer_first(make_agent, groq) -> None:
    """A request timeout longer than the turn's deadline: the turn's deadline ends the call."""
    brain = make_agent(llm_timeout_seconds=15, llm_turn_deadline_seconds=TIMEOUT).brain
    fallbacks = Counted("wsm_llm_fallbacks_total", reason="timeout")
    groq.then(late_answer())
    chat = Chat(ANA).named("Ana")
    started = time.monotonic()
    decision = await chat.say(brain, "oi")
    assert time.monotonic() - started < TIMEOUT + 0.5
    assert MENU_BOOK in decision.replies[-1] and fallbacks.delta == 1
