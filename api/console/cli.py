"""`wsm agent`: the console's accounts.

    wsm agent add <id> --name "<name>" [--role agent|admin] [--team ID]...
                                                              password from stdin or a prompt
    wsm agent passwd <id>                                     a new password (ends its sessions)
    wsm agent remove <id>                                     the account and its sessions
    wsm agent list

The password is read from standard input (its first line) when it is not a terminal, so
`printf '%s\\n' "$PASSWORD" | wsm agent add ana --name "Ana"` works in scripts; on a terminal
it is asked twice, without echo. It is never an argument (arguments show in `ps`).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import re
import sys
from typing import Any

from shared.keys import ConsoleKeys
from shared.settings import Settings
from shared.startup import load_settings

from .accounts import ROLES, AccountError, AccountStore


def read_password(stdin: Any = None) -> str:
    stdin = stdin or sys.stdin
    if stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise AccountError("the two passwords differ")
        return first
    return stdin.readline().rstrip("\r\n")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    from engine.parts import waiting_line
    from engine.waiting_line import now_ms
    from shared.redis_client import connect

    redis = connect(settings.redis_url)
    store = AccountStore(redis, ConsoleKeys(settings.key_prefix))
    try:
        if args.action == "add":
            line = waiting_line(redis, settings)
            if args.team and (unknown := line.unknown_teams(args.team)):
                raise AccountError(unknown)  # before anything is stored
            account = await store.add(args.id, args.name or args.id, args.role, read_password())
            if args.team:
                # The teams whose lines the agent takes from (the business file's `teams`).
                await line.set_teams(account.id, args.team)
            teams = f", teams {', '.join(sorted(set(args.team)))}" if args.team else ""
            print(f"agent {account.id} ({account.name}, {account.role}{teams}) added")
        elif args.action == "passwd":
            await store.set_password(args.id, read_password())
            print(f"password of {args.id} changed; its sessions ended")
        elif args.action == "remove":
            if not await store.remove(args.id):
                print(f"wsm agent: no agent {args.id!r}", file=sys.stderr)
                return 1
            # A removed agent no longer counts as capacity, nor is given customers.
            line = waiting_line(redis, settings)
            if any(agent.id == args.id for agent in await line.agents()):
                await line.set_offline(args.id, now_ms())
            await line.set_teams(args.id, [])
            print(f"agent {args.id} removed (offline in the line); its sessions ended")
        else:
            for account in await store.list():
                print(f"{account.id}\t{account.role}\t{account.name}")
    finally:
        await redis.aclose()
    return 0


async def ensure_account(
    redis_url: str, key_prefix: str, agent_id: str, name: str, role: str, password: str
) -> bool:
    """Create the account unless it exists (True when created); for `wsm dev`, which can give
    a fresh development stack a first admin without asking."""
    from shared.redis_client import connect

    redis = connect(redis_url)
    store = AccountStore(redis, ConsoleKeys(key_prefix))
    try:
        if await store.get(agent_id) is not None:
            return False
        try:
            await store.add(agent_id, name, role, password)
        except AccountError:
            if await store.get(agent_id) is not None:
                return False  # made meanwhile by someone else
            raise
        return True
    finally:
        await redis.aclose()


def _team_id(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,39}", value):
        raise argparse.ArgumentTypeError(f"not a team id: {value!r} (a-z 0-9 _ -)")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="wsm agent", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="create an account (password from stdin or a prompt)")
    add.add_argument("id", help="the agent id: 1-40 of a-z 0-9 . _ -")
    add.add_argument("--name", help="the name customers and colleagues see")
    add.add_argument("--role", choices=ROLES, default="agent")
    add.add_argument(
        "--team", action="append", default=[], type=_team_id, metavar="ID",
        help="a team whose line the agent takes from (repeatable; the business file's ids)",
    )  # fmt: skip
    passwd = sub.add_parser("passwd", help="set a new password (ends the account's sessions)")
    passwd.add_argument("id")
    remove = sub.add_parser("remove", help="remove an account (ends its sessions)")
    remove.add_argument("id")
    sub.add_parser("list", help="list the accounts")
    args = parser.parse_args(argv)
    settings = load_settings("wsm agent")
    if settings is None:
        return 2
    from engine.businesses import business_files_usable  # `add --team` reads their teams

    if not business_files_usable(settings, "wsm agent"):
        return 2
    try:
        return asyncio.run(run(args, settings))
    except AccountError as exc:
        print(f"wsm agent: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
