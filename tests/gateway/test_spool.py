"""The spool's files on a real disk: framing, torn tails, locks, adoption, replay progress."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from gateway.errors import SpoolUnavailable
from gateway.spool import Spool
from gateway.spool_file import HEADER, SpoolFile, encode_frame, iter_frames


def events(n: int) -> list[tuple[bytes, int]]:
    return [
        (f'{{"event":"message","n":{i},"text":"ação 😀"}}'.encode(), 1_700_000_000_000 + i)
        for i in range(n)
    ]


def write_file(directory: Path, records: list[tuple[bytes, int]]) -> SpoolFile:
    file = SpoolFile.create(directory)
    file.append(b"".join(encode_frame(body, at) for body, at in records), len(records))
    return file


def test_records_round_trip_in_order(tmp_path: Path) -> None:
    records = [*events(5), (b"x" * (3 << 20), 42)]  # one record larger than a read chunk
    file = write_file(tmp_path, records)
    read = [(event.body, event.received_at_ms) for _, event in iter_frames(file.fd, 0)]
    assert read == records
    file.close()


def test_a_torn_tail_is_ignored(tmp_path: Path) -> None:
    records = events(3)
    file = write_file(tmp_path, records)
    torn = encode_frame(b'{"event":"message","n":99}', 7)
    os.write(file.fd, torn[: HEADER.size + 5])  # the writer died mid-record
    file.close()
    adopted = SpoolFile.adopt(file.path)
    assert adopted is not None
    assert adopted.events == 3
    got, end = adopted.read(100, 1 << 20)
    assert [e.body for e in got] == [body for body, _ in records]
    assert end == adopted.end < os.path.getsize(file.path)
    adopted.close()


def test_a_corrupt_record_stops_the_reader(tmp_path: Path) -> None:
    file = write_file(tmp_path, events(3))
    second = len(encode_frame(*events(1)[0]))
    # One byte of record 2's body flipped (a separate fd: pwrite on O_APPEND appends on Linux).
    fd = os.open(file.path, os.O_WRONLY)
    os.pwrite(fd, b"X", second + HEADER.size + 3)
    os.close(fd)
    assert len(list(iter_frames(file.fd, 0))) == 1
    file.close()


def test_a_live_owners_file_cannot_be_adopted(tmp_path: Path) -> None:
    file = write_file(tmp_path, events(2))
    # flock conflicts between two opens even in one process: a live owner always wins.
    assert SpoolFile.adopt(file.path) is None
    file.close()
    adopted = SpoolFile.adopt(file.path)
    assert adopted is not None and adopted.events == 2
    adopted.close()


def test_progress_survives_and_unconfirmed_batches_are_replayed_again(tmp_path: Path) -> None:
    records = events(10)
    file = write_file(tmp_path, records)
    first, end = file.read(4, 1 << 20)
    file.save_progress(end, len(first))  # Redis confirmed 4 events
    second, _ = file.read(4, 1 << 20)  # read, sent, but the process dies before confirmation
    assert [e.received_at_ms for e in second] == [at for _, at in records[4:8]]
    file.close()  # death: the lock goes with the process

    adopted = SpoolFile.adopt(file.path)
    assert adopted is not None
    assert adopted.events == 6
    again, _ = adopted.read(100, 1 << 20)
    assert [e.received_at_ms for e in again] == [at for _, at in records[4:]]
    adopted.close()


def test_a_progress_offset_inside_a_record_rounds_down(tmp_path: Path) -> None:
    records = events(3)
    file = write_file(tmp_path, records)
    one = len(encode_frame(*records[0]))
    file.progress_path.write_text(str(one + 5))
    file.close()
    adopted = SpoolFile.adopt(file.path)
    assert adopted is not None and adopted.replayed == one and adopted.events == 2
    adopted.close()


async def test_spool_appends_replays_and_removes_its_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 30, write_timeout_s=5)
    assert not spool.has_backlog
    await asyncio.gather(*(spool.append(body, at) for body, at in events(20)))
    assert spool.has_backlog and spool.events == 20
    [path] = await asyncio.to_thread(lambda: list(tmp_path.glob("spool-*.wal")))

    replayed: list[int] = []
    while (batch := await spool.next_batch(8, 1 << 20)) is not None:
        replayed += [event.received_at_ms for event in batch.events]
        await spool.mark_replayed(batch)
    assert sorted(replayed) == replayed and len(replayed) == 20
    assert not spool.has_backlog
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []
    assert not path.exists()
    await spool.close()


async def test_spool_adopts_dead_files_before_its_own(tmp_path: Path) -> None:
    orphan = write_file(tmp_path, events(3))
    orphan.close()
    spool = Spool(tmp_path, max_bytes=1 << 30, write_timeout_s=5)
    assert await spool.adopt_orphans() == 3
    await spool.append(b'{"event":"message","n":"mine"}', 1)
    order: list[bytes] = []
    while (batch := await spool.next_batch(100, 1 << 20)) is not None:
        order += [event.body for event in batch.events]
        await spool.mark_replayed(batch)
    assert order == [body for body, _ in events(3)] + [b'{"event":"message","n":"mine"}']
    await spool.close()


async def test_unwritable_directory_fails_fast(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    spool = Spool(blocker / "spool", max_bytes=1 << 30, write_timeout_s=5)
    with pytest.raises(SpoolUnavailable):
        await spool.append(b"{}", 1)
    assert not spool.has_backlog


async def test_full_spool_refuses(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=100, write_timeout_s=5)
    await spool.append(b"x" * 50, 1)
    with pytest.raises(SpoolUnavailable):
        await spool.append(b"y" * 50, 2)
    assert spool.events == 1
    await spool.close()


async def test_a_new_event_may_go_to_redis_once_everything_answered_before_it_is_replayed(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 30, write_timeout_s=5)
    for body, at in events(3):
        await spool.append(body, at)
    assert spool.has_backlog
    waiting = asyncio.ensure_future(spool.wait_replayed(5))
    await asyncio.sleep(0)
    first = await spool.next_batch(2, 1 << 20)
    assert first is not None
    await spool.mark_replayed(first)
    # An event committed after the waiter arrived is concurrent with it: not waited for.
    await spool.append(b'{"event":"message","n":"later"}', 9)
    assert not waiting.done()
    second = await spool.next_batch(1, 1 << 20)
    assert second is not None
    await spool.mark_replayed(second)
    assert await waiting is True
    assert spool.has_backlog  # the later event still waits
    assert await spool.wait_replayed(0.01) is False
    await spool.close()


async def test_a_disk_too_full_for_the_progress_file_does_not_stop_the_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by an audit: on a full disk the progress file could not be written, the replay
    failed on every batch, and the gateway kept spooling with Redis back. Now the replay goes
    on, the file is retired (freeing the disk), and /readyz's `writable` is true again."""
    spool = Spool(tmp_path, max_bytes=1 << 30, write_timeout_s=5)
    await asyncio.gather(*(spool.append(body, at) for body, at in events(5)))
    spool.last_error = "OSError: [Errno 28] No space left on device"  # as a refused write sets it
    real_write_text = Path.write_text

    def disk_full(self: Path, *args: object, **kwargs: object) -> int:
        if self.name.endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", disk_full)
    replayed = 0
    while (batch := await spool.next_batch(2, 1 << 20)) is not None:
        replayed += len(batch.events)
        await spool.mark_replayed(batch)
    assert replayed == 5 and not spool.has_backlog
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []
    assert spool.last_error is None
    await spool.close()
