"""A handler that keeps failing: its message reaches the dead letters after WSM_MAX_ATTEMPTS,
the chat goes on with its next message, and `wsm dlq` lists, replays and drops it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from tests.support.polling import async_wait_until
from tests.worker.support.fleet import (
    chat_id,
    enqueue_texts,
    handled_ids,
    read_test_log,
    run_wsm,
    scripted_fleet,
    wait_all_handled,
)


async def test_failing_message_is_dead_lettered_and_replayed(
    aredis: Any, redis_url: str, key_prefix: str, workdir: Path
) -> None:
    chat, other = chat_id(0), chat_id(1)
    with scripted_fleet(redis_url, key_prefix, workdir, processes=1, concurrency=2) as fleet:
        sent = await enqueue_texts(
            aredis, key_prefix, {chat: ["fail:fixed", "next"], other: ["fail:never"]}
        )
        bad, following = sent[chat]
        handled = await wait_all_handled(aredis, {chat: [following]}, key_prefix)
        assert handled[chat] == [following]  # the chat went on without the bad message
        deliveries = [
            e for e in await read_test_log(aredis, key_prefix, "started") if e["id"] == bad
        ]
        assert [d["attempt"] for d in deliveries] == [1, 2, 3]  # WSM_MAX_ATTEMPTS=3

        async def listed() -> list[dict[str, Any]] | None:
            result = run_wsm(["dlq", "list", "--json"], fleet.env, workdir)
            assert result.returncode == 0, result.stderr
            letters = [orjson.loads(line) for line in result.stdout.splitlines()]
            return letters if len(letters) == 2 else None

        letters = {letter["id"]: letter for letter in await async_wait_until(listed)}
        assert letters[bad]["attempts"] == 3
        assert letters[bad]["reason"] == "failed"
        assert f"RuntimeError: scripted failure of {bad}" in letters[bad]["error"]
        human = run_wsm(["dlq", "list"], fleet.env, workdir)
        assert bad in human.stdout and "attempts=3" in human.stdout

        # The bug is fixed; replay puts the message back and it is handled, last in its chat.
        await aredis.set(f"{key_prefix}:test:gate:fixed", "1")
        replay = run_wsm(["dlq", "replay", bad], fleet.env, workdir)
        assert replay.returncode == 0, replay.stderr
        assert replay.stdout.strip() == f"{bad}: replayed"
        handled = await wait_all_handled(aredis, {chat: [following, bad]}, key_prefix)
        assert handled[chat] == [following, bad]

        missing = run_wsm(["dlq", "replay", bad], fleet.env, workdir)
        assert missing.returncode == 1
        assert "no such dead letter" in missing.stderr

        dropped = run_wsm(["dlq", "drop", "--all"], fleet.env, workdir)
        assert dropped.returncode == 0, dropped.stderr
        assert run_wsm(["dlq", "list"], fleet.env, workdir).stdout.strip() == "no dead letters"
        assert await handled_ids(aredis, other, key_prefix) == []
        assert fleet.terminate() == 0, fleet.tail()


def test_dlq_usage_errors(workdir: Path) -> None:
    result = run_wsm(["dlq", "replay"], {"PATH": "/usr/bin:/bin"}, workdir)
    assert result.returncode == 2
    assert "give message ids or --all" in result.stderr
