"""The spool's bookkeeping and its replay, on a real disk and a real Redis: tests written to
kill the mutants of gateway/spool.py and gateway/replay.py that survived the mutation run,
fast tests and test_outage.py's real processes alike (docs/testing.md, "Mutation testing",
lists each and the mutant it kills).

What they pin: an event answered "spooled" is replayed even when it arrived after the spool
had drained; the spool's size limit counts what is still to replay, no more and no less; a
replay round trip that failed keeps its batch; a file damaged on disk holds up no waiting
event; and an event without an envelope id, spooled twice, is queued once."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import orjson
import pytest

from gateway.batcher import EnqueueBatcher
from gateway.errors import SpoolUnavailable
from gateway.redis_link import RedisStatus
from gateway.replay import SpoolReplayer
from gateway.spool import Spool
from gateway.spool_file import HEADER, SpoolFile, encode_frame
from shared.embedded_redis import free_port
from shared.enqueue import EnqueueRequest
from shared.events import route_event
from shared.redis_client import connect
from tests.gateway.conftest import gateway_settings, queued_events
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
    only a stalled disk waits for WSM_SPOOL_WRITE_TIMEOUT. Kills, in _write_pending: the
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
    client = connect(redis_url)
    try:
        replayer = SpoolReplayer(spool, client, RedisStatus(), settings)
        while (batch := await spool.next_batch(100, 1 << 20)) is not None:
            assert await replayer._replay(batch) is True
    finally:
        await client.aclose()
    [queued] = queued_events(sync_redis, key_prefix, "default", CHAT)
    assert queued.id == "sha256_" + hashlib.sha256(body).hexdigest()[:32]
    await spool.close()


# --- gateway/batcher.py ---------------------------------------------------------------------


def _request(text: str, prefix: str) -> EnqueueRequest:
    body = compact(text_message(CHAT, text))
    routed = route_event(orjson.loads(body), body)
    assert routed is not None
    return EnqueueRequest.for_event(
        routed, body, received_at_ms=2, shards=1, dedupe_ttl_seconds=60, prefix=prefix
    )


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
        first = asyncio.ensure_future(batcher.enqueue(_request("first", key_prefix)))
        # Until the flush has taken the first event and sent it (its round trip in flight).
        for _ in range(1000):
            await asyncio.sleep(0)
            if not batcher._pending:
                break
        assert not batcher._pending and not first.done()
        second = await batcher.enqueue(_request("second", key_prefix))
        assert (await first, second) == (True, True)
    finally:
        await client.aclose()
    queued = queued_events(sync_redis, key_prefix, "default", CHAT)
    assert [q.document()["payload"]["body"] for q in queued] == ["first", "second"]
