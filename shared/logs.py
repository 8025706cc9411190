"""JSON-lines logging for every wsm process.

One line per record: time, level, logger, message, and any `extra={...}` fields (event ids,
conversation tokens). Bodies and keys are never logged: callers pass ids, not payloads.

Phone numbers are kept out of log lines (LGPD): every WhatsApp chat id in the line (`5511…@c.us`,
`…@s.whatsapp.net`, `…@lid`), in any field, the message or a traceback, is written as its
digest `h:<12 hex>` (see `log_digest`), and a field that names a customer (`conversation`,
`chat_id`, `phone`, ...) is digested whole when it holds no chat id. The digest is the same in
every process, so one customer's lines can still be followed: an operator computes
`log_digest("5511987650001@c.us")` to find them. It is a pseudonym, not an anonymisation: whoever
holds the logs and guesses a number can confirm it. A bare number inside free text (not a
chat id, not in a customer field) is not recognised: callers log chat ids, not numbers.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import time
from typing import Any

import orjson

# Attributes every LogRecord has; anything else on a record came from `extra=`.
# uvicorn adds `color_message` (the message with ANSI colours): noise in a JSON line.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


# Fields whose whole value names a customer.
CUSTOMER_FIELDS = frozenset({"conversation", "chat_id", "chat", "phone", "customer", "token"})
# A WhatsApp user id: digits (a device suffix maybe) at a user server. Groups (`@g.us`) and
# channels name no person and stay readable.
_CHAT_ID = re.compile(r"\d+(?::\d+)?@(?:c\.us|s\.whatsapp\.net|lid)\b")


def log_digest(value: str) -> str:
    """The pseudonym of a chat id (or any customer value) in log lines."""
    return "h:" + hashlib.sha256(value.encode()).hexdigest()[:12]


def redact(value: str) -> str:
    """`value` with every chat id in it replaced by its digest."""
    return _CHAT_ID.sub(lambda found: log_digest(found.group(0)), value)


def _redact_field(name: str, value: Any) -> Any:
    if isinstance(value, str):
        cleaned = redact(value)
        if name in CUSTOMER_FIELDS and cleaned == value and value:
            return log_digest(value)
        return cleaned
    if isinstance(value, dict):
        return {k: _redact_field(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_redact_field(name, v) for v in value]
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    # Anything else is written as str() (orjson's default): redact that text.
    return _redact_field(name, str(value))


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = _redact_field(key, value)
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(line, default=str).decode()


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    # The level is the handler's too: a library that sets its own logger's level (bm25s sets
    # DEBUG when imported) would otherwise write its debug lines past the root's level, since
    # a record that a logger lets through reaches the root's handlers without the root's check.
    handler.setLevel(level.upper())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log would print every webhook; our own metrics and logs cover it.
    logging.getLogger("uvicorn.access").disabled = True
