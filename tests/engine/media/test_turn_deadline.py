"""A customer's voice note is answered within the worker's handler timeout
(WSM_HANDLER_TIMEOUT_SECONDS) whatever WAHA and Groq do: the file's download and transcription
get only what the turn can spare, and past that the customer gets the menu's audio answer
instead of a turn the worker cancels, retries and in the end dead-letters.

Run on the real worker's consumer slot (its handler timeout, its HandlerContext) with the
product's handler (the engine with the AI agent) and a real Redis. WAHA's /api/files/ is a real
socket server that stalls; WAHA's send side and Groq (transcription and chat) are respx
stand-ins answering as they do. Every time setting is its default divided by SCALE, so the
arithmetic is the defaults' own: 3 downloads of 30 s, 2 transcription requests of 15 s and the
agent's 40 s add up past the handler's 120 s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr, ValidationError

from engine.agent.breaker import BreakerState
from engine.media.fetch import TIMEOUT, MediaFetcher
from engine.parts import media_ingest
from shared.dead_letters import list_dead_letters
from shared.keys import ConversationKeys, ShardKeys, conversation_token, shard_of
from shared.settings import Settings
from tests.engine.agent.fake_groq import FakeGroq, completion
from tests.engine.harness import AgentHarness, FakeWaha, settings_for
from tests.engine.media.support import (
    GROQ,
    KEY,
    OGG,
    TRANSCRIPTIONS_URL,
    VOICE_MIME,
    chat_of,
    groq_text,
    history,
    voice,
)
from tests.shared.test_invalid_settings_commands import run_wsm
from tests.support.metrics import Counted
from tests.worker.support.slots import run_slot

SCALE = 60
DEFAULTS = Settings.model_construct()  # the fields' defaults, whatever the environment says
AUDIO_ANSWER = "ainda não consigo ouvir áudios"
AGENT_ANSWER = "Claro! Para quando você quer a consulta?"


def scaled(seconds: float) -> float:
    return seconds / SCALE


@dataclass
class StalledWaha:
    """WAHA's /api/files/ on a real socket, behind its API key: the first `stalls` requests
    are never answered (the connection stays open and silent, as a stuck WAHA's), later ones
    get the file after `delay` seconds."""

    data: bytes
    mimetype: str
    stalls: int = 1_000_000
    delay: float = 0.0
    requests: list[str] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(request.split(b"\r\n", 1)[0].decode())
            if len(self.requests) <= self.stalls:
                await reader.read()  # silent until the client hangs up
                return
            await asyncio.sleep(self.delay)
            if f"x-api-key: {KEY}".encode() not in request.lower():
                writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
            else:
                head = f"Content-Type: {self.mimetype}\r\nContent-Length: {len(self.data)}\r\n"
                writer.write(b"HTTP/1.1 200 OK\r\n" + head.encode() + b"\r\n" + self.data)
            await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def stalled_waha(
    router: respx.MockRouter,
) -> AsyncIterator[Callable[[StalledWaha], Awaitable[str]]]:
    """Starts StalledWaha servers; each call returns the server's base URL."""
    router.route(host="127.0.0.1").pass_through()
    servers: list[asyncio.Server] = []

    async def start(files: StalledWaha) -> str:
        server = await asyncio.start_server(files.serve, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


class SlowWhisper:
    """Groq's transcription endpoint: each request takes `seconds[i]`; a request past the
    client's timeout (WSM_LLM_TIMEOUT_SECONDS) ends as the client's timeout does."""

    def __init__(self, router: respx.MockRouter, timeout: float, *seconds: float) -> None:
        self.timeout = timeout
        self.seconds = list(seconds)
        self.requests = 0
        router.post(TRANSCRIPTIONS_URL).mock(side_effect=self._handle)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        took = self.seconds.pop(0)
        await asyncio.sleep(min(took, self.timeout))
        if took >= self.timeout:
            raise httpx.ReadTimeout("Groq did not answer in time", request=request)
        return groq_text("quero marcar uma consulta")


def scaled_settings(key_prefix: str, redis_url: str, media_dir: Path, **overrides: Any) -> Settings:
    return settings_for(
        key_prefix,
        redis_url,
        waha_api_key=KEY,
        media_dir=media_dir,
        groq_api_key="gsk_test",
        groq_base_url=GROQ,
        handler_timeout_seconds=scaled(DEFAULTS.handler_timeout_seconds),
        media_fetch_timeout_seconds=scaled(DEFAULTS.media_fetch_timeout_seconds),
        llm_timeout_seconds=scaled(DEFAULTS.llm_timeout_seconds),
        llm_turn_deadline_seconds=scaled(DEFAULTS.llm_turn_deadline_seconds),
        waha_timeout_seconds=scaled(DEFAULTS.waha_timeout_seconds),
        **overrides,
    )


@pytest.fixture
async def product(
    aredis: Any, redis_url: str, key_prefix: str, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[AgentHarness]]]:
    """The product's handler on scaled settings, its files fetched from `files_url`."""
    made: list[AgentHarness] = []

    async def make(files_url: str, **overrides: Any) -> AgentHarness:
        settings = scaled_settings(key_prefix, redis_url, tmp_path / "media", **overrides)
        harness = AgentHarness(aredis, settings, clock=lambda: datetime.now().astimezone())
        made.append(harness)
        service = harness.service
        # The same ingest the service builds, fetching from the stalled server.
        ingest = media_ingest(
            aredis,
            settings.model_copy(update={"waha_url": files_url}),
            library=service.media,
            transcriber=service.transcriber,
        )
        fetcher = ingest.fetcher
        fetcher.backoff_base, fetcher.backoff_max = (
            scaled(fetcher.backoff_base),
            scaled(fetcher.backoff_max),
        )
        await service.media_ingest.aclose()
        service.media_ingest = ingest
        service.engine.tools = replace(service.engine.tools, media=ingest)
        return harness

    yield make
    for harness in made:
        await harness.aclose()


def queue_keys(prefix: str, document: dict[str, Any]) -> ConversationKeys:
    token = conversation_token(*chat_of(document))
    return ShardKeys(shard_of(token, 1), prefix).conversation(token)


async def one_delivery(aredis: Any, key_prefix: str, harness: AgentHarness, document: dict) -> None:
    """The voice note queued as the gateway queues it, then run on a worker's consumer slot
    (the handler's timeout as configured) until its first delivery ended: committed, or failed
    and waiting for its retry. The reply, if any, is then delivered to WAHA."""
    assert await harness.webhook(document)
    keys = queue_keys(key_prefix, document)

    async def delivered_once() -> bool:
        state = await aredis.hget(keys.meta, "state")
        return state is None or state == b"delayed"

    await run_slot(
        aredis,
        key_prefix,
        harness.service,
        delivered_once,
        handler_timeout=harness.settings.handler_timeout_seconds,
    )
    await harness.service.sender.sweep_once()
    await harness.service.sender.drain()


def test_the_defaults_add_up_past_the_handler_timeout_and_the_budget_does_not() -> None:
    """The finding's arithmetic on the real defaults: the turn's own bounds, one after the
    other (the downloads, the transcription's requests, the agent's answer), are longer than
    the handler's timeout. With the budget the file gets what the turn can spare: the handler's
    timeout less WAHA's phone lookup, the agent's answer and a twentieth for Redis."""
    d = DEFAULTS
    fetch = d.media_fetch_attempts * d.media_fetch_timeout_seconds
    transcription = (d.llm_max_retries + 1) * d.llm_timeout_seconds
    assert (fetch, transcription, d.llm_turn_deadline_seconds) == (90, 30, 40)
    assert fetch + transcription + d.llm_turn_deadline_seconds > d.handler_timeout_seconds
    with_key = Settings.model_construct(groq_api_key=SecretStr("gsk_test"))
    assert with_key.turn_reserve_seconds == 10 + 40 + 6
    assert d.turn_reserve_seconds == 10 + 6  # no agent: the menu answers at once
    # What the file may take, then the rest of the turn at its longest: the handler's time.
    budget = with_key.handler_timeout_seconds - with_key.turn_reserve_seconds
    assert budget == 64
    assert budget + with_key.turn_reserve_seconds <= with_key.handler_timeout_seconds


async def test_a_voice_note_from_a_slow_waha_is_answered_in_its_first_delivery(
    aredis: Any, key_prefix: str, router: respx.MockRouter, stalled_waha: Any, product: Any
) -> None:
    """The worst turn of the defaults: WAHA stalls twice and serves the file late on the third
    download, Groq's transcription times out once then answers late, the agent answers late.
    Each step within its own bound, the whole past the handler's timeout."""
    fetch_timeout = scaled(DEFAULTS.media_fetch_timeout_seconds)
    llm_timeout = scaled(DEFAULTS.llm_timeout_seconds)
    files = StalledWaha(OGG, VOICE_MIME, stalls=2, delay=0.9 * fetch_timeout)
    harness = await product(await stalled_waha(files))
    waha = FakeWaha(router)
    whisper = SlowWhisper(router, llm_timeout, llm_timeout, 0.9 * llm_timeout)
    groq = FakeGroq(router)

    async def late_answer(_: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.9 * scaled(DEFAULTS.llm_turn_deadline_seconds))
        return completion(AGENT_ANSWER)

    groq.policy = late_answer
    document = voice()  # its file at WAHA's /api/files/
    await one_delivery(aredis, key_prefix, harness, document)

    keys = queue_keys(key_prefix, document)
    assert await aredis.hgetall(keys.attempts) == {}  # no failed delivery
    assert await list_dead_letters(aredis, 1, key_prefix) == []
    [entry] = [e for e in await history(aredis, key_prefix, document) if e.direction == "in"]
    assert entry.kind == "voice"
    [reply] = waha.to(chat_of(document)[1])
    # The budget ran out during the downloads: the file is recorded as not had in time, the
    # model is not asked, and the customer gets the menu's audio answer.
    assert (entry.media, entry.media_reason, entry.transcript) == (None, "timeout", None)
    assert AUDIO_ANSWER in reply
    assert whisper.requests == 0 and groq.requests == []


async def test_a_waha_that_never_serves_the_file_cannot_turn_the_voice_note_into_a_dead_letter(
    aredis: Any, key_prefix: str, router: respx.MockRouter, stalled_waha: Any, product: Any
) -> None:
    """With more downloads allowed (WSM_MEDIA_FETCH_ATTEMPTS=5, a valid setting) the downloads
    alone outlast the handler's timeout: every delivery would be cancelled in the fetch, and
    the message end in the dead letters unanswered."""
    files = StalledWaha(OGG, VOICE_MIME)
    harness = await product(await stalled_waha(files), media_fetch_attempts=5)
    waha = FakeWaha(router)
    document = voice()  # its file at WAHA's /api/files/
    await one_delivery(aredis, key_prefix, harness, document)

    keys = queue_keys(key_prefix, document)
    assert await aredis.hgetall(keys.attempts) == {}
    [entry] = [e for e in await history(aredis, key_prefix, document) if e.direction == "in"]
    assert (entry.kind, entry.media, entry.media_reason) == ("voice", None, "timeout")
    [reply] = waha.to(chat_of(document)[1])
    assert AUDIO_ANSWER in reply
    assert 1 <= len(files.requests) < 5


async def test_a_prompt_waha_and_groq_are_not_cut_by_the_budget(
    aredis: Any, key_prefix: str, router: respx.MockRouter, stalled_waha: Any, product: Any
) -> None:
    """The budget takes nothing from a turn that fits: the file is stored, transcribed and the
    agent answers from the transcript, in the first delivery."""
    files = StalledWaha(OGG, VOICE_MIME, stalls=0)
    harness = await product(await stalled_waha(files))
    waha = FakeWaha(router)
    whisper = SlowWhisper(router, scaled(DEFAULTS.llm_timeout_seconds), 0.0)
    groq = FakeGroq(router).then(completion(AGENT_ANSWER))
    document = voice()  # its file at WAHA's /api/files/
    await one_delivery(aredis, key_prefix, harness, document)

    assert await aredis.hgetall(queue_keys(key_prefix, document).attempts) == {}
    [entry] = [e for e in await history(aredis, key_prefix, document) if e.direction == "in"]
    assert entry.media is not None and entry.media_reason is None
    assert entry.transcript == "quero marcar uma consulta"
    assert waha.to(chat_of(document)[1]) == [AGENT_ANSWER]
    assert (len(files.requests), whisper.requests, len(groq.requests)) == (1, 1, 1)


async def test_a_transcription_past_the_budget_is_cut_and_the_voice_note_kept(
    aredis: Any, key_prefix: str, router: respx.MockRouter, stalled_waha: Any, product: Any
) -> None:
    """WAHA stalls once and serves the file late: what is left of the budget is shorter than
    Groq's first request, which would time out. The transcription is cut (counted, the breaker
    left as it was), the voice note is stored for an attendant, and the customer gets the
    menu's audio answer."""
    fetch_timeout = scaled(DEFAULTS.media_fetch_timeout_seconds)
    llm_timeout = scaled(DEFAULTS.llm_timeout_seconds)
    files = StalledWaha(OGG, VOICE_MIME, stalls=1, delay=0.8 * fetch_timeout)
    harness = await product(await stalled_waha(files))
    waha = FakeWaha(router)
    whisper = SlowWhisper(router, llm_timeout, llm_timeout, llm_timeout)
    groq = FakeGroq(router)
    cut = Counted("wsm_transcriptions_total", result="failed", reason="turn_deadline")
    timed_out = Counted("wsm_transcriptions_total", result="failed", reason="timeout")
    document = voice()  # its file at WAHA's /api/files/
    await one_delivery(aredis, key_prefix, harness, document)

    assert await aredis.hgetall(queue_keys(key_prefix, document).attempts) == {}
    [entry] = [e for e in await history(aredis, key_prefix, document) if e.direction == "in"]
    assert entry.media is not None and entry.transcript is None
    [reply] = waha.to(chat_of(document)[1])
    assert AUDIO_ANSWER in reply
    assert (whisper.requests, groq.requests) == (1, [])
    assert (cut.delta, timed_out.delta) == (1, 0)
    breaker = harness.service.transcriber.breaker
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


async def test_no_download_runs_past_the_deadline(stalled_waha: Any) -> None:
    """MediaFetcher.fetch(deadline=...): a try is cut at the deadline, no backoff sleeps past it,
    and no try starts once it has passed."""
    files = StalledWaha(OGG, VOICE_MIME)
    fetcher = MediaFetcher(await stalled_waha(files), api_key=KEY, timeout_seconds=30)
    url = "http://localhost:3000/api/files/default/voice.oga"
    try:
        started = time.monotonic()
        fetched = await fetcher.fetch(url, deadline=started + 0.3)
        assert (fetched.data, fetched.reason) == (None, TIMEOUT)
        assert 0.3 <= time.monotonic() - started < 1.0
        assert len(files.requests) == 1  # the backoff would have ended past the deadline
        fetched = await fetcher.fetch(url, deadline=time.monotonic())
        assert (fetched.data, fetched.reason) == (None, TIMEOUT)
        assert len(files.requests) == 1  # nothing sent
    finally:
        await fetcher.aclose()


def test_with_the_agent_the_handler_timeout_must_hold_its_answer() -> None:
    """GROQ_API_KEY set: WSM_HANDLER_TIMEOUT_SECONDS must be more than the agent's deadline and
    WAHA's timeout (and its twentieth for Redis), or the agent alone would outlast the handler.
    Without a key the menu answers at once: the worker's own tests run sub-second timeouts."""
    key = {"groq_api_key": "gsk_test"}
    with pytest.raises(ValidationError, match="WSM_HANDLER_TIMEOUT_SECONDS"):
        Settings(_env_file=None, handler_timeout_seconds=52, **key)  # type: ignore[call-arg]
    Settings(_env_file=None, handler_timeout_seconds=53, **key)  # type: ignore[call-arg]
    Settings(_env_file=None, handler_timeout_seconds=0.2)  # type: ignore[call-arg]
    short = {"llm_turn_deadline_seconds": 5, "waha_timeout_seconds": 2}
    Settings(_env_file=None, handler_timeout_seconds=8, **short, **key)  # type: ignore[call-arg]


def test_a_command_refuses_a_handler_timeout_the_agent_outlasts(tmp_path: Path) -> None:
    done = run_wsm(
        tmp_path,
        {"GROQ_API_KEY": "gsk_test", "WSM_HANDLER_TIMEOUT_SECONDS": "45"},
        "config",
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("wsm config: invalid settings:\n"), done.stderr
    assert "WSM_HANDLER_TIMEOUT_SECONDS (45) must be more than 52.63" in done.stderr
    assert "WSM_LLM_TURN_DEADLINE_SECONDS (40)" in done.stderr
    assert "Traceback" not in done.stderr
