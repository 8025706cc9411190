"""The spool on a disk that fails: writes that fail outright or part-way, an fsync that
stalls, a truncation that fails too. No real disk does that on cue, so the failures are
injected under gateway/spool_file.py, in its `os` (`faulty_disk`); everything else is the
real file on the real filesystem.

What they pin: an event is answered "spooled" only once its record is whole on disk and
readable again; a failed write leaves no torn record for later records to hide behind; a
stalled disk answers 503 at WSM_SPOOL_TIMEOUT_MS instead of holding the webhook; and a
failed group of appends does not strand the events that arrived while it was failing
(docs/testing.md, "Mutation testing", lists the mutants each kills)."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway import spool_file
from gateway.errors import SpoolUnavailable
from gateway.spool import Spool
from gateway.spool_file import SpoolFile, encode_frame
from tests.support.waha import compact, text_message

CHAT = "5511999990401@c.us"


def bodies(n: int, tag: str = "m") -> list[bytes]:
    return [compact(text_message(CHAT, f"{tag}{i}")) for i in range(n)]


class FaultyOs:
    """gateway.spool_file's view of a module (`os`, `fcntl`): the real one, but for the calls
    replaced in `faults`."""

    def __init__(self, real: Any = os) -> None:
        self.real = real
        self.faults: dict[str, Callable[..., Any]] = {}

    def __getattr__(self, name: str) -> Any:
        return self.faults.get(name) or getattr(self.real, name)


@pytest.fixture
def faulty_disk(monkeypatch: pytest.MonkeyPatch) -> FaultyOs:
    disk = FaultyOs()
    monkeypatch.setattr(spool_file, "os", disk)
    return disk


@pytest.fixture
def faulty_locks(monkeypatch: pytest.MonkeyPatch) -> FaultyOs:
    locks = FaultyOs(fcntl)
    monkeypatch.setattr(spool_file, "fcntl", locks)
    return locks


def eio(*_: Any) -> Any:
    raise OSError(errno.EIO, "injected I/O error")


def torn_write(disk: FaultyOs) -> None:
    """The next write lands half its bytes, then the disk fails."""
    calls = 0

    def write(fd: int, data: bytes) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError(errno.EIO, "injected I/O error")
        return os.write(fd, bytes(data[: len(data) // 2]))

    disk.faults["write"] = write


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("spool-*.wal"))


async def drain(spool: Spool) -> list[bytes]:
    replayed: list[bytes] = []
    while (batch := await spool.next_batch(100, 1 << 20)) is not None:
        replayed += [event.body for event in batch.events]
        await spool.mark_replayed(batch)
    return replayed


async def test_a_write_that_fails_part_way_is_cut_off_and_the_file_goes_on(
    tmp_path: Path, faulty_disk: FaultyOs
) -> None:
    """Half a record written, then an I/O error: the event is answered 503 and the half
    record cut off, so the next event's record follows the last good one, and both good
    ones are replayed."""
    before, failed, after = bodies(3)
    spool = Spool(tmp_path, max_bytes=1 << 30, write_timeout_s=60)
    await spool.append(before, 1)
    [path] = spool_files(tmp_path)
    torn_write(faulty_disk)
    with pytest.raises(SpoolUnavailable, match="not writable"):
        await spool.append(failed, 2)
    faulty_disk.faults.clear()
    assert path.stat().st_size == len(encode_frame(before, 1))

    await spool.append(after, 3)

    assert spool_files(tmp_path) == [path]
    assert await drain(spool) == [before, after]
    await spool.close()


async def test_a_write_that_fails_and_cannot_be_cut_off_seals_its_file(
    tmp_path: Path, faulty_disk: FaultyOs
) -> None:
    """The disk fails mid-record and the truncation fails too: the torn record stays. The
    file is sealed, the next events go to a new file, and everything answered "spooled" is
    replayed, in order (a record written after the torn one could never be read back: the
    reader stops at the first bad record)."""
    before, failed, after = bodies(3)
    spool = Spool(tmp_path, max_bytes=1 << 30, write_timeout_s=60)
    await spool.append(before, 1)
    torn_write(faulty_disk)
    faulty_disk.faults["ftruncate"] = eio
    with pytest.raises(SpoolUnavailable, match="not writable"):
        await spool.append(failed, 2)
    faulty_disk.faults.clear()

    await spool.append(after, 3)

    assert len(spool_files(tmp_path)) == 2
    assert spool.events == 2
    assert await drain(spool) == [before, after]
    assert not spool.has_backlog
    await spool.close()


async def test_a_stalled_disk_answers_at_the_write_deadline(
    tmp_path: Path, faulty_disk: FaultyOs
) -> None:
    """An fsync that does not return: the event is answered 503 (SpoolUnavailable) at
    WSM_SPOOL_TIMEOUT_MS instead of holding its webhook. When the disk comes back the
    write lands after all, and the event is replayed (WAHA's retry of the 503 is then a
    duplicate). Kills, in append: the deadline dropped (`wait_for(…, None)`)."""
    stalled, release = stalled_fsync(faulty_disk)
    [body] = bodies(1)
    spool = Spool(tmp_path, max_bytes=1 << 30, write_timeout_s=0.05)
    try:
        # A hang guard only: the deadline under test is 50 ms.
        async with asyncio.timeout(10):
            with pytest.raises(SpoolUnavailable, match="slower than its deadline"):
                await spool.append(body, 1)
        assert stalled.is_set() and spool.events == 0
    finally:
        release.set()
    await spool.close()  # waits for the write in flight
    reopened = Spool(tmp_path, max_bytes=1 << 30, write_timeout_s=5)
    assert await reopened.adopt_orphans(at_start=True) == 1
    assert await drain(reopened) == [body]
    await reopened.close()


async def test_events_that_arrive_during_a_failing_write_get_a_write_of_their_own(
    tmp_path: Path, faulty_disk: FaultyOs
) -> None:
    """Appends are grouped: events that arrive while a group's write is on the disk wait for
    the next group. When that write fails, only its own events are answered 503; the next
    group is written at once and answered "spooled". Kills, in _write_pending: `continue` ->
    `break` after a failed group (the next group would wait for some later append to start a
    writer, and be answered 503 at its deadline)."""
    in_write = threading.Event()
    release = threading.Event()

    def fsync(fd: int) -> None:
        in_write.set()
        release.wait(30)
        raise OSError(errno.EIO, "injected I/O error")

    before, first, *later = bodies(4)
    spool = Spool(tmp_path, max_bytes=1 << 30, write_timeout_s=60)
    await spool.append(before, 1)  # the file exists: what fails is a write into it
    faulty_disk.faults["fsync"] = fsync
    failing = asyncio.ensure_future(spool.append(first, 1))
    try:
        assert await asyncio.to_thread(in_write.wait, 10)
        waiting = [asyncio.ensure_future(spool.append(body, 2)) for body in later]
        await asyncio.sleep(0)
        faulty_disk.faults.clear()
    finally:
        release.set()
    with pytest.raises(SpoolUnavailable, match="not writable"):
        await failing
    # A hang guard only: the next group is written as soon as the failed one is answered.
    done, _ = await asyncio.wait(waiting, timeout=10)
    assert done == set(waiting) and all(w.exception() is None for w in waiting)
    assert await drain(spool) == [before, *later]
    await spool.close()


def test_a_spool_file_created_is_locked_against_adoption_until_closed(tmp_path: Path) -> None:
    """The owner's lock: while it holds the file, nobody adopts it; once closed, it may."""
    owner = SpoolFile.create(tmp_path)
    assert SpoolFile.adopt(owner.path) is None
    owner.close()
    adopted = SpoolFile.adopt(owner.path)
    assert adopted is not None
    adopted.close()


# --- gateway/spool_file.py ------------------------------------------------------------------


def frames(events: list[bytes], at: int = 1) -> bytes:
    return b"".join(encode_frame(body, at) for body in events)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_short_writes_still_make_whole_records(tmp_path: Path, faulty_disk: FaultyOs) -> None:
    """The kernel may write fewer bytes than asked (a signal, a full pipe of a FUSE disk):
    the rest is written after them, never the start again. Kills, in append: `written +=`
    -> `=`."""

    def short_write(fd: int, data: bytes) -> int:
        return os.write(fd, bytes(data[:7]))

    faulty_disk.faults["write"] = short_write
    events = bodies(3)
    file = SpoolFile.create(tmp_path)
    file.append(frames(events), 3)
    faulty_disk.faults.clear()
    read, end = file.read(100, 1 << 20)
    assert [e.body for e in read] == events and end == file.end == len(frames(events))
    file.close()


def test_a_failed_write_is_cut_back_to_the_last_whole_record(
    tmp_path: Path, faulty_disk: FaultyOs
) -> None:
    """Half a record written, then an I/O error: append raises the disk's error, the file is
    cut back to where it was, and it is not sealed (it goes on taking records). Kills, in
    append: the truncation given None or too few arguments (a TypeError instead, the torn
    half left in place)."""
    file = SpoolFile.create(tmp_path)
    file.append(frames(bodies(1)), 1)
    end = file.end
    torn_write(faulty_disk)
    with pytest.raises(OSError) as raised:
        file.append(frames(bodies(2, "x")), 2)
    faulty_disk.faults.clear()
    assert raised.value.errno == errno.EIO
    assert os.fstat(file.fd).st_size == end == file.end and file.events == 1
    assert not file.sealed
    file.close()


def test_a_failed_write_that_cannot_be_cut_back_seals_the_file(
    tmp_path: Path, faulty_disk: FaultyOs
) -> None:
    """Kills, in append: `sealed = True` -> None/False (the spool would go on appending after
    a torn record, where no reader finds them)."""
    file = SpoolFile.create(tmp_path)
    torn_write(faulty_disk)
    faulty_disk.faults["ftruncate"] = eio
    with pytest.raises(OSError):
        file.append(frames(bodies(1)), 1)
    faulty_disk.faults.clear()
    assert file.sealed is True and file.end == 0 and file.events == 0
    file.close()


def test_a_file_counts_the_records_it_holds_until_they_are_replayed(tmp_path: Path) -> None:
    """Kills, in append: `events +=` -> `=`/`-=`; in save_progress: `events -=` -> `=`/`+=`
    (the spool counts a damaged file's events off with these)."""
    file = SpoolFile.create(tmp_path)
    file.append(frames(bodies(2)), 2)
    file.append(frames(bodies(3, "y")), 3)
    assert file.events == 5
    _, end = file.read(2, 1 << 20)
    file.save_progress(end, 2)
    assert file.events == 3 and file.pending_bytes == file.end - end
    file.close()


def test_a_batch_holds_whole_records_up_to_its_byte_bound(tmp_path: Path) -> None:
    """A batch ends with the record that brings it to max_bytes or past it. Kills, in read:
    `size = 0` -> 1, `size +=` -> `=`/`-=`, `frame_end - offset` -> `+`, `size >= max_bytes`
    -> `>`."""
    events = bodies(5)
    size = len(encode_frame(events[0], 1))
    assert all(len(encode_frame(body, 1)) == size for body in events)
    file = SpoolFile.create(tmp_path)
    file.append(frames(events), 5)
    for count in (1, 2, 3, 4):
        read, end = file.read(100, count * size)
        assert len(read) == count and end == count * size
        read, _ = file.read(100, count * size + 1)
        assert len(read) == count + 1
    file.close()


def test_a_reader_stops_at_the_files_end_whatever_lies_past_it(tmp_path: Path) -> None:
    """Past `end` there may be a write in flight (its record not yet fsync'd, its event not
    yet answered): a batch never includes it, however large its chunks, from the start or
    after a partial replay. Kills, in read: the `end` not given to the reader; in
    iter_frames: the chunk not bounded by `stop` (`stop + offset`, `or True`), and the loop
    going on past `stop` (`stop + offset >= HEADER.size`, shown by an empty record)."""
    events = bodies(3)
    file = SpoolFile.create(tmp_path)
    file.append(frames(events[:2]), 2)
    os.write(file.fd, frames([b""]) + frames(events[2:]))  # in flight: not in `end` yet
    for max_bytes in (1 << 20, 100):
        read, end = file.read(100, max_bytes)
        assert [e.body for e in read] == events[: len(read)] and end <= file.end
        assert len(read) == 2 or max_bytes == 100
    read, end = file.read(1, 1 << 20)
    file.save_progress(end, 1)
    read, end = file.read(100, 1 << 20)
    assert [e.body for e in read] == events[1:2] and end == file.end
    file.close()


def test_records_larger_than_a_chunk_and_empty_ones_read_back_exactly(tmp_path: Path) -> None:
    """A record may be larger than the reader's chunk (read whole), or exactly a header
    long (an empty body), and may end exactly at the file's end. Kills, in iter_frames: the
    loops' `>= HEADER.size` -> `>` (an empty last record never read), and the large record's
    `> stop` -> `>=` (a large last record never read)."""
    large = bodies(1)[0] * 4
    file = SpoolFile.create(tmp_path)
    file.append(frames([large]), 1)
    read, end = file.read(100, 64)
    assert [e.body for e in read] == [large] and end == file.end
    file.append(frames([b""]), 1)
    read, end = file.read(100, 1 << 20)
    assert [e.body for e in read] == [large, b""] and end == file.end
    file.save_progress(len(encode_frame(large, 1)), 1)
    read, end = file.read(100, 1 << 20)
    assert [e.body for e in read] == [b""] and end == file.end
    file.close()


def test_a_record_without_the_magic_is_not_read(tmp_path: Path) -> None:
    """The magic marks a record's start; a header without it is damage, even if the rest of
    the record checks out. Kills, in iter_frames: `magic != MAGIC or …` -> `and`."""
    events = bodies(2)
    file = SpoolFile.create(tmp_path)
    file.append(frames(events), 2)
    damage = os.open(file.path, os.O_WRONLY)  # not O_APPEND: written in place
    os.pwrite(damage, b"XXXX", len(encode_frame(events[0], 1)))
    os.close(damage)
    read, _ = file.read(100, 1 << 20)
    assert [e.body for e in read] == events[:1]
    file.close()


def test_an_adopted_file_is_not_inherited_by_child_processes(tmp_path: Path) -> None:
    """A child holding the descriptor would hold the file's lock after its adopter died, and
    nobody could adopt it. Kills, in adopt: O_CLOEXEC dropped."""
    owner = SpoolFile.create(tmp_path)
    owner.append(frames(bodies(1)), 1)
    owner.close()
    adopted = SpoolFile.adopt(owner.path)
    assert adopted is not None and adopted.sealed and adopted.events == 1
    assert fcntl.fcntl(adopted.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    adopted.close()


def test_an_adoption_that_fails_leaves_no_descriptor_open(
    tmp_path: Path, faulty_disk: FaultyOs, faulty_locks: FaultyOs
) -> None:
    """A disk error while locking or reading a dead process's file: the error is raised (the
    replayer logs it and tries again later) and the descriptor is closed. Kills, in adopt:
    `os.close(None)` on those paths (a TypeError instead, the descriptor leaked)."""
    owner = SpoolFile.create(tmp_path)
    owner.append(frames(bodies(1)), 1)
    owner.close()
    before = open_fds()
    faulty_locks.faults["flock"] = eio
    with pytest.raises(OSError):
        SpoolFile.adopt(owner.path)
    faulty_locks.faults.clear()
    faulty_disk.faults["pread"] = eio
    with pytest.raises(OSError):
        SpoolFile.adopt(owner.path)
    faulty_disk.faults.clear()
    assert open_fds() == before


def test_a_file_removed_by_its_owner_before_the_lock_is_not_adopted(
    tmp_path: Path, faulty_locks: FaultyOs
) -> None:
    """Its owner replayed and removed it between the adopter's listing and its lock: nothing
    to adopt, and the descriptor is closed. Kills, in adopt: that branch's `os.close(None)`."""
    owner = SpoolFile.create(tmp_path)
    owner.append(frames(bodies(1)), 1)
    owner.close()

    def removed_first(fd: int, operation: int) -> None:
        owner.path.unlink()
        fcntl.flock(fd, operation)

    faulty_locks.faults["flock"] = removed_first
    before = open_fds()
    assert SpoolFile.adopt(owner.path) is None
    assert open_fds() == before


def test_removing_a_file_tolerates_missing_parts(tmp_path: Path) -> None:
    """A file never replayed into has no progress file; one may be gone already (an operator
    cleaned up). Either way remove() removes what is there and releases the file. Kills, in
    remove: each `suppress(FileNotFoundError)` -> `suppress(None)`."""
    first = SpoolFile.create(tmp_path)
    first.remove()
    second = SpoolFile.create(tmp_path)
    second.append(frames(bodies(1)), 1)
    second.save_progress(second.end, 1)
    second.path.unlink()
    second.remove()
    assert list(tmp_path.iterdir()) == [] and first.fd < 0 and second.fd < 0


def test_closing_twice_closes_nothing_else(tmp_path: Path) -> None:
    """Kills, in close: `fd = -1` -> None (a TypeError on the second close) or +1 (the second
    close would close the process's stdout)."""
    file = SpoolFile.create(tmp_path)
    file.close()
    file.close()
    assert file.fd < 0


def test_leftovers_of_dead_processes_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    """A temporary file whose creator died before renaming it, and a progress file whose
    spool file is gone, are removed; a temporary file still locked by its creator, and a
    live file's progress, are kept. Kills, in remove_strays: the temporary files' pattern,
    the lock check given None, the progress file's data name (None, the wrong part), the
    `exists()` check negated, `unlink(None)`."""
    dead = tmp_path / ".spool-00000000000000000001-1.tmp"
    dead.write_bytes(b"")
    live = tmp_path / ".spool-00000000000000000002-2.tmp"
    live.write_bytes(b"")
    holder = os.open(live, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    file = SpoolFile.create(tmp_path)
    file.append(frames(bodies(1)), 1)
    file.save_progress(file.end, 1)
    orphan_progress = tmp_path / "spool-00000000000000000003-3.wal.replayed"
    orphan_progress.write_text("20")
    try:
        spool_file.remove_strays(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [live.name, file.path.name, file.progress_path.name]
        )
    finally:
        os.close(holder)
        file.close()


def test_a_directory_fsync_that_fails_fails_the_creation(
    tmp_path: Path, faulty_disk: FaultyOs
) -> None:
    """The new file's name must be durable before any record goes in it: an I/O error from
    the directory's fsync fails the creation (and leaves nothing behind), while a filesystem
    that does not fsync directories at all (EINVAL) is accepted. Kills, in _fsync_directory:
    `errno not in (EINVAL, ENOTSUP)` negated; in create: the clean-up's `os.close(None)` and
    `suppress(None)` (the disk's error replaced by another)."""
    before = open_fds()
    faulty_disk.faults["fsync"] = eio
    with pytest.raises(OSError) as raised:
        SpoolFile.create(tmp_path)
    assert raised.value.errno == errno.EIO
    # Its empty, unlocked file is left to the next adoption pass, which removes it.
    assert open_fds() == before
    assert [p.stat().st_size for p in tmp_path.iterdir()] == [0]
    for leftover in tmp_path.iterdir():
        leftover.unlink()

    def unsupported(fd: int) -> None:
        raise OSError(errno.EINVAL, "injected: no directory fsync here")

    faulty_disk.faults["fsync"] = unsupported
    file = SpoolFile.create(tmp_path)
    faulty_disk.faults.clear()
    assert [p.name for p in tmp_path.iterdir()] == [file.path.name]
    file.close()


# --- gateway/spool.py: close() with a write in flight ---------------------------------------


def stalled_fsync(disk: FaultyOs) -> tuple[threading.Event, threading.Event]:
    """The next fsyncs wait for `release` (set `stalled` when one started), then run."""
    stalled, release = threading.Event(), threading.Event()

    def fsync(fd: int) -> None:
        stalled.set()
        release.wait(30)
        os.fsync(fd)

    disk.faults["fsync"] = fsync
    return stalled, release


async def test_closing_lets_the_writes_in_flight_finish_first(
    tmp_path: Path, faulty_disk: FaultyOs
) -> None:
    """Shutdown while one group of appends is on the disk and another waits for it: close()
    lets the writer finish both, so both events are answered "spooled" (durable), every file
    is released, and the next process adopts both. Kills, in close: the wait for the writer
    skipped (`not done()` negated, `wait_for(None, …)`, `shield(None)`, its bound missing):
    close() would take the write lock between the two groups, and the second group would
    create a file after close(), left open and locked where no successor can adopt it."""
    stalled, release = stalled_fsync(faulty_disk)
    events = bodies(2)
    spool = Spool(tmp_path, max_bytes=1 << 30, write_timeout_s=60)
    first = asyncio.ensure_future(spool.append(events[0], 1))
    assert await asyncio.to_thread(stalled.wait, 10)
    second = asyncio.ensure_future(spool.append(events[1], 2))
    closing = asyncio.ensure_future(spool.close())
    for _ in range(20):
        await asyncio.sleep(0)
    release.set()
    await closing
    assert (await first, await second) == (None, None)
    faulty_disk.faults.clear()
    reopened = Spool(tmp_path, max_bytes=1 << 30, write_timeout_s=5)
    assert await reopened.adopt_orphans(at_start=True) == 2
    assert await drain(reopened) == events
    await reopened.close()


def test_a_new_spool_file_is_private_and_its_directory_made(
    tmp_path: Path, faulty_locks: FaultyOs
) -> None:
    """Spooled webhooks hold customers' messages: only the gateway's user may read them. The
    spool directory is made, parents and all, on first use; a file that cannot be locked is
    not left behind. Kills, in create: the mode dropped or changed (385), `mkdir`'s `parents`
    dropped, the temporary file's `unlink(None)`."""
    directory = tmp_path / "var" / "spool"
    file = SpoolFile.create(directory)
    assert file.path.parent == directory
    assert os.stat(file.path).st_mode & 0o777 == 0o600
    file.close()
    faulty_locks.faults["flock"] = eio
    with pytest.raises(OSError) as raised:
        SpoolFile.create(directory)
    assert raised.value.errno == errno.EIO
    assert [p.name for p in directory.iterdir()] == [file.path.name]
