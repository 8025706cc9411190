"""`wsm chat`: a WhatsApp customer in the terminal, talking to wsm through the WAHA simulator.

Each line you type becomes a customer message: the simulator signs it and posts it to the
gateway's webhook exactly as WAHA would. The bot's answers appear as the simulator receives
them from wsm (with "digitando…" while wsm shows it typing). Several `wsm chat --as <number>`
at once are several customers (try asking for a person from three terminals).

From a pipe (`printf 'oi\\n1\\n' | wsm chat --as 5511987650001`) each line is sent as it comes,
after the answers to the previous one have arrived, and at the end of input it waits for the
last answers (up to --timeout) before exiting. Ctrl-C or Ctrl-D ends an interactive chat.

A line `/arquivo <path> [legenda]` (or `/file <path> [caption]`) sends that file instead, as
the customer's photo, video, audio, voice note (`.ogg`, `.opus`), sticker (`.webp`) or
document, with the rest of the line as its caption; a path with spaces goes in quotes. WAHA
(the simulator) keeps the file and the bot fetches it as it would from WAHA.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import codecs
import mimetypes
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

import httpx


class SimulatorUnreachable(RuntimeError):
    """The WAHA simulator does not answer (is `make run` going?)."""


class LineNotSent(ValueError):
    """A line that could not be sent (a file that cannot be read, or that the simulator
    refused): told to the user, and the chat goes on."""


# Lines that send a file: `/arquivo <path> [legenda]`, `/file <path> [caption]`.
FILE_COMMANDS = ("/arquivo", "/file")
# What WhatsApp records a voice note as: such a file is sent as one.
VOICE_SUFFIXES = {".ogg": "audio/ogg; codecs=opus", ".opus": "audio/ogg; codecs=opus"}


def file_command(line: str) -> tuple[Path, str] | None:
    """The file and caption of a `/arquivo` line; None for any other line."""
    head, _, rest = line.strip().partition(" ")
    if head.lower() not in FILE_COMMANDS:
        return None
    rest = rest.strip()
    if not rest:
        raise LineNotSent(f"{head} <caminho do arquivo> [legenda]")
    if rest[0] in "'\"":
        end = rest.find(rest[0], 1)
        if end < 0:
            raise LineNotSent(f"the path's closing {rest[0]} is missing")
        path, caption = rest[1:end], rest[end + 1 :]
    else:
        path, _, caption = rest.partition(" ")
    return Path(path).expanduser(), caption.strip()


def media_of(path: Path) -> dict[str, str]:
    """The simulator's `media` for a file: its bytes, type (by its name) and name."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LineNotSent(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not data:
        raise LineNotSent(f"{path} is empty")
    mimetype = VOICE_SUFFIXES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
    return {
        "data": base64.b64encode(data).decode(),
        "mimetype": mimetype or "application/octet-stream",
        "filename": path.name,
    }


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
        """Sends a typed line: a text, or the file of a `/arquivo` line."""
        body: dict[str, Any] = {"phone": self.phone, "text": text, "session": self.session}
        command = file_command(text)
        if command is not None:
            path, caption = command
            body.update(text=caption, media=media_of(path))
        try:
            answer = await self.http.post("/_sim/inbound", json=body)
        except httpx.HTTPError as exc:
            raise SimulatorUnreachable(str(exc)) from exc
        if 400 <= answer.status_code < 500:
            # The simulator says why (an unknown session, a caption on a voice note, a file
            # too big): told, and the chat goes on.
            raise LineNotSent(_simulator_error(answer))
        answer.raise_for_status()
        self.last_sent_at = time.monotonic()

    async def poll(self, wait: float, *, show: bool = True) -> None:
        """Print what is new in the chat, waiting up to `wait` seconds for a change (`show`
        False: only take note of it, as at the start, where the chat's past is not news)."""
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
            if message["direction"] == "out" and show:
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


def _simulator_error(answer: httpx.Response) -> str:
    try:
        body = answer.json()
    except ValueError:
        return answer.text or f"HTTP {answer.status_code}"
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)
    return str(body)


async def typed_lines() -> AsyncIterator[str]:
    """Standard input's lines as they come (without the line break, a Windows one included).

    Read by a daemon thread with plain `os.read` on the descriptor: a thread of the default
    executor would keep Ctrl-C waiting for Enter (asyncio.run waits for its executor's threads
    before it returns), and a daemon thread blocked inside `sys.stdin` would hold its buffer's
    lock when the interpreter shuts down (a fatal error)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    fd = sys.stdin.fileno()

    def read() -> None:
        # Bytes that are not UTF-8 become U+FFFD rather than an error at sending.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        while chunk := os.read(fd, 4096):
            pending += decoder.decode(chunk)
            *lines, pending = pending.split("\n")
            for line in lines:
                loop.call_soon_threadsafe(queue.put_nowait, line.rstrip("\r"))
        pending += decoder.decode(b"", final=True)
        if pending:
            loop.call_soon_threadsafe(queue.put_nowait, pending.rstrip("\r"))
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read, name="wsm-chat-stdin", daemon=True).start()
    while (line := await queue.get()) is not None:
        yield line


def not_sent(error: LineNotSent) -> None:
    print(f"wsm chat: not sent: {error}", file=sys.stderr, flush=True)


async def run_piped(
    client: ChatClient, lines: AsyncIterator[str], timeout: float, quiet: float
) -> int:
    """Each line as it comes, once the answers to the previous one have arrived. 0: every
    line answered; 3: some answer did not come within `timeout`; 4: some line could not be
    sent (the others were)."""
    answered_all, sent_all = True, True
    async for line in lines:
        if not line.strip():
            continue
        print(f"você: {line}", file=client.out, flush=True)
        try:
            await client.send(line)
        except LineNotSent as error:
            not_sent(error)
            sent_all = False
            continue
        answered_all = await client.settle(timeout, quiet) and answered_all
    if not answered_all:
        print(f"(sem resposta em {timeout:g} s)", file=sys.stderr, flush=True)
    return 4 if not sent_all else 0 if answered_all else 3


async def run_interactive(client: ChatClient) -> int:
    async def show_answers() -> None:
        while True:
            await client.poll(wait=25)

    printer = asyncio.create_task(show_answers())
    print(
        f"Você é {client.chat_id}. Escreva e tecle Enter; /arquivo <caminho> [legenda] envia "
        "um arquivo; Ctrl-D sai.",
        file=client.out,
    )
    try:
        async for line in typed_lines():
            if line.strip():
                try:
                    await client.send(line)
                except LineNotSent as error:
                    not_sent(error)
        return 0
    finally:
        printer.cancel()


async def run(args: argparse.Namespace) -> int:
    phone = "".join(ch for ch in args.as_number if ch.isdigit())
    async with httpx.AsyncClient(base_url=args.sim, timeout=10) as http:
        client = ChatClient(http, phone, args.session, sys.stdout)
        await client.poll(wait=0, show=False)  # what the chat already holds is not news
        if sys.stdin.isatty():
            return await run_interactive(client)
        return await run_piped(client, typed_lines(), args.timeout, args.quiet)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wsm chat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--as", dest="as_number", default="5511987650001", help="your number")
    parser.add_argument("--sim", default="http://127.0.0.1:3000", help="the WAHA simulator")
    parser.add_argument("--session", default="default", help="the WAHA session")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for answers")
    parser.add_argument("--quiet", type=float, default=0.8, help="silence that ends an answer")
    args = parser.parse_args(argv)
    if not any(ch.isdigit() for ch in args.as_number):
        parser.error(f"--as {args.as_number!r}: a phone number, digits (e.g. 5511987650001)")
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
