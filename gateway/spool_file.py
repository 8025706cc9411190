"""One spool file: framed, fsync'd records, locked by the process that owns it.

A record is one accepted webhook, enough to run the same enqueue again later:

    magic "WSM1" | body length (u32) | crc32 of the rest (u32) | received_at_ms (u64) | body

The crc lets a reader tell a complete record from a torn one: a process killed in the middle
of a write leaves a torn tail, which was never answered 2xx and is ignored.

Files are named `spool-<creation ns>-<pid>.wal`. The owner holds an exclusive `flock` on the
file for as long as it lives; the kernel drops the lock when the process dies however it
dies, so "the lock is free" means "the owner is gone" and another process may adopt the file.
A new file is created under a hidden temporary name, locked, then renamed into place, so
nobody can adopt a file between its creation and its owner's lock.

Replay progress is a byte offset in `<file>.replayed`, replaced atomically after every replayed
batch. A crash between a replayed batch and its progress update replays that batch again,
which is harmless: the enqueue script drops an event it has already seen.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"WSM1"
HEADER = struct.Struct(">4sIIQ")
# Far above any body the gateway accepts; a larger length can only be a corrupt header.
MAX_BODY = 256 * 1024 * 1024
READ_CHUNK = 1 << 20

SPOOL_GLOB = "spool-*.wal"
PROGRESS_SUFFIX = ".replayed"


@dataclass(frozen=True, slots=True)
class SpooledEvent:
    received_at_ms: int
    body: bytes


def encode_frame(body: bytes, received_at_ms: int) -> bytes:
    at = struct.pack(">Q", received_at_ms)
    crc = zlib.crc32(body, zlib.crc32(at))
    return HEADER.pack(MAGIC, len(body), crc, received_at_ms) + body


def iter_frames(
    fd: int, start: int, stop: int | None = None, chunk_size: int = READ_CHUNK
) -> Iterator[tuple[int, SpooledEvent]]:
    """Yield (offset after the record, record) from `start`, up to `stop` or the first record
    that is incomplete or corrupt (a torn tail)."""
    offset = start
    while stop is None or stop - offset >= HEADER.size:
        limit = chunk_size if stop is None else min(chunk_size, stop - offset)
        buf = os.pread(fd, max(limit, HEADER.size), offset)
        pos = 0
        while len(buf) - pos >= HEADER.size:
            magic, length, crc, received_at_ms = HEADER.unpack_from(buf, pos)
            if magic != MAGIC or length > MAX_BODY:
                return
            frame_end = pos + HEADER.size + length
            if frame_end > len(buf):
                if pos > 0:
                    break
                if stop is not None and offset + HEADER.size + length > stop:
                    return
                # One record larger than the chunk: read exactly that record.
                buf = os.pread(fd, HEADER.size + length, offset)
                if len(buf) < HEADER.size + length:
                    return
                frame_end = HEADER.size + length
            at = buf[pos + 12 : pos + HEADER.size]
            body = buf[pos + HEADER.size : frame_end]
            if zlib.crc32(body, zlib.crc32(at)) != crc:
                return
            yield offset + frame_end, SpooledEvent(received_at_ms, body)
            pos = frame_end
        if pos == 0:
            return
        offset += pos


class SpoolFile:
    """An open, locked spool file. Its methods block (disk I/O): call them in a thread."""

    def __init__(
        self, path: Path, fd: int, *, adopted: bool, end: int, replayed: int, events: int
    ) -> None:
        self.path = path
        self.fd = fd
        self.adopted = adopted
        # Offset after the last complete record (appends go here; readers stop here).
        self.end = end
        # Offset after the last record known to be in Redis.
        self.replayed = replayed
        # Complete records after `replayed`.
        self.events = events
        # No more appends (a failed write could not be undone): replay it, then remove it.
        self.sealed = adopted

    @property
    def progress_path(self) -> Path:
        return self.path.with_name(self.path.name + PROGRESS_SUFFIX)

    @property
    def pending_bytes(self) -> int:
        return self.end - self.replayed

    @classmethod
    def create(cls, directory: Path) -> SpoolFile:
        directory.mkdir(parents=True, exist_ok=True)
        name = f"spool-{time.time_ns():020d}-{os.getpid()}"
        temporary = directory / f".{name}.tmp"
        final = directory / f"{name}.wal"
        fd = os.open(
            temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(temporary, final)
            _fsync_directory(directory)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        return cls(final, fd, adopted=False, end=0, replayed=0, events=0)

    @classmethod
    def adopt(cls, path: Path) -> SpoolFile | None:
        """Take over the file of a dead process; None while its owner is alive (or it is gone)."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            if os.fstat(fd).st_nlink == 0:
                # Its owner replayed and removed it between our listing and our lock.
                os.close(fd)
                return None
            recorded = read_progress(path.with_name(path.name + PROGRESS_SUFFIX))
            end = replayed = 0
            events = 0
            for frame_end, _ in iter_frames(fd, 0):
                if frame_end <= recorded:
                    # Progress is always a record boundary; rounding down re-replays at most
                    # one record if it is not (harmless: duplicates are dropped).
                    replayed = frame_end
                else:
                    events += 1
                end = frame_end
            return cls(path, fd, adopted=True, end=end, replayed=replayed, events=events)
        except BaseException:
            os.close(fd)
            raise

    def append(self, data: bytes, records: int) -> None:
        """Write whole records and fsync them. On failure, cut the file back to the last
        complete record; if even that fails, seal the file so nothing follows the damage."""
        try:
            written = 0
            while written < len(data):
                written += os.write(self.fd, data[written:])
            os.fsync(self.fd)
        except OSError:
            try:
                os.ftruncate(self.fd, self.end)
            except OSError:
                self.sealed = True
            raise
        self.end += len(data)
        self.events += records

    def read(self, max_events: int, max_bytes: int) -> tuple[list[SpooledEvent], int]:
        """Records after `replayed` (at most max_events, about max_bytes) and the offset after
        the last one returned."""
        events: list[SpooledEvent] = []
        offset = self.replayed
        size = 0
        for frame_end, event in iter_frames(
            self.fd, self.replayed, self.end, chunk_size=min(READ_CHUNK, max_bytes)
        ):
            events.append(event)
            size += frame_end - offset
            offset = frame_end
            if len(events) >= max_events or size >= max_bytes:
                break
        return events, offset

    def save_progress(self, offset: int, records: int) -> bool:
        """Record that the events up to `offset` are in Redis. False when the progress could
        not be written to disk (it is kept in memory all the same)."""
        # Atomic replace, no fsync: a process crash cannot lose it, and a power loss that
        # does only replays some events again (dropped as duplicates).
        temporary = self.progress_path.with_name(self.progress_path.name + ".tmp")
        saved = True
        try:
            temporary.write_text(str(offset))
            os.replace(temporary, self.progress_path)
        except OSError:
            # A full disk, the very reason the spool may be full: the replay must go on (it
            # frees the disk once the file is retired), or the gateway would spool forever
            # with Redis back. A crash before then replays these events again: duplicates.
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            saved = False
        self.replayed = offset
        self.events -= records
        return saved

    def remove(self) -> None:
        """Delete a fully replayed file (data first: a leftover progress file is harmless)."""
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.progress_path)
        finally:
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the lock: a survivor may adopt what is left
            self.fd = -1


def read_progress(path: Path) -> int:
    try:
        return max(0, int(path.read_text().strip() or 0))
    except (FileNotFoundError, ValueError):
        return 0


def remove_strays(directory: Path) -> None:
    """Leftovers of dead processes: unlocked temporary files and progress files whose spool
    file is gone (names are never reused, so such a progress file can never apply again)."""
    for temporary in directory.glob(".spool-*.tmp"):
        _remove_if_unlocked(temporary)
    for progress in directory.glob(f"{SPOOL_GLOB}{PROGRESS_SUFFIX}*"):
        data = progress.with_name(progress.name.split(PROGRESS_SUFFIX)[0])
        if not data.exists():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(progress)


def _remove_if_unlocked(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    # The new name must survive a power loss too, or the fsync'd records would be unreachable.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:  # pragma: no cover - some filesystems refuse directory fsync
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
