"""`wsm dlq`: look at, replay or drop dead letters (messages the workers gave up on).

    wsm dlq list [--json]              oldest first: when, attempts, why, conversation, id, error
    wsm dlq replay (ID... | --all)     back to the head of its conversation, fresh attempts
    wsm dlq drop (ID... | --all)       delete for good
    wsm dlq outbox list | replay | drop
                                       the replies the sender gave up on (worker/dlq_outbox.py)
    wsm dlq booking-webhook list | replay | drop
                                       the booking webhook events given up on
                                       (worker/dlq_booking.py)

IDs are message ids (`evt_…`, as `list` shows them). Each shard keeps at most
WSM_DEAD_LETTERS_MAX dead letters for WSM_DEAD_LETTER_DAYS; `list` says how many older ones were
dropped. Exit status 0 when every named dead letter
was handled, 1 when one was not found or its conversation stayed busy, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import orjson

from shared.dead_letters import (
    DeadLetter,
    ReplayResult,
    drop_dead_letter,
    dropped_dead_letters,
    list_dead_letters,
    replay_dead_letters,
)
from shared.outbox_dead_letters import count_outbox_dead_letters
from shared.redis_client import RedisClient, connect
from shared.settings import Settings
from shared.startup import load_settings
from worker import dlq_booking, dlq_outbox

# The dead letters kept apart from the queue's, each a command of its own under `wsm dlq`.
SECTIONS = {"outbox": dlq_outbox, dlq_booking.NAME: dlq_booking}

# A replay waits this long at most for a leased conversation to finish its turn.
DEFAULT_BUSY_WAIT_SECONDS = 30.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsm dlq",
        description="Manage dead letters: the queue's (messages the workers gave up on); with "
        "`outbox`, the outbox's (replies the sender gave up on); with `booking-webhook`, the "
        "booking webhook's (events the workers could not deliver).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="show dead letters, oldest first")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    for name, help_ in (
        ("replay", "put back at the head of its conversation"),
        ("drop", "delete for good"),
    ):
        command = commands.add_parser(name, help=help_)
        command.add_argument("ids", nargs="*", metavar="ID", help="message id (evt_…)")
        command.add_argument("--all", action="store_true", help="every dead letter")
        if name == "replay":
            command.add_argument(
                "--wait",
                type=float,
                default=DEFAULT_BUSY_WAIT_SECONDS,
                help="seconds to wait for a busy conversation (default 30)",
            )
    dlq_outbox.add_parser(commands)
    dlq_booking.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in SECTIONS:
        problem = SECTIONS[args.command].usage_error(args)
        if problem:
            parser.error(problem)
    elif args.command != "list" and bool(args.ids) == bool(args.all):
        parser.error(f"{args.command}: give message ids or --all (not both)")
    settings = load_settings("wsm dlq")
    if settings is None:
        return 2
    return asyncio.run(run(settings, args))


async def run(settings: Settings, args: argparse.Namespace) -> int:
    client = connect(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        if args.command in SECTIONS:
            return await SECTIONS[args.command].run(client, settings, args)
        letters = await list_dead_letters(client, settings.queue_shards, settings.key_prefix)
        if args.command == "list":
            print_letters(letters, as_json=args.json)
            if args.json:
                return 0
            dropped = await dropped_dead_letters(client, settings.queue_shards, settings.key_prefix)
            if dropped:
                print(
                    f"({dropped} older dead letters were dropped: at most "
                    f"{settings.dead_letters_max} per shard are kept, for "
                    f"{settings.dead_letter_days:g} days)"
                )
            replies = await count_outbox_dead_letters(
                client, settings.queue_shards, settings.key_prefix
            )
            if replies:
                print(f"({replies} replies the sender gave up on: wsm dlq outbox list)")
            return 0
        chosen, missing = choose(letters, args.ids, args.all)
        if args.all and not chosen:
            print("no dead letters")  # as `list` says it: --all found nothing to do
            return 0
        for message_id in missing:
            print(f"{message_id}: no such dead letter", file=sys.stderr)
        failed = len(missing)
        if args.command == "drop":
            for letter in chosen:
                done = await drop_dead_letter(client, letter)
                print(f"{letter.id}: {'dropped' if done else 'already gone'}")
                failed += 0 if done else 1
        else:
            # A conversation's letters go back together, in their order (replay_dead_letters).
            for group in by_conversation(chosen):
                results = await replay_until_free(client, group, args.wait)
                for letter, result in zip(group, results, strict=True):
                    print(f"{letter.id}: {result.value}")
                    failed += 0 if result is ReplayResult.REPLAYED else 1
        return 1 if failed else 0
    finally:
        await client.aclose()


def choose(
    letters: list[DeadLetter], ids: list[str], everything: bool
) -> tuple[list[DeadLetter], list[str]]:
    if everything:
        return letters, []
    wanted = set(ids)
    chosen = [letter for letter in letters if letter.id in wanted]
    found = {letter.id for letter in chosen}
    return chosen, [i for i in ids if i not in found]


def by_conversation(letters: list[DeadLetter]) -> list[list[DeadLetter]]:
    """The letters grouped by conversation, each group in the letters' order (oldest first)."""
    groups: dict[tuple[str, str], list[DeadLetter]] = {}
    for letter in letters:
        groups.setdefault((letter.shard.dlq, letter.conversation), []).append(letter)
    return list(groups.values())


async def replay_until_free(
    client: RedisClient, letters: list[DeadLetter], wait: float
) -> list[ReplayResult]:
    deadline = time.monotonic() + wait
    while True:
        results = await replay_dead_letters(client, letters)
        if ReplayResult.BUSY not in results or time.monotonic() > deadline:
            return results
        await asyncio.sleep(0.2)


def print_letters(letters: list[DeadLetter], *, as_json: bool) -> None:
    if as_json:
        for letter in letters:
            print(orjson.dumps(letter.summary()).decode())
        return
    if not letters:
        print("no dead letters")
        return
    for letter in letters:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(letter.at_ms / 1000))
        error = letter.error.splitlines()[0][:100] if letter.error else ""
        print(
            f"{when}  attempts={letter.attempts}  {letter.reason:<13}  "
            f"{letter.conversation}  {letter.id}  {error}"
        )
