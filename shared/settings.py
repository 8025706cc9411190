"""The one settings object of wsm.

Read once at start-up (`Settings()`), from the environment or a `.env` file, and passed in
explicitly; nothing else in the code base reads the environment. Secrets have no default.
Every field is documented in README's configuration table and in `.env.example`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
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
        description="How long an event id (and a message id) is remembered to drop WAHA's repeats.",
    )
    spool_dir: Path = Field(
        Path("var/spool"),
        alias="WSM_SPOOL_DIR",
        description="Local, fsync'd spool for events accepted while Redis is down or slow.",
    )

    # --- Logging -----------------------------------------------------------------------------
    log_level: str = Field("INFO", alias="WSM_LOG_LEVEL")

    @field_validator("redis_url")
    @classmethod
    def _redis_url_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://", "redis+cluster://")):
            raise ValueError(
                "REDIS_URL must start with redis://, rediss://, unix:// or redis+cluster://"
            )
        return value

    def hmac_keys(self) -> list[bytes]:
        """Every accepted HMAC key, in the order given (the new key first while rotating)."""
        if self.webhook_hmac_key is None:
            return []
        raw = self.webhook_hmac_key.get_secret_value()
        return [part.strip().encode() for part in raw.split(",") if part.strip()]
