"""The chat completion ChatModel sends (engine/agent/llm.py) is the request the Groq SDK's own
`chat.completions.with_raw_response.create` sends with the same arguments, byte for byte: the
model posts its plain messages and tools without the SDK's per-call `transform` (a CPU cost,
docs/benchmarks.md, AI agent), and this is what says nothing else changed (an SDK upgrade that
adds a field or a header to create() fails here too)."""

from __future__ import annotations

from typing import Any, cast

import httpx
import respx

from engine.agent.context import tool_result_message
from engine.agent.llm import ChatModel, ModelTurn, ToolCall, make_client
from engine.agent.tools import tool_definitions
from tests.engine.agent.fake_groq import COMPLETIONS, GROQ, MODEL, completion, ratelimit_headers

MAX_COMPLETION_TOKENS = 512

# A turn in its second round: the model asked for two tools, their results follow. Accents,
# emoji, quotes and a newline, as customers write them; the assistant's content is null.
ASKED = ModelTurn(
    content="",
    tool_calls=(
        ToolCall(id="fc_1", name="list_services", arguments="{}"),
        ToolCall(id="fc_2", name="find_slots", arguments='{"service_id": "consulta"}'),
    ),
)
MESSAGES = [
    {"role": "system", "content": "Você é a recepcionista da Clínica Sorriso."},
    {"role": "system", "content": "Resumo: cliente novo."},
    {"role": "user", "content": 'Oi! 😊 Quero marcar uma "consulta"\namanhã cedo'},
    ASKED.as_message(),
    tool_result_message("fc_1", "list_services", {"services": [{"id": "consulta"}]}),
    tool_result_message("fc_2", "find_slots", {"slots": ["seg 10:00", "seg 14:30"]}),
]


async def test_the_model_sends_what_the_sdk_create_would(router: respx.MockRouter) -> None:
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=completion("Tenho seg 10:00."), headers=ratelimit_headers())

    router.post(COMPLETIONS).mock(side_effect=answer)
    client = make_client(api_key="gsk_test", base_url=GROQ, timeout_seconds=30)
    model = ChatModel(
        client, model=MODEL, max_retries=0, max_completion_tokens=MAX_COMPLETION_TOKENS
    )
    tools = tool_definitions()
    try:
        sdk = await client.chat.completions.with_raw_response.create(
            model=MODEL,
            # Plain dicts, as the agent's messages and tools are (the params are TypedDicts).
            messages=cast(Any, MESSAGES),
            tools=cast(Any, tools),
            tool_choice="auto",
            max_completion_tokens=MAX_COMPLETION_TOKENS,
            temperature=0.2,
        )
        turn = await model.complete(MESSAGES, tools)
    finally:
        await client.close()
    assert (await sdk.parse()).choices[0].message.content == turn.content == "Tenho seg 10:00."
    by_sdk, by_model = sent
    assert by_model.content == by_sdk.content
    assert (by_model.method, by_model.url) == (by_sdk.method, by_sdk.url)
    assert by_model.headers.multi_items() == by_sdk.headers.multi_items()
