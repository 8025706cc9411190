"""Redis answers bytes (the clients run without `decode_responses`, because queued bodies are
raw bytes and must stay byte for byte as WAHA signed them); the rest of the code wants str."""

from __future__ import annotations

from typing import Any


def as_text(value: Any) -> str:
    """`value` as str: bytes decoded as UTF-8, anything else through str()."""
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)
