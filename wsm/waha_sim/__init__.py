"""A WAHA stand-in for development, `wsm chat`, tests and load tests.

It answers the part of WAHA's HTTP API that wsm calls (`sendText`, `sendSeen`, `startTyping`,
`stopTyping`, sessions, lids) with WAHA's status codes and shapes (GOWS engine), and sends
webhooks exactly as WAHA does: compact JSON, `X-Webhook-*` headers, HMAC-SHA512 of the body,
WAHA's retry policies. A control API under `/_sim/` plays the customer's side (inbound
messages), shows what was sent to each chat and injects faults.

Layout: `config` (flags as a dataclass), `ids` and `payloads` (WAHA's shapes), `retry`
(WAHA's delay policies), `webhooks` (signed delivery) over `transport` (a lean HTTP/1.1
transport for httpx), `store` (sessions, chats, lids), `faults`, `errors`, `simulator` (the
behaviour), `waha_api` and `control_api` (HTTP routes), `fastpath` (the per-message routes as
raw ASGI), `web`, `app`, `cli`.
"""

from wsm.waha_sim.app import create_app
from wsm.waha_sim.config import SimConfig

__all__ = ["SimConfig", "create_app"]
