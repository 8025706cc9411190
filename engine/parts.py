"""The one place that builds the engine's parts from Settings.

Every process that needs a part of the engine builds it here, so the worker's engine, the
operator API and the tools agree on keys, limits and retention: the worker's handler
(engine/service.py, engine/agent/service.py) builds all of them; the operator API builds the
line coordinator (`coordinator`) and the bookings (`booking_store`) to read and erase them.
Each builder only constructs objects: nothing here talks to Redis or WAHA.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.agent.bookings import BookingStore
from engine.agent.breaker import CircuitBreaker
from engine.agent.calendar import Calendar, load_calendar
from engine.agent.knowledge import BusinessFile, KnowledgeBase, knowledge_folders
from engine.agent.limits import ConversationLimits
from engine.agent.llm import make_client
from engine.assignment import LineCoordinator
from engine.businesses import Businesses, businesses_from, calendar_from
from engine.commands import CommandQueue
from engine.conversation_engine import EngineConfig
from engine.hours import BusinessHours
from engine.media.fetch import MediaFetcher
from engine.media.ingest import MediaIngest
from engine.media.store import DirectoryStore, MediaLibrary, MediaStore, S3Store
from engine.media.transcribe import GroqTranscriber, Transcriber
from engine.menu_brain import MenuBrain
from engine.sender import SenderConfig
from engine.texts import Texts, load_texts
from engine.waha_client import WahaClient
from engine.waiting_line import WaitingLine
from shared.dead_letters import DeadLetterLimits
from shared.keys import MediaKeys
from shared.lean_http import LeanHTTPTransport
from shared.redis_client import RedisClient
from shared.settings import Settings


def engine_config(settings: Settings) -> EngineConfig:
    return EngineConfig(
        prefix=settings.key_prefix,
        shards=settings.queue_shards,
        retention_seconds=settings.history_retention_seconds,
        inactivity_close_seconds=settings.inactivity_close_seconds,
        waiting_timeout_seconds=settings.waiting_timeout_seconds,
        notice_interval_seconds=settings.position_notice_interval_seconds,
        brain_history_turns=settings.brain_history_turns,
        ignore_groups=settings.ignore_groups,
        ignore_broadcasts=settings.ignore_broadcasts,
    )


def sender_config(settings: Settings) -> SenderConfig:
    return SenderConfig(
        prefix=settings.key_prefix,
        shards=settings.queue_shards,
        typing_delay_max_ms=settings.typing_delay_max_ms,
        typing_ms_per_char=settings.typing_ms_per_char,
        sends_per_second=settings.sends_per_second_per_session,
        burst=settings.send_burst,
        max_attempts=settings.send_max_attempts,
        retry_base_ms=settings.send_retry_base_ms,
        retry_max_ms=settings.send_retry_max_ms,
        lock_ms=int(settings.send_lock_seconds * 1000),
        max_deliveries=settings.send_max_deliveries,
        dead_letters=DeadLetterLimits.from_settings(settings),
        files_refused_ms=settings.media_files_refused_seconds * 1000,
    )


def texts(settings: Settings) -> Texts:
    return load_texts(settings.language, settings.texts_file)


def business_texts(settings: Settings) -> tuple[Texts, dict[str, Texts]]:
    """The engine's texts of the default business, and of each session with a business of its
    own: WSM_TEXTS_FILE's, with the business file's `texts` on top (Texts.with_business)."""
    base = texts(settings)
    if settings.calendar_file is None and not settings.business_file_map:
        return base, {}
    businesses = businesses_from(settings)
    by_session = {
        session: base.with_business(business.calendar.texts)
        for session, business in businesses.by_session.items()
        if business.id  # the default file named for a session: the default texts
    }
    return base.with_business(businesses.default.calendar.texts), by_session


def waiting_line(
    redis: RedisClient, settings: Settings, *, calendar: Calendar | None = None
) -> WaitingLine:
    """The line keeps the business file's hours and teams; without a business file
    (WSM_CALENDAR_FILE) it is always open and has no teams. A session with a business of its
    own (WSM_BUSINESS_FILES) has that file's hours and teams (WaitingLine.for_session)."""
    if calendar is None and settings.calendar_file is not None:
        calendar = load_calendar(settings.calendar_file)
    own = businesses_from(settings, default=calendar) if settings.business_file_map else None
    return WaitingLine(
        redis,
        prefix=settings.key_prefix,
        per_agent=settings.conversations_per_agent,
        default_handling_seconds=settings.default_handling_seconds,
        hours=BusinessHours(calendar) if calendar is not None else None,
        teams=calendar.teams if calendar is not None else (),
        sessions={
            session: (BusinessHours(b.calendar), b.calendar.teams)
            for session, b in own.by_session.items()
            if b.id  # the default file named for a session: the default hours already
        }
        if own is not None
        else None,
    )


def command_queue(redis: RedisClient, settings: Settings) -> CommandQueue:
    return CommandQueue(
        redis,
        prefix=settings.key_prefix,
        shards=settings.queue_shards,
        dedupe_ttl_seconds=settings.dedupe_ttl_seconds,
    )


def coordinator(redis: RedisClient, settings: Settings) -> LineCoordinator:
    return LineCoordinator(
        redis,
        waiting_line(redis, settings),
        command_queue(redis, settings),
        shards=settings.queue_shards,
        notice_interval_seconds=settings.position_notice_interval_seconds,
        auto_assign=settings.auto_assign,
    )


def waha_client(settings: Settings) -> WahaClient:
    """WAHA's client on the lean HTTP/1.1 transport (asyncio protocols and httptools' parser,
    under httpx's API): httpx's own pool cost about 1.5 ms of CPU per call at 16 calls in
    flight, the lean one about 0.26 ms (docs/benchmarks.md, end to end). It serves plain
    `http://` and hands any other scheme to httpx's own transport. Its connections are bounded
    by the sender's bound on deliveries (SenderConfig.max_deliveries)."""
    key = settings.waha_api_key.get_secret_value() if settings.waha_api_key else None
    return WahaClient(
        settings.waha_url,
        api_key=key,
        timeout_seconds=settings.waha_timeout_seconds,
        transport=LeanHTTPTransport(),
    )


def transcriber(settings: Settings, *, http_client: Any = None) -> GroqTranscriber | None:
    """Groq's speech to text for voice notes and audio (engine/media/transcribe.py), with the
    chat model's client settings, retries and breaker settings; None without GROQ_API_KEY
    (voice notes then get the menu's "cannot listen to audio yet" answer). It owns its client:
    close it with `aclose()`."""
    key = settings.groq_api_key.get_secret_value() if settings.groq_api_key else ""
    if not key:
        return None
    return GroqTranscriber(
        make_client(
            api_key=key,
            base_url=settings.groq_base_url,
            timeout_seconds=settings.llm_timeout_seconds,
            http_client=http_client,
        ),
        model=settings.groq_transcribe_model,
        breaker=CircuitBreaker(
            failures_to_open=settings.llm_breaker_failures,
            reset_seconds=settings.llm_breaker_reset_seconds,
        ),
        max_retries=settings.llm_max_retries,
        owns_client=True,
    )


def media_library(redis: RedisClient, settings: Settings) -> MediaLibrary:
    """Customers' and agents' files: the store (a folder, or an S3-compatible bucket) and its
    Redis index (engine/media/store.py). The worker (ingest, the sender) and the API (GET and
    POST of media) build the same one."""
    store: MediaStore
    if settings.media_s3_bucket:
        store = S3Store(
            settings.media_s3_bucket,
            endpoint_url=settings.media_s3_endpoint_url,
            max_bytes=settings.media_max_bytes,
        )
    else:
        store = DirectoryStore(settings.media_dir, max_bytes=settings.media_max_bytes)
    return MediaLibrary(
        redis,
        MediaKeys(settings.key_prefix),
        store,
        retention_seconds=settings.media_retention_seconds,
    )


def media_ingest(
    redis: RedisClient,
    settings: Settings,
    *,
    transcriber: Transcriber | None = None,
    library: MediaLibrary | None = None,
) -> MediaIngest:
    """Customers' media in their turn (engine/media/ingest.py): fetched from WAHA (WAHA_URL,
    WAHA_API_KEY), stored in the media library, voice notes and audio given to `transcriber`,
    both within the turn's deadline less what the turn needs after them
    (Settings.turn_reserve_seconds). Close it with `aclose()` (its HTTP client)."""
    key = settings.waha_api_key.get_secret_value() if settings.waha_api_key else None
    fetcher = MediaFetcher(
        settings.waha_url,
        api_key=key,
        timeout_seconds=settings.media_fetch_timeout_seconds,
        max_bytes=settings.media_max_bytes,
        attempts=settings.media_fetch_attempts,
    )
    return MediaIngest(
        library or media_library(redis, settings),
        fetcher,
        transcriber=transcriber,
        admit=conversation_limits(redis, settings).admit_transcription if transcriber else None,
        reserve_seconds=settings.turn_reserve_seconds,
    )


def conversation_limits(redis: RedisClient, settings: Settings) -> ConversationLimits:
    """The AI agent's limits per conversation (engine/agent/limits.py): its turns and tokens,
    and voice notes' transcriptions."""
    return ConversationLimits(
        redis,
        prefix=settings.key_prefix,
        shards=settings.queue_shards,
        turns_per_minute=settings.agent_turns_per_minute,
        tokens_per_day=settings.agent_tokens_per_day,
    )


def menu_brain(settings: Settings) -> MenuBrain:
    """The engine's plain menu (no scheduling): the brain when none is given."""
    return MenuBrain(
        texts(settings), business=settings.business_name, services=settings.menu_service_names
    )


def booking_store(
    redis: RedisClient,
    settings: Settings,
    *,
    calendar: Calendar | None = None,
    on_event: Callable[[], None] | None = None,
    webhook_enabled: bool = False,
    business: str = "",
) -> BookingStore:
    """The bookings. The worker's agent passes its webhook (`webhook_enabled`, `on_event`);
    readers and the erase (the operator API) leave them off."""
    return BookingStore(
        redis,
        calendar or calendar_from(settings),
        prefix=settings.key_prefix,
        max_per_customer=settings.max_bookings_per_customer,
        retention_seconds=settings.history_retention_seconds,
        webhook_enabled=webhook_enabled,
        on_event=on_event,
        business=business,
        # Reminders are scheduled with the booking (engine/agent/reminders.py).
        reminder_lead_ms=settings.reminder_lead_ms,
    )


def knowledge_bases(settings: Settings, businesses: Businesses) -> dict[str, KnowledgeBase]:
    """Each business's knowledge folder, indexed now (business id -> its base; a business
    without a folder has none). The worker's agent and `wsm knowledge check` read the same."""
    folders = knowledge_folders(
        [BusinessFile(b.id, b.file) for b in businesses.all()], settings.knowledge_dir
    )
    return {
        ident: KnowledgeBase(
            folder,
            limit=settings.knowledge_passages,
            token_budget=settings.knowledge_token_budget,
            check_seconds=settings.knowledge_check_seconds,
        )
        for ident, folder in folders.items()
    }
