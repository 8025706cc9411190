"""`wsm dlq booking-webhook`: look at, send again or drop the booking webhook events given up on
(engine/agent/booking_dead_letters.py). Its options, lines and exit statuses are those of
`wsm dlq outbox` (worker/dlq_outbox.py). HELP is what `wsm dlq booking-webhook --help` says."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

from engine.agent.booking_dead_letters import (
    BookingDeadLetter,
    BookingReplayResult,
    drop_booking_dead_letter,
    dropped_booking_dead_letters,
    list_booking_dead_letters,
    replay_booking_dead_letters,
)
from shared.clock import now_ms
from shared.redis_client import RedisClient
from shared.settings import Settings
from worker import dlq_choice
from worker.dlq_outbox import shorten

NAME = "booking-webhook"
NOTHING = "no booking webhook dead letters"

HELP = """\
Booking webhook events (a booking, reschedule or cancellation) the workers gave up on: the
receiver at WSM_BOOKING_WEBHOOK_URL refused them (a 4xx other than 408 and 429), or every try
failed (WSM_BOOKING_WEBHOOK_MAX_ATTEMPTS of network errors, timeouts, 408, 429 or 5xx). The
business's system does not know of those changes; nothing sends them by itself.

  list [--json]
      oldest first: when, deliveries tried, the event, conversation, event id, the booking and
      its start, why (the receiver's status and answer, or the network error)
  replay (ID... | --conversation C | --all)
      back among the events to deliver, due now, with fresh attempts: the workers send each
      once more, signed anew, under its own id (the receiver deduplicates on it)
  drop (ID... | --conversation C | --all)
      delete for good

IDs are event ids and C a conversation (`<session>|<chat id>`), as `list` shows them.

A replay refuses an event, leaving it listed and storing nothing, when its booking is no
longer kept (its customer was erased, or it is past the bookings' retention), or when an event
of its id is waiting to be delivered already. It needs WSM_BOOKING_WEBHOOK_URL set: without it
no worker delivers events.

Exit status: 0 every named event was handled; 1 one was not found, gone or refused; 2 bad
usage.
"""

REPLAY_HELP = (
    "Put events back among those to deliver, due now, with fresh attempts: one atomic step "
    "takes them out of the dead letters, so the workers send each once more and a second "
    "replay finds it gone. Refused (left listed, nothing stored, exit status 1): an event whose "
    "booking is no longer kept (its customer erased, past the retention), one whose id is "
    "waiting to be delivered already, and every event while WSM_BOOKING_WEBHOOK_URL is unset."
)


def add_parser(commands: Any) -> None:
    """`booking-webhook` and its subcommands, under `wsm dlq`'s."""
    dlq_choice.add_section(
        commands,
        NAME,
        dest="hooks_command",
        help_="booking webhook events given up on (list, replay, drop)",
        description=HELP,
        noun="event",
        replay=("put back among the events to deliver, to be sent once more", REPLAY_HELP),
        drop_description="Delete events from the booking webhook's dead letters.",
    )


def usage_error(args: argparse.Namespace) -> str | None:
    """What is wrong with a `booking-webhook` command line, or None."""
    return dlq_choice.usage_error(args, f"{NAME} {args.hooks_command}", "event")


async def run(client: RedisClient, settings: Settings, args: argparse.Namespace) -> int:
    prefix = settings.key_prefix
    letters = await list_booking_dead_letters(client, prefix)
    if args.hooks_command == "list":
        print_letters(letters, as_json=args.json)
        dropped = await dropped_booking_dead_letters(client, prefix)
        if dropped and not args.json:
            print(
                f"({dropped} older events were dropped: at most {settings.dead_letters_max} "
                f"are kept, for {settings.dead_letter_days:g} days)"
            )
        return 0
    chosen, missing = dlq_choice.choose(
        letters,
        args,
        id_of=lambda letter: letter.id,
        conversation_of=lambda letter: letter.conversation,
    )
    if args.all and not chosen:
        print(NOTHING)  # as `list` says it: --all found nothing to do
        return 0
    if args.hooks_command == "replay" and not settings.booking_webhook_url:
        # Put back with no deliverer, they would wait unseen instead of being listed here.
        print(
            f"wsm dlq {NAME} replay: WSM_BOOKING_WEBHOOK_URL is not set, so no worker delivers "
            "events: nothing was replayed",
            file=sys.stderr,
        )
        return 1
    for name in missing:
        print(f"{name}: no such booking webhook dead letter", file=sys.stderr)
    failed = len(missing)
    if args.hooks_command == "drop":
        for letter in chosen:
            done = await drop_booking_dead_letter(client, prefix, letter)
            print(f"{letter.id}: {'dropped' if done else 'already gone'}")
            failed += 0 if done else 1
        return 1 if failed else 0
    # One list, one hash tag: every chosen event goes back in one script call, in their order.
    results = await replay_booking_dead_letters(client, prefix, chosen, now_ms())
    for letter, result in zip(chosen, results, strict=True):
        print(f"{letter.id}: {explain(result)}")
        failed += 0 if result is BookingReplayResult.REPLAYED else 1
    return 1 if failed else 0


def explain(result: BookingReplayResult) -> str:
    """A replay's answer for a person."""
    reasons = {
        BookingReplayResult.NO_BOOKING: "its booking is no longer kept (the customer was "
        "erased, or it is past the bookings' retention)",
        BookingReplayResult.PENDING: "an event of this id is waiting to be delivered already",
        BookingReplayResult.INVALID: "the entry cannot be read (drop it)",
    }
    reason = reasons.get(result)
    return f"not replayed: {reason}" if reason else result.value


def print_letters(letters: list[BookingDeadLetter], *, as_json: bool) -> None:
    if as_json:
        for letter in letters:
            print(orjson.dumps(letter.summary()).decode())
        return
    if not letters:
        print(NOTHING)
        return
    for letter in letters:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(letter.at_ms / 1000))
        error = " ".join(letter.error.split())
        print(
            f"{when}  attempts={letter.attempts}  {letter.event or '?':<19}  "
            f"{letter.conversation}  {letter.id}  {letter.booking_id} {letter.start}  "
            f"{shorten(error, 160)}"
        )
