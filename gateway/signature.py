"""WAHA's webhook signature: `X-Webhook-Hmac` is the lowercase hex HMAC-SHA512 of the raw body.

Verified on the bytes received, never on re-serialised JSON (any re-encoding changes them).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from gateway.errors import SignatureRejected

ALGORITHM = b"sha512"

UNSIGNED_REFUSED = (
    "refusing to start: WEBHOOK_HMAC_KEY is not set. Set it to WAHA's webhook HMAC key "
    "(several separated by commas while rotating), or set WSM_ALLOW_UNSIGNED=1 for development."
)
UNSIGNED_WARNING = (
    "!!! WSM_ALLOW_UNSIGNED=1 and no WEBHOOK_HMAC_KEY: webhooks are NOT verified; anyone who "
    "can reach /webhook can inject events. Development only !!!"
)


class UnsignedRefused(RuntimeError):
    """No HMAC key and unsigned webhooks not explicitly allowed (terminal)."""


def sign(body: bytes, key: bytes) -> str:
    """The `X-Webhook-Hmac` value WAHA sends for `body` under `key`."""
    return hmac.digest(key, body, "sha512").hex()


def verify_signature(
    body: bytes,
    signature: bytes | None,
    algorithm: bytes | None,
    keys: Sequence[bytes],
) -> None:
    """Raise SignatureRejected unless `signature` matches `body` under one of `keys`.

    Every key is tried, each comparison in constant time, so the answer time says nothing about
    how close a forged signature came. Several keys exist only while a key is being rotated.
    """
    if algorithm is not None and algorithm.strip().lower() != ALGORITHM:
        raise SignatureRejected("unsupported X-Webhook-Hmac-Algorithm")
    if not signature:
        raise SignatureRejected("missing X-Webhook-Hmac")
    matched = False
    for key in keys:
        expected = hmac.digest(key, body, "sha512").hex().encode()
        matched |= hmac.compare_digest(expected, signature)
    if not matched:
        raise SignatureRejected("X-Webhook-Hmac does not match the body")
