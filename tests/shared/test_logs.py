"""JSON log lines: one object per record, with `extra` fields, and nothing else."""

from __future__ import annotations

import logging
import subprocess
import sys

import orjson

from shared.logs import JsonLineFormatter, log_digest


def format_record(message: str, **extra: object) -> dict[str, object]:
    record = logging.LogRecord("wsm.test", logging.WARNING, __file__, 1, message, None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    line = JsonLineFormatter().format(record)
    assert "\n" not in line
    value: dict[str, object] = orjson.loads(line)
    return value


def test_a_record_is_one_json_object_with_its_extra_fields() -> None:
    line = format_record("queued", event_id="evt_1", conversation="default|5511@c.us")
    assert line["msg"] == "queued"
    assert line["level"] == "warning"
    assert line["logger"] == "wsm.test"
    assert line["event_id"] == "evt_1"
    assert line["conversation"] == "default|" + log_digest("5511@c.us")
    assert str(line["ts"]).endswith("Z")


def test_uvicorns_coloured_copy_of_the_message_is_dropped() -> None:
    line = format_record("Started", color_message="\x1b[32mStarted\x1b[0m")
    assert "color_message" not in line


PHONE = "5511987650001"


def test_no_phone_number_reaches_a_log_line() -> None:
    """Every chat id, in every field, the message and the traceback, is written as a digest;
    customer fields without a chat id (a bare phone) are digested whole."""
    chat = f"{PHONE}@c.us"
    try:
        raise RuntimeError(f"send to {chat} failed")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "wsm.test", logging.ERROR, __file__, 1, "reply to %s dead-lettered", (chat,), exc_info
    )
    extra: dict[str, object] = {
        "conversation": f"default|{chat}",
        "chat_id": f"{PHONE}:12@s.whatsapp.net",
        "phone": PHONE,
        "error": f"HTTP 400: chat {PHONE}@lid unknown",
        "agents": [f"default|{chat}"],
        "event_id": "evt_1",
        "group": "120363025555555555@g.us",
        "status": 400,
    }
    for key, value in extra.items():
        setattr(record, key, value)
    text = JsonLineFormatter().format(record)
    assert PHONE not in text
    line = orjson.loads(text)
    digest = log_digest(chat)
    assert line["conversation"] == f"default|{digest}"
    assert line["msg"] == f"reply to {digest} dead-lettered"
    assert line["chat_id"] == log_digest(f"{PHONE}:12@s.whatsapp.net")
    assert line["phone"] == log_digest(PHONE)
    assert line["error"] == f"HTTP 400: chat {log_digest(PHONE + '@lid')} unknown"
    assert line["agents"] == [f"default|{digest}"]
    assert digest in str(line["exc"])
    # Ids that name no person stay readable.
    assert line["event_id"] == "evt_1" and line["status"] == 400
    assert line["group"] == "120363025555555555@g.us"


def test_a_short_id_is_not_a_prefix_of_a_longer_ones_digest() -> None:
    """`1@c.us` inside `5511987650001@c.us` is not a chat id of its own: one digest, of the
    whole id."""
    line = format_record("x", error="to 5511987650001@c.us")
    assert line["error"] == "to " + log_digest("5511987650001@c.us")
    assert log_digest("1@c.us") not in str(line)


def logged_lines(level: str) -> list[dict[str, object]]:
    """What a process set up with `setup_logging(level)` writes when a library that sets its own
    logger to DEBUG (bm25s does, at import, as the worker's knowledge index loads it) logs."""
    program = (
        "import logging\n"
        "from shared.logs import setup_logging\n"
        f"setup_logging({level!r})\n"
        "import bm25s\n"
        "bm25s.BM25().index(bm25s.tokenize(['consulta de rotina', 'exame de sangue'],"
        " show_progress=False), show_progress=False)\n"
        "logging.getLogger('wsm.test').info('ready')\n"
        "logging.getLogger('wsm.test').debug('detail')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    return [orjson.loads(line) for line in done.stderr.splitlines() if line.strip()]


def test_a_librarys_own_debug_level_does_not_pass_the_configured_level() -> None:
    lines = logged_lines("INFO")
    assert [(line["logger"], line["msg"]) for line in lines] == [("wsm.test", "ready")]


def test_the_debug_level_writes_the_librarys_debug_lines_too() -> None:
    lines = logged_lines("DEBUG")
    levels = {(line["logger"], line["level"]) for line in lines}
    assert ("bm25s", "debug") in levels
    assert ("wsm.test", "debug") in levels
