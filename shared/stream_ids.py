"""Redis stream ids that come from outside (a history page's cursor, the console's live channel's
`Last-Event-ID`), checked before they reach Redis: the API, the console and the engine's
history read them with these rules (one place)."""

from __future__ import annotations

import re

# `<ms>-<seq>`, each a 64-bit unsigned integer in ASCII digits. Redis answers a larger one, or a
# range past the last possible id, with an error (a 500 to the client), not with an empty page;
# str.isdigit() would also pass other scripts' digits ("١"), which Redis refuses too.
STREAM_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")
_U64 = 2**64 - 1


def stream_id(value: str) -> tuple[int, int] | None:
    """(ms, seq) of a stream id usable as an exclusive bound (seq 0 when left out; never the
    last possible id), None for anything else."""
    found = STREAM_ID.fullmatch(value)
    if found is None:
        return None
    ms, seq = int(found[1]), int(found[2] or 0)
    return (ms, seq) if ms <= _U64 and seq <= _U64 and (ms, seq) != (_U64, _U64) else None


def history_cursor(value: str) -> bool:
    """A history page's `before` (exclusive): a stream id with ids below it (not 0-0)."""
    return stream_id(value) not in (None, (0, 0))
