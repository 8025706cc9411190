"""The promises checked after a load test, from two independent records of each conversation:

- the engine's history (read through the operator API): every message in and out, in the order
  the conversation's handler saw them, each reply with the WhatsApp id WAHA gave its send;
- the simulator's chat (what WhatsApp would show): every message the customer wrote and every
  message that reached them, in order, each with its id.

Checked per conversation:
- nothing lost: every message a customer wrote is in the history exactly once;
- in order: the history's incoming messages are in the order the customer wrote them;
- nothing sent twice: every message that reached the customer is exactly one of the history's
  replies (same WhatsApp id), and every reply the history holds reached the customer;
- replies in order: the chat's outgoing messages are the history's replies, in the same order.

Latency comes from the same records: a reply belongs to the customer message that precedes it
in the history (the handler committed them together), so each reply's delay is exact even when
a turn has two replies or a reply arrives after the customer wrote again.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any

import httpx

from wsm.load.customers import Customer

HISTORY_PAGE = 500
API_RETRIES = 5
# Examples kept per kind of failure, so a bad run's report stays readable.
EXAMPLES = 5


@dataclass
class Finding:
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, example: str) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(example)


@dataclass
class Findings:
    lost: Finding = field(default_factory=Finding)
    inbound_duplicated: Finding = field(default_factory=Finding)
    inbound_out_of_order: Finding = field(default_factory=Finding)
    replies_sent_twice: Finding = field(default_factory=Finding)
    replies_not_delivered: Finding = field(default_factory=Finding)
    replies_out_of_order: Finding = field(default_factory=Finding)
    customers_unanswered: Finding = field(default_factory=Finding)
    first_reply_ms: list[float] = field(default_factory=list)
    every_reply_ms: list[float] = field(default_factory=list)
    replies: int = 0

    def failures(self) -> dict[str, Finding]:
        kinds = {
            "lost": self.lost,
            "inbound_duplicated": self.inbound_duplicated,
            "inbound_out_of_order": self.inbound_out_of_order,
            "replies_sent_twice": self.replies_sent_twice,
            "replies_not_delivered": self.replies_not_delivered,
            "replies_out_of_order": self.replies_out_of_order,
            "customers_unanswered": self.customers_unanswered,
        }
        return {name: finding for name, finding in kinds.items() if finding.count}

    @property
    def ok(self) -> bool:
        return not self.failures()


async def read_history(api: httpx.AsyncClient, session: str, chat_id: str) -> list[dict[str, Any]]:
    """Every history entry of a conversation, oldest first (pages run from the newest back)."""
    pages: list[list[dict[str, Any]]] = []
    before: str | None = None
    while True:
        params: dict[str, Any] = {"limit": HISTORY_PAGE}
        if before:
            params["before"] = before
        url = f"/api/conversations/{session}/{chat_id}/messages"
        response = await api.get(url, params=params)
        for _ in range(API_RETRIES):
            # The operator API answers 500 to a request that meets one of its pooled Redis
            # connections dead after a Redis restart; the next one reconnects.
            if response.status_code < 500:
                break
            await asyncio.sleep(0.2)
            response = await api.get(url, params=params)
        response.raise_for_status()
        page = response.json()
        pages.append(page["messages"])
        before = page.get("next_before")
        if not before:
            break
    return [entry for page in reversed(pages) for entry in page]


def check_conversation(
    customer: Customer,
    history: list[dict[str, Any]],
    chat: list[dict[str, Any]],
    findings: Findings,
) -> None:
    name = customer.chat_id
    if customer.error:
        findings.customers_unanswered.add(f"{name}: {customer.error}")

    # --- the customer's messages --------------------------------------------------------
    incoming = [e for e in history if e["direction"] == "in"]
    written = [s.message_id for s in customer.sent]
    received = [str(e.get("waha_id") or "") for e in incoming]
    for number, sent in enumerate(customer.sent, start=1):
        times = received.count(sent.message_id)
        if times == 0:
            findings.lost.add(f"{name}: message {number} ({sent.text!r}) is not in the history")
        elif times > 1:
            findings.inbound_duplicated.add(
                f"{name}: message {number} ({sent.text!r}) is in the history {times} times"
            )
    # Order of first appearance (a duplicate or a loss is reported above, not here).
    seen_order = list(dict.fromkeys(mid for mid in received if mid in set(written)))
    if seen_order != [mid for mid in written if mid in set(seen_order)]:
        findings.inbound_out_of_order.add(f"{name}: history {seen_order} vs written {written}")

    # --- the replies ---------------------------------------------------------------------
    replies = [e for e in history if e["direction"] == "out"]
    delivered = [m for m in chat if m["direction"] == "out"]
    findings.replies += len(delivered)
    recorded_ids = [str(e.get("waha_id") or "") for e in replies]
    for entry in replies:
        if not entry.get("waha_id") or entry.get("status") in ("queued", "failed", "error"):
            findings.replies_not_delivered.add(
                f"{name}: reply {entry['text'][:40]!r} has status {entry.get('status')!r}"
            )
    delivered_ids = [str(m["id"]) for m in delivered]
    for message in delivered:
        if delivered_ids.count(message["id"]) > 1 or message["id"] not in recorded_ids:
            findings.replies_sent_twice.add(
                f"{name}: {message['text'][:40]!r} reached the customer but is not one of the "
                "history's replies (a second send)"
            )
    for entry in replies:
        waha_id = str(entry.get("waha_id") or "")
        if waha_id and waha_id not in delivered_ids:
            findings.replies_not_delivered.add(
                f"{name}: reply {entry['text'][:40]!r} ({waha_id}) never reached the customer"
            )
    # Order over the replies both records hold (a second send or a missing one is counted
    # above, not again here).
    in_chat = [i for i in delivered_ids if i in set(recorded_ids)]
    in_history = [i for i in recorded_ids if i in set(delivered_ids)]
    if in_chat != in_history:
        findings.replies_out_of_order.add(
            f"{name}: the chat shows the replies in another order than the history"
        )

    # --- latency -------------------------------------------------------------------------
    sent_at = {s.message_id: s.at for s in customer.sent}
    trigger: str | None = None
    first_done: set[str] = set()
    for entry in history:
        if entry["direction"] == "in":
            trigger = str(entry.get("waha_id") or "")
            continue
        waha_id = str(entry.get("waha_id") or "")
        seen = customer.reply_seen_at.get(waha_id)
        if trigger is None or trigger not in sent_at or seen is None:
            continue
        delay_ms = (seen - sent_at[trigger]) * 1000
        findings.every_reply_ms.append(delay_ms)
        if trigger not in first_done:
            first_done.add(trigger)
            findings.first_reply_ms.append(delay_ms)


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


def latency_summary(values: list[float]) -> dict[str, float | int | None]:
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return {
        "count": len(values),
        "p50_ms": rounded(percentile(values, 0.50)),
        "p90_ms": rounded(percentile(values, 0.90)),
        "p99_ms": rounded(percentile(values, 0.99)),
        "max_ms": rounded(max(values) if values else None),
    }
