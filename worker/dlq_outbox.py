"""`wsm dlq outbox`: look at, send again or drop the replies the sender gave up on (the outbox's
dead letters: shared/outbox_dead_letters.py). HELP is what `wsm dlq outbox --help` says."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

from shared.clock import now_ms
from shared.dead_letters import dropped_dead_letters
from shared.outbox_dead_letters import (
    OutboxDeadLetter,
    OutboxReplay,
    OutboxReplayResult,
    ReplayBounds,
    drop_outbox_dead_letter,
    list_outbox_dead_letters,
    replay_outbox_dead_letters,
)
from shared.redis_client import RedisClient
from shared.settings import Settings
from worker import dlq_choice

NOTHING = "no outbox dead letters"

HELP = """\
Replies the sender gave up on: WAHA refused them (a 4xx), or every try failed
(WSM_SEND_MAX_ATTEMPTS of 5xx, 429 or network errors). Nothing sends them by itself.

  list [--json]
      oldest first: when, sends tried, whether it may have been sent (not_sent, or unknown:
      the last send got no answer from WAHA), conversation, reply id, the text or file, why
  replay (ID... | --conversation C | --all) [--resend-unknown]
      back into its conversation's outbox, after the replies waiting there (a conversation's
      in their order) as fresh replies: the sender sends each once, as it sends any reply
  drop (ID... | --conversation C | --all)
      delete for good

IDs are reply ids and C a conversation (`<session>|<chat id>`), as `list` shows them.

A replay refuses a reply, leaving it listed and storing nothing, when its last send got no
answer from WAHA (it may be on the customer's phone: check the chat, then replay it with
--resend-unknown), when its conversation's history no longer has it (the customer was erased,
or the history trimmed it), or when it was written more than WSM_HISTORY_RETENTION_DAYS ago.

Exit status: 0 every named reply was handled; 1 one was not found, gone or refused; 2 bad
usage.
"""

REPLAY_HELP = (
    "Put replies back into their conversation's outbox, after the replies waiting there (a "
    "conversation's in their order), as fresh replies: one atomic step per conversation "
    "takes them out of the dead letters, so the sender sends each once and a second replay "
    "finds it gone. Refused (left listed, nothing stored, exit status 1): a reply whose last "
    "send got no answer from WAHA (unless --resend-unknown), one its conversation's history "
    "no longer has (erased, trimmed), one written more than WSM_HISTORY_RETENTION_DAYS ago."
)


def add_parser(commands: Any) -> None:
    """`outbox` and its subcommands, under `wsm dlq`'s."""
    replay = dlq_choice.add_section(
        commands,
        "outbox",
        dest="outbox_command",
        help_="replies the sender gave up on (list, replay, drop)",
        description=HELP,
        noun="reply",
        replay=("put back into its conversation's outbox, to be sent once", REPLAY_HELP),
        drop_description="Delete replies from the outbox's dead letters for good.",
    )
    replay.add_argument(
        "--resend-unknown",
        action="store_true",
        help="also replies whose last send got no answer from WAHA: they may have "
        "reached the customer already (check the chat first)",
    )


def usage_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the command line, or None."""
    return dlq_choice.usage_error(args, f"outbox {args.outbox_command}", "reply")


async def run(client: RedisClient, settings: Settings, args: argparse.Namespace) -> int:
    letters = await list_outbox_dead_letters(client, settings.queue_shards, settings.key_prefix)
    if args.outbox_command == "list":
        print_letters(letters, as_json=args.json)
        dropped = await dropped_dead_letters(
            client, settings.queue_shards, settings.key_prefix, outbox=True
        )
        if dropped and not args.json:
            print(
                f"({dropped} older replies were dropped: at most {settings.dead_letters_max} "
                f"per shard are kept, for {settings.dead_letter_days:g} days)"
            )
        return 0
    chosen, missing = dlq_choice.choose(
        letters,
        args,
        id_of=lambda letter: letter.mid,
        conversation_of=lambda letter: letter.conversation,
    )
    if args.all and not chosen:
        print(NOTHING)  # as `list` says it: --all found nothing to do
        return 0
    for name in missing:
        print(f"{name}: no such outbox dead letter", file=sys.stderr)
    failed = len(missing)
    if args.outbox_command == "drop":
        for letter in chosen:
            done = await drop_outbox_dead_letter(client, letter)
            print(f"{letter.mid}: {'dropped' if done else 'already gone'}")
            failed += 0 if done else 1
        return 1 if failed else 0
    bounds = ReplayBounds(
        now_ms=now_ms(),
        max_age_ms=settings.history_retention_seconds * 1000,
        retention_seconds=settings.history_retention_seconds,
        resend_unknown=args.resend_unknown,
    )
    # A conversation's replies go back together, in their order (one script call).
    for group in by_conversation(chosen):
        results = await replay_outbox_dead_letters(client, group, bounds)
        for letter, result in zip(group, results, strict=True):
            print(f"{letter.mid}: {explain(result, settings)}")
            failed += 0 if result.result is OutboxReplayResult.REPLAYED else 1
    return 1 if failed else 0


def by_conversation(letters: list[OutboxDeadLetter]) -> list[list[OutboxDeadLetter]]:
    """The letters grouped by conversation, each group in the letters' order (oldest first)."""
    groups: dict[tuple[int, str], list[OutboxDeadLetter]] = {}
    for letter in letters:
        groups.setdefault((letter.shard.shard, letter.conversation), []).append(letter)
    return list(groups.values())


def explain(replay: OutboxReplay, settings: Settings) -> str:
    """A replay's answer for a person."""
    reasons = {
        OutboxReplayResult.UNKNOWN: "its last send got no answer from WAHA, so it may have "
        "reached the customer: check the chat, then replay it with --resend-unknown",
        OutboxReplayResult.NO_HISTORY: "its conversation's history no longer has it (the "
        "customer was erased, or it was trimmed past the history's retention or cap)",
        OutboxReplayResult.EXPIRED: "written more than WSM_HISTORY_RETENTION_DAYS "
        f"({settings.history_retention_days}) days ago",
        OutboxReplayResult.RECORDED: f"the history says it is {replay.status!r}, not failed",
        OutboxReplayResult.INVALID: "the entry cannot be read (drop it)",
    }
    reason = reasons.get(replay.result)
    return f"not replayed: {reason}" if reason else replay.result.value


def print_letters(letters: list[OutboxDeadLetter], *, as_json: bool) -> None:
    if as_json:
        for letter in letters:
            print(orjson.dumps(letter.summary()).decode())
        return
    if not letters:
        print(NOTHING)
        return
    for letter in letters:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(letter.at_ms / 1000))
        print(
            f"{when}  attempts={letter.attempts}  {letter.outcome.value:<8}  "
            f"{letter.conversation}  {letter.mid}  {what(letter)}  {why(letter)}"
        )


def what(letter: OutboxDeadLetter) -> str:
    """The reply in a few words: its text quoted, or its kind, file name and caption."""
    text = orjson.dumps(shorten(letter.text, 60)).decode()
    if letter.kind == "text":
        return text
    name = str((letter.media or {}).get("filename") or "")
    return f"{letter.kind}:{name} {text}" if name else f"{letter.kind} {text}"


def why(letter: OutboxDeadLetter) -> str:
    error = letter.error.splitlines()[0] if letter.error else ""
    answer = " ".join(letter.answer.split())
    return shorten(f"{error}: {answer}" if answer else error, 160)


def shorten(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"
