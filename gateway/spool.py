"""The durable local spool: where an event goes when Redis cannot confirm it in time.

Each gateway process appends to a file of its own (see spool_file.py) and replays, oldest
first, its own files plus those it adopted from dead processes. Appends are group-committed:
concurrent events share one write and one fsync, done in a thread so the event loop keeps
serving. An event is answered 200 "spooled" only after its fsync returned.

Order: an event that arrives while events already answered "spooled" wait here
(`has_backlog`) must not overtake them. It either joins the spool, or waits for the replayer
to move everything committed before its arrival into Redis (`wait_replayed`) and then goes to
Redis itself. Only events answered before its arrival matter: appends still in flight are
concurrent with it (WAHA sent it without waiting for them). Order holds per gateway process;
with `--workers N` or several gateways, events spooled by different processes are replayed
independently (see docs/gateway.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from gateway import metrics
from gateway.errors import SpoolUnavailable
from gateway.spool_file import SPOOL_GLOB, SpooledEvent, SpoolFile, encode_frame, remove_strays

log = logging.getLogger("wsm.gateway.spool")


@dataclass(frozen=True, slots=True)
class ReplayBatch:
    file: SpoolFile
    events: list[SpooledEvent]
    end: int  # offset after the last event of the batch


@dataclass(slots=True)
class _PendingAppend:
    frame: bytes
    done: asyncio.Future[None]


class SpoolFull(OSError):
    """The spool reached WSM_SPOOL_MAX_BYTES: refusing beats filling the disk."""


class Spool:
    def __init__(self, directory: Path, *, max_bytes: int, write_timeout_s: float) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.write_timeout_s = write_timeout_s
        self._files: list[SpoolFile] = []  # replay order, oldest first
        self._current: SpoolFile | None = None  # this process's append target
        self._pending: list[_PendingAppend] = []
        self._writing = False
        self._writer: asyncio.Task[None] | None = None
        # Held by every append and by the removal of the append target.
        self._write_lock = asyncio.Lock()
        self._work = asyncio.Event()
        self._events = 0  # written, not yet replayed (all files held)
        self._bytes = 0
        # Ordering marks, counted over the files new arrivals must not overtake: this
        # process's own files and the ones it adopted at start (a previous incarnation's).
        # Files adopted later belong to other processes, whose events are concurrent.
        self._committed_mark = 0
        self._replayed_mark = 0
        self._ordered: set[int] = set()  # id() of those files
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self.last_error: str | None = None

    # --- state ------------------------------------------------------------------------------

    @property
    def has_backlog(self) -> bool:
        """True while an event answered "spooled" (by this process or its predecessor) is
        not yet replayed: a new event must not overtake it.

        Appends still in flight do not count (see the module docstring): counting them would
        keep a busy gateway spooling forever, since under steady load one is always in flight.
        """
        return self._replayed_mark < self._committed_mark

    async def wait_replayed(self, at_most_s: float) -> bool:
        """Wait until every event committed before now is in Redis; False after at_most_s."""
        mark = self._committed_mark
        if self._replayed_mark >= mark:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((mark, waiter))
        try:
            await asyncio.wait_for(waiter, at_most_s)
        except TimeoutError:
            return False
        return True

    def _advance_replayed(self, events: int) -> None:
        self._replayed_mark += events
        while self._waiters and self._waiters[0][0] <= self._replayed_mark:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    @property
    def events(self) -> int:
        return self._events

    def _account(self, events: int, size: int) -> None:
        self._events += events
        self._bytes += size
        metrics.SPOOL_EVENTS.set(self._events)
        if self._events > 0:
            self._work.set()

    # --- appending --------------------------------------------------------------------------

    async def append(self, body: bytes, received_at_ms: int) -> None:
        """Make one event durable (written and fsync'd), or raise SpoolUnavailable."""
        loop = asyncio.get_running_loop()
        entry = _PendingAppend(encode_frame(body, received_at_ms), loop.create_future())
        self._pending.append(entry)
        if not self._writing:
            self._writing = True
            self._writer = loop.create_task(self._write_pending())
        try:
            # Guards against a stalled disk only: a write that fails fails at once.
            await asyncio.wait_for(entry.done, self.write_timeout_s)
        except TimeoutError as exc:
            # The write may still land later: then the event is replayed and, since WAHA
            # retries the 503, dropped as a duplicate the second time.
            metrics.SPOOL_WRITE_FAILURES.inc()
            raise SpoolUnavailable("spool write slower than its deadline") from exc

    async def _write_pending(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                data = b"".join(entry.frame for entry in batch)
                try:
                    async with self._write_lock:
                        target = await self._append_target(len(data))
                        await asyncio.to_thread(target.append, data, len(batch))
                except OSError as exc:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.error(
                        "spool write failed", extra={"error": self.last_error, "events": len(batch)}
                    )
                    failure = SpoolUnavailable(f"spool not writable: {exc}")
                    for entry in batch:
                        if not entry.done.done():
                            metrics.SPOOL_WRITE_FAILURES.inc()
                            entry.done.set_exception(failure)
                    continue
                self.last_error = None
                self._account(len(batch), len(data))
                self._committed_mark += len(batch)
                for entry in batch:
                    if not entry.done.done():
                        entry.done.set_result(None)
        finally:
            self._writing = False

    async def _append_target(self, size: int) -> SpoolFile:
        if self._bytes + size > self.max_bytes:
            raise SpoolFull(
                f"spool holds {self._bytes} bytes (WSM_SPOOL_MAX_BYTES={self.max_bytes})"
            )
        # A sealed file ends in a write that failed and could not be cut off: whatever followed
        # it there would be unreadable, past the damage, so the next events start a new file.
        if self._current is None or self._current.sealed:
            created = await asyncio.to_thread(SpoolFile.create, self.directory)
            self._current = created
            self._files.append(created)
            self._ordered.add(id(created))
            log.warning("spooling events locally", extra={"spool_file": str(created.path)})
        return self._current

    # --- adopting ---------------------------------------------------------------------------

    async def adopt_orphans(self, *, at_start: bool = False) -> int:
        """Take over spool files whose process died; returns how many events they hold.

        At start they are the previous incarnation's: new events must come after them."""
        known = {file.path for file in self._files}
        try:
            adopted = await asyncio.to_thread(_adopt_files, self.directory, known)
        except OSError as exc:
            # An unusable directory shows up as 503s on the webhook; nothing to adopt here.
            log.debug("spool directory not readable", extra={"error": str(exc)})
            return 0
        events = 0
        for file in reversed(adopted):
            if file.events == 0:
                await asyncio.to_thread(file.remove)
                continue
            # Before this process's own file: those events are older than anything it spools
            # from now on (the restart case: a killed gateway's events come first).
            self._files.insert(0, file)
            self._account(file.events, file.pending_bytes)
            if at_start:
                self._ordered.add(id(file))
                self._committed_mark += file.events
            events += file.events
            metrics.SPOOL_ADOPTED_FILES.inc()
            log.warning(
                "adopted the spool of a dead gateway process",
                extra={"spool_file": str(file.path), "events": file.events},
            )
        return events

    # --- replaying --------------------------------------------------------------------------

    async def wait_for_work(self, at_most_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._work.wait(), at_most_s)

    async def next_batch(self, max_events: int, max_bytes: int) -> ReplayBatch | None:
        """The oldest events not yet replayed, or None when the spool is empty."""
        while self._files:
            file = self._files[0]
            if file.replayed < file.end:
                events, end = await asyncio.to_thread(file.read, max_events, max_bytes)
                if events:
                    return ReplayBatch(file, events, end)
                # Unreadable past `replayed` (cannot happen for complete records): give up on
                # the rest rather than spin; it is logged and the file kept for inspection.
                log.error(
                    "spool file unreadable; leaving it in place",
                    extra={"spool_file": str(file.path), "offset": file.replayed},
                )
                self._forget(file, keep=True)
                continue
            # False: an append slipped in; the loop reads it on its next turn.
            await self._retire(file)
        if self._events == 0:
            self._work.clear()
        return None

    async def mark_replayed(self, batch: ReplayBatch) -> None:
        """Record that a batch is in Redis; remove its file once nothing is left in it."""
        file = batch.file
        size = batch.end - file.replayed
        if not await asyncio.to_thread(file.save_progress, batch.end, len(batch.events)):
            log.warning(
                "spool progress not saved (disk full?): replay goes on",
                extra={"spool_file": str(file.path), "offset": batch.end},
            )
        self._account(-len(batch.events), -size)
        if id(file) in self._ordered:
            self._advance_replayed(len(batch.events))
        if file.replayed >= file.end:
            await self._retire(file)

    async def _retire(self, file: SpoolFile) -> bool:
        """Remove a fully replayed file. False when it is the append target and an append
        slipped in meanwhile (then there is more to replay)."""
        async with self._write_lock:
            if file.replayed < file.end:
                return False
            if file is self._current:
                self._current = None
            self._forget(file, keep=False)
            if self._events == 0:
                # Drained, its files removed: a write failure of before (a full disk, the
                # size limit) no longer says the spool cannot be written (/readyz).
                self.last_error = None
            await asyncio.to_thread(file.remove)
        if not self._files:
            log.info("spool drained")
        return True

    def _forget(self, file: SpoolFile, *, keep: bool) -> None:
        if file in self._files:
            self._files.remove(file)
        if keep:
            self._account(-file.events, -file.pending_bytes)
            if id(file) in self._ordered:
                # Never replayable: nobody may wait for it.
                self._advance_replayed(file.events)
            file.close()
        self._ordered.discard(id(file))

    async def close(self) -> None:
        """Release every file; what is left is adopted by the next process to start."""
        if self._writer is not None and not self._writer.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._writer), 5)
        async with self._write_lock:
            for file in self._files:
                file.close()
            self._files.clear()
            self._current = None
        self._events = 0
        self._bytes = 0
        self._advance_replayed(self._committed_mark - self._replayed_mark)
        self._ordered.clear()
        metrics.SPOOL_EVENTS.set(0)


def _adopt_files(directory: Path, known: set[Path]) -> list[SpoolFile]:
    if not directory.is_dir():
        return []
    remove_strays(directory)
    adopted: list[SpoolFile] = []
    for path in sorted(directory.glob(SPOOL_GLOB)):
        if path in known:
            continue
        file = SpoolFile.adopt(path)
        if file is not None:
            adopted.append(file)
    return adopted
