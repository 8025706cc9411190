"""The simulator's configuration: its own command-line flags (it is a dev tool, not the
product, so it has no entry in the product's settings)."""

from __future__ import annotations

from dataclasses import dataclass, field

# WAHA's session statuses (PASSKEY_* exist too but no flow here needs them).
SESSION_STATUSES = ("STOPPED", "STARTING", "SCAN_QR_CODE", "WORKING", "FAILED")

RETRY_POLICIES = ("constant", "linear", "exponential")

# Events the simulator can produce; `*` in --events subscribes to all of them, as in WAHA.
KNOWN_EVENTS = ("message", "message.any", "message.ack", "session.status")


@dataclass(frozen=True, slots=True)
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 3000  # WAHA's default port
    webhook_urls: tuple[str, ...] = ()
    events: frozenset[str] = frozenset(KNOWN_EVENTS)
    hmac_key: str | None = None
    api_key: str | None = None
    # WAHA's defaults: constant policy, 2 s apart, 15 retries after the first attempt.
    retries_policy: str = "constant"
    retries_delay: float = 2.0
    retries_attempts: int = 15
    # WAHA's axios sets no timeout; the team measured a silent request being dropped and sent
    # again after about 8 s (ENGINEERING.md), so a request that hangs longer counts as failed.
    webhook_timeout: float = 8.0
    webhook_concurrency: int = 64
    # "lean" (transport.py) or "httpx" (httpx's default transport, several times slower here).
    webhook_transport: str = "lean"
    # Bound on deliveries in progress (including ones waiting to retry); a full simulator
    # makes the API caller wait instead of growing without limit.
    max_pending: int = 20_000
    session: str = "default"
    initial_status: str = "WORKING"
    engine: str = "GOWS"
    # WAHA's edition: PLUS sends files (sendImage, sendFile, sendVoice); CORE answers those
    # with 422 AvailableInPlusVersion, as the free WAHA does.
    tier: str = "PLUS"
    waha_version: str = "2025.11.2"
    me_phone: str = "5511900000001"
    me_push_name: str = "wsm simulator"
    me_lid: str = "200000000000001@lid"
    metadata: dict[str, str] = field(default_factory=dict)
    # WAHA waits up to 5 s (polling every 0.5 s) for the session to be WORKING before it
    # answers 422 (SessionManager.waitUntilStatus).
    session_wait: float = 5.0
    # After a send: DEVICE ack after ack_delay, READ ack read_delay later (0 disables READ).
    ack_delay: float = 0.05
    read_delay: float = 0.2
    # Emit session.status STARTING then WORKING at start, as WAHA does when a session starts.
    announce: bool = True
    history_limit: int = 1000
    # Serve the per-message routes as raw ASGI (fastpath.py); off: through FastAPI.
    fast_path: bool = True

    @property
    def user_agent(self) -> str:
        return f"WAHA/{self.waha_version}"

    def subscribed(self, event: str) -> bool:
        return event in self.events
