"""`wsm chat`: a WhatsApp customer in the terminal, talking to wsm through the WAHA simulator.

Each line you type becomes a customer message: the simulator signs it and posts it to the
gateway's webhook exactly as WAHA would. The bot's answers appear as the simulator receives
them from wsm (with "digitando…" while wsm shows it typing). Several `wsm chat --as <number>`
at once are several customers (try asking for a person from three terminals).

From a pipe (`printf 'oi\\n1\\n' | wsm chat --as 5511987650001`) each line is sent in turn,
after the answers to the previous one have arrived, and at the end of input it waits for the
last answers (up to --timeout) before exiting.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any, TextIO

import httpx


class SimulatorUnreachable(RuntimeError):
    """The WAHA simulator does not answer (is `make run` going?)."""


class ChatClient:
    """One customer's view of a chat in the simulator."""

    def __init__(self, http: httpx.AsyncClient, phone: str, session: str, out: TextIO) -> None:
        self.http = http
        self.phone = phone
        self.session = session
        self.out = out
        self.chat_id = f"{phone}@c.us"
        self.seen_seq = 0
        self.typing = False
        self.last_reply_at = 0.0
        self.last_sent_at = 0.0

    async def send(self, text: str) -> None:
        try:
            answer = await self.http.post(
                "/_sim/inbound", json={"phone": self.phone, "text": text, "session": self.session}
            )
        except httpx.HTTPError as exc:
            raise SimulatorUnreachable(str(exc)) from exc
        answer.raise_for_status()
        self.last_sent_at = time.monotonic()

    async def poll(self, wait: float) -> None:
        """Print what is new in the chat, waiting up to `wait` seconds for a change."""
        try:
            answer = await self.http.get(
                f"/_sim/chats/{self.chat_id}/messages",
                params={"after": self.seen_seq, "wait": wait},
                timeout=wait + 5,
            )
        except httpx.HTTPError as exc:
            raise SimulatorUnreachable(str(exc)) from exc
        answer.raise_for_status()
        chat: dict[str, Any] = answer.json()
        for message in chat["messages"]:
            self.seen_seq = max(self.seen_seq, int(message["seq"]))
            if message["direction"] == "out":
                self.last_reply_at = time.monotonic()
                print(f"bot: {message['text']}", file=self.out, flush=True)
        if chat["typing"] and not self.typing:
            print("bot está digitando…", file=self.out, flush=True)
        self.typing = bool(chat["typing"])

    async def settle(self, timeout: float, quiet: float) -> bool:
        """Wait until an answer to the last message has arrived and the chat has been quiet
        (no typing, nothing new) for `quiet` seconds. False when `timeout` ran out first."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            answered = self.last_reply_at >= self.last_sent_at
            if answered and not self.typing and now - self.last_reply_at >= quiet:
                return True
            if now >= deadline:
                return False
            await self.poll(wait=min(quiet, max(deadline - now, 0.05)))


async def run_piped(client: ChatClient, lines: list[str], timeout: float, quiet: float) -> int:
    answered_all = True
    for line in lines:
        print(f"você: {line}", file=client.out, flush=True)
        await client.send(line)
        answered_all = await client.settle(timeout, quiet) and answered_all
    if not answered_all:
        print(f"(sem resposta em {timeout:g} s)", file=sys.stderr, flush=True)
    return 0 if answered_all else 3


async def run_interactive(client: ChatClient) -> int:
    loop = asyncio.get_running_loop()

    async def show_answers() -> None:
        while True:
            await client.poll(wait=25)

    printer = asyncio.create_task(show_answers())
    print(f"Você é {client.chat_id}. Escreva e tecle Enter; Ctrl-D sai.", file=client.out)
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return 0
            if line.strip():
                await client.send(line.rstrip("\n"))
    finally:
        printer.cancel()


async def run(args: argparse.Namespace) -> int:
    phone = "".join(ch for ch in args.as_number if ch.isdigit())
    async with httpx.AsyncClient(base_url=args.sim, timeout=10) as http:
        client = ChatClient(http, phone, args.session, sys.stdout)
        await client.poll(wait=0)  # skip what the chat already holds
        if sys.stdin.isatty():
            return await run_interactive(client)
        lines = [line.rstrip("\n") for line in sys.stdin if line.strip()]
        return await run_piped(client, lines, args.timeout, args.quiet)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wsm chat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--as", dest="as_number", default="5511987650001", help="your number")
    parser.add_argument("--sim", default="http://127.0.0.1:3000", help="the WAHA simulator")
    parser.add_argument("--session", default="default", help="the WAHA session")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for answers")
    parser.add_argument("--quiet", type=float, default=0.8, help="silence that ends an answer")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except SimulatorUnreachable as exc:
        print(
            f"wsm chat: the WAHA simulator at {args.sim} does not answer ({exc}); "
            "is `make run` going?",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 0
