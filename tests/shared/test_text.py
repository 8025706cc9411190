"""shared/text.py: Redis answers bytes; the code wants str."""

from __future__ import annotations

from shared.text import as_text


def test_bytes_are_decoded_as_utf8() -> None:
    assert as_text("Olá".encode()) == "Olá"
    assert as_text(bytearray(b"abc")) == "abc"


def test_anything_else_goes_through_str() -> None:
    assert as_text("já") == "já"
    assert as_text(42) == "42"
    assert as_text(1.5) == "1.5"
