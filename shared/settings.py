"""The one settings object of wsm.

Read once at start-up (`Settings()`), from the environment or a `.env` file, and passed in
explicitly; nothing else in the code base reads the environment. Secrets have no default.
Every field is documented in README's configuration table and in `.env.example`.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Shortest accepted WSM_API_TOKEN and HMAC key: 32 characters (`openssl rand -hex 32` gives 64).
MIN_SECRET_CHARS = 32
# How far ahead of the gateway's clock a webhook's `timestamp` may be (the replay window's
# other side; gateway/webhook.py).
WEBHOOK_MAX_AHEAD_SECONDS = 300
# What WSM_LOG_LEVEL may be (any case).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# The share of a customer's turn (WSM_HANDLER_TIMEOUT_SECONDS) kept for its own Redis round
# trips and its commit, besides what it waits for (Settings.turn_reserve_seconds): a twentieth,
# 6 s of the default 120.
TURN_MARGIN_SHARE = 0.05


def is_loopback_host(host: str | None) -> bool:
    """localhost, 127.0.0.0/8 or ::1: plain http to these never leaves the machine. Not any
    name under .localhost: whether one resolves to loopback is up to the resolver (glibc asks
    DNS for it), and a secret must not travel in clear text on a guess."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _require_https(name: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return
    raise ValueError(
        f"{name} must be an https:// URL (plain http is accepted only for a loopback host: "
        "localhost, 127.0.0.1, ::1)"
    )


def _check_secret(name: str, value: str) -> None:
    # Spaces do not count: a value padded to length (or all blanks) is not a secret.
    if len(value.strip()) < MIN_SECRET_CHARS:
        raise ValueError(
            f"{name} is too short: at least {MIN_SECRET_CHARS} characters are required "
            f"(generate one with `openssl rand -hex 32`)"
        )


def _business_file_pairs(value: str) -> dict[str, Path]:
    pairs: dict[str, Path] = {}
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        session, sep, path = (s.strip() for s in item.partition("="))
        if not sep or not session or not path:
            raise ValueError(f"WSM_BUSINESS_FILES: {item!r} is not `session=path`")
        if session in pairs:
            raise ValueError(f"WSM_BUSINESS_FILES: session {session!r} is given twice")
        pairs[session] = Path(path)
    return pairs


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        # A rejected value is never echoed: REDIS_URL and the URLs may carry passwords.
        hide_input_in_errors=True,
        # "inf" and "nan" are floats to Python but no setting's value: refused at start, not
        # at the first use (WSM_REMINDER_LEAD_HOURS=inf passed `ge=0` and failed in int()).
        allow_inf_nan=False,
    )

    # --- Redis -------------------------------------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        alias="REDIS_URL",
        description="Redis 7.0+ or Valkey. `redis+cluster://host:port` selects Redis Cluster.",
    )
    key_prefix: str = Field(
        "wsm",
        alias="WSM_KEY_PREFIX",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Prefix of every Redis key, so several deployments can share one Redis.",
    )
    queue_shards: int = Field(
        1,
        alias="WSM_QUEUE_SHARDS",
        ge=1,
        le=1024,
        description=(
            "How many queue shards (Redis Cluster hash tags) conversations are spread over. "
            "1 on a single Redis; on Redis Cluster a few per master. Must be the same for the "
            "gateway and the workers and must not change while messages are queued."
        ),
    )

    # --- Gateway -----------------------------------------------------------------------------
    webhook_hmac_key: SecretStr | None = Field(
        None,
        alias="WEBHOOK_HMAC_KEY",
        description="WAHA's HMAC key; several separated by commas while a key is rotated.",
    )
    allow_unsigned: bool = Field(
        False,
        alias="WSM_ALLOW_UNSIGNED",
        description="Development only: accept webhooks without a signature when no key is set.",
    )
    webhook_redis_timeout_ms: float = Field(
        50,
        alias="WSM_WEBHOOK_REDIS_TIMEOUT_MS",
        gt=0,
        description="Deadline for the webhook's Redis round trip; past it the event is spooled.",
    )
    max_body_bytes: int = Field(
        1024 * 1024,
        alias="WSM_MAX_BODY_BYTES",
        gt=0,
        description="Largest webhook body accepted (413 above); nginx's client_max_body_size too.",
    )
    dedupe_ttl_seconds: int = Field(
        24 * 3600,
        alias="WSM_DEDUPE_TTL_SECONDS",
        gt=0,
        description=(
            "How long an event id (and a message id) is remembered to drop WAHA's repeats. At "
            f"least WSM_WEBHOOK_MAX_AGE_SECONDS + {WEBHOOK_MAX_AHEAD_SECONDS}, or a replayed "
            "webhook would be queued again."
        ),
    )
    webhook_max_age_seconds: int = Field(
        3600,
        alias="WSM_WEBHOOK_MAX_AGE_SECONDS",
        gt=0,
        description=(
            "A signed event whose `timestamp` is older than this (or more than "
            f"{WEBHOOK_MAX_AHEAD_SECONDS} s ahead) is "
            "answered 200 `stale` and not stored: a captured webhook cannot be replayed. It must "
            "outlast WAHA's retries, or an event first delivered by a late retry is lost: compose "
            "sets `5400` for its exponential retries (about 70 minutes; docs/operations.md, "
            '"Configuring WAHA").'
        ),
    )
    spool_dir: Path = Field(
        Path("var/spool"),
        alias="WSM_SPOOL_DIR",
        description="Local, fsync'd spool for events accepted while Redis is down or slow.",
    )
    # --- Gateway: spool limits and serving (gateway/) ----------------------------------------
    spool_timeout_ms: float = Field(
        1000,
        alias="WSM_SPOOL_TIMEOUT_MS",
        gt=0,
        description=(
            "Deadline for one spool write (write + fsync) once started; a disk stalled past it "
            "answers 503. A spool that cannot be written at all answers 503 at once."
        ),
    )
    spool_max_bytes: int = Field(
        1024 * 1024 * 1024,
        alias="WSM_SPOOL_MAX_BYTES",
        gt=0,
        description="Spool size per gateway process past which webhooks get 503 (disk guard).",
    )
    gateway_host: str = Field(
        "0.0.0.0",
        alias="WSM_GATEWAY_HOST",
        description="Address `wsm gateway` listens on (`--host` overrides).",
    )
    gateway_port: int = Field(
        8080,
        alias="WSM_GATEWAY_PORT",
        ge=1,
        le=65535,
        description="Port `wsm gateway` listens on (`--port` overrides).",
    )
    gateway_workers: int = Field(
        1,
        alias="WSM_GATEWAY_WORKERS",
        ge=1,
        le=64,
        description="Gateway processes (`--workers` overrides); /metrics reports all of them.",
    )
    gateway_metrics_dir: Path | None = Field(
        None,
        alias="WSM_GATEWAY_METRICS_DIR",
        description="prometheus multiprocess directory (emptied at start); unset: a temp dir.",
    )

    # --- Conversation engine: WAHA's API (engine/) ---------------------------------------------
    waha_url: str = Field(
        "http://127.0.0.1:3000",
        alias="WAHA_URL",
        description="Base URL of WAHA's HTTP API (sendText, sendSeen, typing, lids).",
    )
    waha_api_key: SecretStr | None = Field(
        None,
        alias="WAHA_API_KEY",
        description="WAHA's API key, sent as X-Api-Key on every call (none: no header).",
    )
    waha_timeout_seconds: float = Field(
        10.0,
        alias="WSM_WAHA_TIMEOUT_SECONDS",
        gt=0,
        description="Timeout of one WAHA API call; a timed-out send is retried (at-least-once).",
    )
    typing_delay_max_ms: int = Field(
        3000,
        alias="WSM_TYPING_DELAY_MAX_MS",
        ge=0,
        description="Cap on the typing pause before each reply (grows with the text); 0: no pause.",
    )
    typing_ms_per_char: int = Field(
        35,
        alias="WSM_TYPING_MS_PER_CHAR",
        ge=0,
        description="How much the typing pause grows per character of the reply.",
    )
    sends_per_second_per_session: float = Field(
        20.0,
        alias="WSM_SENDS_PER_SECOND_PER_SESSION",
        ge=0,
        description="Rate limit of sendText per WAHA session (token bucket); 0: unlimited.",
    )
    send_burst: int = Field(
        10,
        alias="WSM_SEND_BURST",
        ge=1,
        description="Sends a WAHA session may make at once before the rate limit applies.",
    )
    send_max_attempts: int = Field(
        12,
        alias="WSM_SEND_MAX_ATTEMPTS",
        ge=1,
        description="Attempts of one reply on network errors, 5xx and 429 before its dead letter.",
    )
    send_retry_base_ms: int = Field(
        500,
        alias="WSM_SEND_RETRY_BASE_MS",
        ge=1,
        description="First retry delay of a failed send; doubles each attempt (with jitter).",
    )
    send_retry_max_ms: int = Field(
        60_000,
        alias="WSM_SEND_RETRY_MAX_MS",
        ge=1,
        description="Longest delay between two attempts of one send.",
    )
    send_lock_seconds: float = Field(
        10.0,
        alias="WSM_SEND_LOCK_SECONDS",
        gt=0,
        description=(
            "A conversation's delivery lock (one sender at a time). A live sender renews it "
            "every third of this; a sender that dies holds it this long, so its "
            "conversation's replies wait that much. Keep it well above a Redis round trip."
        ),
    )
    send_max_deliveries: int = Field(
        64,
        alias="WSM_SEND_MAX_DELIVERIES",
        ge=1,
        description=(
            "Conversations one worker process delivers at once; each holds a Redis and a WAHA "
            "connection. The rest wait their turn, still due in Redis (none lost on a crash)."
        ),
    )

    # --- Conversation engine: conversations (engine/) -------------------------------------------
    language: str = Field(
        "pt-BR",
        alias="WSM_LANGUAGE",
        pattern=r"^(pt-BR|en)$",
        description="Language of the texts the product sends: pt-BR or en.",
    )
    texts_file: Path | None = Field(
        None,
        alias="WSM_TEXTS_FILE",
        description="TOML file overriding any of the product's texts for this deployment.",
    )
    business_name: str = Field(
        "nossa empresa",
        alias="WSM_BUSINESS_NAME",
        description="The business's name, used in the greeting.",
    )
    menu_services: str = Field(
        "Consulta,Retorno,Exame",
        alias="WSM_MENU_SERVICES",
        description="Services offered by the menu brain, separated by commas.",
    )
    ignore_groups: bool = Field(
        True, alias="WSM_IGNORE_GROUPS", description="Ignore messages in groups (@g.us)."
    )
    ignore_broadcasts: bool = Field(
        True,
        alias="WSM_IGNORE_BROADCASTS",
        description=(
            "Ignore status@broadcast, broadcast lists and channels (@newsletter). When false they "
            "are kept in the history but never answered: a reply there would be public."
        ),
    )
    lid_cache_seconds: int = Field(
        7 * 24 * 3600,
        alias="WSM_LID_CACHE_SECONDS",
        gt=0,
        description="How long a @lid -> phone number answer from WAHA is cached in Redis.",
    )
    inactivity_close_seconds: int = Field(
        1800,
        alias="WSM_INACTIVITY_CLOSE_SECONDS",
        gt=0,
        description="An open conversation quiet this long is closed (with a goodbye).",
    )
    waiting_timeout_seconds: int = Field(
        3600,
        alias="WSM_WAITING_TIMEOUT_SECONDS",
        gt=0,
        description="A customer waiting this long for a person leaves the line (and is told).",
    )
    history_retention_days: int = Field(
        90,
        alias="WSM_HISTORY_RETENTION_DAYS",
        gt=0,
        description="How long history and state are kept after a conversation's last activity.",
    )
    history_max_messages: int = Field(
        10_000,
        alias="WSM_HISTORY_MAX_MESSAGES",
        ge=0,
        description=(
            "Most messages kept in one conversation's history (0: no cap); older ones are "
            "dropped and counted, so one chat cannot fill Redis within the retention."
        ),
    )
    brain_history_turns: int = Field(
        20,
        alias="WSM_BRAIN_HISTORY_TURNS",
        ge=0,
        description=(
            "How many recent messages the brain is given with each new message (the AI "
            "agent reads them; the menus read none, and none are read for them)."
        ),
    )

    # --- Conversation engine: customers' media (engine/media/) --------------------------------
    media_dir: Path = Field(
        Path("var/media"),
        alias="WSM_MEDIA_DIR",
        description=(
            "Where customers' media files are kept (one folder per conversation, files named "
            "by their SHA-256); a volume in compose. Unused with WSM_MEDIA_S3_BUCKET."
        ),
    )
    media_s3_bucket: str | None = Field(
        None,
        alias="WSM_MEDIA_S3_BUCKET",
        description=(
            "Keep media in this S3-compatible bucket instead of WSM_MEDIA_DIR (credentials "
            "from the standard AWS_* environment)."
        ),
    )
    media_s3_endpoint_url: str | None = Field(
        None,
        alias="WSM_MEDIA_S3_ENDPOINT_URL",
        description="The S3 endpoint for a non-AWS store (MinIO, R2, ...); unset: AWS.",
    )
    media_max_bytes: int = Field(
        16 * 1024 * 1024,
        alias="WSM_MEDIA_MAX_BYTES",
        gt=0,
        description="Largest media file fetched from WAHA and kept; a larger one is not stored.",
    )
    media_retention_days: int = Field(
        90,
        alias="WSM_MEDIA_RETENTION_DAYS",
        gt=0,
        description="How long a stored media file (and its index entry) is kept.",
    )
    media_fetch_timeout_seconds: float = Field(
        30.0,
        alias="WSM_MEDIA_FETCH_TIMEOUT_SECONDS",
        gt=0,
        description=(
            "Timeout of one download of a media file from WAHA. All the tries and the "
            "transcription end within what the customer's turn can spare of "
            'WSM_HANDLER_TIMEOUT_SECONDS (docs/conversations.md, "Media").'
        ),
    )
    media_fetch_attempts: int = Field(
        3,
        alias="WSM_MEDIA_FETCH_ATTEMPTS",
        ge=1,
        description="Downloads tried (network errors, 5xx) before a file is recorded unavailable.",
    )
    media_send_wait_seconds: float = Field(
        10.0,
        alias="WSM_MEDIA_SEND_WAIT_SECONDS",
        ge=0,
        description=(
            "How long POST /api/conversations/…/media waits for WAHA's outcome of the file it "
            "queued: 201 sent, 422 waha_plus_required, or 202 queued when it is still pending."
        ),
    )
    media_files_refused_seconds: int = Field(
        3600,
        alias="WSM_MEDIA_FILES_REFUSED_SECONDS",
        ge=1,
        description=(
            "After WAHA refused a file as a WAHA Plus feature, how long its session is "
            "remembered as one that cannot send files (the API refuses files at once meanwhile)."
        ),
    )

    # --- Conversation engine: waiting line (engine/) --------------------------------------------
    conversations_per_agent: int = Field(
        3,
        alias="WSM_CONVERSATIONS_PER_AGENT",
        ge=1,
        description="Conversations one agent handles at once (capacity = agents online x this).",
    )
    auto_assign: bool = Field(
        True,
        alias="WSM_AUTO_ASSIGN",
        description=(
            "Give the longest-waiting conversation to an agent as soon as one is free (agents "
            "put online by the API; the console's attendants take by hand)."
        ),
    )
    position_notice_interval_seconds: float = Field(
        60.0,
        alias="WSM_POSITION_NOTICE_INTERVAL_SECONDS",
        ge=0,
        description="At most one 'your place in line' notice per customer per this interval "
        "(reaching the front is always told).",
    )
    default_handling_seconds: int = Field(
        300,
        alias="WSM_DEFAULT_HANDLING_SECONDS",
        gt=0,
        description="Assumed handling time per conversation until real ones are measured.",
    )

    # --- Operator API (api/) ---------------------------------------------------------------------
    api_token: SecretStr | None = Field(
        None,
        alias="WSM_API_TOKEN",
        description="Bearer token of the operator API (`wsm api` refuses to start without one).",
    )
    api_host: str = Field("127.0.0.1", alias="WSM_API_HOST", description="Operator API address.")
    api_port: int = Field(8081, alias="WSM_API_PORT", ge=1, le=65535, description="Its port.")

    # --- Worker fleet (worker/) -----------------------------------------------------------------
    worker_processes: int = Field(
        2,
        alias="WSM_WORKER_PROCESSES",
        ge=1,
        le=256,
        description="Worker processes the fleet's supervisor runs (`wsm worker --processes`).",
    )
    worker_concurrency: int = Field(
        16,
        alias="WSM_WORKER_CONCURRENCY",
        ge=1,
        le=1024,
        description="Conversations each worker process handles at once (`--concurrency`).",
    )
    worker_handler: str = Field(
        "engine.agent.service:create",
        alias="WSM_WORKER_HANDLER",
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
        description=(
            "`module:attr` of the message handler (`--handler`): an async callable "
            "`(event, ctx)`, or a factory `(HandlerSetup)` returning one. The default is the "
            "conversation engine with the AI agent (the scheduling menu without GROQ_API_KEY)."
        ),
    )
    worker_metrics_host: str = Field(
        "0.0.0.0", alias="WSM_WORKER_METRICS_HOST", description="Address of the fleet's /metrics."
    )
    worker_metrics_port: int = Field(
        9091,
        alias="WSM_WORKER_METRICS_PORT",
        ge=0,
        le=65535,
        description="Port of the fleet's /metrics, one endpoint for all its processes; 0: off.",
    )
    worker_metrics_dir: Path | None = Field(
        None,
        alias="WSM_WORKER_METRICS_DIR",
        description=(
            "prometheus multiprocess directory of the fleet (emptied at start); "
            "a new temp dir if unset."
        ),
    )
    worker_fleet_id: str | None = Field(
        None,
        alias="WSM_WORKER_FLEET_ID",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description=(
            "Names this fleet's heartbeats for `wsm worker --check`; the host name when unset "
            "(one fleet per container)."
        ),
    )
    lease_seconds: float = Field(
        30,
        alias="WSM_LEASE_SECONDS",
        ge=0.5,
        description=(
            "A worker's lease on a conversation; renewed every third of it while a handler "
            "runs. A crashed worker's message is handled again within this plus one reaper "
            "interval."
        ),
    )
    reaper_interval_seconds: float = Field(
        2,
        alias="WSM_REAPER_INTERVAL",
        gt=0,
        description="How often expired leases, due retries and stray claims are looked for.",
    )
    max_attempts: int = Field(
        5,
        alias="WSM_MAX_ATTEMPTS",
        ge=1,
        description="Attempts before a message goes to the dead-letter list (`wsm dlq`).",
    )
    dead_letters_max: int = Field(
        10000,
        alias="WSM_DEAD_LETTERS_MAX",
        ge=1,
        description=(
            "Dead letters kept per queue shard, and replies per shard's outbox dead-letter list; "
            "the oldest beyond it are dropped and counted (`wsm_dlq_dropped_total{list}`). The "
            "booking webhook's given-up events keep the same limits (dropped ones are logged)."
        ),
    )
    dead_letter_days: float = Field(
        30,
        alias="WSM_DEAD_LETTER_DAYS",
        gt=0,
        description=(
            "Dead letters older than this are dropped (and counted): when the next one arrives "
            "on their shard, and by the workers' reaper once a minute."
        ),
    )
    retry_backoff_seconds: float = Field(
        1,
        alias="WSM_RETRY_BACKOFF_SECONDS",
        ge=0,
        description="Wait before a failed message is tried again; doubles with each attempt.",
    )
    retry_backoff_max_seconds: float = Field(
        300, alias="WSM_RETRY_BACKOFF_MAX_SECONDS", ge=0, description="Cap of that wait."
    )
    claim_batch: int = Field(
        10,
        alias="WSM_CLAIM_BATCH",
        ge=1,
        le=1000,
        description=(
            "Most messages handled per turn of a conversation before it goes to the back of the "
            "line (fairness: a busy chat cannot starve the others)."
        ),
    )
    handler_timeout_seconds: float = Field(
        120,
        alias="WSM_HANDLER_TIMEOUT_SECONDS",
        gt=0,
        description=(
            "A handler running longer is cancelled and its message retried. With GROQ_API_KEY it "
            "must exceed WSM_LLM_TURN_DEADLINE_SECONDS + WSM_WAHA_TIMEOUT_SECONDS by more than a "
            "twentieth of itself (52.63 s with their defaults); what a customer's turn does not "
            "need of it is what their file (download, transcription) may take."
        ),
    )
    shutdown_grace_seconds: float = Field(
        30,
        alias="WSM_SHUTDOWN_GRACE_SECONDS",
        ge=0,
        description="On SIGTERM, how long in-flight messages may take to finish.",
    )
    heartbeat_interval_seconds: float = Field(
        5,
        alias="WSM_HEARTBEAT_INTERVAL",
        gt=0,
        description="How often each worker process and the supervisor write their heartbeat.",
    )

    # --- AI agent: the Groq brain (engine/agent/) ---------------------------------------------
    groq_api_key: SecretStr | None = Field(
        None,
        alias="GROQ_API_KEY",
        description="Groq API key. Unset: every conversation runs on the scheduling menu brain.",
    )
    groq_base_url: str = Field(
        "https://api.groq.com",
        alias="GROQ_BASE_URL",
        description="Groq's API base URL; any OpenAI-compatible server with Groq's paths works.",
    )
    groq_model: str = Field(
        "openai/gpt-oss-20b",
        alias="GROQ_MODEL",
        description="The chat model that runs the agent (it must support tool calling).",
    )
    groq_transcribe_model: str = Field(
        "whisper-large-v3-turbo",
        alias="GROQ_TRANSCRIBE_MODEL",
        description=(
            "Groq's speech-to-text model for customers' voice notes and audio "
            "(whisper-large-v3-turbo or whisper-large-v3). Needs GROQ_API_KEY."
        ),
    )
    llm_timeout_seconds: float = Field(
        15.0,
        alias="WSM_LLM_TIMEOUT_SECONDS",
        gt=0,
        description="Timeout of one LLM request; past it the request fails (retried, then menu).",
    )
    llm_max_retries: int = Field(
        1,
        alias="WSM_LLM_MAX_RETRIES",
        ge=0,
        le=5,
        description="Retries of one LLM request on timeouts, network errors, 5xx and short 429s.",
    )
    llm_turn_deadline_seconds: float = Field(
        40.0,
        alias="WSM_LLM_TURN_DEADLINE_SECONDS",
        gt=0,
        description=(
            "Longest a customer waits for the agent's answer to one message (all LLM rounds "
            "and tools); past it the menu answers. Kept under WSM_HANDLER_TIMEOUT_SECONDS "
            "(checked at start)."
        ),
    )
    llm_max_tool_rounds: int = Field(
        5,
        alias="WSM_LLM_MAX_TOOL_ROUNDS",
        ge=1,
        le=20,
        description="Most model calls per customer message (each may call tools).",
    )
    llm_history_token_budget: int = Field(
        2500,
        alias="WSM_LLM_HISTORY_TOKEN_BUDGET",
        ge=0,
        description="Tokens of recent conversation the prompt may carry (estimated); older is cut.",
    )
    llm_max_completion_tokens: int = Field(
        2048,
        alias="WSM_LLM_MAX_COMPLETION_TOKENS",
        ge=64,
        description="max_completion_tokens of one model call (reasoning tokens included).",
    )
    agent_reply_max_chars: int = Field(
        1200,
        alias="WSM_AGENT_REPLY_MAX_CHARS",
        ge=80,
        description="Longest reply the agent may send in one message; longer ones are cut.",
    )
    agent_inbound_max_chars: int = Field(
        4000,
        alias="WSM_AGENT_INBOUND_MAX_CHARS",
        ge=100,
        description=(
            "Characters of one customer message the model is given (the rest is cut, with a "
            "note); the history keeps the whole text."
        ),
    )
    knowledge_dir: Path | None = Field(
        None,
        alias="WSM_KNOWLEDGE_DIR",
        description=(
            "The default business's folder of Markdown/plain-text documents the agent answers "
            'from (docs/agent.md, "Knowledge"). Unset: `knowledge/` beside WSM_CALENDAR_FILE. '
            "A WSM_BUSINESS_FILES business reads `knowledge/<id>/` beside its file (or that "
            "`knowledge/` when no other business reads it)."
        ),
    )
    knowledge_token_budget: int = Field(
        800,
        alias="WSM_KNOWLEDGE_TOKEN_BUDGET",
        ge=0,
        description="Tokens (estimated) of document passages added to each agent turn.",
    )
    knowledge_passages: int = Field(
        3,
        alias="WSM_KNOWLEDGE_PASSAGES",
        ge=1,
        le=20,
        description="Most document passages added to one agent turn (and per search_knowledge).",
    )
    knowledge_check_seconds: float = Field(
        5.0,
        alias="WSM_KNOWLEDGE_CHECK_SECONDS",
        ge=0,
        description=(
            "How often a turn looks for changed documents (a stat per file); changes are "
            "indexed again without a restart."
        ),
    )
    agent_turns_per_minute: int = Field(
        6,
        alias="WSM_AGENT_TURNS_PER_MINUTE",
        ge=0,
        description=(
            "Agent turns one conversation may start per minute; past it the conversation "
            "continues on the menu brain. 0: no limit."
        ),
    )
    agent_tokens_per_day: int = Field(
        60_000,
        alias="WSM_AGENT_TOKENS_PER_DAY",
        ge=0,
        description=(
            "Model tokens (from the responses' `usage`) one conversation may use per day (UTC); "
            "past it the conversation continues on the menu brain. 0: no limit."
        ),
    )
    llm_breaker_failures: int = Field(
        5,
        alias="WSM_LLM_BREAKER_FAILURES",
        ge=1,
        description="Consecutive LLM failures that open the circuit breaker (menu for everyone).",
    )
    llm_breaker_reset_seconds: float = Field(
        30.0,
        alias="WSM_LLM_BREAKER_RESET_SECONDS",
        gt=0,
        description="How long the breaker stays open before one trial request is let through.",
    )

    # --- AI agent: calendar, bookings and their webhook (engine/agent/) ----------------------
    calendar_file: Path | None = Field(
        None,
        alias="WSM_CALENDAR_FILE",
        description=(
            "YAML or TOML business file: services, hours, holidays, teams and the business's "
            "description (config/calendar.example.yaml; with two teams, "
            "config/business.example.yaml). Set, the waiting line follows its opening hours. "
            "Unset: WSM_MENU_SERVICES, Mon-Fri 8h-18h for bookings, the line always open."
        ),
    )
    business_files: str = Field(
        "",
        alias="WSM_BUSINESS_FILES",
        description=(
            "Several businesses, one per WAHA session: comma-separated `session=path` pairs "
            "of business files (the same format as WSM_CALENDAR_FILE), e.g. "
            "`loja=/etc/wsm/loja.yaml,clinica=/etc/wsm/clinica.yaml`. Any other session uses "
            "WSM_CALENDAR_FILE (the default business). Empty: one business for every session."
        ),
    )
    max_bookings_per_customer: int = Field(
        3,
        alias="WSM_MAX_BOOKINGS_PER_CUSTOMER",
        ge=1,
        description="Upcoming bookings one customer may hold at once.",
    )
    reminder_lead_hours: float = Field(
        24.0,
        alias="WSM_REMINDER_LEAD_HOURS",
        ge=0,
        description=(
            "A booking's reminder (1 confirm / 2 reschedule / 3 cancel) is sent this long before "
            "it starts; none for a booking made inside the lead. 0: no reminders."
        ),
    )
    reminder_pace: float = Field(
        4.0,
        alias="WSM_REMINDER_PACE",
        ge=0,
        description=(
            "Reminders per minute per WhatsApp session, at most (queued one at a time). "
            "Conservative on purpose: proactive messages to many chats in a burst are what "
            "gets an unofficial (WAHA) number banned. 0: unpaced (tests only)."
        ),
    )
    booking_webhook_url: str | None = Field(
        None,
        alias="WSM_BOOKING_WEBHOOK_URL",
        description="Where booked / rescheduled / cancelled events are POSTed (unset: none).",
    )
    booking_webhook_secret: SecretStr | None = Field(
        None,
        alias="WSM_BOOKING_WEBHOOK_SECRET",
        description="HMAC-SHA256 key signing the booking webhook (X-Wsm-Signature).",
    )
    booking_webhook_timeout_seconds: float = Field(
        10.0,
        alias="WSM_BOOKING_WEBHOOK_TIMEOUT_SECONDS",
        gt=0,
        description="Timeout of one booking webhook delivery; a timeout is retried.",
    )
    booking_webhook_max_attempts: int = Field(
        12,
        alias="WSM_BOOKING_WEBHOOK_MAX_ATTEMPTS",
        ge=1,
        description="Deliveries of one booking event before it goes to its dead-letter list.",
    )
    booking_webhook_retry_base_ms: int = Field(
        1000,
        alias="WSM_BOOKING_WEBHOOK_RETRY_BASE_MS",
        ge=1,
        description="First retry delay of a failed booking webhook; doubles (with jitter).",
    )
    booking_webhook_retry_max_ms: int = Field(
        300_000,
        alias="WSM_BOOKING_WEBHOOK_RETRY_MAX_MS",
        ge=1,
        description="Longest delay between two deliveries of one booking event.",
    )

    # --- Logging -----------------------------------------------------------------------------
    log_level: str = Field(
        "INFO", alias="WSM_LOG_LEVEL", description="debug, info, warning or error."
    )

    @field_validator("log_level")
    @classmethod
    def _log_level_known(cls, value: str) -> str:
        # Refused here, at start, with the others: logging.setLevel would raise in every part.
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"WSM_LOG_LEVEL must be one of {', '.join(LOG_LEVELS).lower()}")
        return value.upper()

    @field_validator("redis_url")
    @classmethod
    def _redis_url_scheme(cls, value: str) -> str:
        # Messages never quote the URL: it may hold a password.
        if not value.startswith(("redis://", "rediss://", "unix://", "redis+cluster://")):
            raise ValueError(
                "REDIS_URL must start with redis://, rediss://, unix:// or redis+cluster://"
            )
        if value.startswith("unix://"):
            return value
        try:
            parts = urlsplit(value)
            port = parts.port  # raises ValueError on a port that is not a number in range
            host = parts.hostname
        except ValueError:
            raise ValueError(
                "REDIS_URL is malformed (check its host, port and password; a "
                "password with @, : or / must be percent-encoded)"
            ) from None
        if not host:
            raise ValueError("REDIS_URL has no host")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError("REDIS_URL's database (the path after the host) must be a number")
        del port
        return value

    @field_validator("api_token")
    @classmethod
    def _api_token_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value():
            _check_secret("WSM_API_TOKEN", value.get_secret_value())
        return value

    @field_validator("webhook_hmac_key")
    @classmethod
    def _hmac_keys_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            for n, part in enumerate(value.get_secret_value().split(","), start=1):
                if part.strip():
                    _check_secret(f"WEBHOOK_HMAC_KEY (key {n})", part.strip())
        return value

    @field_validator("booking_webhook_secret")
    @classmethod
    def _booking_secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value():
            _check_secret("WSM_BOOKING_WEBHOOK_SECRET", value.get_secret_value())
        return value

    @field_validator("business_files")
    @classmethod
    def _business_pairs(cls, value: str) -> str:
        _business_file_pairs(value)  # refused at start, not at a customer's first message
        return value

    @field_validator("groq_base_url")
    @classmethod
    def _groq_https(cls, value: str) -> str:
        _require_https("GROQ_BASE_URL", value)
        return value

    @model_validator(mode="after")
    def _dedupe_outlasts_the_replay_window(self) -> Settings:
        # A captured webhook replayed after its dedupe marker expired, with a timestamp the
        # window still accepts, would be queued again: the marker must outlive the window.
        needed = self.webhook_max_age_seconds + WEBHOOK_MAX_AHEAD_SECONDS
        if self.dedupe_ttl_seconds < needed:
            raise ValueError(
                f"WSM_DEDUPE_TTL_SECONDS ({self.dedupe_ttl_seconds}) must be at least "
                f"WSM_WEBHOOK_MAX_AGE_SECONDS + {WEBHOOK_MAX_AHEAD_SECONDS} ({needed}): a webhook "
                "replayed after its dedupe marker expired would otherwise be queued again"
            )
        return self

    @model_validator(mode="after")
    def _agent_answers_within_the_handler_timeout(self) -> Settings:
        # After a customer's file, their turn may still wait for WAHA and the agent
        # (turn_reserve_seconds): past the handler's timeout the worker cancels the turn,
        # retries it and in the end dead-letters it unanswered. Without the agent the menu
        # answers at once (and the worker's own tests run sub-second timeouts).
        if self.agent_configured and self.turn_reserve_seconds >= self.handler_timeout_seconds:
            least = (self.llm_turn_deadline_seconds + self.waha_timeout_seconds) / (
                1 - TURN_MARGIN_SHARE
            )
            raise ValueError(
                f"WSM_HANDLER_TIMEOUT_SECONDS ({self.handler_timeout_seconds:g}) must be more "
                f"than {least:.4g}: with GROQ_API_KEY a customer's turn may wait "
                f"WSM_LLM_TURN_DEADLINE_SECONDS ({self.llm_turn_deadline_seconds:g}) for the "
                f"agent and WSM_WAHA_TIMEOUT_SECONDS ({self.waha_timeout_seconds:g}) for WAHA, "
                f"and keeps {TURN_MARGIN_SHARE:.0%} of the timeout for Redis; the rest is what "
                "a customer's file (its download and transcription) may take"
            )
        return self

    @model_validator(mode="after")
    def _booking_webhook_secured(self) -> Settings:
        if self.booking_webhook_url:
            _require_https("WSM_BOOKING_WEBHOOK_URL", self.booking_webhook_url)
            secret = self.booking_webhook_secret
            if secret is None or not secret.get_secret_value():
                raise ValueError(
                    "WSM_BOOKING_WEBHOOK_URL is set without WSM_BOOKING_WEBHOOK_SECRET: the "
                    "booking webhook signs every event and refuses to start without a secret"
                )
        return self

    # --- Derived settings: computed once here, not at each place that needs them ----------
    @property
    def history_retention_seconds(self) -> int:
        """WSM_HISTORY_RETENTION_DAYS in seconds: the TTL of a conversation's keys, of its
        bookings and console records, and the age past which maintenance forgets it."""
        return self.history_retention_days * 24 * 3600

    @property
    def media_retention_seconds(self) -> int:
        return self.media_retention_days * 24 * 3600

    @property
    def agent_configured(self) -> bool:
        """GROQ_API_KEY is set: the AI agent answers and voice notes are transcribed."""
        return self.groq_api_key is not None and bool(self.groq_api_key.get_secret_value())

    @property
    def turn_reserve_seconds(self) -> float:
        """What a customer's turn may still need once their file is fetched and transcribed:
        WAHA's phone lookup (WSM_WAHA_TIMEOUT_SECONDS), the agent's answer
        (WSM_LLM_TURN_DEADLINE_SECONDS, with GROQ_API_KEY) and TURN_MARGIN_SHARE of
        WSM_HANDLER_TIMEOUT_SECONDS for Redis. The file gets the handler's timeout less this
        (engine/media/ingest.py): 64 s of the default 120 with a key, 104 s without."""
        agent = self.llm_turn_deadline_seconds if self.agent_configured else 0.0
        margin = TURN_MARGIN_SHARE * self.handler_timeout_seconds
        return self.waha_timeout_seconds + agent + margin

    @property
    def reminder_lead_ms(self) -> int:
        """WSM_REMINDER_LEAD_HOURS in ms: how long before its start a booking's reminder is due
        (engine/agent/reminders.py); 0: no reminders."""
        return int(self.reminder_lead_hours * 3_600_000)

    @property
    def menu_service_names(self) -> list[str]:
        """WSM_MENU_SERVICES as a list (blank entries dropped)."""
        return [s.strip() for s in self.menu_services.split(",") if s.strip()]

    @property
    def business_file_map(self) -> dict[str, Path]:
        """WSM_BUSINESS_FILES as session -> business file."""
        return _business_file_pairs(self.business_files)

    def hmac_keys(self) -> list[bytes]:
        """Every accepted HMAC key, in the order given (the new key first while rotating)."""
        if self.webhook_hmac_key is None:
            return []
        raw = self.webhook_hmac_key.get_secret_value()
        return [part.strip().encode() for part in raw.split(",") if part.strip()]
