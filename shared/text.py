"""Text helpers every part shares.

Redis answers bytes (the clients run without `decode_responses`, because queued bodies are raw
bytes and must stay byte for byte as WAHA signed them); the rest of the code wants str
(`as_text`). Customers, attendants and models type with and without accents (`fold`)."""

from __future__ import annotations

import unicodedata
from typing import Any


def as_text(value: Any) -> str:
    """`value` as str: bytes decoded as UTF-8, anything else through str()."""
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def fold(text: str) -> str:
    """Case- and accent-insensitive form, to match what a customer or a model typed."""
    decomposed = unicodedata.normalize("NFKD", text.casefold().strip())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))
