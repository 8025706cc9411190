"""A message's delivery status: WAHA's ack levels, our status names and their order.

One place for both halves of the product that move a status: the engine (an ack's turn, the
sender, the history's reads) and the gateway (a receipt for a message already in the history
is recorded at the door, shared/enqueue.py). The Lua scripts rank statuses with the same table
(shared/scripts/lib/status.lua; tests/shared/test_delivery_status.py keeps the two equal).
"""

from __future__ import annotations

from typing import Any

# WAHA's ack levels (WAMessageAck).
ACK_NAMES = {-1: "error", 0: "pending", 1: "server", 2: "device", 3: "read", 4: "played"}
# Our statuses, in the order a message goes through them. `error` and `failed` are final.
STATUS_RANK = {
    "received": 0,
    "queued": 0,
    "pending": 1,
    "sent": 2,
    "server": 3,
    "device": 4,
    "read": 5,
    "played": 6,
    "error": 7,
    "failed": 7,
}


def status_for_ack(ack: Any) -> str | None:
    """The status WAHA's `ack` level means; None for anything that is not one."""
    if isinstance(ack, bool):
        return None
    try:
        return ACK_NAMES.get(int(ack))
    except (TypeError, ValueError):
        return None


def advances(current: str | None, new: str) -> bool:
    """Whether `new` moves a message on from `current` (a status only moves forward)."""
    return STATUS_RANK.get(new, -1) > STATUS_RANK.get(current or "", -1)
