"""Simulated customers: each one writes through the WAHA simulator, as a person on WhatsApp.

A customer writes a message, waits until the bot has answered it (a message sent to its chat
after its own), then writes the next one: so K customers keep at most K messages in the
system, and the rate is whatever the product sustains. With `pace` (seconds between one
customer's messages; K / pace messages/s in all) a customer also waits for its next turn on a
fixed schedule, to measure latency at a chosen rate; it still never writes before it was
answered, so a product slower than the rate shows as a lower rate, never as a pile-up.

What the customer sees is timed here: a message is stamped when it is handed to the simulator
(which sends WAHA's webhook at once), and each reply when the simulator reports it in the chat
(sendText was accepted). The chat is long-polled, so a reply is seen within one round trip.

The texts follow the menu brain (engine/menu_brain.py) on a path where every message gets
exactly one reply and nobody asks for a person: "oi" (the greeting), a name (the menu), "1"
(the list of services), then questions typed instead of a service number, each answered with
"Não entendi ...". One reply per message keeps the pacing honest: a customer who writes again
at the first of two replies would take the second for the answer to its next message. (The
checks and latencies do not rely on this: they pair replies with messages from the history.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from wsm.waha_sim.transport import LeanHTTPTransport

# A long-poll waits at most this long on the simulator (its own cap is 60 s).
POLL_WAIT_SECONDS = 20.0


class CustomerFailed(RuntimeError):
    """A customer could not write, or was not answered in time (the run's checks say more)."""


QUESTIONS = (
    "quanto custa?",
    "tem horário amanhã?",
    "vocês abrem no sábado?",
    "aceitam cartão?",
    "onde fica a clínica?",
)


def script(index: int, count: int) -> list[str]:
    texts = ["oi", f"Cliente {index}", "1"]
    while len(texts) < count:
        texts.append(QUESTIONS[(len(texts) - 3) % len(QUESTIONS)])
    return texts[:count]


def phone_of(index: int) -> str:
    return f"55119{index:08d}"


@dataclass(slots=True)
class Sent:
    message_id: str  # WAHA's serialized id, as the engine's history keeps it
    text: str
    at: float  # time.monotonic() when handed to the simulator


@dataclass
class Customer:
    index: int
    phone: str
    chat_id: str
    sent: list[Sent] = field(default_factory=list)
    # Replies (sim message id) -> when first seen, and every message's place in the chat.
    reply_seen_at: dict[str, float] = field(default_factory=dict)
    seq_of: dict[str, int] = field(default_factory=dict)
    last_reply_seq: int = 0
    last_seq: int = 0
    error: str | None = None
    finished_at: float | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def numbered(cls, index: int) -> Customer:
        phone = phone_of(index)
        return cls(index, phone, f"{phone}@c.us")

    def answered(self, message_id: str) -> bool:
        seq = self.seq_of.get(message_id)
        return seq is not None and self.last_reply_seq > seq


@dataclass
class Progress:
    total: int
    sent: int = 0
    answered: int = 0
    failed: int = 0
    started_at: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def bump(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    @property
    def fraction_sent(self) -> float:
        return self.sent / self.total if self.total else 1.0


class SimClient:
    """The simulator's control API, on one lean keep-alive pool (httpx's own transport is far
    slower than a load test needs: see shared/lean_http.py)."""

    def __init__(self, base_url: str, connections: int) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url,
            transport=LeanHTTPTransport(max_idle_per_host=connections),
            timeout=httpx.Timeout(POLL_WAIT_SECONDS + 30, connect=10),
        )

    async def inbound(self, phone: str, text: str) -> dict[str, Any]:
        response = await self.http.post("/_sim/inbound", json={"phone": phone, "text": text})
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    async def chat(self, chat_id: str, after: int = 0, wait: float = 0) -> dict[str, Any]:
        response = await self.http.get(
            f"/_sim/chats/{chat_id}/messages", params={"after": after, "wait": wait}
        )
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    async def get(self, path: str) -> Any:
        response = await self.http.get(path)
        response.raise_for_status()
        return response.json()

    async def aclose(self) -> None:
        await self.http.aclose()


async def watch(customer: Customer, sim: SimClient) -> None:
    """Long-poll the customer's chat for as long as the customer talks."""
    while True:
        try:
            chat = await sim.chat(customer.chat_id, customer.last_seq, POLL_WAIT_SECONDS)
        except httpx.HTTPError:
            await asyncio.sleep(0.2)  # the simulator is busy; the next poll catches up
            continue
        now = time.monotonic()
        for message in chat["messages"]:
            seq = int(message["seq"])
            customer.seq_of[message["id"]] = seq
            customer.last_seq = max(customer.last_seq, seq)
            if message["direction"] == "out":
                customer.reply_seen_at.setdefault(message["id"], now)
                customer.last_reply_seq = max(customer.last_reply_seq, seq)
        if chat["messages"]:
            customer.changed.set()


async def _until_answered(customer: Customer, message_id: str) -> None:
    while not customer.answered(message_id):
        customer.changed.clear()
        if customer.answered(message_id):
            return
        await customer.changed.wait()


async def talk(
    customer: Customer,
    sim: SimClient,
    texts: list[str],
    progress: Progress,
    *,
    pace: float = 0.0,
    reply_timeout: float = 120.0,
) -> None:
    watcher = asyncio.create_task(watch(customer, sim))
    next_turn = time.monotonic()
    try:
        for number, text in enumerate(texts, start=1):
            if pace:
                await asyncio.sleep(max(0.0, next_turn - time.monotonic()))
                next_turn += pace
            at = time.monotonic()
            try:
                answer = await sim.inbound(customer.phone, text)
            except httpx.HTTPError as exc:
                raise CustomerFailed(f"message {number} not taken by the simulator: {exc}") from exc
            customer.sent.append(Sent(str(answer["message_id"]), text, at))
            progress.sent += 1
            progress.bump()
            try:
                await asyncio.wait_for(
                    _until_answered(customer, customer.sent[-1].message_id), reply_timeout
                )
            except TimeoutError:
                raise CustomerFailed(
                    f"message {number} ({text!r}) not answered within {reply_timeout:.0f} s"
                ) from None
            progress.answered += 1
            progress.bump()
        customer.finished_at = time.monotonic()
    except CustomerFailed as exc:
        customer.error = str(exc)
        progress.failed += 1
        progress.bump()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def run_customers(
    sim_url: str,
    customers: list[Customer],
    messages: int,
    progress: Progress,
    *,
    pace: float = 0.0,
    reply_timeout: float = 120.0,
) -> None:
    """Every customer talks at once; returns when all have finished or given up."""
    sim = SimClient(sim_url, connections=2 * len(customers) + 16)
    try:
        progress.started_at = time.monotonic()

        # Spread the first messages over one pace interval so a paced run starts at its rate.
        async def start(customer: Customer) -> None:
            if pace:
                await asyncio.sleep(pace * customer.index / max(1, len(customers)))
            await talk(
                customer, sim, script(customer.index, messages), progress,
                pace=pace, reply_timeout=reply_timeout,
            )  # fmt: skip

        await asyncio.gather(*(start(c) for c in customers))
    finally:
        await sim.aclose()
