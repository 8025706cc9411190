"""One customer cannot run up the bill or degrade everyone (issue 12, section 1): with the
default limits and Groq stood in for, through the real engine and queue protocol.

- a burst already queued is one agent turn;
- at most WSM_AGENT_TURNS_PER_MINUTE turns and WSM_AGENT_TOKENS_PER_DAY tokens per
  conversation; past them the conversation continues on the menu, counted and shown in its
  state, while other customers keep the model;
- a 64 KiB message reaches the model as at most WSM_AGENT_INBOUND_MAX_CHARS characters;
- a 413 from the model fails that message's turn only, never the breaker;
- a WhatsApp message already in the conversation's history is not handled again.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY

from engine.agent.breaker import BreakerState
from engine.history import HistoryKeys, read_page
from engine.state import load_state
from shared.keys import engine_keys_for
from tests.engine.agent.fake_groq import MODEL, completion, error, last_tool_results
from tests.engine.agent.support import book_call

ANA = "5511987650001@c.us"
BIA = "5511987650002@c.us"
MODEL_ANSWER = "Olá! Sou a assistente da Clínica Sorriso. Em que posso ajudar?"


def user_texts(request: dict[str, Any]) -> list[str]:
    return [str(m["content"]) for m in request["messages"] if m["role"] == "user"]


def fallbacks(reason: str) -> float:
    value = REGISTRY.get_sample_value("wsm_llm_fallbacks_total", {"reason": reason})
    return value or 0.0


async def history_of(aredis: Any, prefix: str, chat: str) -> list[Any]:
    conv = engine_keys_for("default", chat, 1, prefix)
    entries, _ = await read_page(aredis, HistoryKeys(conv.history, conv.history_meta), limit=100)
    return entries


async def test_a_flood_from_one_chat_costs_few_model_calls_and_others_keep_the_model(
    harness, groq, waha, aredis, key_prefix
) -> None:
    agent = harness()  # the default limits
    groq.policy = lambda request: completion(MODEL_ANSWER)
    turn_limit_before = fallbacks("turn_limit")

    # 40 messages from Ana arrive while the engine works through them (bursts of 4 between
    # two passes of the worker), and Bia writes once in the middle of it.
    for n in range(10):
        for m in range(4):
            assert await agent.queue(ANA, f"mensagem {4 * n + m + 1}")
        if n == 5:
            assert await agent.queue(BIA, "Oi, quero saber o horário")
        await agent.drain()

    ana_calls = [r for r in groq.requests if "mensagem" in user_texts(r)[-1]]
    bia_calls = [r for r in groq.requests if user_texts(r)[-1] == "Oi, quero saber o horário"]
    assert len(groq.requests) <= 8
    assert len(ana_calls) <= 6 and len(bia_calls) == 1
    # Bia was answered by the model, not by the menu.
    assert waha.to(BIA) == [MODEL_ANSWER]
    # Ana went on on the menu past her limit: counted, and shown in her conversation's state.
    assert fallbacks("turn_limit") > turn_limit_before
    assert waha.to(ANA)[-1] != MODEL_ANSWER
    state = await load_state(aredis, engine_keys_for("default", ANA, 1, key_prefix).state)
    assert state.collected["agent_limit"] == "turn_limit"
    # Every message is in her history, whoever answered it.
    entries = await history_of(aredis, key_prefix, ANA)
    assert [e.text for e in entries if e.direction == "in"] == [
        f"mensagem {n}" for n in range(1, 41)
    ]


async def test_past_the_turn_limit_a_flood_is_shown_the_menu_once_not_once_a_message(
    harness, groq, waha, aredis, key_prefix
) -> None:
    """Messages arriving one by one (each handled before the next: nothing queued behind, so
    no burst): the first 6 reach the model; past the limit the menu answers, once, and the
    rest is recorded unanswered, in order (but for asking for a person), until a minute has
    passed and the model answers again. Found by an audit: every message past the limit got
    the whole menu again (24 menus for 30 messages)."""
    agent = harness()
    groq.policy = lambda request: completion(MODEL_ANSWER)
    limits = agent.parts.limits
    now = [limits.clock_ms()]
    limits.clock_ms = lambda: now[0]
    texts = [f"mensagem {n}" for n in range(1, 31)]
    for text in texts:
        await agent.say(ANA, text)

    assert len(groq.requests) == 6
    replies = waha.to(ANA)
    assert replies[:6] == [MODEL_ANSWER] * 6
    assert 1 <= len(replies[6:]) <= 2  # the menu (after its question for the name, if any)
    state = await load_state(aredis, engine_keys_for("default", ANA, 1, key_prefix).state)
    assert state.collected["agent_limit"] == "turn_limit"
    entries = await history_of(aredis, key_prefix, ANA)
    assert [e.text for e in entries if e.direction == "in"] == texts
    # Asking for a person is answered all the same (the menu, whose last option it is).
    told = len(waha.to(ANA))
    await agent.say(ANA, "quero falar com um atendente")
    assert len(waha.to(ANA)) == told + 1 and "Falar com um atendente" in waha.to(ANA)[-1]

    # A minute on, the model answers again, and the limit is cleared.
    now[0] += 60_000
    await agent.say(ANA, "e agora?")
    assert waha.to(ANA)[-1] == MODEL_ANSWER
    state = await load_state(aredis, engine_keys_for("default", ANA, 1, key_prefix).state)
    assert state.collected["agent_limit"] == ""


async def test_a_burst_already_queued_is_answered_in_one_turn(
    harness, groq, waha, aredis, key_prefix
) -> None:
    agent = harness()
    groq.policy = lambda request: completion("Claro! Para amanhã tenho 10:00 e 11:00.")
    for text in ("oi", "quero marcar", "amanhã"):
        assert await agent.queue(ANA, text)
    await agent.drain()

    [request] = groq.requests
    assert user_texts(request)[-3:] == ["oi", "quero marcar", "amanhã"]
    assert waha.to(ANA) == ["Claro! Para amanhã tenho 10:00 e 11:00."]
    entries = await history_of(aredis, key_prefix, ANA)
    assert [(e.direction, e.text) for e in entries] == [
        ("in", "oi"),
        ("in", "quero marcar"),
        ("in", "amanhã"),
        ("out", "Claro! Para amanhã tenho 10:00 e 11:00."),
    ]


async def bookings(aredis: Any, prefix: str) -> list[Any]:
    return [key async for key in aredis.scan_iter(f"{prefix}:{{cal}}:b:*")]


async def test_a_no_inside_a_burst_ends_the_proposal_before_the_bursts_last_message(
    harness, groq, waha, aredis, key_prefix, now
) -> None:
    """A burst is answered with its last message, so that message alone is read as the answer
    to a proposal. "não, obrigada" then "ok" in one burst booked the slot the customer had
    declined (found by an audit): a message held back now ends the proposal unless it is the
    yes. Nothing is booked; the model's call is asked to confirm again."""
    agent = harness()
    groq.then(book_call(now, "14:00"), completion("Confirma consulta hoje às 14:00?"))
    await agent.say(ANA, "quero uma consulta hoje às 14h")
    groq.then(book_call(now, "14:00"), completion("Confirma consulta hoje às 14:00?"))
    assert await agent.queue(ANA, "não, obrigada")
    assert await agent.queue(ANA, "ok")
    await agent.drain()

    [result] = last_tool_results(groq.requests[-1])
    assert result["status"] == "confirmation_required"
    assert await bookings(aredis, key_prefix) == []
    assert waha.to(ANA)[-1] == "Confirma consulta hoje às 14:00?"


async def test_a_yes_inside_a_burst_keeps_the_proposal_for_the_bursts_last_message(
    harness, groq, waha, aredis, key_prefix, now
) -> None:
    """The other side of the rule: a held-back "sim" leaves the proposal as it was, so a
    burst whose last message is the yes too ("sim", "pode marcar") books once."""
    agent = harness()
    groq.then(book_call(now, "14:00"), completion("Confirma consulta hoje às 14:00?"))
    await agent.say(ANA, "quero uma consulta hoje às 14h")
    groq.then(book_call(now, "14:00"), completion("Marcado!"))
    assert await agent.queue(ANA, "sim")
    assert await agent.queue(ANA, "pode marcar")
    await agent.drain()

    [result] = last_tool_results(groq.requests[-1])
    assert result["status"] == "booked"
    assert len(await bookings(aredis, key_prefix)) == 1


async def test_a_64_kib_message_reaches_the_model_cut_to_4000_characters(
    harness, groq, waha, aredis, key_prefix
) -> None:
    agent = harness()
    groq.policy = lambda request: completion(MODEL_ANSWER)
    text = "".join(f"{n:07d} " for n in range(8192))  # 64 KiB, every slice distinct
    assert len(text) == 64 * 1024
    await agent.say(ANA, text)
    await agent.say(ANA, "e então?")  # the long one is history now: cut there too

    assert len(groq.requests) == 2
    for request in groq.requests:
        long_one = next(t for t in user_texts(request) if t.startswith("0000000 "))
        assert long_one.startswith(text[:4000])
        assert text[4000:4010] not in long_one
        assert "only the first 4000 are shown" in long_one
    assert text[3990:4010] not in groq.sent_text
    # The history keeps the whole text.
    entries = await history_of(aredis, key_prefix, ANA)
    assert entries[0].text == text


async def test_the_daily_token_budget_moves_the_conversation_to_the_menu(
    harness, groq, waha, aredis, key_prefix
) -> None:
    agent = harness(agent_tokens_per_day=1000)  # each answer below costs 869 tokens
    groq.policy = lambda request: completion(MODEL_ANSWER)
    before = fallbacks("token_limit")
    await agent.say(ANA, "oi")
    await agent.say(ANA, "tudo bem?")
    assert len(groq.requests) == 2  # 869, then 1738: the turn that crosses it finishes
    await agent.say(ANA, "quero marcar")
    assert len(groq.requests) == 2
    assert fallbacks("token_limit") == before + 1
    assert waha.to(ANA)[:2] == [MODEL_ANSWER, MODEL_ANSWER]
    assert waha.to(ANA)[2] != MODEL_ANSWER
    state = await load_state(aredis, engine_keys_for("default", ANA, 1, key_prefix).state)
    assert state.collected["agent_limit"] == "token_limit"
    assert await agent.parts.limits.tokens_used(f"default|{ANA}") == 2 * 869
    # Another customer is not affected.
    await agent.say(BIA, "oi")
    assert waha.to(BIA) == [MODEL_ANSWER]


def request_too_large() -> Any:
    return error(
        413,
        f"Request too large for model `{MODEL}` in organization `org_01hx` service tier "
        "`on_demand` on tokens per minute (TPM): Limit 8000, Requested 21900, please reduce "
        "your message size and try again.",
        "tokens",
        "rate_limit_exceeded",
    )


async def test_a_413_fails_that_message_only_and_never_opens_the_breaker(
    harness, groq, waha
) -> None:
    agent = harness()
    before = fallbacks("request_too_large")
    # More 413s in a row than WSM_LLM_BREAKER_FAILURES (5).
    groq.then(*[request_too_large() for _ in range(6)])
    chats = [f"55119876500{n:02d}@c.us" for n in range(10, 16)]
    for chat in chats:
        await agent.say(chat, "um texto enorme")
    assert fallbacks("request_too_large") == before + 6
    assert all(len(waha.to(chat)) == 1 for chat in chats)  # each answered, by the menu
    assert agent.parts.breaker.state is BreakerState.CLOSED
    groq.policy = lambda request: completion(MODEL_ANSWER)
    await agent.say(BIA, "oi")
    assert waha.to(BIA) == [MODEL_ANSWER]


async def test_a_message_already_in_the_history_is_not_handled_again(
    harness, groq, waha, aredis, key_prefix
) -> None:
    agent = harness()
    groq.policy = lambda request: completion(MODEL_ANSWER)
    assert await agent.queue(ANA, "oi", message_id="3EB0AAAA0001")
    await agent.drain()
    # The gateway's and the queue's dedupe markers are gone (their window passed): the same
    # WhatsApp message is queued again.
    async for key in aredis.scan_iter(match=f"{key_prefix}:*seen*"):
        await aredis.delete(key)
    assert await agent.queue(ANA, "oi", message_id="3EB0AAAA0001")
    await agent.drain()

    assert len(groq.requests) == 1
    assert waha.to(ANA) == [MODEL_ANSWER]
    entries = await history_of(aredis, key_prefix, ANA)
    assert [(e.direction, e.text) for e in entries] == [("in", "oi"), ("out", MODEL_ANSWER)]


async def test_a_budget_used_to_the_last_token_is_spent(
    harness, groq, waha, aredis, key_prefix
) -> None:
    """Two answers use the day's budget exactly (2 × 869 tokens): the third message gets the
    menu. Kills: `int(used) >= self.tokens_per_day` -> `>` in admit (one more turn allowed on
    a budget already spent)."""
    agent = harness(agent_tokens_per_day=2 * 869)
    groq.policy = lambda request: completion(MODEL_ANSWER)
    await agent.say(ANA, "oi")
    await agent.say(ANA, "tudo bem?")
    assert await agent.parts.limits.tokens_used(f"default|{ANA}") == 2 * 869
    await agent.say(ANA, "quero marcar")
    assert len(groq.requests) == 2
    assert waha.to(ANA)[2] != MODEL_ANSWER


async def test_token_counts_that_cannot_be_a_use_are_not_counted(aredis, key_prefix) -> None:
    """A usage report of zero or fewer tokens (a model's odd answer) never gives budget back,
    and with no daily budget nothing is written at all. Kills, in add_tokens: the `or` of its
    guard -> `and` (an unlimited deployment writing a key a day per conversation) and
    `tokens <= 0` dropped (a negative report lowering what was used)."""
    from engine.agent.limits import ConversationLimits

    token = f"default|{ANA}"
    limited = ConversationLimits(
        aredis, prefix=key_prefix, shards=1, turns_per_minute=0, tokens_per_day=1000
    )
    await limited.add_tokens(token, 600)
    await limited.add_tokens(token, -500)
    await limited.add_tokens(token, 0)
    assert await limited.tokens_used(token) == 600

    unlimited = ConversationLimits(
        aredis, prefix=f"{key_prefix}-u", shards=1, turns_per_minute=0, tokens_per_day=0
    )
    await unlimited.add_tokens(token, 600)
    assert await aredis.exists(unlimited.tokens_key(token)) == 0
