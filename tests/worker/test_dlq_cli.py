"""`wsm dlq` in-process (worker/dlq_cli.py): the text `list` prints for a person, and the exit
status and per-letter answers of `replay` and `drop` when a letter cannot be handled.

test_fleet_dead_letters.py runs the command against a real fleet; these read what it prints
line by line, and take the paths that fleet never does: a conversation that stays busy, a
letter someone else took meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from shared.dead_letters import DeadLetter, drop_dead_letter, list_dead_letters
from shared.keys import ShardKeys
from tests.worker.conftest import Queue
from tests.worker.support.fleet import chat_id
from tests.worker.support.in_process import (
    command_environment,
    has_deadlines,
    record_clients,
    settings_of,
    single_queue,
)
from tests.worker.support.protocol import dead_letter_first_message, keys_of, lease_chat
from worker import dlq_cli

# 2025-11-30T10:53:20.123Z
AT_MS = 1_764_500_000_123


@pytest.fixture
async def queue(redis_url: str, key_prefix: str) -> AsyncIterator[Queue]:
    """The Python around the scripts, on one Redis (the scripts' cluster cases are in
    test_replay_dead_letter_script.py)."""
    async with single_queue(redis_url, key_prefix) as queue:
        yield queue


async def wsm_dlq(queue: Queue, *argv: str, **settings: str) -> int:
    args = dlq_cli.build_parser().parse_args(list(argv))
    return await dlq_cli.run(settings_of(queue, **settings), args)


async def store_letter(queue: Queue, letter_id: str, **header: Any) -> None:
    """A dead letter as the scripts store it: a JSON header line, then the record."""
    fields = {"v": 1, "id": letter_id, "conversation": "default|1@c.us", "at": AT_MS}
    entry = orjson.dumps(fields | header) + b"\nrecord"
    await queue.client.lpush(ShardKeys(0, queue.prefix).dlq, entry)


async def replayable_and_busy(queue: Queue, first_chat: int) -> tuple[str, str]:
    """Two dead letters: one of an idle chat, one of a chat whose next message is being
    handled (and stays so)."""
    idle, busy = chat_id(first_chat), chat_id(first_chat + 1)
    (replayable,) = await dead_letter_first_message(queue, idle, ["a"])
    stuck, _ = await dead_letter_first_message(queue, busy, ["a", "b"])
    await lease_chat(queue, queue.consumer(), busy)
    return replayable, stuck


async def listed_ids(queue: Queue) -> list[str]:
    return [letter.id for letter in await list_dead_letters(queue.client, 1, queue.prefix)]


# --- list ---------------------------------------------------------------------------------


async def test_list_prints_one_line_per_letter_oldest_first(
    queue: Queue, capsys: pytest.CaptureFixture[str]
) -> None:
    traceback = "RuntimeError: handler broke\nTraceback (most recent call last):\n  ..."
    await store_letter(
        queue,
        "evt_b",
        at=AT_MS + 60_000,
        attempts=5,
        reason="failed",
        error=traceback,
        conversation="default|5511@c.us",
    )
    await store_letter(
        queue, "evt_a", attempts=3, reason="lease_expired", error="x" * 150, conversation="c1"
    )
    await store_letter(queue, "evt_c", at=AT_MS + 120_000, reason="invalid", conversation="c2")

    assert await wsm_dlq(queue, "list") == 0

    assert capsys.readouterr().out.splitlines() == [
        f"2025-11-30T10:53:20Z  attempts=3  lease_expired  c1  evt_a  {'x' * 100}",
        "2025-11-30T10:54:20Z  attempts=5  failed         default|5511@c.us  evt_b  "
        "RuntimeError: handler broke",
        "2025-11-30T10:55:20Z  attempts=0  invalid        c2  evt_c  ",
    ]


async def test_list_of_nothing_says_so(queue: Queue, capsys: pytest.CaptureFixture[str]) -> None:
    assert await wsm_dlq(queue, "list") == 0
    assert capsys.readouterr().out == "no dead letters\n"


@pytest.mark.parametrize("command", ["replay", "drop"])
async def test_all_of_nothing_says_so(
    queue: Queue, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """Found by an audit: `--all` with no dead letters printed nothing at all."""
    assert await wsm_dlq(queue, command, "--all") == 0
    assert capsys.readouterr().out == "no dead letters\n"


async def test_list_says_how_many_older_letters_were_dropped(
    queue: Queue, capsys: pytest.CaptureFixture[str]
) -> None:
    await store_letter(queue, "evt_a", attempts=1, reason="failed", error="e")
    await queue.client.hset(ShardKeys(0, queue.prefix).stats, "dead_dropped", 7)

    assert await wsm_dlq(queue, "list", WSM_DEAD_LETTERS_MAX="50", WSM_DEAD_LETTER_DAYS="0.5") == 0

    assert capsys.readouterr().out.splitlines()[1:] == [
        "(7 older dead letters were dropped: at most 50 per shard are kept, for 0.5 days)"
    ]


async def test_list_json_is_one_object_per_line_and_nothing_else(
    queue: Queue, capsys: pytest.CaptureFixture[str]
) -> None:
    await store_letter(queue, "evt_a", attempts=2, reason="failed", error="e\nmore")
    await queue.client.hset(ShardKeys(0, queue.prefix).stats, "dead_dropped", 3)

    assert await wsm_dlq(queue, "list", "--json") == 0

    lines = capsys.readouterr().out.splitlines()
    assert [orjson.loads(line) for line in lines] == [
        {
            "id": "evt_a",
            "conversation": "default|1@c.us",
            "shard": 0,
            "attempts": 2,
            "at": AT_MS,
            "reason": "failed",
            "error": "e\nmore",
        }
    ]


# --- replay and drop: what could not be done ----------------------------------------------


async def test_a_letter_whose_conversation_stays_busy_is_not_replayed_and_fails_the_command(
    queue: Queue, capsys: pytest.CaptureFixture[str]
) -> None:
    chat = chat_id(1)
    ids = await dead_letter_first_message(queue, chat, ["a", "b"])
    await lease_chat(queue, queue.consumer(), chat)  # "b" is being handled, and stays so

    assert await wsm_dlq(queue, "replay", ids[0], "--wait", "0") == 1

    assert capsys.readouterr().out == f"{ids[0]}: busy\n"
    assert await listed_ids(queue) == [ids[0]]


async def test_replay_counts_each_letter_it_could_not_replay(
    queue: Queue, capsys: pytest.CaptureFixture[str]
) -> None:
    """One replayed, one busy, one unknown: each is answered, and the command fails."""
    replayable, stuck = await replayable_and_busy(queue, 2)

    code = await wsm_dlq(queue, "replay", replayable, "evt_unknown", stuck, "--wait", "0")

    assert code == 1
    out, err = capsys.readouterr()
    assert sorted(out.splitlines()) == sorted([f"{replayable}: replayed", f"{stuck}: busy"])
    assert err == "evt_unknown: no such dead letter\n"
    assert await listed_ids(queue) == [stuck]


async def test_a_busy_letter_alone_fails_the_command(
    queue: Queue, capsys: pytest.CaptureFixture[str]
) -> None:
    """No unknown id to fail it: the busy letter itself must make the exit status 1."""
    replayable, stuck = await replayable_and_busy(queue, 4)

    assert await wsm_dlq(queue, "replay", "--all", "--wait", "0") == 1
    assert sorted(capsys.readouterr().out.splitlines()) == sorted(
        [f"{replayable}: replayed", f"{stuck}: busy"]
    )


async def test_replaying_every_letter_succeeds(
    queue: Queue, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = chat_id(6), chat_id(7)
    (a,) = await dead_letter_first_message(queue, first, ["a"])
    (b,) = await dead_letter_first_message(queue, second, ["a"])

    assert await wsm_dlq(queue, "replay", "--all") == 0
    assert sorted(capsys.readouterr().out.splitlines()) == sorted(
        [f"{a}: replayed", f"{b}: replayed"]
    )
    assert await listed_ids(queue) == []


async def test_replay_waits_for_a_busy_conversation_to_finish_its_turn(
    queue: Queue, capsys: pytest.CaptureFixture[str]
) -> None:
    chat = chat_id(8)
    ids = await dead_letter_first_message(queue, chat, ["a", "b"])
    consumer = queue.consumer()
    lease = await lease_chat(queue, consumer, chat)

    replay = asyncio.create_task(wsm_dlq(queue, "replay", ids[0], "--wait", "3"))
    await asyncio.sleep(0.5)  # a few busy answers
    assert not replay.done()
    await consumer.release(lease)

    assert await replay == 0
    assert capsys.readouterr().out == f"{ids[0]}: replayed\n"
    assert (await queue.client.lrange(keys_of(queue, chat).messages, 0, -1))[-1] == ids[0].encode()


@pytest.fixture
def oldest_taken_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another operator replays or drops the oldest letter right after this command listed
    them."""

    async def list_then_lose_one(client: Any, shards: int, prefix: str) -> list[DeadLetter]:
        letters = await list_dead_letters(client, shards, prefix)
        await drop_dead_letter(client, letters[0])
        return letters

    monkeypatch.setattr(dlq_cli, "list_dead_letters", list_then_lose_one)


@pytest.mark.usefixtures("oldest_taken_meanwhile")
@pytest.mark.parametrize(
    ("command", "gone", "done"),
    [("replay", "gone", "replayed"), ("drop", "already gone", "dropped")],
)
async def test_a_letter_gone_before_it_is_handled_fails_the_command(
    command: str, gone: str, done: str, queue: Queue, capsys: pytest.CaptureFixture[str]
) -> None:
    """The letter handled after the lost one, and the unknown id, change nothing to that: each
    failure counts (one success does not make up for it, nor two failures cancel out)."""
    await store_letter(queue, "evt_a")
    await store_letter(queue, "evt_b", at=AT_MS + 1)

    assert await wsm_dlq(queue, command, "evt_a", "evt_b") == 1
    assert capsys.readouterr().out.splitlines() == [f"evt_a: {gone}", f"evt_b: {done}"]

    await store_letter(queue, "evt_c", at=AT_MS + 2)
    assert await wsm_dlq(queue, command, "evt_c", "evt_unknown") == 1
    assert capsys.readouterr() == (f"evt_c: {gone}\n", "evt_unknown: no such dead letter\n")


async def test_drop_deletes_the_named_letters_only(
    queue: Queue, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("evt_a", "evt_b", "evt_c"):
        await store_letter(queue, name)
    assert await wsm_dlq(queue, "drop", "evt_c", "evt_a") == 0
    assert sorted(capsys.readouterr().out.splitlines()) == ["evt_a: dropped", "evt_c: dropped"]
    assert await listed_ids(queue) == ["evt_b"]


# --- main: usage and settings ---------------------------------------------------------------


@pytest.fixture
def environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    command_environment(monkeypatch, tmp_path, redis_url, key_prefix)


@pytest.mark.parametrize(
    "argv", [["replay"], ["drop"], ["replay", "evt_a", "--all"], ["drop", "evt_a", "--all"]]
)
def test_ids_or_all_but_not_both_nor_neither(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        dlq_cli.main(argv)
    assert exited.value.code == 2
    assert "give message ids or --all (not both)" in capsys.readouterr().err


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        dlq_cli.main([])
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("usage: wsm dlq ")


@pytest.mark.usefixtures("environment")
def test_main_runs_the_command_from_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    assert dlq_cli.main(["list"]) == 0
    assert capsys.readouterr().out == "no dead letters\n"
    assert dlq_cli.main(["drop", "evt_unknown"]) == 1
    assert capsys.readouterr().err == "evt_unknown: no such dead letter\n"


async def test_its_calls_do_not_wait_forever_for_redis(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = record_clients(monkeypatch, dlq_cli)
    assert await wsm_dlq(queue, "list") == 0
    assert [has_deadlines(client) for client in made] == [True]
