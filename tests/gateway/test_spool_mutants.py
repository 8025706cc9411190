"""The spool's bookkeeping, its replay, the batcher and the intake, on a real disk and a real
Redis: tests written to kill the mutants of gateway/spool.py, replay.py and batcher.py that
survived the mutation runs, fast tests and test_outage.py's real processes alike
(docs/testing.md, "Mutation testing", lists each and the mutant it kills).

What they pin: an event answered "spooled" is replayed even when it arrived after the spool
had drained; the spool's size limit counts what is still to replay, no more and no less; a
replay round trip that failed keeps its batch; a file damaged on disk holds up no waiting
event; an event without an envelope id, spooled twice, is queued once; every event waiting
in the batcher is answered, whether its round trip is cut off, fails, is cancelled or finds
the server too old, and the intake answers even an event the batcher never does; the
replayer outlives its own failures, keeps adopting dead processes' files while idle, and
adopts each of them (another process's events do not hold up new ones)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from prometheus_client import REGISTRY

from gateway import intake as intake_module
from gateway import replay as replay_module
from gateway.batcher import EnqueueBatcher
from gateway.errors import RedisUnavailable, SpoolUnavailable
from gateway.intake import SPOOLED, Intake
from gateway.redis_link import RedisStatus
from gateway.replay import SpoolReplayer
from gateway.spool import Spool
from gateway.spool_file import HEADER, SpoolFile, encode_frame
from shared.embedded_redis import free_port
from shared.enqueue import EnqueueRequest
from shared.events import route_event
from shared.keys import engine_keys_for
from shared.redis_client import RedisClient, connect
from tests.gateway.conftest import gateway_settings, queued_events
from tests.support.polling import async_wait_until
from tests.support.waha import compact, text_message

CHAT = "5511999990301@c.us"


def bodies(n: int, chat: str = CHAT) -> list[bytes]:
    return [compact(text_message(chat, f"m{i}")) for i in range(n)]


async def drain(spool: Spool, per_batch: int = 100) -> list[bytes]:
    """Replay everything as the replayer does once Redis confirmed each batch."""
    replayed: list[bytes] = []
    while (batch := await spool.next_batch(per_batch, 1 << 20)) is not None:
        replayed += [event.body for event in batch.events]
        await spool.mark_replayed(batch)
    return replayed


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("spool-*.wal"))


# --- gateway/spool.py -----------------------------------------------------------------------


async def test_an_empty_or_drained_spool_has_nothing_to_wait_for(tmp_path: Path) -> None:
    """A new event that finds nothing answered before it may go to Redis at once. Kills, in
    wait_replayed: `replayed >= mark` -> `>` and its `return True` -> `False` (the event
    would wait out its whole deadline and be spooled for nothing)."""
    spool = Spool(tmp_path, max_bytes=1 << 30, write_timeout_s=5)
    assert await spool.wait_replayed(30) is True
    for body in bodies(2):
        await spool.append(body, 1)
    await drain(spool)
    assert await spool.wait_replayed(30) is True
    await spool.close()


async def test_events_spooled_after_the_spool_drained_are_replayed_too(tmp_path: Path) -> None:
    """The spool drains (its file is removed), then Redis fails again and more events are
    answered "spooled": they go to a new file, and are replayed. Kills, in _retire: `file is
    self._current` -> `is not` (the next events were appended to the removed file, where no
    replay would ever find them)."""
    spool = Spool(tmp_path, max_bytes=1 << 30, write_timeout_s=5)
    first, later = bodies(2)
    await spool.append(first, 1)
    assert await drain(spool) == [first]
    assert spool.events == 0 and spool_files(tmp_path) == []

    await spool.append(later, 2)

    assert spool.events == 1 and spool.has_backlog
    assert len(spool_files(tmp_path)) == 1
    assert await drain(spool) == [later]
    assert spool.events == 0 and not spool.has_backlog
    assert spool_files(tmp_path) == []
    await spool.close()


async def test_a_replayed_spool_has_room_for_exactly_as_much_again(tmp_path: Path) -> None:
    """WSM_SPOOL_MAX_BYTES counts what is still to replay: once everything is replayed (in
    several batches) the spool takes as much again, and not a byte more. Kills, in
    mark_replayed: the batch's size `end - replayed` -> `end + replayed`, its `-size` ->
    `+size`; and `replayed >= end` -> `>` (the drained file must go at once: a gateway killed
    now leaves nothing to adopt)."""
    events = bodies(4)
    frame = len(encode_frame(events[0], 1))
    assert all(len(encode_frame(body, 1)) == frame for body in events)
    spool = Spool(tmp_path, max_bytes=4 * frame, write_timeout_s=5)
    for body in events:
        await spool.append(body, 1)
    with pytest.raises(SpoolUnavailable):
        await spool.append(events[0], 1)
    [path] = spool_files(tmp_path)

    for _ in range(2):
        batch = await spool.next_batch(2, 1 << 20)
        assert batch is not None and len(batch.events) == 2
        await spool.mark_replayed(batch)
    assert not path.exists()

    for body in events:
        await spool.append(body, 2)
    with pytest.raises(SpoolUnavailable):
        await spool.append(events[0], 2)
    assert spool.events == 4
    await spool.close()


async def test_a_spool_file_damaged_on_disk_is_kept_and_holds_up_no_event(
    tmp_path: Path,
) -> None:
    """A previous incarnation's files, adopted at start; the older one is damaged on disk
    before it is replayed. It cannot be read, so it is left in place for inspection, its
    events stop counting (and stop taking room), the next file is replayed at once, and a new
    event waiting behind them waits only for what can still be replayed. Kills, in _forget:
    its `_account` given the wrong sign, None or too few arguments, `id(file) in
    self._ordered` negated or asked of None, `_advance_replayed(None)`; in next_batch: the
    `_forget` of the unreadable file given None, `keep=False`/`None` or too few arguments,
    and its `continue` -> `break` (the next file's events not offered)."""
    damaged_events, good_events = bodies(3), bodies(2, chat="5511999990302@c.us")
    sizes = []
    for events in (damaged_events, good_events):
        orphan = SpoolFile.create(tmp_path)
        data = b"".join(encode_frame(body, 1) for body in events)
        orphan.append(data, len(events))
        orphan.close()
        sizes.append(len(data))
    damaged, _ = spool_files(tmp_path)
    spool = Spool(tmp_path, max_bytes=sum(sizes), write_timeout_s=5)
    assert await spool.adopt_orphans(at_start=True) == 5
    waiting = asyncio.ensure_future(spool.wait_replayed(30))
    await asyncio.sleep(0)
    # One byte of the first record's body flipped (its checksum no longer matches).
    fd = os.open(damaged, os.O_WRONLY)
    os.pwrite(fd, b"X", HEADER.size + 3)
    os.close(fd)

    batch = await spool.next_batch(100, 1 << 20)

    assert batch is not None and [e.body for e in batch.events] == good_events
    assert damaged.exists()
    assert spool.events == 2 and not waiting.done()
    await spool.mark_replayed(batch)
    assert await waiting is True
    assert not spool.has_backlog and spool.events == 0
    assert spool_files(tmp_path) == [damaged]
    # Its bytes no longer count against the limit: the spool takes as much again.
    for body in damaged_events + good_events:
        await spool.append(body, 2)
    assert spool.events == 5
    await spool.close()


async def _yield_to_the_loop(times: int = 200) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


async def test_a_replayer_waiting_for_work_wakes_for_a_single_event(tmp_path: Path) -> None:
    """The replayer sleeps on an empty spool until an event is spooled: one event is enough
    to wake it. Kills, in _account: `events > 0` -> `> 1` (a lone event would wait for the
    next adoption pass); in wait_for_work: the wait given None or too few arguments."""
    spool = Spool(tmp_path, max_bytes=1 << 30, write_timeout_s=5)
    waiting = asyncio.ensure_future(spool.wait_for_work(60))
    await _yield_to_the_loop()
    assert not waiting.done()

    await spool.append(bodies(1)[0], 1)

    await _yield_to_the_loop()
    assert waiting.done() and waiting.exception() is None
    await spool.close()


async def test_a_drained_spool_lets_its_replayer_sleep_until_its_bound(tmp_path: Path) -> None:
    """Once everything is replayed the replayer's wait blocks again (no busy loop over an
    empty spool), and still ends at its bound, so the replayer gets back to adopting dead
    processes' files. Kills, in next_batch: `events == 0` -> `== 1` (the wake-up never
    cleared: the replayer spins); in wait_for_work: the bound dropped (`None`)."""
    spool = Spool(tmp_path, max_bytes=1 << 30, write_timeout_s=5)
    await spool.append(bodies(1)[0], 1)
    await drain(spool)

    waiting = asyncio.ensure_future(spool.wait_for_work(60))
    await _yield_to_the_loop()
    assert not waiting.done()
    waiting.cancel()
    # The bound: a short one ends the wait with nothing to do (a hang would fail the run).
    await spool.wait_for_work(0.01)
    await spool.close()


async def test_an_unwritable_spool_answers_with_its_error_not_its_deadline(
    tmp_path: Path,
) -> None:
    """A write that fails fails every event of its batch at once, with the disk's error;
    only a stalled disk waits for WSM_SPOOL_TIMEOUT_MS. Kills, in _write_pending: the
    failure not given to the waiters (None, `SpoolUnavailable(None)`, `if entry.done.done()`):
    they would wait out the deadline instead."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    spool = Spool(blocker / "spool", max_bytes=1 << 30, write_timeout_s=60)
    results = await asyncio.gather(
        *(spool.append(body, 1) for body in bodies(3)), return_exceptions=True
    )
    assert [type(r) for r in results] == [SpoolUnavailable] * 3
    assert all("spool not writable" in str(r) for r in results)
    assert spool.last_error is not None and "NotADirectoryError" in spool.last_error
    assert not spool.has_backlog and spool.events == 0
    await spool.close()


# --- gateway/replay.py ----------------------------------------------------------------------


async def test_a_replay_round_trip_that_fails_keeps_its_batch_spooled(
    tmp_path: Path, redis_url: str, key_prefix: str, sync_redis
) -> None:
    """Redis passed the version check and then failed the batch's round trip: the batch stays
    in the spool (it is still the head), and goes into Redis once Redis answers. Kills, in
    _replay: the failure's `return False` -> `True` (the batch marked replayed: lost), the
    success's `return True` -> `False`, and `queued = None` / `sum(None)`."""
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30, write_timeout_s=5)
    events = bodies(2)
    for body in events:
        await spool.append(body, 1)
    settings = gateway_settings(redis_url, key_prefix, tmp_path / "spool")
    batch = await spool.next_batch(100, 1 << 20)
    assert batch is not None

    nobody = connect(f"redis://127.0.0.1:{free_port()}/0")
    try:
        assert await SpoolReplayer(spool, nobody, RedisStatus(), settings)._replay(batch) is False
    finally:
        await nobody.aclose()
    assert spool.events == 2 and spool.has_backlog
    assert queued_events(sync_redis, key_prefix, "default", CHAT) == []

    client = connect(redis_url)
    try:
        assert await SpoolReplayer(spool, client, RedisStatus(), settings)._replay(batch) is True
    finally:
        await client.aclose()
    assert spool.events == 0 and not spool.has_backlog
    queued = queued_events(sync_redis, key_prefix, "default", CHAT)
    assert [q.document()["payload"]["body"] for q in queued] == ["m0", "m1"]
    await spool.close()


async def replay_all(spool: Spool, redis_url: str, settings: Any) -> None:
    """Every spooled batch replayed, each confirmed by Redis."""
    client = connect(redis_url)
    try:
        replayer = SpoolReplayer(spool, client, RedisStatus(), settings)
        while (batch := await spool.next_batch(100, 1 << 20)) is not None:
            assert await replayer._replay(batch) is True
    finally:
        await client.aclose()


async def test_two_spooled_copies_of_an_event_without_an_envelope_id_are_queued_once(
    tmp_path: Path, redis_url: str, key_prefix: str, sync_redis
) -> None:
    """Older WAHA sends no envelope id: a spooled event is then deduplicated by a hash of its
    bytes, as the webhook does, so WAHA's retry spooled next to the first copy is a
    duplicate. Kills, in _request_for: route_event given None for the body."""
    document = text_message(CHAT, "oi")
    del document["id"]
    body = compact(document)
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30, write_timeout_s=5)
    await spool.append(body, 1)
    await spool.append(body, 2)
    settings = gateway_settings(redis_url, key_prefix, tmp_path / "spool")
    await replay_all(spool, redis_url, settings)
    [queued] = queued_events(sync_redis, key_prefix, "default", CHAT)
    assert queued.id == "sha256_" + hashlib.sha256(body).hexdigest()[:32]
    await spool.close()


async def test_a_replayed_receipt_is_settled_at_the_door_and_counted(
    tmp_path: Path, redis_url: str, key_prefix: str, sync_redis
) -> None:
    """A receipt spooled while Redis was away is replayed through the same enqueue: settled on
    its message when the history knows it (nothing queued), counted as replayed and as
    settled; a repeat of it is a duplicate."""

    def counts() -> list[float]:
        """Settled at the door; replayed as queued; replayed as duplicates."""
        return [
            REGISTRY.get_sample_value(name, labels) or 0.0
            for name, labels in (
                ("wsm_webhook_receipts_settled_total", {}),
                ("wsm_spool_replayed_total", {"result": "queued"}),
                ("wsm_spool_replayed_total", {"result": "duplicate"}),
            )
        ]

    meta = engine_keys_for("default", CHAT, 1, key_prefix).history_meta
    sync_redis.hset(meta, mapping={"w:3EB0SPOOLED": "m-1", "m-1:status": "sent"})
    document = text_message(CHAT, "", event="message.ack")
    document["payload"] = {"id": f"true_{CHAT}_3EB0SPOOLED", "from": CHAT, "ack": 2}
    body = compact(document)
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30, write_timeout_s=5)
    await spool.append(body, 1)
    await spool.append(body, 2)  # WAHA's retry, spooled beside it
    settings = gateway_settings(redis_url, key_prefix, tmp_path / "spool")
    before = counts()
    await replay_all(spool, redis_url, settings)
    assert [a - b for a, b in zip(counts(), before, strict=True)] == [1, 1, 1]
    assert sync_redis.hget(meta, "m-1:status") == b"device"
    assert queued_events(sync_redis, key_prefix, "default", CHAT) == []
    await spool.close()


# --- gateway/batcher.py ---------------------------------------------------------------------


def _request(text: str, prefix: str) -> EnqueueRequest:
    body = compact(text_message(CHAT, text))
    routed = route_event(orjson.loads(body), body)
    assert routed is not None
    return EnqueueRequest.for_event(
        routed, body, received_at_ms=2, shards=1, dedupe_ttl_seconds=60, prefix=prefix
    )


async def _in_flight(batcher: EnqueueBatcher, request: EnqueueRequest) -> asyncio.Future[bool]:
    """Enqueue `request` and return once the flush has taken it and sent it (its round trip
    in flight, not yet answered)."""
    answer = asyncio.ensure_future(batcher.enqueue(request))
    for _ in range(1000):
        await asyncio.sleep(0)
        if not batcher._pending:
            break
    assert not batcher._pending and not answer.done()
    return answer


async def test_an_event_arriving_during_a_round_trip_that_succeeds_gets_the_next_one(
    redis_url: str, key_prefix: str, sync_redis
) -> None:
    """Under load, events arrive while a round trip is in flight; when it succeeds they go in
    the next one (queued), and only a failed round trip fails whoever waited behind it. Kills,
    in _flush_pending: `if not await self._flush(batch)` negated (every event that arrived
    during a successful round trip would be answered "spooled" with Redis healthy)."""
    client = connect(redis_url)
    batcher = EnqueueBatcher(client, RedisStatus(), timeout_s=30)
    try:
        first = await _in_flight(batcher, _request("first", key_prefix))
        second = await batcher.enqueue(_request("second", key_prefix))
        assert (await first, second) == (True, True)
    finally:
        await client.aclose()
    queued = queued_events(sync_redis, key_prefix, "default", CHAT)
    assert [q.document()["payload"]["body"] for q in queued] == ["first", "second"]


class _TooOldServer:
    """Answers the version check as a Redis 6 would (the replayer's check, on cue)."""

    async def info(self, section: str) -> dict[str, str]:
        return {"redis_version": "6.2.14"}


async def test_events_waiting_when_the_server_turns_out_too_old_are_all_answered(
    redis_url: str, key_prefix: str, sync_redis
) -> None:
    """A round trip is in flight with two events waiting behind it (one per batch) when the
    replayer's first version check finds the server too old: the round trip already sent
    lands, and both waiting events are answered "Redis unavailable" (the intake spools them)
    as soon as it returns, none sent to the old server. Kills, in _flush_pending: the "server
    not usable" branch's `_fail` broken (given None or too few arguments: its waiters never
    answered) and its `continue` -> `break` (the second batch left waiting for a flush that
    never comes)."""
    client = connect(redis_url)
    status = RedisStatus()
    batcher = EnqueueBatcher(client, status, timeout_s=30, max_batch=1)
    try:
        first = await _in_flight(batcher, _request("first", key_prefix))
        waiting = [
            asyncio.ensure_future(batcher.enqueue(_request(text, key_prefix)))
            for text in ("second", "third")
        ]
        await asyncio.sleep(0)
        too_old = cast(RedisClient, _TooOldServer())
        assert await status.check_version(too_old, 1) is False and not status.usable

        assert await first is True
        # A hang guard only: each is answered when the round trip in flight returns.
        await asyncio.wait(waiting, timeout=10)
        assert all(w.done() for w in waiting)
        assert [type(w.exception()) for w in waiting] == [RedisUnavailable] * 2
    finally:
        await client.aclose()
    queued = queued_events(sync_redis, key_prefix, "default", CHAT)
    assert [q.document()["payload"]["body"] for q in queued] == ["first"]


# --- gateway/intake.py ----------------------------------------------------------------------


class _SilentBatcher(EnqueueBatcher):
    """Takes every request and never answers it: the bug the intake's own deadline bounds."""

    def __init__(self) -> None:
        self.requests: list[EnqueueRequest] = []

    async def enqueue(self, request: EnqueueRequest) -> bool:
        self.requests.append(request)
        never: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        return await never


async def test_an_event_the_batcher_never_answers_is_spooled_at_the_intakes_deadline(
    tmp_path: Path, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the batcher does, the webhook gets an answer: an event whose enqueue is never
    answered is spooled once the intake's own deadline passes (two round trips and a slack),
    instead of holding its webhook (and WAHA's retries) forever."""
    monkeypatch.setattr(intake_module, "ENQUEUE_SLACK_S", 0.0, raising=False)
    spool = Spool(tmp_path, max_bytes=1 << 30, write_timeout_s=5)
    batcher = _SilentBatcher()
    intake = Intake(batcher, spool, RedisStatus(), redis_timeout_s=0.01)
    [body] = bodies(1)
    try:
        # A hang guard only: the intake's deadline here is 20 ms.
        async with asyncio.timeout(10):
            assert await intake.accept(_request("m0", key_prefix), body, 1) == SPOOLED
        assert len(batcher.requests) == 1
        assert await drain(spool) == [body]
    finally:
        await spool.close()


@contextlib.asynccontextmanager
async def _frozen_server() -> AsyncIterator[str]:
    """redis://… of a server that takes connections and commands and never answers (a Redis
    stopped with SIGSTOP, as far as a client can tell)."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()


async def test_a_round_trip_cut_off_at_its_deadline_fails_its_waiters(key_prefix: str) -> None:
    """A frozen Redis: the round trip is cut off at the webhook's deadline and every event
    in it is answered "Redis unavailable" (the intake spools them), and Redis is marked
    unreachable. Kills, in _flush: the deadline dropped (`asyncio.timeout(None)`: a frozen
    Redis holds every webhook) and the timeout branch's `_fail` broken (its waiters never
    answered)."""
    async with _frozen_server() as url:
        client = connect(url)
        status = RedisStatus()
        batcher = EnqueueBatcher(client, status, timeout_s=0.05)
        try:
            answers = [
                asyncio.ensure_future(batcher.enqueue(_request(text, key_prefix)))
                for text in ("first", "second")
            ]
            # A hang guard only: the deadline under test is 50 ms.
            await asyncio.wait(answers, timeout=10)
            errors = [a.exception() for a in answers if a.done()]
            assert [type(e) for e in errors] == [RedisUnavailable] * 2
            # The webhook's deadline answered, not some timeout of the client's own (seconds).
            assert all("slower than the webhook deadline" in str(e) for e in errors)
            assert not status.reachable
        finally:
            await client.aclose()


async def test_a_batcher_stopped_mid_round_trip_answers_everyone_and_serves_again(
    redis_url: str, key_prefix: str, sync_redis
) -> None:
    """Shutdown (or a bug) cancels the flush while a round trip is in flight and another event
    waits behind it: both are answered "Redis unavailable" at once, and the next event starts
    a flush of its own and is queued. Kills, in _flush: the CancelledError branch's `_fail`
    broken (the event in flight never answered); in _flush_pending: its BaseException
    branch's `_fail` broken (the waiting one never answered) and `_pending = None` there (the
    next enqueue fails)."""
    client = connect(redis_url)
    batcher = EnqueueBatcher(client, RedisStatus(), timeout_s=30)
    try:
        first = await _in_flight(batcher, _request("first", key_prefix))
        second = asyncio.ensure_future(batcher.enqueue(_request("second", key_prefix)))
        await asyncio.sleep(0)
        assert batcher._task is not None
        batcher._task.cancel()
        # A hang guard only: both are answered as the flush ends.
        await asyncio.wait([first, second], timeout=10)
        assert [type(a.exception()) for a in (first, second) if a.done()] == [RedisUnavailable] * 2
        assert await batcher.enqueue(_request("third", key_prefix)) is True
    finally:
        await client.aclose()
    queued = queued_events(sync_redis, key_prefix, "default", CHAT)
    assert [q.document()["payload"]["body"] for q in queued][-1] == "third"


async def test_a_batcher_whose_round_trip_failed_serves_the_next_event(
    redis_url: str, key_prefix: str
) -> None:
    """Redis refused the round trip; the next event starts a round trip of its own. Kills, in
    _flush_pending: `_pending = None` after a failed round trip (the next enqueue fails with
    an AttributeError: a 500 for every webhook from then on)."""
    nobody = connect(f"redis://127.0.0.1:{free_port()}/0")
    batcher = EnqueueBatcher(nobody, RedisStatus(), timeout_s=5)
    try:
        for text in ("first", "second"):
            with pytest.raises(RedisUnavailable):
                await batcher.enqueue(_request(text, key_prefix))
    finally:
        await nobody.aclose()


# --- gateway/replay.py: the running replayer ------------------------------------------------


@contextlib.asynccontextmanager
async def _running_replayer(
    spool: Spool, redis_url: str, settings: Any, status: RedisStatus | None = None
) -> AsyncIterator[None]:
    client = connect(redis_url)
    replayer = SpoolReplayer(spool, client, status or RedisStatus(), settings)
    task = asyncio.ensure_future(replayer.run())
    try:
        yield
    finally:
        replayer.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()


def _replay_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "wsm.gateway.replay"]


async def test_a_running_replayer_adopts_a_dead_processs_spool_and_replays_it(
    tmp_path: Path,
    redis_url: str,
    key_prefix: str,
    sync_redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The replayer replays this process's events, then, idle, still looks for the files of
    processes that died (every ADOPT_INTERVAL_S, shortened here) and replays them, without a
    failure of its own. Kills, in _step: `_next_adoption = None` after a pass (every later
    step fails), the idle wait unbounded (`wait_for_work(None)`: no more adoption passes once
    idle) or given `max(None, …)`."""
    monkeypatch.setattr(replay_module, "ADOPT_INTERVAL_S", 0.05)
    caplog.set_level(logging.ERROR, logger="wsm.gateway.replay")
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30, write_timeout_s=5)
    settings = gateway_settings(redis_url, key_prefix, tmp_path / "spool")
    own, orphaned = bodies(1)[0], bodies(1, chat="5511999990303@c.us")[0]
    await spool.append(own, 1)
    async with _running_replayer(spool, redis_url, settings):
        await async_wait_until(_nothing_left(spool), what="this process's event replayed")
        dead = SpoolFile.create(tmp_path / "spool")
        dead.append(encode_frame(orphaned, 2), 1)
        dead.close()
        await async_wait_until(_nothing_left(spool), what="the dead process's event replayed")
    assert [q.body for q in queued_events(sync_redis, key_prefix, "default", CHAT)] == [own]
    assert spool_files(tmp_path / "spool") == []
    assert _replay_failures(caplog) == []
    await spool.close()


def _nothing_left(spool: Spool) -> Any:
    async def check() -> bool:
        return spool.events == 0 and not spool_files(spool.directory)

    return check


async def test_a_replayer_that_failed_once_goes_on_replaying(
    tmp_path: Path,
    redis_url: str,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failure of the disk (or a bug) in one step is logged, and the replayer goes on: the
    events are replayed after it. Kills, in run: the batch forgotten as `""` after a failure
    (every later step fails on it), the pause after a failure `sleep(None)` (the replayer
    dies); and `_batch = ""` at start (a failure logged at every start)."""
    caplog.set_level(logging.ERROR, logger="wsm.gateway.replay")
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30, write_timeout_s=5)
    settings = gateway_settings(redis_url, key_prefix, tmp_path / "spool")
    await spool.append(bodies(1)[0], 1)
    async with _running_replayer(spool, redis_url, settings):
        await async_wait_until(_nothing_left(spool), what="the event replayed")
    assert _replay_failures(caplog) == []

    real_next_batch = spool.next_batch
    failures = 0

    async def failing_once(max_events: int, max_bytes: int) -> Any:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise OSError(errno.EIO, "injected I/O error")
        return await real_next_batch(max_events, max_bytes)

    monkeypatch.setattr(spool, "next_batch", failing_once)
    await spool.append(bodies(1, chat="5511999990304@c.us")[0], 2)
    async with _running_replayer(spool, redis_url, settings):
        await async_wait_until(_nothing_left(spool), what="the event replayed after a failure")
    assert failures == 1 and _replay_failures(caplog) == ["spool replay failed; retrying"]
    await spool.close()


class _KnockCounter(RedisStatus):
    """Counts the replayer's version checks (its knocks on Redis)."""

    knocks = 0

    async def check_version(self, client: RedisClient, timeout_s: float) -> bool:
        self.knocks += 1
        return await super().check_version(client, timeout_s)


async def test_a_replayer_that_finds_redis_away_knocks_again_without_failing(
    tmp_path: Path, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis away: the replayer knocks again after its backoff, step after step, and that is
    no failure of its own. Kills, in __init__: the backoff's `first` or `cap` None (every
    knock a logged failure and a fixed half-second pause)."""
    caplog.set_level(logging.ERROR, logger="wsm.gateway.replay")
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30, write_timeout_s=5)
    await spool.append(bodies(1)[0], 1)
    settings = gateway_settings(f"redis://127.0.0.1:{free_port()}/0", key_prefix, tmp_path)
    status = _KnockCounter()

    async def knocked_thrice() -> bool:
        return status.knocks >= 3

    async with _running_replayer(spool, settings.redis_url, settings, status):
        await async_wait_until(knocked_thrice, what="three knocks on the missing Redis")
    assert _replay_failures(caplog) == [] and spool.events == 1
    await spool.close()


def _dead_process_file(directory: Path, events: list[bytes]) -> Path:
    """A spool file as a gateway process that died leaves it (unlocked)."""
    dead = SpoolFile.create(directory)
    if events:
        dead.append(b"".join(encode_frame(body, 1) for body in events), len(events))
    dead.close()
    return dead.path


async def test_a_dead_processs_file_found_while_running_holds_up_no_new_event(
    tmp_path: Path,
) -> None:
    """Another process's events are concurrent with this one's: a file adopted while running
    is replayed, but a new event need not wait for it. Only a previous incarnation's files,
    adopted at start, come before new events. Kills, in adopt_orphans: `at_start` defaulting
    to True (every event would wait behind, or be spooled behind, other processes' events)."""
    spool = Spool(tmp_path, max_bytes=1 << 30, write_timeout_s=5)
    _dead_process_file(tmp_path, bodies(1))
    assert await spool.adopt_orphans() == 1
    assert spool.events == 1 and not spool.has_backlog
    assert await spool.wait_replayed(30) is True
    await spool.close()

    restarted = Spool(tmp_path, max_bytes=1 << 30, write_timeout_s=5)
    assert await restarted.adopt_orphans(at_start=True) == 1
    assert restarted.has_backlog
    await restarted.close()


async def test_every_dead_processs_file_is_adopted_and_empty_ones_removed(
    tmp_path: Path,
) -> None:
    """This process spools; then three processes' files show up: one older with an event, one
    empty, one with a single event. Each file with events is adopted (oldest first, before
    this process's own) and the empty one removed. Kills, in adopt_orphans: `events == 0` ->
    `== 1` (a file holding one event removed unreplayed: lost), the removal given None, its
    `continue` -> `break` (the files after an empty one left unadopted, and locked by us);
    in _adopt_files: `continue` -> `break` at a file already held (no file newer than this
    process's own would ever be adopted)."""
    own = bodies(1, chat="5511999990305@c.us")[0]
    spool = Spool(tmp_path, max_bytes=1 << 30, write_timeout_s=5)
    await spool.append(own, 1)
    older, single = bodies(2)
    _dead_process_file(tmp_path, [older])
    empty = _dead_process_file(tmp_path, [])
    _dead_process_file(tmp_path, [single])

    assert await spool.adopt_orphans() == 2

    assert not empty.exists()
    assert await drain(spool) == [older, single, own]
    assert spool_files(tmp_path) == []
    await spool.close()
