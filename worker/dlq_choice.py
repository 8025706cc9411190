"""What `wsm dlq outbox` and `wsm dlq booking-webhook` share: a command of their own under
`wsm dlq` with `list [--json]`, `replay` and `drop`, the last two choosing their entries by id,
by conversation (`<session>|<chat id>`) or all (one of the three)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from shared.keys import conversation_token, split_conversation_token

T = TypeVar("T")


def add_section(
    commands: Any,
    name: str,
    *,
    dest: str,
    help_: str,
    description: str,
    noun: str,
    replay: tuple[str, str],
    drop_description: str,
) -> argparse.ArgumentParser:
    """`name` and its subcommands under `wsm dlq`'s `commands`, the subcommand in `dest`;
    `replay` is the replay's (help, description). Returns the replay's parser, for the options
    of its own."""
    section = commands.add_parser(
        name,
        help=help_,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = section.add_subparsers(dest=dest, required=True)
    listing = sub.add_parser("list", help=f"show the {noun}s, oldest first")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    parsers = {}
    for command, (help_text, text) in (
        ("replay", replay),
        ("drop", ("delete for good", drop_description)),
    ):
        parser = sub.add_parser(command, help=help_text, description=text)
        parser.add_argument("ids", nargs="*", metavar="ID", help=f"{noun} id (as list shows it)")
        parser.add_argument(
            "--conversation",
            metavar="C",
            help=f"every {noun} of a conversation (`<session>|<chat id>`, as list shows it)",
        )
        parser.add_argument("--all", action="store_true", help=f"every {noun}")
        parsers[command] = parser
    return parsers["replay"]


def usage_error(args: argparse.Namespace, command: str, noun: str) -> str | None:
    """What is wrong with the command line of a section's `command` (`outbox replay`, say),
    or None."""
    if command.endswith(" list"):
        return None
    given = sum((bool(args.ids), args.conversation is not None, bool(args.all)))
    if given != 1:
        return f"{command}: give {noun} ids, --conversation or --all (one)"
    return None


def choose(
    letters: Sequence[T],
    args: argparse.Namespace,
    *,
    id_of: Callable[[T], str],
    conversation_of: Callable[[T], str],
) -> tuple[list[T], list[str]]:
    """The letters the command line names, oldest first, and the names it gave that match
    none (`conversation <C>` for a conversation with none)."""
    if args.all:
        return list(letters), []
    if args.conversation is not None:
        session, chat_id = split_conversation_token(args.conversation)
        token = conversation_token(session, chat_id)  # `…@s.whatsapp.net` is its `@c.us` chat
        chosen = [letter for letter in letters if conversation_of(letter) == token]
        return chosen, [] if chosen else [f"conversation {args.conversation}"]
    wanted = set(args.ids)
    chosen = [letter for letter in letters if id_of(letter) in wanted]
    found = {id_of(letter) for letter in chosen}
    return chosen, [i for i in dict.fromkeys(args.ids) if i not in found]
