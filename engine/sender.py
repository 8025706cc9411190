"""The sender: delivers each conversation's outbox in order through the outbound API, the way
WAHA advises against bans: mark seen, type for a while (longer for longer texts, capped by
WSM_TYPING_DELAY_MAX_MS), then send.

- One sender at a time per conversation: a delivery lock (`...:sending`, SET NX PX) keeps two
  processes from sending the same reply; order inside a chat is the outbox's order. A live
  sender renews its lock (compare-and-renew, send_lock_renew.lua) every third of its lifetime,
  while it waits for a send token and while WAHA calls are in flight, so the lock can be short
  (WSM_SEND_LOCK_SECONDS): a killed sender's conversations resume within seconds. Just before
  `sendText`, one atomic check (send_begin.lua) confirms that the lock is still ours and the
  reply is still the outbox's head, and marks the head with the attempt.
- A reply leaves the outbox only after WAHA's 201 (outbox_sent.lua), so a crash before that
  sends it again later: at least once. An attempt whose outcome is unknown (its sender stopped
  between send_begin.lua and recording WAHA's answer) is not made again by another sender for
  SenderConfig.echo_wait_ms: its echo on `message.any` records it meanwhile (settle_echo). The
  residual duplicate window is an echo that does not come in time, or a lost answer (timeout)
  that is retried; see docs/conversations.md.
- Network errors, 5xx, 429: retried with exponential backoff and jitter (outbox_retry.lua),
  dead-lettered after WSM_SEND_MAX_ATTEMPTS. 422: the session's outbox is parked (for at most
  `parked_ttl_ms`) until a session.status WORKING, or until a probe of WAHA's session status
  (GET /api/sessions/{session}, made while parked) finds it WORKING. Any other 4xx: dead letter
  with WAHA's answer (outbox_dead.lua).
- Sends per WAHA session are rate limited (send_rate_take.lua, a token bucket in Redis).
- The id WAHA gives each send is kept, so its echo on `message.any` is known to be ours. A reply
  dead-lettered after its last attempt got no answer is noted by its text (outbox_dead.lua), so
  its echo is known to be ours too while dead letters are kept (settle_late_echo).
- A file (kind image, document, voice: engine/outbox.py) is read from the media store just
  before its send and goes out with sendImage / sendFile / sendVoice. WAHA Core refuses those
  (422 AvailableInPlusVersion): the reply is marked failed with reason `waha_plus_required`
  (outbox_failed.lua), neither retried nor dead-lettered, counted, and the session is
  remembered as one that cannot send files (`WahaSessionKeys.files_refused`, for
  `files_refused_ms`) so the operator API refuses the next file at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from engine.identity import send_target
from engine.metrics import OUTBOX_SENDS
from engine.outbox import OutboxEntry
from engine.waha_client import (
    MediaOutbound,
    Outbound,
    OutboundFile,
    SentMessage,
    WahaError,
    WahaPlusRequired,
    WahaRetryable,
    WahaSessionNotWorking,
    WahaTerminal,
)
from shared.backoff import Backoff, backoff_ms
from shared.clock import now_ms
from shared.dead_letters import DEFAULT_DEAD_LETTER_LIMITS, DeadLetterLimits, outbox_dead
from shared.keys import (
    EngineConversationKeys,
    ShardKeys,
    WahaSessionKeys,
    all_shards,
    outbox_pending_key,
    shard_of,
    split_conversation_token,
)
from shared.lua import LuaScript, is_noscript
from shared.periodic import run_every, sleep_unless
from shared.redis_client import RedisClient, one_node
from shared.redis_errors import REDIS_UNAVAILABLE, RETRY_CAP_SECONDS
from shared.text import as_text

log = logging.getLogger("wsm.engine.sender")

OUTBOX_SENT = LuaScript.named("outbox_sent")
OUTBOX_RETRY = LuaScript.named("outbox_retry")
OUTBOX_SETTLE = LuaScript.named("outbox_settle")
OUTBOX_FAILED = LuaScript.named("outbox_failed")
OUTBOX_DEAD_DELIVERED = LuaScript.named("outbox_dead_delivered")
SEND_RATE_TAKE = LuaScript.named("send_rate_take")
SEND_LOCK_RENEW = LuaScript.named("send_lock_renew")
SEND_BEGIN = LuaScript.named("send_begin")
SEND_MARK = LuaScript.named("send_mark")
SEND_ABORT = LuaScript.named("send_abort")
SEND_DUE = LuaScript.named("send_due")

# send_begin's answers besides 0 (go) and a positive wait.
LOCK_LOST = -1
HEAD_MOVED = -2

# How long our own send ids are remembered to recognise their echoes (message.any).
OURS_TTL_SECONDS = 24 * 3600
# How long a reply WAHA accepted is kept trying to be recorded while Redis is away (longer than
# any outage the product rides out: WAHA's own retry window is about 30 s).
RECORD_SENT_PATIENCE_SECONDS = 300.0
# How many of the newest outbox dead letters an echo looks through for its reply when the
# reply was not noted for its echo (outbox_dead_delivered.lua): the echo of a send under way
# comes within the echo wait after the send.
DEAD_LETTER_SCAN = 1000
# Why a file reply failed when WAHA is Core (history `<mid>:error`, the API's answer).
WAHA_PLUS_REQUIRED = "waha_plus_required"
# Due entries of one shard one sweep looks at (send_due.lua), at most: a bound on the script's
# work; when it is reached, the next sweep goes on from there.
SWEEP_SCAN = 2000


# How long a send's outcome may stay unknown (SenderConfig.echo_wait_ms; the erase waits it out).
ECHO_WAIT_MS = 60_000


@dataclass(frozen=True, slots=True)
class SenderConfig:
    prefix: str
    shards: int
    typing_delay_max_ms: int = 3000
    typing_ms_per_char: int = 35
    sends_per_second: float = 20.0
    burst: int = 10
    max_attempts: int = 12
    retry_base_ms: int = 500
    retry_max_ms: int = 60_000
    # The delivery lock's lifetime. A live sender renews it every third of that, so it bounds
    # only how long a killed sender's conversations wait (and must exceed a few Redis round
    # trips plus an event-loop stall).
    lock_ms: int = 10_000
    # How long a reply whose last attempt's outcome is unknown (its sender stopped between
    # WAHA's 201 and recording it) waits for that attempt's echo before it is sent again. Also
    # how long the in-flight marker the echo is matched against lives.
    echo_wait_ms: int = ECHO_WAIT_MS
    # While a session is parked (422), its conversations are looked at again this often, and
    # WAHA's session status is probed at most this often per session and process.
    parked_recheck_ms: int = 5000
    # A park lapses after this long even if nothing woke it (a send then finds out again).
    parked_ttl_ms: int = 60_000
    # The outbox's dead letters are capped and aged like the queue's (WSM_DEAD_LETTERS_MAX,
    # WSM_DEAD_LETTER_DAYS); what the cap drops is counted in the shard's stats.
    dead_letters: DeadLetterLimits = DEFAULT_DEAD_LETTER_LIMITS
    # Conversations this process delivers at once, at most. Each holds a Redis connection for
    # its round trips and a connection to WAHA; past the bound, kicked conversations wait their
    # turn in this process (they stay in the pending index meanwhile, so a crash loses none).
    max_deliveries: int = 64
    # After WAHA refused a file as a Plus feature, how long the session is remembered as one
    # that cannot send files (the operator API refuses files for it meanwhile).
    files_refused_ms: int = 3_600_000


@dataclass(frozen=True, slots=True)
class InflightSend:
    """What `…:inflight:<chat>` holds while a reply is being sent: which reply, its text and
    when the attempt began."""

    mid: str
    text: str
    at_ms: int

    def encode(self) -> str:
        return orjson.dumps({"mid": self.mid, "text": self.text, "at": self.at_ms}).decode()

    @classmethod
    def decode(cls, raw: bytes | str) -> InflightSend:
        """A marker; one written before markers named their reply (plain text) has no mid."""
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            return cls("", as_text(raw), 0)
        return cls(str(value.get("mid", "")), str(value.get("text", "")), int(value.get("at", 0)))


def inflight_chats(chat_id: str) -> list[str]:
    """Where the in-flight marker (`WahaSessionKeys.inflight`) of a reply to `chat_id` may
    be: a reply is marked under the chat its outbox entry names, `send_target`'s form of the
    id for the replies the engine writes, which differs from the id as given for a raw jid."""
    return list(dict.fromkeys((chat_id, send_target(chat_id))))


def typing_pause_ms(text: str, per_char_ms: int, cap_ms: int) -> int:
    if cap_ms <= 0:
        return 0
    return min(cap_ms, 300 + per_char_ms * len(text))


class LockKeeper:
    """Keeps a conversation's delivery lock while its sender lives: renews it every third of its
    lifetime, and only while it is still ours (send_lock_renew.lua). `lost` turns True when it
    was found in another sender's hands; the sender then stops (and send_begin.lua would refuse
    its next send anyway)."""

    def __init__(self, redis: RedisClient, key: str, token: str, lock_ms: int) -> None:
        self._redis = redis
        self._key = key
        self._token = token
        self._lock_ms = lock_ms
        self.lost = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> None:
        self._stopping = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def renew(self) -> bool:
        if not self.lost and not await SEND_LOCK_RENEW(
            self._redis, [self._key], [self._token, self._lock_ms]
        ):
            self.lost = True
        return not self.lost

    async def _run(self) -> None:
        while not self.lost:
            await sleep_unless(self._stopping, self._lock_ms / 3000)
            if self._stopping.is_set():
                return
            try:
                await self.renew()
            except Exception as exc:
                # Redis away: the lock may lapse meanwhile. Nothing is sent on a lapsed lock
                # (send_begin checks), so keep trying until the sender is done.
                log.warning("delivery lock not renewed", extra={"error": str(exc)})

    async def stop(self) -> None:
        # Stopped by an event, not by cancelling: a cancellation that lands inside the Redis
        # call can come out of redis-py as a timeout (CPython gh-86296), which the loop above
        # would take for "Redis away" and go on renewing, for ever, a lock whose sender is gone.
        # A renewal under way when the event is set ends by the client's own socket timeout.
        if self._task is not None:
            self._stopping.set()
            with contextlib.suppress(Exception):
                await self._task


class MediaReader(Protocol):
    """What the sender needs of the media store (engine/media/store.py MediaLibrary): a stored
    file's bytes by its id; None when it is gone (erased, past the retention)."""

    async def read_media(self, media: dict[str, Any]) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Look:
    """What a delivery reads before each reply: the outbox's head (None: nothing to send) and
    whether the session is parked. Always queued on a pipeline with other work (the lock, the
    last reply's bookkeeping), so it costs no round trip of its own."""

    head: Any
    parked: bool
    # The last reply's record left the outbox empty and released the delivery lock with it
    # (outbox_sent.lua): the delivery is over, whatever `head` says (a reply committed since
    # is another delivery's, kicked by its commit).
    ended: bool = False

    @staticmethod
    def queue_in(pipe: Any, keys: EngineConversationKeys, session_keys: WahaSessionKeys) -> None:
        pipe.lindex(keys.outbox, 0)
        pipe.exists(session_keys.parked)

    @classmethod
    def of(cls, answers: Sequence[Any], *, ended: bool = False) -> Look:
        head, parked = answers
        return cls(head, bool(parked), ended)


class Sender:
    def __init__(
        self,
        redis: RedisClient,
        outbound: Outbound,
        config: SenderConfig,
        media: MediaReader | None = None,
    ) -> None:
        self._redis = redis
        self._out = outbound
        self.config = config
        # Where a file reply's bytes are read (None: a file reply cannot be sent: dead letter).
        self.media = media
        self._tasks: set[asyncio.Task[None]] = set()
        self._active: set[str] = set()
        # Per shard: where the next sweep goes on looking (send_due.lua's offset).
        self._sweep_from: dict[str, int] = {}
        # Per parked session: when this process may probe WAHA's session status again.
        self._probe_after: dict[str, float] = {}
        self._slots = asyncio.Semaphore(max(1, config.max_deliveries))
        # Conversations kicked in this process that wait for a slot (SenderConfig.max_deliveries).
        self.waiting = 0

    # --- waking ----------------------------------------------------------------------------
    def kick(self, token: str) -> None:
        """Deliver a conversation's outbox soon, in this process (after a handler's commit)."""
        if token in self._active:
            return
        self._spawn(self.deliver(token))

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def sweep_once(self, limit: int = 200) -> int:
        """Start deliveries for due conversations that no sender holds (after a crash, a
        backoff, a park), at most `limit` per shard. Conversations other senders hold are
        stepped over in Redis (send_due.lua), so they never hide an orphan behind them."""
        started = 0
        now = now_ms()
        for shard in all_shards(self.config.shards, self.config.prefix):
            lock_prefix, lock_suffix = lock_key_parts(shard)
            start = self._sweep_from.get(shard.tag, 0)
            due, next_from = await SEND_DUE(
                self._redis,
                [outbox_pending_key(shard)],
                [now, limit, start, SWEEP_SCAN, lock_prefix, lock_suffix],
            )
            self._sweep_from[shard.tag] = int(next_from)
            for raw in due:
                token = as_text(raw)
                if token not in self._active:
                    self.kick(token)
                    started += 1
        return started

    async def wake_session(self, session: str) -> None:
        """A session is WORKING again: make its parked conversations due now."""
        await self._redis.delete(WahaSessionKeys(session, self.config.prefix).parked)
        for shard in all_shards(self.config.shards, self.config.prefix):
            key = outbox_pending_key(shard)
            members = await self._redis.zrange(key, 0, -1)
            tokens = [as_text(m) for m in members]
            mine = [t for t in tokens if split_conversation_token(t)[0] == session]
            if mine:
                await self._redis.zadd(key, dict.fromkeys(mine, now_ms()))
        await self.sweep_once()

    async def drain(self) -> None:
        """Wait for the deliveries under way in this process (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- one conversation ------------------------------------------------------------------
    async def deliver(self, token: str) -> None:
        if token in self._active:
            return
        self._active.add(token)
        try:
            self.waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self.waiting -= 1
            try:
                await self._deliver(token)
            finally:
                self._slots.release()
        except Exception:
            # Redis trouble: the pending index still has this conversation; a sweep retries.
            log.exception("delivery failed", extra={"conversation": token})
        finally:
            self._active.discard(token)

    def _keys(self, token: str) -> EngineConversationKeys:
        shard = ShardKeys(shard_of(token, self.config.shards), self.config.prefix)
        return EngineConversationKeys(shard.conversation(token))

    async def _deliver(self, token: str) -> None:
        keys = self._keys(token)
        session, _ = split_conversation_token(token)
        session_keys = WahaSessionKeys(session, self.config.prefix)
        lock = uuid.uuid4().hex
        # The lock, then the head and the park, in one round trip (the head is read after the
        # lock is taken: a pipeline runs in order, and the lock and the outbox share a node).
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(keys.sending, lock, nx=True, px=self.config.lock_ms)
        Look.queue_in(pipe, keys, session_keys)
        took, *answers = await pipe.execute()
        if not took:
            return  # another process is delivering this conversation
        look: Look | None = Look.of(answers)
        keeper = LockKeeper(self._redis, keys.sending, lock, self.config.lock_ms)
        keeper.start()
        seen_marked = False
        ended = False
        try:
            while not keeper.lost:
                if look is None:
                    pipe = self._redis.pipeline(transaction=False)
                    Look.queue_in(pipe, keys, session_keys)
                    look = Look.of(await pipe.execute())
                head, parked, ended = look.head, look.parked, look.ended
                look = None
                if head is None or ended:
                    return
                if parked:
                    if await self._probe(session_keys):
                        continue  # WORKING again
                    due = now_ms() + self.config.parked_recheck_ms
                    await self._redis.zadd(keys.outbox_pending, {token: due})
                    return
                wait = await self._rate_wait(session_keys)
                if wait > 0:
                    await asyncio.sleep(wait / 1000)  # the keeper holds the lock meanwhile
                    continue
                entry = OutboxEntry.decode(head)
                outcome = await self._send_one(keys, session_keys, token, entry, seen_marked, lock)
                if isinstance(outcome, Look):
                    look, outcome = outcome, "next"  # sent, and what follows read with it
                if outcome == "stop":
                    return
                if outcome == "again":
                    continue  # the head changed under us (an echo recorded it): look again
                seen_marked = seen_marked or entry.mark_seen
                # The keeper renews the lock every third of its lifetime, and send_begin.lua
                # checks it before each send: no renewal per reply is needed.
        finally:
            await keeper.stop()
            if not ended:
                await OUTBOX_SETTLE(
                    self._redis, [keys.sending, keys.outbox, keys.outbox_pending], [lock, token]
                )

    async def _rate_wait(self, session_keys: WahaSessionKeys) -> int:
        if self.config.sends_per_second <= 0:
            return 0
        return int(
            await SEND_RATE_TAKE(
                self._redis,
                [session_keys.rate],
                [self.config.sends_per_second, self.config.burst],
            )
        )

    async def _probe(self, session_keys: WahaSessionKeys) -> bool:
        """The session is parked: ask WAHA whether it is WORKING again (at most once per
        `parked_recheck_ms` per session in this process). This is what unparks a session whose
        `session.status` WORKING was handled before the park landed. True: it works, the park
        is lifted and the session's other conversations are made due."""
        session = session_keys.session
        now = time.monotonic()
        if now < self._probe_after.get(session, 0.0):
            return False
        self._probe_after[session] = now + self.config.parked_recheck_ms / 1000
        try:
            status = await self._out.session_status(session)
        except WahaError as exc:
            log.info("session status probe failed", extra={"session": session, "error": str(exc)})
            return False
        if status != "WORKING":
            return False
        log.warning("parked session is WORKING: its replies go on", extra={"session": session})
        await self._redis.delete(session_keys.parked)
        self._spawn(self.wake_session(session))
        return True

    async def _send_one(
        self,
        keys: EngineConversationKeys,
        session_keys: WahaSessionKeys,
        token: str,
        entry: OutboxEntry,
        seen_marked: bool,
        lock: str,
    ) -> str | Look:
        """One reply. "next": done with it (sent or dead-lettered); "again": the head is another
        reply now; "stop": this turn on the conversation ends (retry later, parked, lock lost,
        or another attempt's echo awaited); a Look: sent and recorded, and the outbox's new
        head and the park read in the same round trip."""
        session = session_keys.session
        try:
            if entry.mark_seen and not seen_marked:
                await self._courtesy(self._out.send_seen(session, entry.chat_id))
            pause = typing_pause_ms(
                entry.text, self.config.typing_ms_per_char, self.config.typing_delay_max_ms
            )
            file = None
            if entry.kind != "text":
                pause = 0  # no typing before a file
                file = await self._file_of(entry)  # before the attempt's mark: may fail
            if pause > 0:
                await self._courtesy(self._out.start_typing(session, entry.chat_id))
                await asyncio.sleep(pause / 1000)
                await self._courtesy(self._out.stop_typing(session, entry.chat_id))
            try:
                begun = await self._begin(keys, session_keys, token, entry, lock)
            except REDIS_UNAVAILABLE:
                self._spawn(self._abort_unsent(keys, token, entry.mid, lock))
                raise
            if begun == LOCK_LOST:
                log.warning("delivery lock lost: not sending", extra={"conversation": token})
                return "stop"
            if begun == HEAD_MOVED:
                return "again"
            if begun > 0:  # made due again when the wait is over (by the script)
                log.warning(
                    "an earlier attempt of this reply may have been sent: waiting for its echo",
                    extra={"conversation": token, "mid": entry.mid},
                )
                return "stop"
            if file is None:
                sent = await self._out.send_text(session, entry.chat_id, entry.text)
            else:
                assert isinstance(self._out, MediaOutbound)  # checked by _file_of
                sent = await self._out.send_media(
                    session, entry.chat_id, entry.kind, file, entry.text
                )
        except WahaPlusRequired as exc:
            await self._plus_required(keys, session_keys, token, entry, exc)
            return "next"
        except WahaSessionNotWorking as exc:
            # Not sent: the next attempt need not wait for an echo.
            await SEND_ABORT(self._redis, [keys.outbox], [entry.mid, lock])
            await self._redis.set(
                session_keys.parked, exc.answer or "422", px=self.config.parked_ttl_ms
            )
            due = now_ms() + self.config.parked_recheck_ms
            await self._redis.zadd(keys.outbox_pending, {token: due})
            OUTBOX_SENDS.labels("parked").inc()
            log.warning("session not working: outbox parked", extra={"session": session})
            return "stop"
        except WahaRetryable as exc:
            attempt = entry.attempts + 1
            if attempt >= self.config.max_attempts:
                await self._dead(keys, token, entry, exc)
                return "next"
            due = now_ms() + backoff_ms(
                attempt, self.config.retry_base_ms, self.config.retry_max_ms, exc.retry_after
            )
            await OUTBOX_RETRY(
                self._redis,
                [keys.outbox, keys.outbox_pending],
                [entry.mid, due, token, str(exc)[:500]],
            )
            OUTBOX_SENDS.labels("retry").inc()
            return "stop"
        except WahaTerminal as exc:
            await self._dead(keys, token, entry, exc)
            return "next"
        look = await self._record_sent(keys, session_keys, token, entry, sent, lock)
        OUTBOX_SENDS.labels("sent").inc()
        return look

    async def _begin(
        self,
        keys: EngineConversationKeys,
        session_keys: WahaSessionKeys,
        token: str,
        entry: OutboxEntry,
        lock: str,
    ) -> int:
        """The one check before the send, then the send's in-flight marker. send_begin.lua: our
        lock, our head, and no other attempt whose outcome is unknown; it marks the head with
        this attempt. The marker: an echo that overtakes WAHA's answer is still ours, and one
        that arrives after this sender died records the send (settle_echo). On one Redis both
        go in one round trip, send_mark.lua right behind send_begin.lua (it writes the marker
        only where send_begin.lua let the send go); on a cluster, whose script keys must share
        a slot, the marker follows in a round trip of its own. send_begin.lua's answer."""
        marker_key = session_keys.inflight(entry.chat_id)
        marker = InflightSend(entry.mid, entry.text, now_ms()).encode()
        marker_ms = max(self.config.lock_ms, self.config.echo_wait_ms)
        begin_keys = [keys.sending, keys.outbox, keys.outbox_pending]
        begin_args: list[str | int] = [
            lock, entry.mid, self.config.lock_ms, self.config.echo_wait_ms, token,
        ]  # fmt: skip
        for attempt in (1, 2):
            pipe = self._redis.pipeline(transaction=False)
            SEND_BEGIN.queue_in(pipe, begin_keys, [*begin_args, now_ms()])
            together = one_node(pipe)
            if together:
                SEND_MARK.queue_in(
                    pipe,
                    [marker_key, keys.sending, keys.outbox],
                    [lock, entry.mid, marker, marker_ms],
                )
            try:
                begun = int((await pipe.execute())[0])
            except REDIS_UNAVAILABLE:
                raise
            except Exception as exc:
                if attempt == 1 and is_noscript(exc):  # Redis restarted: load, then again
                    await SEND_BEGIN.load(self._redis)
                    await SEND_MARK.load(self._redis)
                    continue
                raise
            if begun == 0 and not together:
                await self._redis.set(marker_key, marker, px=marker_ms)
            return begun
        raise AssertionError("unreachable")

    async def _abort_unsent(
        self, keys: EngineConversationKeys, token: str, mid: str, lock: str
    ) -> None:
        """Redis went away after send_begin.lua may have marked the head with this attempt,
        and before WAHA was asked: nothing was sent, so the mark must not make the next sender
        wait `echo_wait_ms` for an echo that cannot come (a Redis freeze caught a dozen sends
        there in the chaos run: their replies went 60 s late). Cleared (send_abort.lua: only
        this attempt's mark) and the conversation made due as soon as Redis answers again;
        pointless after the echo wait, when the mark no longer holds anyone back."""
        deadline = time.monotonic() + self.config.echo_wait_ms / 1000
        backoff = Backoff(first=0.05, cap=RETRY_CAP_SECONDS)
        while time.monotonic() < deadline:
            try:
                if await SEND_ABORT(self._redis, [keys.outbox], [mid, lock]):
                    await self._redis.zadd(keys.outbox_pending, {token: now_ms()})
                return
            except REDIS_UNAVAILABLE:
                await asyncio.sleep(backoff.next_delay())

    async def _record_sent(
        self,
        keys: EngineConversationKeys,
        session_keys: WahaSessionKeys,
        token: str,
        entry: OutboxEntry,
        sent: SentMessage,
        lock: str,
    ) -> Look:
        """WAHA accepted the reply: take it off the outbox, retrying while Redis is away (a
        restart, an outage). Giving up would leave it at the head of the outbox, to be sent a
        second time; both steps are safe to repeat (outbox_sent.lua answers 0 to a repeat).
        Returns the outbox's new head and the park, read in the same round trip, and whether
        the delivery ended with it (the outbox left empty: `lock` released)."""
        deadline = time.monotonic() + RECORD_SENT_PATIENCE_SECONDS
        # Short steps: once Redis is back, the reply is recorded soon. (A sender that finds the
        # delivery lock expired meanwhile does not send it again: the head carries this
        # attempt's mark, see send_begin.lua; recording it makes the rest of the outbox due at
        # once.)
        backoff = Backoff(first=0.05, cap=0.2)
        warned = False
        while True:
            try:
                # The in-flight marker goes in the same round trip, after the reply is recorded
                # (it is only a hint for echoes that overtake WAHA's answer).
                _, look = await self._mark_sent(
                    keys, session_keys, token, entry, sent, clear_inflight=True, lock=lock
                )
                return look
            except REDIS_UNAVAILABLE:
                if time.monotonic() > deadline:
                    raise
                if not warned:
                    log.warning("redis away: recording a sent reply", extra={"mid": entry.mid})
                    warned = True
                await asyncio.sleep(backoff.next_delay())

    async def _mark_sent(
        self,
        keys: EngineConversationKeys,
        session_keys: WahaSessionKeys,
        token: str,
        entry: OutboxEntry,
        sent: SentMessage,
        *,
        clear_inflight: bool = False,
        lock: str | None = None,
    ) -> tuple[int, Look]:
        """Remember the id as ours, naming the reply (before the reply leaves the outbox, so a
        later echo is always recognised), then take the reply off the outbox and make the rest
        of it due now; with `clear_inflight` (the sender's own send), then drop the send's
        in-flight marker; last, read the outbox's new head and the park (a delivery's next
        look). One round trip: a pipeline runs its commands in order, and `ours` and the marker
        share the session's hash tag (one node in a cluster), so the marker never goes before
        `ours` is there. 0: it was recorded already, or the id is another reply's. Given the
        delivery's `lock`, a record that leaves the outbox empty releases it (2, Look.ended)."""
        short_id = sent.short_id
        call_keys = [keys.outbox, keys.history_meta, keys.outbox_pending]
        call_args: list[str | int] = [entry.mid, sent.id, short_id, token, now_ms()]
        if lock is not None:
            call_keys.append(keys.sending)
            call_args.append(lock)
        for attempt in (1, 2):
            pipe = self._redis.pipeline(transaction=False)
            if short_id:
                pipe.set(session_keys.ours(short_id), entry.mid, ex=OURS_TTL_SECONDS)
            OUTBOX_SENT.queue_in(pipe, call_keys, call_args)
            if clear_inflight:
                pipe.delete(session_keys.inflight(entry.chat_id))
            Look.queue_in(pipe, keys, session_keys)
            try:
                answers = await pipe.execute()
            except REDIS_UNAVAILABLE:
                raise
            except Exception as exc:
                if attempt == 1 and is_noscript(exc):
                    await OUTBOX_SENT.load(self._redis)  # Redis restarted: load, then again
                    continue
                raise
            recorded = int(answers[1 if short_id else 0])
            return recorded, Look.of(answers[-2:], ended=recorded == 2)
        raise AssertionError("unreachable")

    async def settle_echo(
        self, token: str, marker: InflightSend, sent: SentMessage, echo_at_ms: int
    ) -> bool:
        """The echo (`message.any`, fromMe) of a reply whose send was under way and is not
        recorded: WhatsApp has it, so it is recorded now and never sent again. This closes the
        window where a sender dies (SIGKILL, or Redis away until it is killed) after WAHA
        accepted a send and before recording it: the attempt's mark on the head keeps the reply
        from being sent again for `echo_wait_ms` (send_begin.lua), and the echo, durable like
        every webhook, arrives well before. True when the reply was taken off the outbox here.

        Only the reply that the marker names, at the head of the outbox, with the echo's text,
        is recorded, and never under an id already known as another reply's: the late echo of
        a recorded send (`ours:<id>` names its reply; outbox_sent.lua checks the history's
        `w:<id>` too) settles nothing, even when the send under way has the same text. An echo
        of an older unrecorded send with the same text (possible only after that send was made
        again by another sender, once the echo wait was over) is at least half an echo wait
        older than the marker and is told apart by its timestamp."""
        keys = self._keys(token)
        if not marker.mid:
            return False
        if echo_at_ms and echo_at_ms < marker.at_ms - self.config.echo_wait_ms // 2:
            return False
        session, _ = split_conversation_token(token)
        session_keys = WahaSessionKeys(session, self.config.prefix)
        if sent.short_id:
            owner = await self._redis.get(session_keys.ours(sent.short_id))
            # "1": written before ids named their reply; outbox_sent.lua still checks those.
            if owner is not None and as_text(owner) not in (marker.mid, "1"):
                return False  # the echo of a send recorded for another reply
        head = await self._redis.lindex(keys.outbox, 0)
        entry = OutboxEntry.decode(head) if head is not None else None
        if entry is None or entry.mid != marker.mid or entry.text != marker.text:
            return await self._settle_dead_letter(
                keys, session_keys, token, sent, text=marker.text, marker=marker
            )
        recorded, _ = await self._mark_sent(keys, session_keys, token, entry, sent)
        if not recorded:
            return False
        OUTBOX_SENDS.labels("sent").inc()
        log.warning(
            "a send was recorded from its echo (its sender stopped before recording it)",
            extra={"conversation": token, "mid": entry.mid},
        )
        return True

    async def settle_late_echo(
        self, token: str, text: str, sent: SentMessage, echo_at_ms: int
    ) -> bool:
        """An echo (`message.any`, fromMe) that names no send under way and no id known as
        ours may still be one of our replies: one dead-lettered after its last attempt got no
        answer, whose echo came after the in-flight marker lapsed (held back longer than the
        echo wait: WAHA's webhook retries, the gateway's spool, a backlog). outbox_dead.lua
        noted such replies for as long as dead letters are kept; one with the echo's text is
        settled as settle_echo settles it. True: the echo was that reply's, so it is not a
        person writing from the business's phone."""
        session, _ = split_conversation_token(token)
        # The slack settle_echo allows between WhatsApp's clock and ours.
        not_after_ms = echo_at_ms + self.config.echo_wait_ms // 2 if echo_at_ms else 0
        return await self._settle_dead_letter(
            self._keys(token),
            WahaSessionKeys(session, self.config.prefix),
            token,
            sent,
            text=text,
            not_after_ms=not_after_ms,
        )

    async def _settle_dead_letter(
        self,
        keys: EngineConversationKeys,
        session_keys: WahaSessionKeys,
        token: str,
        sent: SentMessage,
        *,
        text: str,
        marker: InflightSend | None = None,
        not_after_ms: int = 0,
    ) -> bool:
        """The echo of a reply that is no longer in the outbox: its last attempt got no answer
        and the reply was dead-lettered, yet WhatsApp has it. The reply is the one `marker`
        names (a send under way), or else one noted with the echo's `text`. The letter goes (a
        replay would send the reply twice) and the history says `sent`
        (outbox_dead_delivered.lua). True when such a reply was found."""
        found = await OUTBOX_DEAD_DELIVERED(
            self._redis,
            [keys.outbox_dlq, keys.history_meta],
            [
                token,
                marker.mid if marker else "",
                sent.id,
                sent.short_id,
                DEAD_LETTER_SCAN if marker else 0,
                text,
                now_ms(),
                self.config.dead_letters.max_age_ms,
                not_after_ms,
            ],
        )
        if not found:
            return False
        mid = as_text(found)
        pipe = self._redis.pipeline(transaction=False)
        if sent.short_id:
            pipe.set(session_keys.ours(sent.short_id), mid, ex=OURS_TTL_SECONDS)
        if marker is not None:
            # Without a marker, one that lives now names another reply's send.
            _, chat_id = split_conversation_token(token)
            pipe.delete(*(session_keys.inflight(chat) for chat in inflight_chats(chat_id)))
        await pipe.execute()
        OUTBOX_SENDS.labels("dead_delivered").inc()
        log.warning(
            "a dead-lettered reply was delivered after all (its echo came): letter removed",
            extra={"conversation": token, "mid": mid, "late": marker is None},
        )
        return True

    async def _file_of(self, entry: OutboxEntry) -> OutboundFile:
        """A file reply's bytes from the media store. A file that is gone (erased meanwhile,
        or a store without it) or an outbound that cannot send files is a terminal failure."""
        media = entry.media or {}
        if self.media is None or not isinstance(self._out, MediaOutbound):
            raise WahaTerminal(f"cannot send a {entry.kind}: no media store or file sender here")
        data = await self.media.read_media(media)
        if data is None:
            raise WahaTerminal(f"the {entry.kind} to send is no longer stored")
        mimetype = str(media.get("mimetype") or "application/octet-stream")
        filename = str(media.get("filename") or "file")
        return OutboundFile(data=data, mimetype=mimetype, filename=filename)

    async def _plus_required(
        self,
        keys: EngineConversationKeys,
        session_keys: WahaSessionKeys,
        token: str,
        entry: OutboxEntry,
        exc: WahaPlusRequired,
    ) -> None:
        """WAHA Core refused a file: failed for good, without retries or a dead letter (no
        attempt can succeed on this WAHA), and the session is remembered as one that cannot
        send files. WAHA made no send: the in-flight marker goes too."""
        await OUTBOX_FAILED(
            self._redis,
            [keys.outbox, keys.history_meta, keys.outbox_pending],
            [entry.mid, token, WAHA_PLUS_REQUIRED, now_ms()],
        )
        pipe = self._redis.pipeline(transaction=False)
        refusal = exc.answer[:500] or "422"
        pipe.set(session_keys.files_refused, refusal, px=self.config.files_refused_ms)
        pipe.delete(session_keys.inflight(entry.chat_id))
        await pipe.execute()
        OUTBOX_SENDS.labels(WAHA_PLUS_REQUIRED).inc()
        log.warning(
            "WAHA does not send files (a WAHA Plus feature): reply failed",
            extra={"conversation": token, "mid": entry.mid, "kind": entry.kind},
        )

    async def _courtesy(self, call: Any) -> None:
        """sendSeen and typing are courtesy: only a 422 (session down) stops the reply."""
        try:
            await call
        except WahaSessionNotWorking:
            raise
        except WahaError as exc:
            log.info("courtesy call failed", extra={"error": str(exc)})

    async def _dead(
        self, keys: EngineConversationKeys, token: str, entry: OutboxEntry, exc: WahaError
    ) -> None:
        reason = orjson.dumps({"status": exc.status, "answer": exc.answer, "error": str(exc)})
        await outbox_dead(
            self._redis, keys, token, entry.mid, reason, now_ms(), self.config.dead_letters
        )
        OUTBOX_SENDS.labels("dead").inc()
        log.warning("reply dead-lettered", extra={"conversation": token, "status": exc.status})


def lock_key_parts(shard: ShardKeys) -> tuple[str, str]:
    """A conversation's delivery lock key around its token (shared/keys.py is the one place
    that names keys; send_due.lua rebuilds them as prefix .. token .. suffix)."""
    sentinel = "\x00"
    prefix, suffix = EngineConversationKeys(shard.conversation(sentinel)).sending.split(sentinel)
    return prefix, suffix


async def run_sweeper(sender: Sender, stop: asyncio.Event, interval: float = 0.25) -> None:
    """Deliver what is due until `stop` is set."""
    await run_every(interval, sender.sweep_once, stop, what="outbox sweep", logger=log)
