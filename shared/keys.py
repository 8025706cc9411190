"""Every Redis key name wsm uses is built here, and only here.

Layout (see docs/architecture.md for a message's life through these keys). `P` is the key
prefix (WSM_KEY_PREFIX, default `wsm`), `n` the shard, `<conv>` the conversation token:

    P:{qn}:ready               LIST   conversations with work, waiting to be claimed
                                      (FIFO: LPUSH at the back, BLMOVE RIGHT from the front)
    P:{qn}:claimed             LIST   popped by a worker but not yet leased; the reaper hands
                                      back entries that stay here
    P:{qn}:leases              ZSET   conversation -> lease deadline (ms, Redis clock)
    P:{qn}:delayed             ZSET   conversation -> time it may be retried (backoff)
    P:{qn}:stats               HASH   counters: waiting messages, redeliveries, ...
    P:{qn}:dlq                 LIST   dead letters (JSON: record, error, attempts), capped
    P:{qn}:fence               STRING the shard's fencing counter (never deleted, never lowered)
    P:{qn}:c:<conv>:msgs       LIST   the conversation's message ids, oldest at the RIGHT
    P:{qn}:c:<conv>:bodies     HASH   message id -> queued record
    P:{qn}:c:<conv>:meta       HASH   state (ready|leased|delayed), fence, owner, ...; deleted
                                      when the conversation goes idle (no meta = idle)
    P:{qn}:c:<conv>:attempts   HASH   message id -> attempts so far
    P:{qn}:c:<conv>:reaped     STRING "<fence>:<message id>": the last ack of a lease the reaper
                                      took back, for that holder's retried ack (TTL: minutes)
    P:{qn}:seen:<session>:e:<id>  STRING  dedupe marker for an envelope id  (TTL: window)
    P:{qn}:seen:<session>:m:<k>   STRING  dedupe marker for a message id    (TTL: window)
    P:{qn}:claimed_seen        SET    the reaper's snapshot of `claimed` at its last pass: a
                                      token still there at the next pass is handed back
    P:{qn}:reaper              STRING lock: one reaper pass per shard per interval (TTL)
    P:{qn}:c:<conv>:handled    LIST   what the recording handler got (development, tests)
    P:{fleet:<id>}:supervisor  STRING a worker fleet's supervisor heartbeat (JSON; TTL)
    P:{fleet:<id>}:p<i>        STRING heartbeat of the fleet's process i (JSON; TTL)

Why shards: Redis Cluster runs a script only when every key it declares hashes to one slot.
Enqueueing touches the conversation's keys *and* the ready list, so the ready list must share
the conversation's hash tag. A conversation therefore belongs to one of `WSM_QUEUE_SHARDS`
shards (crc32 of its identity), and every key of a shard carries the tag `{wsm:q<n>}`. On a
single Redis one shard is enough; on a cluster, several per master spread the load.

`<conv>` is the conversation token `<session>|<chat id>` (see `conversation_token`).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

DEFAULT_PREFIX = "wsm"


def conversation_token(session: str, chat_id: str) -> str:
    """The identity of a conversation inside key names and the ready list.

    WAHA session names are `[a-zA-Z0-9_-]`; chat ids never contain `|`, so the token splits back.
    A person's phone-number chat is one conversation whichever way it is written
    (`canonical_chat_id`).
    """
    return f"{session}|{canonical_chat_id(chat_id)}"


def canonical_chat_id(chat_id: str) -> str:
    """WhatsApp's raw jid `<phone>[:<device>]@s.whatsapp.net` as WAHA's `<phone>@c.us`: the form
    WAHA sends to and names our replies' echoes with. Without it, an event written the raw way
    was a second conversation with the same person, whose reply's echo settled nothing (it went
    to the `@c.us` one), so a crash after WAHA's answer sent that reply twice (found by an
    audit). Any other chat id is its own."""
    user, at, server = chat_id.rpartition("@")
    if at and server == "s.whatsapp.net":
        phone = user.partition(":")[0]
        if phone.isdigit():
            return f"{phone}@c.us"
    return chat_id


def split_conversation_token(token: str) -> tuple[str, str]:
    session, _, chat_id = token.partition("|")
    return session, chat_id


def shard_of(token: str, shards: int) -> int:
    """The shard a conversation lives on. Stable: it must never change while work is queued."""
    if shards <= 1:
        return 0
    return zlib.crc32(token.encode()) % shards


@dataclass(frozen=True, slots=True)
class ShardKeys:
    """Keys of one queue shard (all in one Redis Cluster slot).

    `prefix` (WSM_KEY_PREFIX) lets several deployments, or test runs, share one Redis.
    """

    shard: int
    prefix: str = DEFAULT_PREFIX

    @property
    def tag(self) -> str:
        return f"{self.prefix}:{{q{self.shard}}}"

    @property
    def ready(self) -> str:
        return f"{self.tag}:ready"

    @property
    def claimed(self) -> str:
        return f"{self.tag}:claimed"

    @property
    def leases(self) -> str:
        return f"{self.tag}:leases"

    @property
    def delayed(self) -> str:
        return f"{self.tag}:delayed"

    @property
    def stats(self) -> str:
        return f"{self.tag}:stats"

    @property
    def dlq(self) -> str:
        return f"{self.tag}:dlq"

    @property
    def fence(self) -> str:
        # Every lease's fencing token comes from this counter, so a conversation's fence never
        # goes back even though its meta is deleted whenever it has nothing queued.
        return f"{self.tag}:fence"

    def conversation(self, token: str) -> ConversationKeys:
        return ConversationKeys(self, token)

    def seen_event(self, session: str, event_id: str) -> str:
        # Scoped by session: two WAHA sessions never share an id space we can rely on.
        return f"{self.tag}:seen:{session}:e:{event_id}"

    def seen_message(self, session: str, message_key: str) -> str:
        return f"{self.tag}:seen:{session}:m:{message_key}"

    @property
    def claimed_seen(self) -> str:
        return f"{self.tag}:claimed_seen"

    @property
    def reaper_lock(self) -> str:
        return f"{self.tag}:reaper"


@dataclass(frozen=True, slots=True)
class ConversationKeys:
    """Keys of one conversation's queue; they share the shard's hash tag."""

    shard_keys: ShardKeys
    token: str

    @property
    def _base(self) -> str:
        return f"{self.shard_keys.tag}:c:{self.token}"

    @property
    def messages(self) -> str:
        return f"{self._base}:msgs"

    @property
    def bodies(self) -> str:
        return f"{self._base}:bodies"

    @property
    def meta(self) -> str:
        return f"{self._base}:meta"

    @property
    def attempts(self) -> str:
        return f"{self._base}:attempts"

    @property
    def reaped_ack(self) -> str:
        """The last ack of a lease the reaper took back (lib/ack.lua): the meta that held it is
        gone or overwritten, and that holder may still retry the ack whose answer it lost."""
        return f"{self._base}:reaped"

    @property
    def handled(self) -> str:
        return f"{self._base}:handled"

    @property
    def hash_tag(self) -> str:
        """The Redis Cluster hash tag every key of this conversation carries (`q<n>`)."""
        return f"q{self.shard_keys.shard}"


def keys_for_conversation(
    session: str, chat_id: str, shards: int, prefix: str = DEFAULT_PREFIX
) -> ConversationKeys:
    token = conversation_token(session, chat_id)
    return ShardKeys(shard_of(token, shards), prefix).conversation(token)


def all_shards(shards: int, prefix: str = DEFAULT_PREFIX) -> list[ShardKeys]:
    return [ShardKeys(n, prefix) for n in range(max(1, shards))]


def hash_tag_of(key: str) -> str:
    """The part of `key` Redis Cluster hashes: the first non-empty `{...}`, else the whole key."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


@dataclass(frozen=True, slots=True)
class FleetKeys:
    """Heartbeats of one worker fleet (a supervisor and its processes).

    The fleet id (WSM_WORKER_FLEET_ID, the host name by default) is a hash tag, so a health
    check reads every heartbeat of a fleet with one MGET, on a cluster too.
    """

    fleet_id: str
    prefix: str = DEFAULT_PREFIX

    @property
    def tag(self) -> str:
        return f"{self.prefix}:{{fleet:{self.fleet_id}}}"

    @property
    def supervisor(self) -> str:
        return f"{self.tag}:supervisor"

    def process(self, index: int) -> str:
        return f"{self.tag}:p{index}"


# --- Conversation engine (engine/) -----------------------------------------------------------
#
#   <prefix>:{q<n>}:c:<conv>:state        HASH   state machine and collected data
#   <prefix>:{q<n>}:c:<conv>:hist         STREAM every message in and out, oldest first
#   <prefix>:{q<n>}:c:<conv>:histmeta     HASH   status, WAHA ids, edits, revokes, reactions,
#                                                replies dead-lettered unanswered (dead_replies)
#   <prefix>:{q<n>}:c:<conv>:outbox       LIST   replies committed but not yet sent (head = next)
#   <prefix>:{q<n>}:c:<conv>:sending      STRING the sender's delivery lock (token, PX)
#   <prefix>:{q<n>}:outbox:pending        ZSET   conversation -> when its outbox is due (ms)
#   <prefix>:{q<n>}:outbox:dlq            LIST   replies WAHA refused for good, with its answer
#   <prefix>:{s:<session>}:parked         STRING the session answered 422: sends wait
#   <prefix>:{s:<session>}:ours:<id>      STRING id WAHA gave one of our sends (TTL)
#   <prefix>:{s:<session>}:inflight:<chat> STRING a send under way (its text)
#   <prefix>:{s:<session>}:rate           HASH   token bucket of the session's sends
#   <prefix>:{s:<session>}:reminder_rate  HASH   token bucket of the session's reminders
#   <prefix>:{s:<session>}:lid:<lid>      STRING cached phone number of a @lid (TTL)
#   <prefix>:{line}:w:<session>           ZSET   the waiting line: conversation -> entered at (ms)
#   <prefix>:{line}:agents                HASH   agent id -> {name, online, since}
#   <prefix>:{line}:a:<agent>             SET    conversations an agent is handling
#   <prefix>:{line}:taken                 HASH   conversation -> assignment not yet confirmed
#   <prefix>:{line}:h:<session>           LIST   recent handling times (s), newest first
#   <prefix>:{line}:sessions              SET    sessions that ever had a line
#   <prefix>:{line}:seq                   STRING tie-breaker of entries in the same millisecond
#   <prefix>:{line}:joined                HASH   conversation -> seq when it joined an agent
#   <prefix>:{line}:reconcile(d)          STRING reconcile pass lock / its watermark (ms)
#   <prefix>:{eng}:sessions               HASH   WAHA session -> {status, at}
#   <prefix>:{eng}:convs                  ZSET   conversation -> last activity (ms): the index
#   <prefix>:{eng}:state:<state>          SET    conversations in a state (for counts and lists)
#   <prefix>:{eng}:timers                 ZSET   conversation -> when to check it for inactivity
#   <prefix>:{eng}:maint(:until)          STRING maintenance pass lock / its watermark (ms)
#   <prefix>:{eng}:dropped                HASH   counts of data a bound dropped
#
# Per-conversation engine keys carry the conversation's queue shard tag, so a handler's writes
# commit in one script together with the queue's ack (fenced by the lease), even on a cluster.
# Cross-conversation structures (the line, the indexes, the timers) each have a tag of their own
# and are only changed by idempotent steps, safe to repeat when a message is redelivered.


@dataclass(frozen=True, slots=True)
class EngineConversationKeys:
    """The conversation engine's keys of one conversation (same hash tag as its queue)."""

    conversation: ConversationKeys

    @property
    def _base(self) -> str:
        return f"{self.conversation.shard_keys.tag}:c:{self.conversation.token}"

    @property
    def state(self) -> str:
        return f"{self._base}:state"

    @property
    def history(self) -> str:
        return f"{self._base}:hist"

    @property
    def history_meta(self) -> str:
        return f"{self._base}:histmeta"

    @property
    def outbox(self) -> str:
        return f"{self._base}:outbox"

    @property
    def sending(self) -> str:
        return f"{self._base}:sending"

    @property
    def outbox_pending(self) -> str:
        return f"{self.conversation.shard_keys.tag}:outbox:pending"

    @property
    def outbox_dlq(self) -> str:
        return f"{self.conversation.shard_keys.tag}:outbox:dlq"

    def all_own(self) -> list[str]:
        """Every key that belongs to this conversation alone (what an erase deletes)."""
        return [self.state, self.history, self.history_meta, self.outbox, self.sending]


def engine_keys_for(
    session: str, chat_id: str, shards: int, prefix: str = DEFAULT_PREFIX
) -> EngineConversationKeys:
    return EngineConversationKeys(keys_for_conversation(session, chat_id, shards, prefix))


def outbox_pending_key(shard: ShardKeys) -> str:
    return f"{shard.tag}:outbox:pending"


def outbox_dlq_key(shard: ShardKeys) -> str:
    return f"{shard.tag}:outbox:dlq"


@dataclass(frozen=True, slots=True)
class WahaSessionKeys:
    """Keys of one WAHA session's sending side (one hash tag per session)."""

    session: str
    prefix: str = DEFAULT_PREFIX

    @property
    def tag(self) -> str:
        return f"{self.prefix}:{{s:{self.session}}}"

    @property
    def parked(self) -> str:
        return f"{self.tag}:parked"

    @property
    def rate(self) -> str:
        return f"{self.tag}:rate"

    @property
    def reminder_rate(self) -> str:
        # HASH token bucket of the session's reminders (WSM_REMINDER_PACE).
        return f"{self.tag}:reminder_rate"

    def ours(self, message_id: str) -> str:
        return f"{self.tag}:ours:{message_id}"

    def inflight(self, chat_id: str) -> str:
        return f"{self.tag}:inflight:{chat_id}"

    @property
    def files_refused(self) -> str:
        """Set (with a TTL) when this session's WAHA refused a file as a WAHA Plus feature:
        the operator API then refuses files for it at once (engine/sender.py)."""
        return f"{self.tag}:files_refused"

    def lid(self, lid: str) -> str:
        return f"{self.tag}:lid:{lid}"


@dataclass(frozen=True, slots=True)
class LineKeys:
    """The waiting lines and agents (all in one hash tag: a take touches line and agent)."""

    prefix: str = DEFAULT_PREFIX

    @property
    def tag(self) -> str:
        return f"{self.prefix}:{{line}}"

    def waiting(self, session: str) -> str:
        return f"{self.tag}:w:{session}"

    def team_waiting(self, session: str, team: str) -> str:
        # A team's own line in a session (WAHA session names never hold ':').
        return f"{self.tag}:w:{session}:t:{team}"

    @property
    def team_lines(self) -> str:
        # SET of every team line a customer entered (`team_waiting` keys): the line's
        # maintenance finds there the lines of teams a business file no longer has.
        return f"{self.tag}:teamlines"

    def split_team_waiting(self, key: str) -> tuple[str, str] | None:
        """(session, team) of a `team_waiting` key; None for any other key."""
        head = f"{self.tag}:w:"
        session, sep, team = key.removeprefix(head).partition(":t:")
        if not key.startswith(head) or not sep or not session or not team:
            return None
        return session, team

    @property
    def agent_teams(self) -> str:
        # agent id -> JSON list of the team ids whose lines the agent takes from.
        return f"{self.tag}:agent_teams"

    @property
    def hours_state(self) -> str:
        # "open" / "closed" as the line last saw the business's hours: the switch to open
        # tells everyone in line their place again. `<this>:<session>` for a session with a
        # business of its own (WSM_BUSINESS_FILES): its own hours, its own record.
        return f"{self.tag}:hours"

    @property
    def agents(self) -> str:
        return f"{self.tag}:agents"

    def agent_conversations(self, agent_id: str) -> str:
        return f"{self.tag}:a:{agent_id}"

    @property
    def taken(self) -> str:
        return f"{self.tag}:taken"

    def handling_times(self, session: str) -> str:
        return f"{self.tag}:h:{session}"

    @property
    def sessions(self) -> str:
        return f"{self.tag}:sessions"

    @property
    def sequence(self) -> str:
        # Breaks ties between customers entering in the same millisecond (FIFO stays exact);
        # also the line's event counter that stamps `joined` (monotonic, unlike clocks).
        return f"{self.tag}:seq"

    @property
    def joined(self) -> str:
        # conversation -> `sequence` value when it last joined an agent's set: the reconcile
        # never removes one that joined after it looked at the conversation's state.
        return f"{self.tag}:joined"

    @property
    def reconcile_lock(self) -> str:
        return f"{self.tag}:reconcile"

    @property
    def reconciled_until(self) -> str:
        # ms: conversations changed after this are looked at by the next reconcile.
        return f"{self.tag}:reconciled"


@dataclass(frozen=True, slots=True)
class CalendarKeys:
    """The AI agent's bookings and their outgoing webhook (engine/agent/), one hash tag.

        <prefix>:{cal}:day:<YYYY-MM-DD>   HASH   slot start "HH:MM" -> booking id (taken slots)
        <prefix>:{cal}:day:<business>:<YYYY-MM-DD>   the same, for a business of its own
                                          (WSM_BUSINESS_FILES; the default business has none)
        <prefix>:{cal}:b:<booking id>     HASH   one booking (customer, service, start, status)
        <prefix>:{cal}:cust:<conv>        ZSET   a customer's booked appointments: id -> start (ms)
        <prefix>:{cal}:custall:<conv>     ZSET   every booking a customer ever made (LGPD erase)
        <prefix>:{cal}:hooks:due          ZSET   webhook event id -> when to (re)deliver (ms)
        <prefix>:{cal}:hooks:body         HASH   webhook event id -> the signed JSON body
        <prefix>:{cal}:hooks:attempts     HASH   webhook event id -> deliveries tried
        <prefix>:{cal}:hooks:dead         LIST   events that failed every attempt (JSON)
        <prefix>:{cal}:reminders          ZSET   booking id -> when its reminder is due (ms)
        <prefix>:{cal}:reminders:awaiting ZSET   reminded booking id -> start (ms), until answered
        <prefix>:{cal}:reminders:lock     STRING the reminders pass lock (PX)
        <prefix>:{cal}:freed              ZSET   cancelled booking id -> when its slot freed (ms)
        <prefix>:{cal}:freed_offers:<id>  HASH   hashed customer -> when offered; `done`
                                          (the erase removes the customer's field)
        <prefix>:{cal}:freed:lock         STRING the freed-slots pass lock (PX)

    One tag for the whole calendar: a booking checks the slot, writes the booking, indexes it
    under its customer and queues its webhook event in one script, so all of them must live in
    one Redis Cluster slot. A business's bookings are a small, slow-moving set: one slot holds
    them easily. Days and bookings expire a retention after their date (EXPIREAT).
    """

    prefix: str = DEFAULT_PREFIX
    # The business whose slots these are (engine/businesses.py): only the taken slots are
    # per business; bookings, customers' indexes (per session) and webhooks need no split.
    business: str = ""

    @property
    def tag(self) -> str:
        return f"{self.prefix}:{{cal}}"

    def day(self, day: str) -> str:
        if self.business:
            return f"{self.tag}:day:{self.business}:{day}"
        return f"{self.tag}:day:{day}"

    def booking(self, booking_id: str) -> str:
        return f"{self.tag}:b:{booking_id}"

    def customer(self, token: str) -> str:
        return f"{self.tag}:cust:{token}"

    def customer_all(self, token: str) -> str:
        return f"{self.tag}:custall:{token}"

    @property
    def hooks_due(self) -> str:
        return f"{self.tag}:hooks:due"

    @property
    def hooks_body(self) -> str:
        return f"{self.tag}:hooks:body"

    @property
    def hooks_attempts(self) -> str:
        return f"{self.tag}:hooks:attempts"

    @property
    def hooks_dead(self) -> str:
        return f"{self.tag}:hooks:dead"

    @property
    def hooks_dead_dropped(self) -> str:
        # How many dead letters the cap and the aging have dropped (booking_hook_dead.lua), for
        # `wsm dlq booking-webhook list`: a count, no customer's data.
        return f"{self.tag}:hooks:dead:dropped"

    @property
    def reminders(self) -> str:
        # ZSET booking id -> when its reminder is due (ms); written by the booking scripts
        # (book, move, cancel) in the same step as the booking (engine/agent/reminders.py).
        return f"{self.tag}:reminders"

    @property
    def reminders_awaiting(self) -> str:
        # ZSET booking id -> start (ms): reminders sent and not answered yet (for the counts).
        return f"{self.tag}:reminders:awaiting"

    @property
    def reminders_lock(self) -> str:
        # STRING: one process runs each reminders pass (SET NX PX).
        return f"{self.tag}:reminders:lock"

    @property
    def freed(self) -> str:
        # ZSET cancelled booking id -> when its slot freed (ms): slots of today to offer to the
        # waiting line (engine/agent/freed_slots.py; the option `offer_freed_slots`).
        return f"{self.tag}:freed"

    def freed_offers(self, booking_id: str) -> str:
        # HASH sha256(conversation)[:16] -> when offered, and `done` once the pass finished
        # with the slot (hashed: no key or value holds a customer's number; the digest is still
        # a pseudonym, so the LGPD erase removes an erased customer's field: erase_calendar.lua).
        return f"{self.tag}:freed_offers:{booking_id}"

    @property
    def freed_lock(self) -> str:
        # STRING: one process runs each freed-slots pass (SET NX PX).
        return f"{self.tag}:freed:lock"


@dataclass(frozen=True, slots=True)
class EngineIndexKeys:
    """Cross-conversation indexes of the engine (one hash tag)."""

    prefix: str = DEFAULT_PREFIX

    @property
    def tag(self) -> str:
        return f"{self.prefix}:{{eng}}"

    @property
    def sessions(self) -> str:
        return f"{self.tag}:sessions"

    @property
    def conversations(self) -> str:
        return f"{self.tag}:convs"

    def in_state(self, state: str) -> str:
        return f"{self.tag}:state:{state}"

    @property
    def timers(self) -> str:
        return f"{self.tag}:timers"

    @property
    def maintenance_lock(self) -> str:
        # One process runs each pass of the engine's maintenance (history trim, index prune).
        return f"{self.tag}:maint"

    @property
    def maintained_until(self) -> str:
        # ms: conversations changed after this get their history trimmed by the next pass.
        return f"{self.tag}:maint:until"

    @property
    def dropped(self) -> str:
        # HASH: what a bound dropped that was data (`history_entries`: trimmed by length).
        return f"{self.tag}:dropped"


@dataclass(frozen=True, slots=True)
class MediaKeys:
    """The index of customers' stored media (engine/media/store.py), one hash tag:

    <prefix>:{media}:m:<id>      STRING JSON {token, session, chat_id, sha256, size, mimetype,
                                        filename, at, transcript?}: what GET /api/media/<id>
                                        serves, and whose conversation it is (TTL: retention)
    <prefix>:{media}:c:<conv>    HASH   WhatsApp message id -> media id: the conversation's
                                        media (the erase) and a redelivered message's (TTL)

    The bytes live in the media store (a folder or a bucket), under <conv>/<sha256>.
    """

    prefix: str = DEFAULT_PREFIX

    @property
    def tag(self) -> str:
        return f"{self.prefix}:{{media}}"

    def media(self, media_id: str) -> str:
        return f"{self.tag}:m:{media_id}"

    def conversation(self, token: str) -> str:
        return f"{self.tag}:c:{token}"


@dataclass(frozen=True, slots=True)
class ConsoleKeys:
    """The attendants' console (api/console/), one hash tag:

    <prefix>:{console}:acct:<agent>      HASH   an account: name, role, argon2 hash
    <prefix>:{console}:accounts          SET    every account id
    <prefix>:{console}:sess:<sid>        HASH   a logged-in session (agent, csrf; TTL)
    <prefix>:{console}:asess:<agent>     SET    an account's session ids (removed with it)
    <prefix>:{console}:fail:<kind>:<who> STRING failed logins of an account or an IP (TTL)
    <prefix>:{console}:lock:<kind>:<who> STRING logins refused until it expires (TTL)
    <prefix>:{console}:events            STREAM what changed, for the live channel
    <prefix>:{console}:watcher           STRING which API process derives the events (TTL)
    <prefix>:{console}:viewed            ZSET   conversation -> until when a page shows it
    <prefix>:{console}:audit:<conv>      STREAM who sent, took, closed, handed back (TTL)
    <prefix>:{console}:read:<agent>      HASH   conversation -> last history id seen
    <prefix>:{console}:handled:<agent>   ZSET   conversations an agent took or wrote in
    <prefix>:{console}:canned            HASH   shortcut -> canned reply
    """

    prefix: str = DEFAULT_PREFIX

    @property
    def tag(self) -> str:
        return f"{self.prefix}:{{console}}"

    def account(self, agent_id: str) -> str:
        return f"{self.tag}:acct:{agent_id}"

    @property
    def accounts(self) -> str:
        return f"{self.tag}:accounts"

    def session(self, sid: str) -> str:
        return f"{self.tag}:sess:{sid}"

    def account_sessions(self, agent_id: str) -> str:
        return f"{self.tag}:asess:{agent_id}"

    def failures(self, kind: str, who: str) -> str:
        return f"{self.tag}:fail:{kind}:{who}"

    def lock(self, kind: str, who: str) -> str:
        return f"{self.tag}:lock:{kind}:{who}"

    @property
    def events(self) -> str:
        return f"{self.tag}:events"

    @property
    def watcher(self) -> str:
        return f"{self.tag}:watcher"

    @property
    def viewed(self) -> str:
        return f"{self.tag}:viewed"

    def audit(self, token: str) -> str:
        return f"{self.tag}:audit:{token}"

    def read(self, agent_id: str) -> str:
        return f"{self.tag}:read:{agent_id}"

    def handled(self, agent_id: str) -> str:
        return f"{self.tag}:handled:{agent_id}"

    @property
    def canned(self) -> str:
        return f"{self.tag}:canned"


@dataclass(frozen=True, slots=True)
class AgentLimitKeys:
    """The AI agent's limits per conversation (engine/agent/limits.py), no hash tag (one key a
    call):

        <prefix>:agentlimit:turns:<who>          ZSET   agent turns started in the last minute
        <prefix>:agentlimit:tokens:<day>:<who>   STRING model tokens used that UTC day
        <prefix>:agentlimit:stt:<who>            ZSET   voice notes transcribed in the last minute

    `<who>` is a digest of the conversation token, not the token: no key name carries a
    customer's number. The digest is still a pseudonym of the customer (hashing candidate
    numbers finds it), so the LGPD erase deletes these keys (engine/agent/limits.py
    `limit_keys`) rather than waiting for their expiry.
    """

    prefix: str = DEFAULT_PREFIX

    @staticmethod
    def who(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()[:32]

    def turns(self, token: str) -> str:
        return f"{self.prefix}:agentlimit:turns:{self.who(token)}"

    def tokens(self, token: str, day: str) -> str:
        return f"{self.prefix}:agentlimit:tokens:{day}:{self.who(token)}"

    def transcriptions(self, token: str) -> str:
        return f"{self.prefix}:agentlimit:stt:{self.who(token)}"
