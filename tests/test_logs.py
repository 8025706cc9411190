"""JSON log lines: one object per record, with `extra` fields, and nothing else."""

from __future__ import annotations

import logging

import orjson

from shared.logs import JsonLineFormatter


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
    assert line["conversation"] == "default|5511@c.us"
    assert str(line["ts"]).endswith("Z")


def test_uvicorns_coloured_copy_of_the_message_is_dropped() -> None:
    line = format_record("Started", color_message="\x1b[32mStarted\x1b[0m")
    assert "color_message" not in line
